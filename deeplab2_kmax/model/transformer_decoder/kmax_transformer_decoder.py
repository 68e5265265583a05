"""The kMaX transformer decoder: learnable cluster centers refined by
k-means cross-attention layers over the pixel decoder's features, coarse to
fine (COCO: two layers each at strides 32, 16 and 8), followed by the class
and mask embedding projections of the final centers."""
import dataclasses

import keras
import tensorflow as tf

from deeplab2_kmax.model.layers import conv_bn
from deeplab2_kmax.model.transformer_decoder import kmax_layer


@dataclasses.dataclass(frozen=True)
class DecoderLayout:
  """Which pixel-decoder stride each group of layers attends to."""
  stride: int
  num_layers: int


@keras.saving.register_keras_serializable(package='deeplab2_kmax')
class KMaXTransformerDecoder(keras.layers.Layer):
  """{stride: pixel feature} -> (class emb, mask emb, per-layer predictions)."""

  def __init__(self, layout, num_class_logits, num_centers=128,
               center_width=256, num_heads=8, ffn_width=2048,
               embedding_dim=128, head_width=256,
               cross_attention_activation='cluster_argmax',
               drop_path_keep_prob=1.0, **kwargs):
    super().__init__(**kwargs)
    self.layout = [g if isinstance(g, DecoderLayout) else DecoderLayout(**g)
                   for g in layout]
    self.num_class_logits = num_class_logits
    self.num_centers = num_centers
    self.center_width = center_width
    self.num_heads = num_heads
    self.ffn_width = ffn_width
    self.embedding_dim = embedding_dim
    self.head_width = head_width
    self.cross_attention_activation = cross_attention_activation
    self.drop_path_keep_prob = drop_path_keep_prob
    self.layer_strides = [g.stride for g in self.layout
                          for _ in range(g.num_layers)]
    self.kmax_layers = [self._make_layer(i, stride)
                        for i, stride in enumerate(self.layer_strides)]
    self.class_embedding = conv_bn.DenseBN(
        center_width, activation='gelu', name='class_embedding_projection')
    self.mask_embedding = conv_bn.DenseBN(
        center_width, activation='gelu', name='mask_embedding_projection')

  def _make_layer(self, index, stride):
    """The decoder's layer `index`, attending at `stride`."""
    return kmax_layer.KMaXLayer(
        self.num_class_logits, center_width=self.center_width,
        num_heads=self.num_heads, ffn_width=self.ffn_width,
        embedding_dim=self.embedding_dim, head_width=self.head_width,
        cross_attention_activation=self.cross_attention_activation,
        drop_path_keep_prob=self.drop_path_keep_prob,
        name=f'kmax_layer{index}_os{stride}')

  def build(self, input_shape=None):
    self.cluster_centers = self.add_weight(
        name='cluster_centers',
        shape=(1, self.num_centers, self.center_width),
        initializer=keras.initializers.TruncatedNormal(stddev=1.0))

  def call(self, pixel_features, training=False):
    batch = tf.shape(next(iter(pixel_features.values())))[0]
    centers = tf.tile(self.cluster_centers, [batch, 1, 1])  # [B, N, D]
    # Decoder features are not activated; each stride's is activated once.
    activated = {s: conv_bn.gelu(pixel_features[s])
                 for s in set(self.layer_strides)}
    centers, auxiliary = self._run_layers(activated, centers, training)
    class_embedding = self.class_embedding(centers, training=training)
    mask_embedding = self.mask_embedding(centers, training=training)
    return class_embedding, mask_embedding, auxiliary

  def _run_layers(self, pixels, centers, training):
    """The layers in order on {stride: activated pixels} -> (final centers,
    per-layer predictions)."""
    auxiliary = []
    for stride, layer in zip(self.layer_strides, self.kmax_layers):
      centers, prediction = layer(pixels[stride], centers, training=training)
      auxiliary.append(prediction)
    return centers, auxiliary

  def get_config(self):
    return {**super().get_config(),
            'layout': [dataclasses.asdict(g) for g in self.layout],
            'num_class_logits': self.num_class_logits,
            'num_centers': self.num_centers,
            'center_width': self.center_width, 'num_heads': self.num_heads,
            'ffn_width': self.ffn_width, 'embedding_dim': self.embedding_dim,
            'head_width': self.head_width,
            'cross_attention_activation': self.cross_attention_activation,
            'drop_path_keep_prob': self.drop_path_keep_prob}
