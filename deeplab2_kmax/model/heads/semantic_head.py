"""Auxiliary semantic segmentation head (DeepLabv3+, Chen et al., ECCV 2018).

kMaX-DeepLab adds a per-pixel semantic loss on a separate head over the pixel
encoder. With `use_decoder` (COCO, ADE20K), ASPP runs on the stride-32
feature and its output is fused with activated low-level backbone features
(strides 8, then 4) by depthwise-separable convs, predicting at stride 4.
Without it (Cityscapes), the head runs directly on the stride-32 feature.
Channel c of the logits is dataset class id c.
"""
import dataclasses

import keras
import tensorflow as tf

from deeplab2_kmax.model.layers import conv_bn
from deeplab2_kmax.model.layers import resize


@dataclasses.dataclass(frozen=True)
class LowLevelSkip:
  stride: int
  channels: int


@keras.saving.register_keras_serializable(package='deeplab2_kmax')
class ASPP(keras.layers.Layer):
  """Atrous spatial pyramid pooling: 1x1, three dilated 3x3, global pool."""

  def __init__(self, channels=256, atrous_rates=(6, 12, 18), dropout=0.1,
               **kwargs):
    super().__init__(**kwargs)
    self.channels = channels
    self.atrous_rates = tuple(atrous_rates)
    self.dropout = dropout
    self.conv_1x1 = conv_bn.ConvBN(channels, 1, activation='gelu',
                                   name='conv_bn_act')
    self.atrous_convs = [
        conv_bn.ConvBN(channels, 3, dilation_rate=rate, activation='gelu',
                       name=f'aspp_conv{i + 1}')
        for i, rate in enumerate(self.atrous_rates)]
    self.pool_conv = conv_bn.ConvBN(channels, 1, activation='gelu',
                                    name='aspp_pool')
    self.projection = conv_bn.ConvBN(channels, 1, activation='gelu',
                                     name='proj_conv_bn_act')
    self.dropout_layer = keras.layers.Dropout(dropout)

  def call(self, x, training=False):
    branches = [self.conv_1x1(x, training=training)]
    branches += [conv(x, training=training) for conv in self.atrous_convs]
    pooled = tf.reduce_mean(x, axis=[1, 2], keepdims=True)  # [B, 1, 1, C]
    pooled = self.pool_conv(pooled, training=training)
    branches.append(tf.broadcast_to(pooled, tf.shape(branches[0])))
    y = self.projection(tf.concat(branches, -1), training=training)
    return self.dropout_layer(y, training=training)  # [B, h, w, channels]

  def get_config(self):
    return {**super().get_config(), 'channels': self.channels,
            'atrous_rates': self.atrous_rates, 'dropout': self.dropout}


@keras.saving.register_keras_serializable(package='deeplab2_kmax')
class SemanticHead(keras.layers.Layer):
  """{stride: backbone feature (non-activated)} -> semantic logits."""

  def __init__(self, num_classes, use_decoder=True, aspp_channels=256,
               atrous_rates=(6, 12, 18), aspp_dropout=0.1, low_level=(),
               decoder_channels=256, head_channels=256,
               backbone_activation='relu', **kwargs):
    super().__init__(**kwargs)
    self.num_classes = num_classes
    self.use_decoder = use_decoder
    self.aspp_channels = aspp_channels
    self.atrous_rates = tuple(atrous_rates)
    self.aspp_dropout = aspp_dropout
    self.low_level = [s if isinstance(s, LowLevelSkip) else LowLevelSkip(**s)
                      for s in low_level]
    self.decoder_channels = decoder_channels
    self.head_channels = head_channels
    self.backbone_activation = backbone_activation
    self._backbone_act = conv_bn.get_activation(backbone_activation)
    if use_decoder:
      self.aspp = ASPP(aspp_channels, atrous_rates, dropout=aspp_dropout,
                       name='aspp')
      self.low_level_convs = [
          conv_bn.ConvBN(skip.channels, 1, activation='gelu',
                         name=f'low_level_conv{i + 1}')
          for i, skip in enumerate(self.low_level)]
      self.fusion_convs = [
          conv_bn.SeparableConvBN(decoder_channels, 5, activation='gelu',
                                  name=f'fusion_conv{i + 1}')
          for i in range(len(self.low_level))]
    self.head_conv = conv_bn.SeparableConvBN(head_channels, 5,
                                             activation='gelu',
                                             name='head_conv')
    self.last_layer = conv_bn.Conv2D(
        num_classes, 1, use_bias=True, name='semantic_last_layer',
        kernel_initializer=keras.initializers.TruncatedNormal(stddev=0.01))

  def call(self, backbone_features, training=False):
    x = backbone_features[32]  # [B, H/32, W/32, C]
    if self.use_decoder:
      x = self.aspp(x, training=training)
      for skip, low_conv, fusion in zip(self.low_level, self.low_level_convs,
                                        self.fusion_convs):
        low = self._backbone_act(backbone_features[skip.stride])
        low = low_conv(low, training=training)  # [B, H/s, W/s, channels]
        x = resize.resize_align_corners(x, low.shape[1:3])
        x = fusion(tf.concat([x, low], -1), training=training)
    x = self.head_conv(x, training=training)
    # float32 whatever the compute dtype (the loss reads it).
    return tf.cast(self.last_layer(x), tf.float32)  # [B, h, w, num_classes]

  def get_config(self):
    return {**super().get_config(), 'num_classes': self.num_classes,
            'use_decoder': self.use_decoder,
            'aspp_channels': self.aspp_channels,
            'atrous_rates': self.atrous_rates,
            'aspp_dropout': self.aspp_dropout,
            'low_level': [dataclasses.asdict(s) for s in self.low_level],
            'decoder_channels': self.decoder_channels,
            'head_channels': self.head_channels,
            'backbone_activation': self.backbone_activation}
