"""The PQ-style loss of MaX-DeepLab, as kMaX-DeepLab uses it.

MaX-DeepLab (Wang et al., CVPR 2021) scores a prediction j against a ground
truth (GT) mask i by the product of a class similarity and a mask similarity,
  sim(i, j) = p_j(c_i) * Dice(m_i, prob_j),
matches GT masks to predictions one to one by maximising the summed
similarity (Hungarian matching), and optimises PQ through two terms whose
multiplicative factors are constants (stop-gradient):
  * class term: for every prediction slot a softmax cross-entropy over the
    K + 1 classes. Matched slots target their GT class with weight
    max(matched Dice, 1e-5) and alpha = 0.75; unmatched slots target void
    with weight max(void ratio, 1e-5) and 1 - alpha. The void ratio is the
    share of a slot's soft mask that lies on void pixels, so slots that only
    cover unlabelled pixels are barely pushed towards void. Reduction: the
    sum over slots divided by the number of non-zero terms (about N).
  * Dice term: for every matched pair 1 - (2 sum(p g) + 1) / (sum p + sum g
    + 1), with p the mask probability zeroed on pixels of no GT mask (void
    and crowd), weighted by max(matched class probability, 1e-5) and summed
    over GT masks. The caller scales it by alpha / N so that it balances
    the class term.
This module holds the similarities that build the matching cost and the two
terms; `kmax_loss` runs the matching and combines the terms.

Shapes: B batch, P = h * w pixels, N prediction slots, M GT masks
(max_thing_id things, then one per stuff class), K classes (+1 void).
"""
import tensorflow as tf

from deeplab2_kmax.model.loss import reduction

# Denominator epsilon of the Dice similarity and the void ratio.
SIMILARITY_EPSILON = 1e-5
# Lower bound of the stop-gradient weights, so no term silently vanishes.
WEIGHT_FLOOR = 1e-5
# Cost of GT rows that are padding: below every real cost when all rows get
# a slot (M <= N), above every real cost when some rows stay unmatched.
MATCHING_PAD_COST = 999.0


def dice_similarity(gt_masks, mask_probs):
  """Soft Dice between every GT mask and every predicted mask.

  Args:
    gt_masks: float32 [B, P, M], 0/1, masks do not overlap.
    mask_probs: float32 [B, P, N], per-pixel probabilities over the N slots
      (already zeroed where the caller wants pixels ignored).

  Returns:
    float32 [B, M, N]: sum(m p) / ((sum m + sum p) / 2 + 1e-5).
  """
  intersection = tf.einsum('bpm,bpn->bmn', gt_masks, mask_probs)  # [B, M, N]
  gt_area = tf.reduce_sum(gt_masks, axis=1)[:, :, None]  # [B, M, 1]
  pred_area = tf.reduce_sum(mask_probs, axis=1)[:, None, :]  # [B, 1, N]
  return intersection / ((gt_area + pred_area) / 2.0 + SIMILARITY_EPSILON)


def class_similarity(class_probs, gt_classes):
  """Probability that each slot assigns to each GT mask's class.

  Args:
    class_probs: float32 [B, N, K + 1], softmax over things, stuff, void.
    gt_classes: int32 [B, M], class channel of each GT mask; K (void) for
      padding, which gets similarity 0.

  Returns:
    float32 [B, M, N].
  """
  num_classes = class_probs.shape[-1] - 1
  # one_hot(K) keeps only the void column, which is dropped here.
  gt_one_hot = tf.one_hot(gt_classes, num_classes + 1)[..., :num_classes]
  return tf.einsum('bmk,bnk->bmn', gt_one_hot,
                   class_probs[..., :num_classes])  # [B, M, N]


def matching_cost(dice, class_sim, gt_valid):
  """Hungarian cost -Dice * p for valid GT rows, +-999 for padding rows.

  With M <= N every row receives a slot, so padding rows cost -999 whatever
  slot they take and cannot change which slots the valid rows get. With
  M > N only N rows are matched, and +999 makes the matcher prefer every
  valid row over padding.

  Args:
    dice: float32 [B, M, N] from `dice_similarity`.
    class_sim: float32 [B, M, N] from `class_similarity`.
    gt_valid: bool [B, M].

  Returns:
    float32 [B, M, N].
  """
  num_masks, num_slots = dice.shape[1], dice.shape[2]
  pad = -MATCHING_PAD_COST if num_masks <= num_slots else MATCHING_PAD_COST
  cost = -dice * class_sim  # [B, M, N]
  return tf.where(gt_valid[:, :, None], cost, pad)


def void_ratio(mask_probs, void):
  """Share of each slot's soft mask on void (ignore-label) pixels.

  Args:
    mask_probs: float32 [B, P, N].
    void: bool [B, P]; crowd pixels are not void.

  Returns:
    float32 [B, N]: sum(void p) / (sum p + 1e-5).
  """
  on_void = tf.einsum('bp,bpn->bn', tf.cast(void, tf.float32), mask_probs)
  return on_void / (tf.reduce_sum(mask_probs, axis=1) + SIMILARITY_EPSILON)


def class_term(class_logits, slot_classes, slot_weights, alpha):
  """Alpha-weighted class cross-entropy per image.

  Args:
    class_logits: [B, N, K + 1] logits (cast to float32).
    slot_classes: int32 [B, N], target class channel; K (void) for unmatched
      slots.
    slot_weights: float32 [B, N], constant weights (matched Dice or void
      ratio, already floored).
    alpha: weight of slots with a non-void target; void targets get
      1 - alpha.

  Returns:
    float32 [B]: sum of the weighted terms over the non-zero ones.
  """
  class_logits = tf.cast(class_logits, tf.float32)
  num_classes = class_logits.shape[-1] - 1
  cross_entropy = tf.nn.sparse_softmax_cross_entropy_with_logits(
      labels=slot_classes, logits=class_logits)  # [B, N]
  alpha_weight = tf.where(slot_classes == num_classes, 1.0 - alpha, alpha)
  losses = cross_entropy * alpha_weight * slot_weights  # [B, N]
  return reduction.mean_over_non_zero(losses)


def dice_term(mask_logits, gt_masks, assignment, gt_weights):
  """Weighted Dice loss of the matched pairs, summed per image.

  Args:
    mask_logits: [B, P, N] logits (cast to float32); probabilities are the
      softmax over the N slots.
    gt_masks: float32 [B, P, M], 0/1.
    assignment: float32 [B, M, N], 1 where GT mask m is matched to slot n.
    gt_weights: float32 [B, M], constant weights (0 for unmatched masks).

  Returns:
    float32 [B].
  """
  probs = tf.nn.softmax(tf.cast(mask_logits, tf.float32), axis=-1)
  # The prediction of the slot matched to each GT mask, only on pixels that
  # belong to some GT mask (void and crowd pixels are not judged).
  labelled = tf.reduce_sum(gt_masks, axis=-1, keepdims=True)  # [B, P, 1]
  matched_probs = tf.einsum('bpn,bmn->bpm', probs, assignment) * labelled
  intersection = tf.reduce_sum(matched_probs * gt_masks, axis=1)  # [B, M]
  denominator = (tf.reduce_sum(matched_probs, axis=1) +
                 tf.reduce_sum(gt_masks, axis=1) + 1.0)  # [B, M]
  losses = 1.0 - (2.0 * intersection + 1.0) / denominator  # [B, M]
  return tf.reduce_sum(losses * gt_weights, axis=-1)

