"""The kMaX-DeepLab training loss with deep supervision.

kMaX-DeepLab (Yu et al., ECCV 2022) trains with the MaX-DeepLab losses on
the final prediction and on the prediction made inside each k-means layer
(its cluster assignment), plus a semantic loss on the auxiliary semantic
head:
  total = sum over outputs o of [ w_pq * class_o + w_pq * (alpha / N) * dice_o
                                  + w_id * mask_id_o + w_disc * disc_o ]
          + w_sem * semantic.
Steps of one call:
  1. Ground truth: dense GT masks one_hot(gt_mask_ids, M) [B, P, M] (void
     and crowd pixels belong to no mask).
  2. Matching, once, on the final prediction: cost -Dice * p(class) with
     mask probabilities zeroed at void pixels, +-999 on padding rows, exact
     Hungarian matching (`matcher.match`). The assignment and the constant
     weights derived from the final prediction (matched Dice, matched class
     probability, void ratio; all stop-gradient) are reused unchanged for
     every auxiliary output: only the penalised logits differ per output.
  3. Auxiliary mask logits (strides 32, 16, 8, ...) are resized bilinearly
     with align_corners to the final resolution; auxiliary pixel features
     are interpolated the same way at the sampled pixels only and
     L2-normalised again.
  4. One pixel sample per image for the instance discrimination loss,
     shared by all outputs (so equal outputs get equal terms), and one for
     the semantic loss, both drawn with stateless ops from `seed`.
  5. Each term is computed per image; non-finite per-image values are
     replaced by 0 (and counted), then averaged over the batch.
Everything is computed in float32 whatever the dtype of the outputs.
"""
import dataclasses

import tensorflow as tf

from deeplab2_kmax.model import outputs as outputs_lib
from deeplab2_kmax.model.layers import resize
from deeplab2_kmax.model.loss import instance_discrimination_loss
from deeplab2_kmax.model.loss import mask_id_loss
from deeplab2_kmax.model.loss import matcher
from deeplab2_kmax.model.loss import pq_style_loss
from deeplab2_kmax.model.loss import reference_mask_loss
from deeplab2_kmax.model.loss import semantic_loss

PQ_CLASS = 'pq_class'
PQ_DICE = 'pq_dice'
MASK_ID = 'mask_id'
INSTANCE_DISCRIMINATION = 'instance_discrimination'
SEMANTIC = 'semantic'
# CMT-DeepLab's mask-approximation loss on the layers' reference masks.
REFERENCE_MASK = 'reference_mask'
TOTAL = 'total'
# Terms computed for every output (final and auxiliary).
PER_OUTPUT_TERMS = (PQ_CLASS, PQ_DICE, MASK_ID, INSTANCE_DISCRIMINATION)
TERMS = PER_OUTPUT_TERMS + (SEMANTIC, REFERENCE_MASK)
NON_FINITE_PREFIX = 'non_finite/'

# Keys of the ground-truth dict made by the input pipeline.
GT_SEMANTIC = 'semantic'  # int32 [B, h, w]
GT_MASK_IDS = 'gt_mask_ids'  # int32 [B, h, w], -1 at void and crowd
GT_CLASSES = 'gt_classes'  # int32 [B, M], K for empty or padding slots
GT_VALID = 'gt_valid'  # bool [B, M]
GT_INVERSE_AREA = 'inverse_area'  # float32 [B, h, w]
GT_SEMANTIC_WEIGHTS = 'semantic_weights'  # float32 [B, h, w]
GT_VOID = 'void'  # bool [B, h, w]


@dataclasses.dataclass(frozen=True)
class Matching:
  """Targets of the final matching, constants shared by all outputs."""
  assignment: tf.Tensor  # [B, M, N] 0/1, padding rows all zero
  slot_classes: tf.Tensor  # [B, N] int32 target channel, K if unmatched
  slot_weights: tf.Tensor  # [B, N] class-term weights
  gt_weights: tf.Tensor  # [B, M] Dice-term weights, 0 if unmatched


