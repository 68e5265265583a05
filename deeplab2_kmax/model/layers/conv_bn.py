"""Convolution + batch norm + activation blocks shared by every model part.

Conventions follow the reference implementation (DeepLab2), so that its
checkpoints load unchanged:
  * convolutions followed by a batch norm have no bias; kernels He-normal;
  * strided convolutions pad symmetrically by (k - 1) // 2 on each side and
    then run 'valid' (equal to 'same' on the k*32+1 sizes this model uses,
    and well defined on any other size);
  * batch norm is synchronized across replicas, momentum 0.99, epsilon 1e-3;
  * GELU is exact (erf), never the tanh approximation.
"""
import keras
import tensorflow as tf

BN_MOMENTUM = 0.99
BN_EPSILON = 1e-3


def batch_norm(name, gamma_initializer='ones', axis=-1):
  """A synchronized BatchNormalization with the project's constants."""
  return keras.layers.BatchNormalization(
      axis=axis, momentum=BN_MOMENTUM, epsilon=BN_EPSILON,
      gamma_initializer=gamma_initializer, synchronized=True, name=name)


def gelu(x):
  return keras.activations.gelu(x, approximate=False)


def get_activation(name):
  """'relu', 'gelu' (exact) or None (identity)."""
  if name is None or name == 'none':
    return lambda x: x
  if name == 'gelu':
    return gelu
  if name == 'relu':
    return tf.nn.relu
  raise ValueError(f'unknown activation {name!r}; expected relu, gelu or '
                   'none')


@keras.saving.register_keras_serializable(package='deeplab2_kmax')
class ConvBN(keras.layers.Layer):
  """Conv2D (no bias) -> BN -> activation, with symmetric stride padding.

  Attributes `conv` and `bn` are the sub-layers (checkpoint importers map
  DeepLab2's `_conv` / `_batch_norm` onto them).
  """

  def __init__(self, filters, kernel_size=1, strides=1, activation=None,
               bn_gamma_initializer='ones', depthwise=False, dilation_rate=1,
               **kwargs):
    super().__init__(**kwargs)
    if strides != 1 and dilation_rate != 1:
      raise ValueError('a strided convolution cannot be dilated')
    self.filters = filters
    self.kernel_size = kernel_size
    self.strides = strides
    self.dilation_rate = dilation_rate
    self.activation = activation
    self.bn_gamma_initializer = bn_gamma_initializer
    self.depthwise = depthwise
    padding = 'same' if strides == 1 else 'valid'
    if depthwise:
      self.conv = keras.layers.DepthwiseConv2D(
          kernel_size, strides=strides, padding=padding, use_bias=False,
          dilation_rate=dilation_rate, depthwise_initializer='he_normal',
          name='depthwise_conv')
    else:
      self.conv = keras.layers.Conv2D(
          filters, kernel_size, strides=strides, padding=padding,
          dilation_rate=dilation_rate, use_bias=False,
          kernel_initializer='he_normal', name='conv')
    self.bn = batch_norm('batch_norm', bn_gamma_initializer)
    self._activation_fn = get_activation(activation)

  def call(self, x, training=False):
    if self.strides != 1:
      begin = (self.kernel_size - 1) // 2
      end = self.kernel_size - 1 - begin
      x = tf.pad(x, [[0, 0], [begin, end], [begin, end], [0, 0]])
    x = self.conv(x)
    x = self.bn(x, training=training)
    return self._activation_fn(x)

  def get_config(self):
    return {**super().get_config(), 'filters': self.filters,
            'kernel_size': self.kernel_size, 'strides': self.strides,
            'activation': self.activation,
            'bn_gamma_initializer': self.bn_gamma_initializer,
            'depthwise': self.depthwise, 'dilation_rate': self.dilation_rate}


@keras.saving.register_keras_serializable(package='deeplab2_kmax')
class DenseBN(keras.layers.Layer):
  """A 1x1 projection of a [B, N, C] sequence (no bias) -> BN -> activation.

  DeepLab2 stores these as Conv1D kernels [1, Cin, Cout]; here the kernel is
  a Dense [Cin, Cout] (a plain matmul).
  """

  def __init__(self, units, activation=None, bn_gamma_initializer='ones',
               kernel_initializer='he_normal', **kwargs):
    super().__init__(**kwargs)
    self.units = units
    self.activation = activation
    self.bn_gamma_initializer = bn_gamma_initializer
    self.kernel_initializer = keras.initializers.get(kernel_initializer)
    self.dense = keras.layers.Dense(units, use_bias=False,
                                    kernel_initializer=self.kernel_initializer,
                                    name='conv')
    self.bn = batch_norm('batch_norm', bn_gamma_initializer)
    self._activation_fn = get_activation(activation)

  def call(self, x, training=False):
    return self._activation_fn(self.bn(self.dense(x), training=training))

  def get_config(self):
    return {**super().get_config(), 'units': self.units,
            'activation': self.activation,
            'bn_gamma_initializer': self.bn_gamma_initializer,
            'kernel_initializer': keras.initializers.serialize(
                self.kernel_initializer)}


@keras.saving.register_keras_serializable(package='deeplab2_kmax')
class SeparableConvBN(keras.layers.Layer):
  """Depthwise KxK conv -> BN -> act, then pointwise 1x1 -> BN -> act."""

  def __init__(self, filters, kernel_size=5, activation='gelu', **kwargs):
    super().__init__(**kwargs)
    self.filters = filters
    self.kernel_size = kernel_size
    self.activation = activation
    self.depthwise = ConvBN(None, kernel_size, activation=activation,
                            depthwise=True, name='depthwise')
    self.pointwise = ConvBN(filters, 1, activation=activation,
                            name='pointwise')

  def call(self, x, training=False):
    return self.pointwise(self.depthwise(x, training=training),
                          training=training)

  def get_config(self):
    return {**super().get_config(), 'filters': self.filters,
            'kernel_size': self.kernel_size, 'activation': self.activation}
