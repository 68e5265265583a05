"""Semantic cross-entropy of the auxiliary semantic head (DeepLab-style).

The head predicts one logit per semantic id (the dataset's class ids, the
ignore label included when it is in range). Per pixel: softmax
cross-entropy against the semantic GT, times the pixel weight from the
input pipeline (small-instance weighting, 0 at void); ignore-label pixels
never count. Two ways to pick the pixels, both from kMaX-DeepLab configs:
  * sampling (COCO, ADE20K): sample_k pixels drawn without replacement with
    probability proportional to inverse_area^T (small masks favoured, void
    last), the sampler of the instance discrimination loss;
  * all pixels with hard-pixel mining (Cityscapes): keep the top
    `top_k_fraction` of the weighted per-pixel losses.
The result per image is the mean over the kept pixels with a non-zero loss.

When the head runs at a coarser stride than the targets (Cityscapes: the
head sits on the stride-32 feature), the targets are strided-subsampled
(every s-th pixel, never interpolated); sizes are k * s + 1.
"""
import tensorflow as tf

from deeplab2_kmax.model.loss import instance_discrimination_loss
from deeplab2_kmax.model.loss import reduction


def subsample_to(maps, size):
  """Strided subsampling of [B, h, w] maps to `size` = (h', w').

  Needs (h - 1) % (h' - 1) == 0 and likewise for w (both strides equal).
  """
  height, width = maps.shape[1], maps.shape[2]
  if (height, width) == tuple(size):
    return maps
  strides = []
  for axis, full, small in (('height', height, size[0]),
                            ('width', width, size[1])):
    if small < 2 or (full - 1) % (small - 1):
      raise ValueError(
          f'semantic_loss: cannot subsample targets of {axis} {full} to the '
          f'semantic logits {axis} {small}; expected sizes k * s + 1 with an '
          'integer stride s')
    strides.append((full - 1) // (small - 1))
  return maps[:, ::strides[0], ::strides[1]]


def semantic_cross_entropy(logits, labels, weights, top_k_fraction=1.0):
  """Weighted cross-entropy with optional hard-pixel mining, per image.

  Args:
    logits: [B, P, C] (cast to float32).
    labels: int32 [B, P], in [0, C) wherever the weight is non-zero.
    weights: float32 [B, P].
    top_k_fraction: keep the round(fraction * P) largest weighted losses.

  Returns:
    float32 [B].
  """
  if not 0.0 < top_k_fraction <= 1.0:
    raise ValueError('semantic_loss: top_k_fraction must lie in (0, 1], '
                     f'found {top_k_fraction}')
  labels = tf.where(weights > 0.0, labels, tf.zeros_like(labels))
  cross_entropy = tf.nn.sparse_softmax_cross_entropy_with_logits(
      labels=labels, logits=tf.cast(logits, tf.float32))  # [B, P]
  losses = cross_entropy * weights  # [B, P]
  if top_k_fraction < 1.0:
    k = max(1, int(round(top_k_fraction * losses.shape[-1])))
    losses, _ = tf.math.top_k(losses, k=k, sorted=False)  # [B, k]
  return reduction.mean_over_non_zero(losses)


def semantic_loss(semantic_logits, semantic, weights, inverse_area, void, *,
                  ignore_label, sample_k, sample_temperature,
                  top_k_fraction, seed):
  """The semantic loss of one batch.

  Args:
    semantic_logits: [B, h', w', C] logits, channel = semantic id.
    semantic: int32 [B, h, w] semantic GT (ignore_label at void).
    weights: float32 [B, h, w] pixel weights (0 at void).
    inverse_area: float32 [B, h, w], sampling weights (see
      `instance_discrimination_loss.sample_pixels`).
    void: bool [B, h, w].
    ignore_label: semantic id of void pixels.
    sample_k: number of sampled pixels; 0 uses all pixels.
    sample_temperature: sampling temperature T.
    top_k_fraction: hard-pixel mining fraction (1.0 keeps all).
    seed: int32/int64 [2] stateless seed (used when sampling).

  Returns:
    float32 [B].
  """
  size = semantic_logits.shape[1:3]
  num_channels = semantic_logits.shape[-1]
  semantic, weights, inverse_area, void = (
      subsample_to(x, size) for x in (semantic, weights, inverse_area, void))
  num_pixels = size[0] * size[1]
  logits = tf.reshape(semantic_logits, [-1, num_pixels, num_channels])
  labels = tf.reshape(semantic, [-1, num_pixels])  # [B, P]
  void = tf.logical_or(tf.reshape(void, [-1, num_pixels]),
                       labels == ignore_label)  # [B, P]
  weights = tf.where(void, 0.0, tf.reshape(
      tf.cast(weights, tf.float32), [-1, num_pixels]))  # [B, P]
  if sample_k > 0:
    indices = instance_discrimination_loss.sample_pixels(
        tf.reshape(inverse_area, [-1, num_pixels]), void, sample_k,
        sample_temperature, seed)  # [B, S]
    logits = tf.gather(logits, indices, batch_dims=1)  # [B, S, C]
    labels = tf.gather(labels, indices, batch_dims=1)  # [B, S]
    weights = tf.gather(weights, indices, batch_dims=1)  # [B, S]
  return semantic_cross_entropy(logits, labels, weights, top_k_fraction)
