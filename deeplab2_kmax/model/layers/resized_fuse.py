"""Fuses a coarse decoder feature with a finer backbone feature.

Each input is activated, projected by a 1x1 conv + BN to the target width
(skipped, activation included, when it already has that width), resized with
align-corners bilinear interpolation to the finer size, and the two are
summed (the "resized fuse" of kMaX-DeepLab's pixel decoder).
"""
import keras

from deeplab2_kmax.model.layers import conv_bn
from deeplab2_kmax.model.layers import resize


@keras.saving.register_keras_serializable(package='deeplab2_kmax')
class ResizedFuse(keras.layers.Layer):
  """sum_i resize(BN(conv1x1(act(x_i)))) at the size of the last input."""

  def __init__(self, channels, input_channels, activation='gelu', **kwargs):
    super().__init__(**kwargs)
    self.channels = channels
    self.input_channels = tuple(input_channels)
    self.activation = activation
    self._act = conv_bn.get_activation(activation)
    self.projections = [
        None if c == channels else conv_bn.ConvBN(
            channels, 1, name=f'resized_conv_bn{i + 1}')
        for i, c in enumerate(self.input_channels)]

  def call(self, inputs, training=False):
    size = inputs[-1].shape[1:3]
    outputs = []
    for x, projection in zip(inputs, self.projections):
      if projection is not None:
        x = projection(self._act(x), training=training)  # [B, h, w, C]
      outputs.append(resize.resize_align_corners(x, size))  # [B, H, W, C]
    return sum(outputs[1:], outputs[0])

  def get_config(self):
    return {**super().get_config(), 'channels': self.channels,
            'input_channels': self.input_channels,
            'activation': self.activation}
