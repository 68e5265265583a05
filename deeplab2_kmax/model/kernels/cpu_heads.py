"""CPU paths of the pixel decoder's LayerNorm and the prediction head.

Same values as the plain Keras layers, as one XLA-compiled elementwise
kernel each on large maps (Keras's LayerNormalization and the head's
BN + L2 normalisation make several passes over memory); measured gains:
docs/benchmarks.md. Used only under the CPU_OPTIMIZED kernel policy.
"""
import tensorflow as tf

from deeplab2_kmax.model.kernels import cpu_conv


@cpu_conv.elementwise_kernel
def _layer_norm(x, gamma, beta, epsilon):
  """LayerNorm over channels."""
  mean, variance = tf.nn.moments(x, axes=[-1], keepdims=True)
  return (x - mean) * tf.math.rsqrt(variance + epsilon) * gamma + beta


def layer_norm(norm, x):
  """keras.layers.LayerNormalization `norm` over the channels of `x`, in
  float32 also under mixed precision; returns x's dtype."""
  y = _layer_norm(tf.cast(x, tf.float32),
                  cpu_conv.float32_value(norm.gamma),
                  cpu_conv.float32_value(norm.beta), norm.epsilon)
  return tf.cast(y, x.dtype)


@cpu_conv.elementwise_kernel
def _normalize_embedding(x, scale, shift):
  """L2-normalise x * scale + shift over channels (tf.math.l2_normalize)."""
  x = x * scale + shift
  return x * tf.math.rsqrt(
      tf.maximum(tf.reduce_sum(tf.square(x), -1, keepdims=True), 1e-12))


def mask_logits_inference(feature_bn, mask_bn, pixels, masks):
  """The prediction head's (L2-normalised feature, mask logits) at inference.

  Args:
    feature_bn: the pixel-feature batch norm; mask_bn: the scalar
      mask-logit batch norm.
    pixels: [B, h, w, E] pixel embeddings before feature_bn.
    masks: [B, N, E] mask embeddings.

  Returns:
    float32 g = l2_normalize(feature_bn(pixels)) [B, h, w, E] and
    mask_bn(g . masks) [B, h, w, N]: the feature norm and the L2
    normalisation in one kernel, the scalar norm folded onto the masks.
  """
  g = _normalize_embedding(
      tf.cast(pixels, tf.float32),
      *cpu_conv.inference_affine(feature_bn, tf.float32))
  scale, shift = cpu_conv.inference_affine(mask_bn, tf.float32)
  mask_logits = tf.einsum('bhwe,bne->bhwn', g,
                          tf.cast(masks, tf.float32) * scale) + shift
  return g, mask_logits
