"""Convolution + batch norm + activation blocks shared by every model part.

Conventions follow the reference implementation (DeepLab2), so that its
checkpoints load unchanged:
  * convolutions followed by a batch norm have no bias; kernels He-normal
    (depthwise kernels Glorot-uniform);
  * strided convolutions pad symmetrically by (k - 1) // 2 on each side and
    then run 'valid' (equal to 'same' on the k*32+1 sizes this model uses,
    and well defined on any other size);
  * batch norm is synchronized across replicas, momentum 0.99, epsilon 1e-3;
  * GELU is exact (erf), never the tanh approximation.

The convolutions, the batch norm + activation and GELU are the kernel
policy's (deeplab2_kmax/model/kernels).
"""
import keras
import tensorflow as tf

from deeplab2_kmax.model import kernels
from deeplab2_kmax.model.layers import sync_batch_norm

BN_MOMENTUM = 0.99
BN_EPSILON = 1e-3


def batch_norm(name, gamma_initializer='ones', axis=-1):
  """A synchronized BatchNormalization with the project's constants."""
  return sync_batch_norm.SyncBatchNormalization(
      axis=axis, momentum=BN_MOMENTUM, epsilon=BN_EPSILON,
      gamma_initializer=gamma_initializer, name=name)


gelu = kernels.gelu
get_activation = kernels.activation
batch_norm_activation = kernels.batch_norm_activation


@keras.saving.register_keras_serializable(package='deeplab2_kmax')
class Conv2D(keras.layers.Conv2D):
  """keras.layers.Conv2D whose stride-1 'same' convolution is the kernel
  policy's (the CPU path has a faster gradient; same forward values)."""

  def convolution_op(self, inputs, kernel):
    if (tuple(self.strides) == (1, 1) and
        tuple(self.dilation_rate) == (1, 1) and self.padding == 'same' and
        self.groups == 1 and self.data_format == 'channels_last'):
      # Keras does not pass `training` here: the trainable form is used.
      return kernels.conv2d(inputs, kernel, training=True)
    return super().convolution_op(inputs, kernel)


@keras.saving.register_keras_serializable(package='deeplab2_kmax')
class ConvBN(keras.layers.Layer):
  """Conv2D (no bias) -> BN -> activation, with symmetric stride padding.

  `kernel` is the convolution kernel ([k, k, Cin, Cout], or [k, k, C, 1] when
  `depthwise`) and `bn` the batch norm (checkpoint importers map DeepLab2's
  `_conv` / `_batch_norm` onto them).
  """

  def __init__(self, filters, kernel_size=1, strides=1, activation=None,
               bn_gamma_initializer='ones', depthwise=False, dilation_rate=1,
               **kwargs):
    super().__init__(**kwargs)
    if strides != 1 and dilation_rate != 1:
      raise ValueError('a strided convolution cannot be dilated')
    get_activation(activation)
    self.filters = filters
    self.kernel_size = kernel_size
    self.strides = strides
    self.activation = activation
    self.bn_gamma_initializer = bn_gamma_initializer
    self.depthwise = depthwise
    self.dilation_rate = dilation_rate
    self.bn = batch_norm('batch_norm', bn_gamma_initializer)

  def build(self, input_shape):
    channels = input_shape[-1]
    k = self.kernel_size
    if self.depthwise:
      self.kernel = self.add_weight(name='depthwise_kernel',
                                    shape=(k, k, channels, 1),
                                    initializer='glorot_uniform')
      out_channels = channels
    else:
      self.kernel = self.add_weight(name='kernel',
                                    shape=(k, k, channels, self.filters),
                                    initializer='he_normal')
      out_channels = self.filters
    self.bn.build((None, None, None, out_channels))

  def call(self, x, training=False):
    padding = 'SAME'
    if self.strides != 1:
      begin = (self.kernel_size - 1) // 2
      end = self.kernel_size - 1 - begin
      x = tf.pad(x, [[0, 0], [begin, end], [begin, end], [0, 0]])
      padding = 'VALID'
    conv = kernels.depthwise_conv2d if self.depthwise else kernels.conv2d
    x = conv(x, self.kernel, self.strides, padding, self.dilation_rate,
             training=training)
    return batch_norm_activation(self.bn, x, self.activation, training)

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
    get_activation(activation)
    self.units = units
    self.activation = activation
    self.bn_gamma_initializer = bn_gamma_initializer
    self.kernel_initializer = keras.initializers.get(kernel_initializer)
    self.dense = keras.layers.Dense(units, use_bias=False,
                                    kernel_initializer=self.kernel_initializer,
                                    name='conv')
    self.bn = batch_norm('batch_norm', bn_gamma_initializer)

  def build(self, input_shape):
    self.dense.build(input_shape)
    self.bn.build(tuple(input_shape[:-1]) + (self.units,))

  def call(self, x, training=False):
    return batch_norm_activation(self.bn, self.dense(x), self.activation,
                                 training)

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
