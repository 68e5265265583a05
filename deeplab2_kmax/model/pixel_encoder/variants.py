"""The table of pixel-encoder variants: a short name decoded to depths and widths.

Kept free of TensorFlow imports so config validation can read it cheaply.
"""
import dataclasses


@dataclasses.dataclass(frozen=True)
class ResNetVariant:
  """A bottleneck ResNet with the DeepLab2 stem (7x7/2 conv, no max-pool)."""
  stem_width: int
  # Blocks in stages 2..5 (strides 4, 8, 16, 32).
  blocks: tuple[int, int, int, int]
  # Bottleneck width of stages 2..5; each stage outputs 4x this.
  widths: tuple[int, int, int, int]


RESNET_VARIANTS = {
    'resnet50': ResNetVariant(stem_width=64, blocks=(3, 4, 6, 3),
                              widths=(64, 128, 256, 512)),
    # Narrow and shallow, for CPU tests and the synthetic data set.
    'resnet_tiny': ResNetVariant(stem_width=16, blocks=(1, 1, 1, 1),
                                 widths=(8, 16, 32, 64)),
    # Twice as wide: the quickstart's model on the synthetic data set.
    'resnet_small': ResNetVariant(stem_width=32, blocks=(1, 1, 1, 1),
                                  widths=(16, 32, 64, 128)),
}


def backbone_names():
  return sorted(RESNET_VARIANTS)
