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
    non-zero loss.
The same sampler (with its own temperature) picks the pixels of the
semantic loss. Random draws use stateless ops keyed by a [2] seed, so a
seed gives the same sample eagerly, in tf.function and in tf.data.
"""
import numpy as np
import tensorflow as tf

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


def instance_discrimination(pixel_feature, gt_mask_ids, sample_indices,
                            temperature):
  """Contrastive loss between sampled pixel embeddings, per image.

  Args:
    pixel_feature: [B, P, E] L2-normalised embeddings (cast to float32).
    gt_mask_ids: int32 [B, P], GT mask of each pixel, -1 for void and crowd.
    sample_indices: int32 [B, S] from `sample_pixels`.
    temperature: divides the dot products.

  Returns:
    float32 [B].
  """
  features = tf.gather(tf.cast(pixel_feature, tf.float32), sample_indices,
                       batch_dims=1)  # [B, S, E]
  ids = tf.gather(gt_mask_ids, sample_indices, batch_dims=1)  # [B, S]
  same_mask = tf.logical_and(ids[:, :, None] == ids[:, None, :],
                             (ids >= 0)[:, :, None])  # [B, S, S]
  targets = tf.cast(same_mask, tf.float32)
  targets /= tf.maximum(tf.reduce_sum(targets, axis=-1, keepdims=True), 1.0)
  logits = tf.einsum('bse,bte->bst', features, features) / temperature
  cross_entropy = -tf.reduce_sum(
      targets * tf.nn.log_softmax(logits, axis=-1), axis=-1)  # [B, S]
  return reduction.mean_over_non_zero(cross_entropy)
