"""The enhanced pixel decoder of kMaX-DeepLab (Yu et al., ECCV 2022).

Starting from the stride-32 backbone feature, each stage runs a few residual
blocks (axial attention at strides 32 and 16, bottleneck blocks at 8 and 4)
and is then fused with the next finer backbone feature, upsampled. Every
backbone feature first goes through its own LayerNorm. The outputs of all
stages, keyed by stride, are returned non-activated: the coarse ones feed the
kMaX transformer decoder, the finest one the prediction head.
"""
import dataclasses

import keras

from deeplab2_kmax.model.layers import residual_blocks
from deeplab2_kmax.model.layers import resized_fuse

AXIAL = 'axial'
BOTTLENECK = 'bottleneck'
# DeepLab2 builds the decoder's bottleneck blocks with a dilated (rate 2)
# 3x3 conv; checkpoints trained there expect it.
BOTTLENECK_DILATION_RATE = 2


@dataclasses.dataclass(frozen=True)
class DecoderStageSpec:
  stride: int
  block_type: str  # AXIAL or BOTTLENECK
  num_blocks: int
  filters: int  # the stage outputs 4 * filters channels


@keras.saving.register_keras_serializable(package='deeplab2_kmax')
class KMaXPixelDecoder(keras.layers.Layer):
  """Maps {stride: backbone feature} to {stride: decoder feature}."""

  def __init__(self, stages, backbone_channels, num_heads=8, **kwargs):
    """Args:
      stages: DecoderStageSpecs from stride 32 down.
      backbone_channels: {stride: channels} of the backbone features.
      num_heads: heads of the axial attention.
    """
    super().__init__(**kwargs)
    self.stages = [s if isinstance(s, DecoderStageSpec)
                   else DecoderStageSpec(**s) for s in stages]
    # Keras configs turn int keys into strings.
    self.backbone_channels = {int(k): v for k, v in backbone_channels.items()}
    self.num_heads = num_heads
    self.backbone_norms = [
        keras.layers.LayerNormalization(epsilon=1e-6,
                                        name=f'backbone_norm{i}')
        for i in range(len(self.stages))]
    for norm, spec in zip(self.backbone_norms, self.stages):
      norm.build((None, None, None, self.backbone_channels[spec.stride]))
    self.stage_blocks = []
    self.skip_connections = []
    in_channels = self.backbone_channels[self.stages[0].stride]
    for i, spec in enumerate(self.stages):
      if i > 0:
        self.skip_connections.append(resized_fuse.ResizedFuse(
            spec.filters,
            (in_channels, self.backbone_channels[spec.stride]),
            name=f'skip_connection{i - 1}'))
        in_channels = spec.filters
      self.stage_blocks.append([
          self._make_block(spec, in_channels if b == 0 else 4 * spec.filters,
                           f'stage{i}_block{b + 1}')
          for b in range(spec.num_blocks)])
      in_channels = 4 * spec.filters

  def _make_block(self, spec, in_channels, name):
    if spec.block_type == AXIAL:
      return residual_blocks.AxialBlock(
          spec.filters, in_channels, num_heads=self.num_heads,
          activation='gelu', name=name)
    if spec.block_type == BOTTLENECK:
      return residual_blocks.BottleneckBlock(
          spec.filters, in_channels, dilation_rate=BOTTLENECK_DILATION_RATE,
          activation='gelu', name=name)
    raise ValueError(f'unknown pixel-decoder block type {spec.block_type!r}')

  def _normalize(self, index, backbone_features):
    norm = self.backbone_norms[index]
    x = backbone_features[self.stages[index].stride]
    return norm(x)

  @property
  def output_channels(self):
    """{stride: channels} of the returned features."""
    return {spec.stride: 4 * spec.filters for spec in self.stages}

  def call(self, backbone_features, training=False):
    outputs = {}
    x = self._normalize(0, backbone_features)
    for i, spec in enumerate(self.stages):
      if i > 0:
        skip = self._normalize(i, backbone_features)
        x = self.skip_connections[i - 1]([x, skip], training=training)
      for block in self.stage_blocks[i]:
        x = block(x, training=training)
      outputs[spec.stride] = x  # [B, H/stride, W/stride, 4 * filters]
    return outputs

  def get_config(self):
    return {**super().get_config(),
            'stages': [dataclasses.asdict(s) for s in self.stages],
            'backbone_channels': self.backbone_channels,
            'num_heads': self.num_heads}
