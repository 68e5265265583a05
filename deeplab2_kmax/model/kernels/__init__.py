"""Kernels of the model and its loss, chosen by the kernel policy.

Model files call these functions; `policy.py` says which implementation
they run: plain TensorFlow/Keras (REFERENCE, the default on GPUs and TPUs
and in exports) or the CPU paths of `cpu_*.py` (CPU_OPTIMIZED).
"""
from deeplab2_kmax.model.kernels.policy import active_policy
from deeplab2_kmax.model.kernels.policy import cpu_optimized
from deeplab2_kmax.model.kernels.policy import KernelPolicy
from deeplab2_kmax.model.kernels.policy import policy_scope
from deeplab2_kmax.model.kernels.policy import resolve
from deeplab2_kmax.model.kernels.policy import set_policy
import tensorflow as tf  # pylint: disable=g-import-not-at-top,wrong-import-order

from deeplab2_kmax.model.kernels import cpu_conv  # pylint: disable=g-import-not-at-top

_ACTIVATION_NAMES = (None, 'none', 'relu', 'gelu')


def gelu(x):
  """Exact GELU, 0.5 x (1 + erf(x / sqrt(2))), never the tanh form."""
  if cpu_optimized('gelu'):
    return cpu_conv.gelu(x)
  return tf.nn.gelu(x, approximate=False)


def _identity(x):
  return x


def activation(name):
  """The activation function 'relu', 'gelu' (exact) or None / 'none'."""
  if name not in _ACTIVATION_NAMES:
    raise ValueError(f'unknown activation {name!r}; expected relu, gelu or '
                     'none')
  return {'relu': tf.nn.relu, 'gelu': gelu}.get(name, _identity)


def batch_norm_activation(bn, x, activation_name, training):
  """activation(bn(x)) for a Keras batch-norm layer `bn`."""
  act = activation(activation_name)
  if not training and cpu_optimized('batch_norm_activation'):
    return cpu_conv.batch_norm_activation_inference(bn, x, activation_name)
  return act(bn(x, training=training))


def conv2d(x, kernel, strides=1, padding='SAME', dilation_rate=1,
           training=False):
  """2-D convolution of NHWC `x` with a [k, k, Cin, Cout] kernel."""
  kernel = tf.cast(kernel, x.dtype)
  if cpu_optimized('dilated_conv' if dilation_rate != 1 else 'conv'):
    return cpu_conv.conv2d(x, kernel, strides, padding, dilation_rate,
                           training)
  return tf.nn.convolution(x, kernel, strides=strides, padding=padding,
                           dilations=dilation_rate)


def depthwise_conv2d(x, kernel, strides=1, padding='SAME', dilation_rate=1,
                     training=False):
  """Depthwise convolution of NHWC `x` with a [k, k, C, 1] kernel."""
  kernel = tf.cast(kernel, x.dtype)
  if cpu_optimized('depthwise_conv'):
    return cpu_conv.depthwise_conv2d(x, kernel, strides, padding,
                                     dilation_rate, training)
  return tf.nn.depthwise_conv2d(x, kernel, [1, strides, strides, 1], padding,
                                dilations=[dilation_rate] * 2)


def gram_logsumexp(features, scale):
  """log sum_j exp(scale * f_i . f_j) for every sample i.

  Args:
    features: float32 [B, S, E].
    scale: Python float.

  Returns:
    float32 [B, S].
  """
  if cpu_optimized('gram_logsumexp'):
    from deeplab2_kmax.model.kernels import cpu_loss  # pylint: disable=import-outside-toplevel
    return cpu_loss.gram_logsumexp(features, scale)
  logits = scale * tf.matmul(features, features, transpose_b=True)  # [B,S,S]
  return tf.reduce_logsumexp(logits, axis=-1)
