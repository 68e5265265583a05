"""ResNet pixel encoder in the DeepLab2 flavour (kMaX-DeepLab R50).

Differences from Keras' stock ResNet50 (He et al., CVPR 2016): the stem is
one 7x7/2 conv + BN with no max-pool, and each stage strides in the 3x3 conv
of its first block (ResNet v1.5), so stages run at strides 2, 4, 8, 16, 32.
Blocks return their residual sum *before* the ReLU; the next block applies
the ReLU to its input. The encoder therefore returns non-activated features
(DeepLab2's `stageN`); `relu(stageN)` is DeepLab2's `resN`.
"""
import keras

from deeplab2_kmax.model.layers import conv_bn
from deeplab2_kmax.model.layers import residual_blocks
from deeplab2_kmax.model.pixel_encoder import variants


@keras.saving.register_keras_serializable(package='deeplab2_kmax')
class ResNetEncoder(keras.layers.Layer):
  """Returns {stride: non-activated feature} for strides 2, 4, 8, 16, 32."""

  def __init__(self, variant='resnet50', drop_path_keep_prob=1.0, **kwargs):
    super().__init__(**kwargs)
    self.variant = variant
    self.drop_path_keep_prob = drop_path_keep_prob
    spec = variants.RESNET_VARIANTS[variant]
    self.stem = conv_bn.ConvBN(spec.stem_width, 7, strides=2, name='stem')
    self.stages = []
    in_channels = spec.stem_width
    for index, (num_blocks, width) in enumerate(zip(spec.blocks,
                                                    spec.widths)):
      stride = 2 ** (index + 2)
      blocks = [
          residual_blocks.BottleneckBlock(
              width, in_channels if b == 0 else 4 * width,
              strides=2 if b == 0 else 1, activation='relu',
              drop_path_keep_prob=_block_keep_prob(drop_path_keep_prob,
                                                   stride),
              name=f'stage{index + 2}_block{b + 1}')
          for b in range(num_blocks)]
      self.stages.append(blocks)
      in_channels = 4 * width

  @property
  def output_channels(self):
    """{stride: channels} of the returned features."""
    spec = variants.RESNET_VARIANTS[self.variant]
    channels = {2: spec.stem_width}
    for index, width in enumerate(spec.widths):
      channels[2 ** (index + 2)] = 4 * width
    return channels

  def call(self, images, training=False):
    features = {}
    x = self.stem(images, training=training)  # [B, H/2, W/2, stem]
    features[2] = x
    for index, blocks in enumerate(self.stages):
      for block in blocks:
        x = block(x, training=training)
      features[2 ** (index + 2)] = x  # [B, H/s, W/s, 4 * width]
    return features

  def get_config(self):
    return {**super().get_config(), 'variant': self.variant,
            'drop_path_keep_prob': self.drop_path_keep_prob}


def _block_keep_prob(keep_prob, stride):
  """DeepLab2's linear schedule: drop path only at strides >= 16.

  keep = 1 - (1 - p) * s / 4 with s = log2(stride) - 1 (stride 16: s = 3,
  stride 32: s = 4, i.e. keep = p).
  """
  if stride < 16:
    return 1.0
  stage = stride.bit_length() - 2  # log2(stride) - 1
  return 1.0 - (1.0 - keep_prob) * stage / 4.0