def match_final_prediction(class_logits, mask_logits, gt_masks, gt_classes,
                           gt_valid, void, use_host=None):
  """Hungarian matching of the final prediction and its constant weights.

  Args:
    class_logits: float32 [B, N, K + 1].
    mask_logits: float32 [B, P, N].
    gt_masks: float32 [B, P, M].
    gt_classes: int32 [B, M].
    gt_valid: bool [B, M].
    void: bool [B, P], ignore-label pixels.
    use_host: passed to `matcher.match`.

  Returns:
    A `Matching` of stop-gradient tensors.
  """
  num_classes = class_logits.shape[-1] - 1
  mask_probs = tf.nn.softmax(mask_logits, axis=-1)  # [B, P, N]
  non_void = 1.0 - tf.cast(void, tf.float32)  # [B, P]
  dice = pq_style_loss.dice_similarity(
      gt_masks, mask_probs * non_void[:, :, None])  # [B, M, N]
  class_sim = pq_style_loss.class_similarity(
      tf.nn.softmax(class_logits, axis=-1), gt_classes)  # [B, M, N]
  valid = tf.logical_and(gt_valid, gt_classes < num_classes)  # [B, M]
  cost = pq_style_loss.matching_cost(dice, class_sim, valid)
  assignment = matcher.match(tf.stop_gradient(cost), use_host=use_host)
  assignment = tf.ensure_shape(tf.cast(assignment, tf.float32), cost.shape)
  assignment *= tf.cast(valid, tf.float32)[:, :, None]  # [B, M, N]

  matched_slot = tf.reduce_sum(assignment, axis=1) > 0.5  # [B, N]
  slot_gt = tf.argmax(assignment, axis=1, output_type=tf.int32)  # [B, N]
  slot_classes = tf.where(
      matched_slot, tf.gather(gt_classes, slot_gt, batch_dims=1),
      num_classes)  # [B, N]
  matched_dice = tf.reduce_sum(assignment * dice, axis=1)  # [B, N]
  ratio = pq_style_loss.void_ratio(mask_probs, void)  # [B, N]
  floor = pq_style_loss.WEIGHT_FLOOR
  slot_weights = tf.where(matched_slot, tf.maximum(matched_dice, floor),
                          tf.maximum(ratio, floor))  # [B, N]
  matched_class_prob = tf.reduce_sum(assignment * class_sim, axis=2)  # [B, M]
  gt_weights = (tf.reduce_sum(assignment, axis=2) *
                tf.maximum(matched_class_prob, floor))  # [B, M]
  return Matching(
      assignment=tf.stop_gradient(assignment),
      slot_classes=tf.stop_gradient(slot_classes),
      slot_weights=tf.stop_gradient(slot_weights),
      gt_weights=tf.stop_gradient(gt_weights))


@dataclasses.dataclass(frozen=True)
class _Prediction:
  """One output (final or auxiliary); logits float32 at the final
  resolution."""
  class_logits: tf.Tensor  # [B, N, K + 1]
  mask_logits: tf.Tensor  # [B, P, N]
  pixel_feature: tf.Tensor  # [B, h, w, E] at its own stride, or None
  # CMT layers only: [B, P, N] reference masks at the final resolution.
  reference_masks: tf.Tensor = None


def non_finite_terms(losses):
  """Names of the terms that had non-finite values (eager values)."""
  return [term for term in TERMS
          if float(losses[NON_FINITE_PREFIX + term]) > 0]


