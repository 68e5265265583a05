"""Residual blocks of the pixel encoder and the pixel decoder.

Both blocks take a *non-activated* input, activate it first, and return the
residual sum without a final activation (the next consumer activates it), as
in DeepLab2. The last batch norm of each residual branch starts with gamma 0,
so a freshly initialised block is the identity on its (activated) input.
"""
import keras

from deeplab2_kmax.model.layers import axial_attention
from deeplab2_kmax.model.layers import conv_bn
from deeplab2_kmax.model.layers import drop_path


@keras.saving.register_keras_serializable(package='deeplab2_kmax')
class _ResidualBlock(keras.layers.Layer):
  """act(x) -> branch -> + shortcut(act(x)); subclasses define the branch."""

  def __init__(self, filters, in_channels, strides=1, activation='relu',
               drop_path_keep_prob=1.0, **kwargs):
    super().__init__(**kwargs)
    self.filters = filters
    self.in_channels = in_channels
    self.strides = strides
    self.activation = activation
    self.drop_path_keep_prob = drop_path_keep_prob
    self._act = conv_bn.get_activation(activation)
    self.conv3 = conv_bn.ConvBN(4 * filters, 1, bn_gamma_initializer='zeros',
                                name='conv3_bn')
    self.drop_path = drop_path.DropPath(drop_path_keep_prob)
    # A projection shortcut where the identity does not fit.
    self.shortcut = None
    if in_channels != 4 * filters or strides != 1:
      self.shortcut = conv_bn.ConvBN(4 * filters, 1, strides=strides,
                                     name='shortcut')

  def branch(self, x, training):
    raise NotImplementedError

  def call(self, x, training=False):
    x = self._act(x)  # [B, H, W, Cin]
    shortcut = x if self.shortcut is None else self.shortcut(
        x, training=training)
    y = self.conv3(self.branch(x, training), training=training)
    return self.drop_path(y, training=training) + shortcut  # [B,H/s,W/s,4f]

  def get_config(self):
    return {**super().get_config(), 'filters': self.filters,
            'in_channels': self.in_channels, 'strides': self.strides,
            'activation': self.activation,
            'drop_path_keep_prob': self.drop_path_keep_prob}


@keras.saving.register_keras_serializable(package='deeplab2_kmax')
class BottleneckBlock(_ResidualBlock):
  """1x1 f -> 3x3 f (strided or dilated) -> 1x1 4f (He et al., 2016)."""

  def __init__(self, filters, in_channels, strides=1, dilation_rate=1,
               **kwargs):
    super().__init__(filters, in_channels, strides=strides, **kwargs)
    self.dilation_rate = dilation_rate
    self.conv1 = conv_bn.ConvBN(filters, 1, activation=self.activation,
                                name='conv1_bn_act')
    self.conv2 = conv_bn.ConvBN(filters, 3, strides=strides,
                                dilation_rate=dilation_rate,
                                activation=self.activation,
                                name='conv2_bn_act')

  def branch(self, x, training):
    y = self.conv1(x, training=training)  # [B, H, W, f]
    return self.conv2(y, training=training)  # [B, H/s, W/s, f]

  def get_config(self):
    return {**super().get_config(), 'dilation_rate': self.dilation_rate}


@keras.saving.register_keras_serializable(package='deeplab2_kmax')
class AxialBlock(_ResidualBlock):
  """1x1 2f -> axial attention (height, width; strided) -> act -> 1x1 4f.

  The attention block of MaX-DeepLab / Axial-DeepLab, used by kMaX's pixel
  decoder at strides 32 and 16 and by the MaX-S encoder, whose first stage-5
  block strides inside the attention (AxialAttention2D's `strides`).
  """

  def __init__(self, filters, in_channels, strides=1, num_heads=8, **kwargs):
    super().__init__(filters, in_channels, strides=strides, **kwargs)
    self.num_heads = num_heads
    self.conv1 = conv_bn.ConvBN(2 * filters, 1, activation=self.activation,
                                name='conv1_bn_act')
    self.attention = axial_attention.AxialAttention2D(
        filters, num_heads, strides=strides, name='attention')

  def branch(self, x, training):
    y = self.conv1(x, training=training)  # [B, H, W, 2f]
    y = self.attention(y, training=training)  # [B, H/s, W/s, 2f]
    return self._act(y)

  def get_config(self):
    return {**super().get_config(), 'num_heads': self.num_heads}
