"""Batch norm whose statistics are kept per group of several axes.

Attention logits are normalised with one (mean, variance, gamma, beta) per
(term, head) pair, and attention outputs per (term, head, channel), over a
tensor like [3, N, heads, L, L]. Keras' BatchNormalization normalises a single
axis, so this layer takes the full broadcast shape of its parameters (for
example [3, 1, 8, 1, 1]): axes of size 1 in `param_shape` are reduced over.
It is synchronized across replicas like the rest of the model's batch norms.
"""
import keras
import tensorflow as tf

from deeplab2_kmax.model.layers import conv_bn
from deeplab2_kmax.model.layers import sync_batch_norm


def normalize(x, mean, variance, gamma, beta, epsilon):
  """The batch-norm map x * scale + shift, scale = gamma / sqrt(var + eps).

  Scale and shift are computed in float32 from float32 statistics and
  parameters; the map runs in x's (compute) dtype.
  """
  scale = gamma * tf.math.rsqrt(variance + epsilon)
  shift = beta - mean * scale
  return x * tf.cast(scale, x.dtype) + tf.cast(shift, x.dtype)


@keras.saving.register_keras_serializable(package='deeplab2_kmax')
class GroupedBatchNorm(keras.layers.Layer):
  """Batch norm with parameters of shape `param_shape` (broadcast to input)."""

  def __init__(self, param_shape, momentum=conv_bn.BN_MOMENTUM,
               epsilon=conv_bn.BN_EPSILON, gamma_initializer='ones',
               **kwargs):
    # Parameters and statistics stay float32 under mixed precision; the
    # output has the input's dtype.
    kwargs.setdefault('autocast', False)
    super().__init__(**kwargs)
    self.param_shape = tuple(int(d) for d in param_shape)
    self.momentum = momentum
    self.epsilon = epsilon
    self.gamma_initializer = gamma_initializer
    self._reduce_axes = [a for a, d in enumerate(self.param_shape) if d == 1]

  def build(self, input_shape=None):
    # autocast=False: read as float32 also inside a mixed-precision parent's
    # call (the axial attention's training kernel reads them directly).
    self.gamma = self.add_weight(name='gamma', shape=self.param_shape,
                                 initializer=self.gamma_initializer,
                                 autocast=False)
    self.beta = self.add_weight(name='beta', shape=self.param_shape,
                                initializer='zeros', autocast=False)
    self.moving_mean = self.add_weight(
        name='moving_mean', shape=self.param_shape, initializer='zeros',
        trainable=False, autocast=False)
    self.moving_variance = self.add_weight(
        name='moving_variance', shape=self.param_shape, initializer='ones',
        trainable=False, autocast=False)

  def call(self, x, training=False):
    if len(x.shape) != len(self.param_shape):
      raise ValueError(f'{self.name}: input rank {len(x.shape)} does not '
                       f'match parameter shape {self.param_shape}')
    if training:
      mean, variance = self._batch_moments(x)
      self.update_moving_statistics(mean, variance)
    else:
      mean, variance = self.moving_mean, self.moving_variance
    return normalize(x, mean, variance, self.gamma, self.beta, self.epsilon)

  def update_moving_statistics(self, mean, variance):
    """Moves the statistics towards a batch's (param_shape) mean, variance."""
    sync_batch_norm.update_moving_average(self.moving_mean, mean,
                                          self.momentum)
    sync_batch_norm.update_moving_average(self.moving_variance, variance,
                                          self.momentum)

  def _batch_moments(self, x):
    """Mean and variance over the reduced axes and over all replicas."""
    x = tf.cast(x, tf.float32)
    count = tf.cast(tf.size(x), tf.float32) / float(
        max(1, _prod(self.param_shape)))
    total = tf.reduce_sum(x, self._reduce_axes, keepdims=True)
    total_sq = tf.reduce_sum(tf.square(x), self._reduce_axes, keepdims=True)
    total, total_sq = tf.unstack(
        sync_batch_norm.cross_replica_sum(tf.stack([total, total_sq])))
    count = sync_batch_norm.cross_replica_sum(count)
    mean = total / count
    variance = tf.maximum(total_sq / count - tf.square(mean), 0.0)
    return mean, variance

  def get_config(self):
    return {**super().get_config(), 'param_shape': self.param_shape,
            'momentum': self.momentum, 'epsilon': self.epsilon,
            'gamma_initializer': self.gamma_initializer}


def _prod(values):
  result = 1
  for v in values:
    result *= v
  return result