class KMaXLoss:
  """Computes the kMaX-DeepLab losses of a batch of model outputs."""

  def __init__(self, num_classes, ignore_label, *,
               pq_style_weight=3.0,
               mask_id_weight=0.3,
               instance_discrimination_weight=1.0,
               semantic_weight=1.0,
               focal_alpha=0.75,
               instance_discrimination_temperature=0.3,
               instance_discrimination_sample_k=4096,
               instance_discrimination_sample_temperature=1.5,
               semantic_sample_k=4096,
               semantic_sample_temperature=2.0,
               semantic_top_k_fraction=1.0,
               reference_mask_weight=0.0,
               use_host_matching=None):
    """Plain typed settings (see LossOptions in proto/config.proto).

    Args:
      num_classes: K, thing + stuff classes; class logits have K + 1.
      ignore_label: semantic id of void pixels.
      pq_style_weight: weight of the PQ-style class and Dice terms.
      mask_id_weight: weight of the mask-ID cross-entropy.
      instance_discrimination_weight: weight of instance discrimination.
      semantic_weight: weight of the semantic loss (0 turns it off; the
        outputs then need no semantic logits).
      focal_alpha: alpha of the class term (and of the Dice scale).
      instance_discrimination_temperature: divides the embedding products.
      instance_discrimination_sample_k: sampled pixels per image (> 0).
      instance_discrimination_sample_temperature: sampling temperature.
      semantic_sample_k: sampled pixels of the semantic loss; 0 = all.
      semantic_sample_temperature: its sampling temperature.
      semantic_top_k_fraction: hard-pixel mining fraction of the semantic
        loss (1.0 keeps all pixels).
      use_host_matching: passed to `matcher.match` as `use_host`.
    """
    if num_classes < 1:
      raise ValueError(f'KMaXLoss: num_classes must be >= 1, found '
                       f'{num_classes}')
    if instance_discrimination_weight > 0 and (
        instance_discrimination_sample_k < 1):
      raise ValueError(
          'KMaXLoss: instance_discrimination_sample_k must be >= 1 when '
          'instance_discrimination_weight > 0, found '
          f'{instance_discrimination_sample_k}')
    if not 0.0 < semantic_top_k_fraction <= 1.0:
      raise ValueError('KMaXLoss: semantic_top_k_percent must lie in (0, 1], '
                       f'found {semantic_top_k_fraction}')
    self.num_classes = int(num_classes)
    self.ignore_label = int(ignore_label)
    self.pq_style_weight = float(pq_style_weight)
    self.mask_id_weight = float(mask_id_weight)
    self.instance_discrimination_weight = float(
        instance_discrimination_weight)
    self.semantic_weight = float(semantic_weight)
    self.focal_alpha = float(focal_alpha)
    self.instance_discrimination_temperature = float(
        instance_discrimination_temperature)
    self.instance_discrimination_sample_k = int(
        instance_discrimination_sample_k)
    self.instance_discrimination_sample_temperature = float(
        instance_discrimination_sample_temperature)
    self.semantic_sample_k = int(semantic_sample_k)
    self.semantic_sample_temperature = float(semantic_sample_temperature)
    self.semantic_top_k_fraction = float(semantic_top_k_fraction)
    self.reference_mask_weight = float(reference_mask_weight)
    self.use_host_matching = use_host_matching

  @classmethod
  def from_config(cls, loss_options, dataset_info, **kwargs):
    """From a LossOptions proto and a DatasetInfo.

    small_instance_weight / small_instance_area are applied by the input
    pipeline (they make `semantic_weights`), not here.
    """
    o = loss_options
    return cls(
        num_classes=dataset_info.num_classes,
        ignore_label=dataset_info.ignore_label,
        pq_style_weight=o.pq_style_loss_weight,
        mask_id_weight=o.mask_id_cross_entropy_loss_weight,
        instance_discrimination_weight=o.instance_discrimination_loss_weight,
        semantic_weight=o.semantic_loss_weight,
        focal_alpha=o.focal_loss_alpha,
        instance_discrimination_temperature=(
            o.instance_discrimination_temperature),
        instance_discrimination_sample_k=o.instance_discrimination_sample_k,
        instance_discrimination_sample_temperature=(
            o.instance_discrimination_sample_temperature),
        semantic_sample_k=o.semantic_sample_k,
        semantic_sample_temperature=o.semantic_sample_temperature,
        semantic_top_k_fraction=o.semantic_top_k_percent,
        **kwargs)

  def __call__(self, outputs, targets, seed):
    """The losses of one batch.

    Args:
      outputs: the model's output dict (see `deeplab2_kmax.model.outputs`).
      targets: the ground-truth dict of the input pipeline (GT_* keys).
      seed: int32/int64 [2] stateless seed of the pixel sampling.

    Returns:
      A dict of float32 scalars: each term of TERMS (weighted, summed over
      the final and auxiliary outputs, batch mean) and TOTAL, the loss to
      minimise; '<term>/final' and '<term>/aux_<i>' for each of
      PER_OUTPUT_TERMS with a non-zero weight; 'non_finite/<term>', the
      number of per-image values of that term that were NaN or infinite
      (they count as 0 in the loss).
    """
    predictions, size = self._predictions(outputs)
    gt = self._ground_truth(targets, size)
    final = predictions[0]
    num_slots = final.mask_logits.shape[-1]
    matching = match_final_prediction(
        final.class_logits, final.mask_logits, gt['masks'], gt['classes'],
        gt['valid'], gt['void'], use_host=self.use_host_matching)
    seed = tf.convert_to_tensor(seed)
    disc_seed, semantic_seed = tf.unstack(
        tf.random.experimental.stateless_split(seed, 2))
    samples = None
    if self.instance_discrimination_weight > 0:
      samples = instance_discrimination_loss.sample_pixels(
          gt['inverse_area'], gt['void'],
          self.instance_discrimination_sample_k,
          self.instance_discrimination_sample_temperature,
          disc_seed)  # [B, S]
      sample_ids = tf.gather(gt['mask_ids'], samples, batch_dims=1)  # [B, S]

    per_image = {}  # name -> [B] weighted values
    for index, prediction in enumerate(predictions):
      name = 'final' if index == 0 else f'aux_{index - 1}'
      class_logits = prediction.class_logits  # [B, N, K + 1]
      mask_logits = prediction.mask_logits  # [B, P, N]
      if self.pq_style_weight > 0:
        per_image[f'{PQ_CLASS}/{name}'] = self.pq_style_weight * (
            pq_style_loss.class_term(class_logits, matching.slot_classes,
                                     matching.slot_weights, self.focal_alpha))
        dice_scale = self.pq_style_weight * self.focal_alpha / num_slots
        per_image[f'{PQ_DICE}/{name}'] = dice_scale * pq_style_loss.dice_term(
            mask_logits, gt['masks'], matching.assignment,
            matching.gt_weights)
      if self.mask_id_weight > 0:
        per_image[f'{MASK_ID}/{name}'] = self.mask_id_weight * (
            mask_id_loss.mask_id_cross_entropy(
                mask_logits, gt['masks'], matching.assignment,
                1.0 - tf.cast(gt['void'], tf.float32)))
      if samples is not None:
        per_image[f'{INSTANCE_DISCRIMINATION}/{name}'] = (
            self.instance_discrimination_weight *
            instance_discrimination_loss.instance_discrimination(
                instance_discrimination_loss.sample_features(
                    prediction.pixel_feature, samples, size),
                sample_ids, gt['classes'].shape[-1],
                self.instance_discrimination_temperature))
      if (self.reference_mask_weight > 0 and
          prediction.reference_masks is not None):
        per_image[f'{REFERENCE_MASK}/{name}'] = (
            self.reference_mask_weight *
            reference_mask_loss.reference_mask_dice_loss(
                prediction.reference_masks, gt['masks'], matching.assignment,
                1.0 - tf.cast(gt['void'], tf.float32)))
    if self.semantic_weight > 0:
      if outputs.get(outputs_lib.SEMANTIC_LOGITS) is None:
        raise ValueError(
            f'KMaXLoss: outputs have no {outputs_lib.SEMANTIC_LOGITS!r} but '
            f'semantic_loss_weight is {self.semantic_weight}; build the '
            'model with its semantic head or set the weight to 0')
      per_image[SEMANTIC] = self.semantic_weight * semantic_loss.semantic_loss(
          tf.cast(outputs[outputs_lib.SEMANTIC_LOGITS], tf.float32),
          targets[GT_SEMANTIC], targets[GT_SEMANTIC_WEIGHTS],
          targets[GT_INVERSE_AREA], targets[GT_VOID],
          ignore_label=self.ignore_label,
          sample_k=self.semantic_sample_k,
          sample_temperature=self.semantic_sample_temperature,
          top_k_fraction=self.semantic_top_k_fraction, seed=semantic_seed)
    return _summarise(per_image)

  def _predictions(self, outputs):
    """The final and auxiliary predictions and the final (h, w).

    Class and mask logits are float32, mask logits flattened to [B, P, N].

    Auxiliary mask logits are resized to the final h, w (bilinear, align
    corners); pixel features stay at their own resolution (see
    `instance_discrimination_loss.sample_features`).
    """
    expected = self.num_classes + 1
    size = tuple(outputs[outputs_lib.MASK_LOGITS].shape[1:3])
    num_pixels = size[0] * size[1]
    entries = [('outputs', outputs)] + [
        (f'outputs[{outputs_lib.AUXILIARY_PREDICTIONS!r}][{i}]', aux)
        for i, aux in enumerate(
            outputs.get(outputs_lib.AUXILIARY_PREDICTIONS) or [])]
    result = []
    for where, prediction in entries:
      class_logits = tf.cast(prediction[outputs_lib.CLASS_LOGITS], tf.float32)
      if class_logits.shape[-1] != expected:
        raise ValueError(
            f'KMaXLoss: {where}[{outputs_lib.CLASS_LOGITS!r}] has '
            f'{class_logits.shape[-1]} channels, expected num_classes + 1 = '
            f'{expected}')
      mask_logits = resize.resize_align_corners(
          tf.cast(prediction[outputs_lib.MASK_LOGITS], tf.float32),
          size)  # [B, h, w, N]
      feature = None
      if self.instance_discrimination_weight > 0:
        feature = prediction[outputs_lib.PIXEL_FEATURE]  # [B, h, w, E]
      reference = None
      if self.reference_mask_weight > 0:
        reference = prediction.get(outputs_lib.REFERENCE_MASKS)
      if reference is not None:
        reference = tf.reshape(resize.resize_align_corners(
            tf.cast(reference, tf.float32), size),
                               [-1, num_pixels, reference.shape[-1]])
      result.append(_Prediction(
          class_logits=class_logits,
          mask_logits=tf.reshape(mask_logits,
                                 [-1, num_pixels, mask_logits.shape[-1]]),
          pixel_feature=feature, reference_masks=reference))
    return result, size

  def _ground_truth(self, targets, size):
    """Flattened targets at the prediction resolution and dense GT masks."""
    mask_ids = targets[GT_MASK_IDS]
    if tuple(mask_ids.shape[1:3]) != tuple(size):
      raise ValueError(
          f'KMaXLoss: targets[{GT_MASK_IDS!r}] is {mask_ids.shape[1]}x'
          f'{mask_ids.shape[2]}, expected the mask logits size '
          f'{size[0]}x{size[1]}')
    num_pixels = size[0] * size[1]
    classes = tf.cast(targets[GT_CLASSES], tf.int32)  # [B, M]
    mask_ids = tf.reshape(tf.cast(mask_ids, tf.int32), [-1, num_pixels])
    return {
        'mask_ids': mask_ids,  # [B, P]
        'masks': tf.one_hot(mask_ids, classes.shape[-1]),  # [B, P, M]
        'classes': classes,
        'valid': tf.cast(targets[GT_VALID], tf.bool),  # [B, M]
        'void': tf.reshape(tf.cast(targets[GT_VOID], tf.bool),
                           [-1, num_pixels]),  # [B, P]
        'inverse_area': tf.reshape(
            tf.cast(targets[GT_INVERSE_AREA], tf.float32),
            [-1, num_pixels]),  # [B, P]
    }


def _summarise(per_image):
  """Zeroes non-finite per-image values, averages over the batch, sums."""
  losses = {}
  totals = {term: tf.constant(0.0) for term in TERMS}
  non_finite = {term: tf.constant(0.0) for term in TERMS}
  for name, values in per_image.items():
    term = name.split('/')[0]
    finite = tf.math.is_finite(values)  # [B]
    non_finite[term] += tf.reduce_sum(1.0 - tf.cast(finite, tf.float32))
    value = tf.reduce_mean(tf.where(finite, values, 0.0))
    if name != SEMANTIC:
      losses[name] = value
    totals[term] += value
  for term in TERMS:
    losses[term] = totals[term]
    losses[NON_FINITE_PREFIX + term] = non_finite[term]
  losses[TOTAL] = tf.add_n([totals[term] for term in TERMS])
  return losses
