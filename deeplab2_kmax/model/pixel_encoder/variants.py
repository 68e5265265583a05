"""The table of pixel-encoder variants: a short name decoded to depths and widths.

Kept free of TensorFlow imports so config validation can read it cheaply.

Every encoder returns DeepLab2's five endpoints `stage1..stage5` as a dict
keyed by the endpoint's *level stride* 2**level (2, 4, 8, 16, 32): the stride
the endpoint has in a ResNet, and the name the pixel decoder's and the
semantic head's `stride` fields use. For ResNets it is the real stride. A
ConvNeXt has no stride-2 feature: its `stage1` (the stem output, key 2) is at
stride 4, like its `stage2`; `feature_stride` gives the real stride.
"""
import dataclasses


@dataclasses.dataclass(frozen=True)
class ResNetVariant:
  """A bottleneck ResNet without max-pool: DeepLab2's ResNet and MaX-S.

  The stem strides 2 and each stage strides in its first block, so the
  stages run at strides 4, 8, 16 and 32.
  """
  # 7x7/2 conv (stem='resnet') or 3x3/2, 3x3, 3x3 convs ('inception').
  stem_widths: tuple[int, ...]
  # Blocks in stages 2..5 (strides 4, 8, 16, 32).
  blocks: tuple[int, int, int, int]
  # Bottleneck width of stages 2..5; each stage outputs 4x this.
  widths: tuple[int, int, int, int]
  stem: str = 'resnet'
  activation: str = 'relu'
  # Blocks running at a (ResNet) stride >= this use axial attention instead
  # of the 3x3 conv; 0 = none.
  axial_beyond_stride: int = 0

  @property
  def stem_width(self):
    return self.stem_widths[-1]


@dataclasses.dataclass(frozen=True)
class ConvNeXtVariant:
  """ConvNeXt (Liu et al., CVPR 2022) as DeepLab2's kMaX builds it."""
  depths: tuple[int, int, int, int]
  dims: tuple[int, int, int, int]


RESNET_VARIANTS = {
    'resnet50': ResNetVariant(stem_widths=(64,), blocks=(3, 4, 6, 3),
                              widths=(64, 128, 256, 512)),
    # MaX-S with GELU, DeepLab2's `axial_resnet50`: Inception stem, axial
    # attention in stage 4 from block 2 and in all of stage 5.
    'axial_resnet50': ResNetVariant(
        stem_widths=(64, 64, 128), blocks=(3, 4, 6, 3),
        widths=(64, 128, 256, 512), stem='inception', activation='gelu',
        axial_beyond_stride=16),
    # Narrow and shallow, for CPU tests and the synthetic data set.
    'resnet_tiny': ResNetVariant(stem_widths=(16,), blocks=(1, 1, 1, 1),
                                 widths=(8, 16, 32, 64)),
    # Twice as wide: the quickstart's model on the synthetic data set.
    'resnet_small': ResNetVariant(stem_widths=(32,), blocks=(1, 1, 1, 1),
                                  widths=(16, 32, 64, 128)),
}

CONVNEXT_VARIANTS = {
    'convnext_tiny': ConvNeXtVariant((3, 3, 9, 3), (96, 192, 384, 768)),
    'convnext_small': ConvNeXtVariant((3, 3, 27, 3), (96, 192, 384, 768)),
    'convnext_base': ConvNeXtVariant((3, 3, 27, 3), (128, 256, 512, 1024)),
    'convnext_large': ConvNeXtVariant((3, 3, 27, 3), (192, 384, 768, 1536)),
}


def backbone_names():
  return sorted({**RESNET_VARIANTS, **CONVNEXT_VARIANTS})


def feature_stride(name, level_stride):
  """The real stride of endpoint `level_stride` of backbone `name`."""
  if name in CONVNEXT_VARIANTS:
    return max(level_stride, 4)
  return level_stride


def output_stride(name, decoder_strides):
  """The real stride of the pixel decoder's finest output."""
  return feature_stride(name, min(decoder_strides))
