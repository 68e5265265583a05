"""CPU path of the instance-discrimination loss's log-partition.

`gram_logsumexp` computes log sum_j exp(scale f_i . f_j) in blocks of rows
with a hand-written gradient, so neither direction holds the [S, S] logits
(64 MiB per image at 4096 samples), with one XLA elementwise kernel per
block; measured gains: docs/benchmarks.md. Used only under the
CPU_OPTIMIZED kernel policy.
"""
import tensorflow as tf

from deeplab2_kmax.model.kernels import cpu_conv


# Rows of the [S, S] logit matrix computed at a time: the full matrix of
# 4096 samples (64 MiB) is never held, and each block stays small enough
# for the allocator to reuse.
_BLOCK_ROWS = 512


@cpu_conv.elementwise_kernel
def _sum_exp(logits, shift):
  """[B, r, S], [B, 1, 1] -> [B, r]: sum_j exp(logits - shift)."""
  return tf.reduce_sum(tf.exp(logits - shift), axis=-1)


@cpu_conv.elementwise_kernel
def _symmetric_weights(logits, shift, row_scale, column_scale):
  """exp(logits - shift) * (row_scale_i + column_scale_j), [B, r, S]."""
  return tf.exp(logits - shift) * (row_scale[:, :, None] +
                                   column_scale[:, None, :])


def gram_logsumexp(features, scale):
  """log sum_j exp(scale * f_i . f_j) for every sample i.

  The log-partition of the contrastive softmax, computed in blocks of rows
  with a hand-written gradient, so neither direction holds the [S, S]
  logits. With L = scale F F^T (symmetric) and the upstream gradient g,
  d lse / dF = scale (G + G^T) F with G_ij = g_i exp(L_ij - lse_i); since
  G + G^T = exp(L - c) * (a_i + a_j) with a_i = g_i exp(c - lse_i) for any
  constant c, each block of rows needs one recomputed logit block, one
  elementwise kernel and one matmul.

  The shift c = scale * max_j |f_j|^2 bounds every logit (Cauchy-Schwarz),
  so no exp overflows; for L2-normalised features (norms 1, or 0) the sum
  of each row is at least exp(-2 scale), so none underflows either.

  Args:
    features: float32 [B, S, E], L2-normalised.
    scale: Python float, 1 / temperature.

  Returns:
    float32 [B, S].
  """
  num_samples = features.shape[1]
  starts = list(range(0, num_samples, _BLOCK_ROWS))
  blocks = [(start, min(start + _BLOCK_ROWS, num_samples)) for start in starts]

  @tf.custom_gradient
  def logsumexp(features):
    scaled = features * scale  # [B, S, E]
    shift = scale * tf.reduce_max(
        tf.reduce_sum(tf.square(features), axis=-1), axis=-1)[:, None, None]

    def logits(start, end):  # [B, end - start, S]
      return tf.matmul(scaled[:, start:end], features, transpose_b=True)

    sum_exp = tf.concat([_sum_exp(logits(start, end), shift)
                         for start, end in blocks], axis=1)  # [B, S]
    result = shift[:, :, 0] + tf.math.log(sum_exp)

    def grad(upstream):  # [B, S]
      weight = upstream / sum_exp  # a_i = g_i exp(c - lse_i), [B, S]
      parts = [tf.matmul(_symmetric_weights(logits(start, end), shift,
                                            weight[:, start:end], weight),
                         features)
               for start, end in blocks]  # each [B, end - start, E]
      return scale * tf.concat(parts, axis=1)

    return result, grad

  return logsumexp(features)
