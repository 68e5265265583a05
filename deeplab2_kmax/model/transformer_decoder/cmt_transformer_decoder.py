"""CMT-DeepLab's transformer decoder: CMT layers in kMaX's layout.

Same layout, centers and embedding projections as KMaXTransformerDecoder;
what differs is the state the layers pass on (cmt_layer.py): the updated
pixel features (the next layer's input at the same stride; at a stride
change the pixel decoder's feature at the new stride is used), the
assignment logits (residual path) and the reference masks.
"""
import dataclasses

import keras

from deeplab2_kmax.model.transformer_decoder import cmt_layer
from deeplab2_kmax.model.transformer_decoder import kmax_transformer_decoder


@keras.saving.register_keras_serializable(package='deeplab2_kmax')
class CMTTransformerDecoder(kmax_transformer_decoder.KMaXTransformerDecoder):
  """{stride: pixel feature} -> (class emb, mask emb, per-layer predictions)."""

  def __init__(self, layout, num_class_logits, components=None, **kwargs):
    kwargs.pop('cross_attention_activation', None)
    if isinstance(components, dict):
      components = cmt_layer.CMTComponents(**components)
    # Set first: the parent's __init__ makes the layers (_make_layer).
    self.components = components or cmt_layer.CMTComponents()
    super().__init__(layout, num_class_logits,
                     cross_attention_activation='cluster_softmax', **kwargs)

  def _make_layer(self, index, stride):
    """A CMT layer; it updates the pixels only when the next layer reads
    them (same stride)."""
    strides = self.layer_strides
    return cmt_layer.CMTLayer(
        self.num_class_logits, components=self.components,
        update_pixels=index + 1 < len(strides) and strides[index + 1] == stride,
        center_width=self.center_width, num_heads=self.num_heads,
        ffn_width=self.ffn_width, embedding_dim=self.embedding_dim,
        head_width=self.head_width,
        drop_path_keep_prob=self.drop_path_keep_prob,
        name=f'cmt_layer{index}_os{stride}')

  def _run_layers(self, pixels, centers, training):
    """Passes each layer's state (and, at the same stride, its updated
    pixels) to the next."""
    pixels = dict(pixels)
    auxiliary, state = [], None
    for stride, layer in zip(self.layer_strides, self.kmax_layers):
      centers, pixels[stride], prediction, state = layer(
          pixels[stride], centers, state, training=training)
      auxiliary.append(prediction)
    return centers, auxiliary

  def get_config(self):
    config = super().get_config()
    config.pop('cross_attention_activation')
    return {**config, 'components': dataclasses.asdict(self.components)}
