"""ResNet pixel encoders in the DeepLab2 flavour: ResNet-50 and MaX-S.

One class for both of DeepLab2's kMaX ResNets (its `AxialResNet`), decoded
from the variants table:
  * `resnet50` (He et al., CVPR 2016, v1.5 striding): a 7x7/2 conv + BN
    stem, ReLU, bottleneck blocks;
  * `axial_resnet50`, "MaX-S w/ GeLU" (Wang et al., MaX-DeepLab, CVPR 2021):
    an Inception stem (3x3/2, 3x3, 3x3 convs), GELU, and axial-attention
    blocks (Axial-DeepLab, ECCV 2020) instead of bottlenecks wherever a
    block's input stride is >= 16 (stage-4 blocks 2..6 and all of stage 5,
    whose first block strides inside the attention).
No max-pool: the stem strides 2 and the first block of each stage strides 2,
so the stages run at strides 2, 4, 8, 16, 32. Blocks return their residual
sum before the activation; the next block activates its input. The encoder
therefore returns non-activated features (DeepLab2's `stageN`);
`activation(stageN)` is DeepLab2's `resN`.

The axial blocks attend globally along each axis with relative positional
encodings, so any k*32+1 input whose stride-16 side is at most
axial_attention.MAX_AXIS_LENGTH runs with the same weights (DeepLab2's
encoder only runs at the size it was built for).
"""
import keras

from deeplab2_kmax.model.layers import conv_bn
from deeplab2_kmax.model.layers import residual_blocks
from deeplab2_kmax.model.pixel_encoder import variants

_STEMS = ('resnet', 'inception')


@keras.saving.register_keras_serializable(package='deeplab2_kmax')
class InceptionStem(keras.layers.Layer):
  """3x3/2 -> 3x3 -> 3x3 convs, each with BN, the last not activated.

  The stem of Inception-v4 (Szegedy et al., AAAI 2017) as MaX-S uses it.
  """

  def __init__(self, widths=(64, 64, 128), activation='gelu', **kwargs):
    super().__init__(**kwargs)
    self.widths = tuple(widths)
    self.activation = activation
    first, second, third = self.widths
    self.conv1 = conv_bn.ConvBN(first, 3, strides=2, activation=activation,
                                name='conv1_bn_act')
    self.conv2 = conv_bn.ConvBN(second, 3, activation=activation,
                                name='conv2_bn_act')
    self.conv3 = conv_bn.ConvBN(third, 3, name='conv3_bn')

  def call(self, images, training=False):
    x = self.conv1(images, training=training)  # [B, H/2, W/2, w1]
    x = self.conv2(x, training=training)  # [B, H/2, W/2, w2]
    return self.conv3(x, training=training)  # [B, H/2, W/2, w3]

  def get_config(self):
    return {**super().get_config(), 'widths': self.widths,
            'activation': self.activation}


@keras.saving.register_keras_serializable(package='deeplab2_kmax')
class ResNetEncoder(keras.layers.Layer):
  """Returns {stride: non-activated feature} for strides 2, 4, 8, 16, 32."""

  def __init__(self, variant='resnet50', drop_path_keep_prob=1.0, **kwargs):
    super().__init__(**kwargs)
    self.variant = variant
    self.drop_path_keep_prob = drop_path_keep_prob
    spec = variants.RESNET_VARIANTS[variant]
    if spec.stem not in _STEMS:
      raise ValueError(f'ResNet variant {variant!r}: unknown stem '
                       f'{spec.stem!r}; expected one of {_STEMS}')
    if spec.stem == 'inception':
      self.stem = InceptionStem(spec.stem_widths, spec.activation,
                                name='stem')
    else:
      self.stem = conv_bn.ConvBN(spec.stem_width, 7, strides=2, name='stem')
    self.stages = []
    in_channels, input_stride = spec.stem_width, 2
    for index, (num_blocks, width) in enumerate(zip(spec.blocks,
                                                    spec.widths)):
      blocks = []
      for b in range(num_blocks):
        strides = 2 if b == 0 else 1
        axial = 0 < spec.axial_beyond_stride <= input_stride
        block = (residual_blocks.AxialBlock if axial
                 else residual_blocks.BottleneckBlock)
        blocks.append(block(
            width, in_channels, strides=strides,
            activation=spec.activation,
            drop_path_keep_prob=_block_keep_prob(drop_path_keep_prob,
                                                 input_stride),
            name=f'stage{index + 2}_block{b + 1}'))
        in_channels, input_stride = 4 * width, input_stride * strides
      self.stages.append(blocks)

  @property
  def activation(self):
    """The blocks' activation ('relu' or 'gelu'); resN = act(stageN)."""
    return variants.RESNET_VARIANTS[self.variant].activation

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


def _block_keep_prob(keep_prob, input_stride):
  """DeepLab2's linear schedule, by the stride of the block's *input*.

  Drop path only where the input stride is >= 16 (stage-4 blocks 2.., all
  of stage 5): keep = 1 - (1 - p) * s / 4 with s = log2(input stride) - 1
  (16: s = 3; 32: s = 4, i.e. keep = p).
  """
  if input_stride < 16:
    return 1.0
  stage = input_stride.bit_length() - 2  # log2(stride) - 1
  return 1.0 - (1.0 - keep_prob) * stage / 4.0
