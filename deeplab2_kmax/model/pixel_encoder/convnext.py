"""ConvNeXt pixel encoder in the DeepLab2 kMaX flavour.

ConvNeXt (Liu et al., "A ConvNet for the 2020s", CVPR 2022): a 4x4/4 conv
stem, then four stages of blocks (depthwise 7x7 -> LayerNorm -> 1x1 4C ->
GELU -> 1x1 C -> layer scale -> + input), with a LayerNorm + 2x2/2 conv
between stages.

Like DeepLab2's `pixel_encoder/convnext.py` with
`zero_padding_for_downstream=True` (what kMaX-DeepLab always uses), any input
size works: the stem pads 1 pixel top/left and 2 bottom/right, and each
downsampling pads 1 pixel bottom/right *before* its LayerNorm, so the padded
pixels reach the conv as the norm's beta, not as zeros. Sizes go
H -> ceil(H/4) -> ceil(/2) -> ceil(/2) -> ceil(/2) (321: 81, 41, 21, 11).

The encoder returns non-activated features (DeepLab2's `stageN`) keyed by
level stride (see `variants.py`); consumers apply `gelu` for `resN`. The stem
output (key 2) is at stride 4, like the output of the first stage (key 4).
"""
import keras
import numpy as np
import tensorflow as tf

from deeplab2_kmax.model import kernels
from deeplab2_kmax.model.layers import drop_path
from deeplab2_kmax.model.pixel_encoder import variants


def _kernel_initializer():
  return keras.initializers.TruncatedNormal(stddev=0.02)


@keras.saving.register_keras_serializable(package='deeplab2_kmax')
class ConvNeXtBlock(keras.layers.Layer):
  """x + drop_path(scale * pw2(gelu(pw1(norm(dw7x7(x))))))."""

  def __init__(self, dim, drop_path_keep_prob=1.0,
               layer_scale_init_value=1e-6, **kwargs):
    super().__init__(**kwargs)
    self.dim = dim
    self.drop_path_keep_prob = drop_path_keep_prob
    self.layer_scale_init_value = layer_scale_init_value
    # Kernel [7, 7, dim, 1]; DeepLab2's grouped Conv2D stores [7, 7, 1, dim].
    self.depthwise_conv = keras.layers.DepthwiseConv2D(
        7, padding='same', use_bias=True,
        depthwise_initializer=_kernel_initializer(), name='depthwise_conv')
    self.norm = keras.layers.LayerNormalization(epsilon=1e-6, name='norm')
    self.pointwise_conv1 = keras.layers.Dense(
        4 * dim, kernel_initializer=_kernel_initializer(),
        name='pointwise_conv1')
    self.pointwise_conv2 = keras.layers.Dense(
        dim, kernel_initializer=_kernel_initializer(), name='pointwise_conv2')
    # DeepLab2 stores it as [1, 1, 1, dim].
    self.layer_scale = self.add_weight(
        name='layer_scale', shape=(dim,),
        initializer=keras.initializers.Constant(layer_scale_init_value))
    self.drop_path = drop_path.DropPath(drop_path_keep_prob, name='drop_path')

  def call(self, x, training=False):
    y = self.depthwise_conv(x)  # [B, H, W, C]
    y = self.norm(y)
    y = kernels.gelu(self.pointwise_conv1(y))  # [B, H, W, 4C]
    y = self.pointwise_conv2(y)  # [B, H, W, C]
    y = y * tf.cast(self.layer_scale, y.dtype)
    return x + self.drop_path(y, training=training)

  def get_config(self):
    return {**super().get_config(), 'dim': self.dim,
            'drop_path_keep_prob': self.drop_path_keep_prob,
            'layer_scale_init_value': self.layer_scale_init_value}


@keras.saving.register_keras_serializable(package='deeplab2_kmax')
class ConvNeXtEncoder(keras.layers.Layer):
  """Returns {level stride: non-activated feature} for 2, 4, 8, 16, 32."""

  # What consumers apply to a feature to get DeepLab2's `resN`.
  activation = 'gelu'

  def __init__(self, variant='convnext_tiny', drop_path_keep_prob=1.0,
               **kwargs):
    super().__init__(**kwargs)
    if variant not in variants.CONVNEXT_VARIANTS:
      raise ValueError(
          f'unknown ConvNeXt variant {variant!r}; expected one of '
          f'{", ".join(sorted(variants.CONVNEXT_VARIANTS))}')
    self.variant = variant
    self.drop_path_keep_prob = drop_path_keep_prob
    spec = variants.CONVNEXT_VARIANTS[variant]
    self.stem_conv = keras.layers.Conv2D(
        spec.dims[0], 4, strides=4, padding='valid',
        kernel_initializer=_kernel_initializer(), name='stem_conv')
    self.stem_norm = keras.layers.LayerNormalization(epsilon=1e-6,
                                                     name='stem_norm')
    # Downsampling i = 1..3 sits before stage i (0-based).
    self.downsample_norms = []
    self.downsample_convs = []
    for i in range(1, 4):
      self.downsample_norms.append(keras.layers.LayerNormalization(
          epsilon=1e-6, name=f'downsample{i}_norm'))
      self.downsample_convs.append(keras.layers.Conv2D(
          spec.dims[i], 2, strides=2, padding='valid',
          kernel_initializer=_kernel_initializer(),
          name=f'downsample{i}_conv'))
    # Keep rates fall linearly over all blocks, from 1 (first) to p (last).
    keep_rates = np.linspace(1.0, drop_path_keep_prob, sum(spec.depths))
    self.stages = []
    for i, (depth, dim) in enumerate(zip(spec.depths, spec.dims)):
      start = sum(spec.depths[:i])
      self.stages.append([
          ConvNeXtBlock(dim, drop_path_keep_prob=float(keep_rates[start + j]),
                        name=f'stage{i}_block{j}')
          for j in range(depth)])

  @property
  def output_channels(self):
    """{level stride: channels} of the returned features."""
    dims = variants.CONVNEXT_VARIANTS[self.variant].dims
    return {2: dims[0], 4: dims[0], 8: dims[1], 16: dims[2], 32: dims[3]}

  def call(self, images, training=False):
    features = {}
    # 1 top/left, 2 bottom/right: output ceil(H/4) for any H.
    x = tf.pad(images, [[0, 0], [1, 2], [1, 2], [0, 0]])
    x = self.stem_norm(self.stem_conv(x))  # [B, ceil(H/4), ., C0]
    features[2] = x
    for i, blocks in enumerate(self.stages):
      if i > 0:
        # Pad before the norm: the conv sees beta on the bottom/right border.
        x = tf.pad(x, [[0, 0], [0, 1], [0, 1], [0, 0]])
        x = self.downsample_norms[i - 1](x)
        x = self.downsample_convs[i - 1](x)  # [B, ceil(h/2), ., C_i]
      for block in blocks:
        x = block(x, training=training)
      features[2 ** (i + 2)] = x  # [B, H/s, W/s, C_i]
    return features

  def get_config(self):
    return {**super().get_config(), 'variant': self.variant,
            'drop_path_keep_prob': self.drop_path_keep_prob}
