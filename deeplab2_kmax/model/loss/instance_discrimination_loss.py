"""Pixel-wise instance discrimination (CMT-DeepLab, Yu et al., CVPR 2022).

A contrastive loss on the L2-normalised pixel embeddings: K_s pixels are
sampled per image, and each sampled pixel must pick out, by a softmax over
the dot products with all samples (temperature 0.3), the samples of its own
GT mask:
  * sampling without replacement by the Gumbel-top-k trick on the logits
    T_s * log(inverse_area), void pixels pushed to -99999, so a pixel is
    drawn with probability proportional to area^(-T_s): small masks are
    favoured;
  * the target row of a sample is uniform over the samples of the same GT
    mask (itself included); void and crowd samples belong to no GT mask and
    get an all-zero row, hence a zero loss;
  * soft-target cross-entropy per row, averaged over the rows with a
    non-zero loss; computed from the log-partition of each row and per-mask
    sums of the embeddings, without the [S, S] matrices.
The same sampler (with its own temperature) picks the pixels of the
semantic loss. Random draws use stateless ops keyed by a [2] seed, so a
seed gives the same sample eagerly, in tf.function and in tf.data.
"""
import numpy as np
import tensorflow as tf

from deeplab2_kmax.model import kernels
from deeplab2_kmax.model.loss import reduction

# Sampling logit of void pixels: drawn only after every non-void pixel.
VOID_SAMPLING_LOGIT = -99999.0
# Smallest uniform draw, so the Gumbel noise -log(-log(u)) stays finite.
_UNIFORM_MIN = float(np.finfo(np.float32).tiny)


def gumbel_top_k(logits, k, seed):
  """Indices of k draws without replacement from softmax(logits).

  Args:
    logits: float32 [B, P].
    k: Python int, 1 <= k <= P.
    seed: int32/int64 [2] stateless seed.

  Returns:
    int32 [B, k].
  """
  uniform = tf.random.stateless_uniform(
      tf.shape(logits), seed=seed, minval=_UNIFORM_MIN, maxval=1.0)
  gumbel = -tf.math.log(-tf.math.log(uniform))  # [B, P]
  _, indices = tf.math.top_k(logits + gumbel, k=k, sorted=True)
  return indices


def sample_pixels(inverse_area, void, k, temperature, seed):
  """Samples min(k, P) pixels per image, favouring small masks.

  Args:
    inverse_area: float32 [B, P], P / max(area of the pixel's mask, 1).
    void: bool [B, P], never drawn while non-void pixels remain.
    k: Python int, number of samples wanted.
    temperature: T_s; the probability of a pixel is proportional to
      inverse_area^T_s.
    seed: int32/int64 [2] stateless seed.

  Returns:
    int32 [B, min(k, P)] pixel indices.
  """
  num_pixels = inverse_area.shape[-1]
  logits = temperature * tf.math.log(tf.cast(inverse_area, tf.float32))
  logits = tf.where(void, VOID_SAMPLING_LOGIT, logits)  # [B, P]
  return gumbel_top_k(logits, min(int(k), num_pixels), seed)


def sample_features(pixel_feature, sample_indices, size):
  """The L2-normalised embeddings at the sampled pixels of a `size` grid.

  Auxiliary outputs have coarser pixel features than the final one; the
  loss compares them at the final resolution. Instead of resizing the whole
  map (bilinear, align corners) and gathering, this interpolates only at
  the sampled pixels, with the same formula as TensorFlow's ResizeBilinear,
  and L2-normalises the result again.

  Args:
    pixel_feature: [B, h, w, E] embeddings (cast to float32).
    sample_indices: int32 [B, S], flat indices into the `size` grid.
    size: (H, W), the grid the indices refer to.

  Returns:
    float32 [B, S, E]: gathered as they are when (h, w) == size, else
    interpolated and re-normalised.
  """
  feature = tf.cast(pixel_feature, tf.float32)
  height, width = feature.shape[1], feature.shape[2]
  flat = tf.reshape(feature, [-1, height * width, feature.shape[-1]])
  if (height, width) == tuple(size):
    return tf.gather(flat, sample_indices, batch_dims=1)  # [B, S, E]

  def source(index, size_in, size_out):
    """Top and bottom source rows (or columns) and the lerp weight."""
    scale = (size_in - 1) / (size_out - 1) if size_out > 1 else 0.0
    coordinate = tf.cast(index, tf.float32) * scale  # [B, S]
    top = tf.floor(coordinate)
    bottom = tf.minimum(tf.math.ceil(coordinate), size_in - 1)
    return (tf.cast(top, tf.int32), tf.cast(bottom, tf.int32),
            (coordinate - top)[..., None])

  top, bottom, y_lerp = source(sample_indices // size[1], height, size[0])
  left, right, x_lerp = source(sample_indices % size[1], width, size[1])

  def row_lerp(row):
    """Interpolated along x on one source row: [B, S, E]."""
    on_left = tf.gather(flat, row * width + left, batch_dims=1)
    on_right = tf.gather(flat, row * width + right, batch_dims=1)
    return on_left + (on_right - on_left) * x_lerp

  upper, lower = row_lerp(top), row_lerp(bottom)
  return tf.math.l2_normalize(upper + (lower - upper) * y_lerp, axis=-1)


def instance_discrimination(features, ids, num_masks, temperature):
  """Contrastive loss between the sampled pixel embeddings, per image.

  Row i of the soft-target cross-entropy is, with L = F F^T / temperature
  and n_i samples in the GT mask of sample i (itself included),
    lse_i - (1 / n_i) sum_{j in mask(i)} L_ij
      = lse_i - f_i . (sum_{j in mask(i)} f_j) / (n_i temperature),
  so the targets need per-mask sums of the embeddings, not an [S, S]
  target matrix; `kernels.gram_logsumexp` gives lse_i.

  Args:
    features: [B, S, E] L2-normalised embeddings of the sampled pixels
      (from `sample_features`; cast to float32).
    ids: int32 [B, S], GT mask of each sample in [0, num_masks), -1 for
      void and crowd (an all-zero target row: no loss).
    num_masks: Python int, the number of GT mask slots per image.
    temperature: divides the dot products.

  Returns:
    float32 [B].
  """
  features = tf.cast(features, tf.float32)
  batch = tf.shape(ids)[0]
  valid = tf.logical_and(ids >= 0, ids < num_masks)  # [B, S]
  # One segment per (image, mask); invalid samples go to a last one.
  segments = tf.where(valid, ids + num_masks * tf.range(batch)[:, None],
                      batch * num_masks)  # [B, S]
  mask_sums = tf.math.unsorted_segment_sum(
      features, segments, batch * num_masks + 1)  # [B*M + 1, E]
  mask_sizes = tf.math.unsorted_segment_sum(
      tf.ones_like(segments, tf.float32), segments,
      batch * num_masks + 1)  # [B*M + 1]
  target_logit = tf.reduce_sum(
      features * tf.gather(mask_sums, segments), axis=-1) / (
          temperature * tf.maximum(tf.gather(mask_sizes, segments), 1.0))
  cross_entropy = tf.where(
      valid, kernels.gram_logsumexp(features, 1.0 / temperature) - target_logit,
      0.0)  # [B, S]
  return reduction.mean_over_non_zero(cross_entropy)
