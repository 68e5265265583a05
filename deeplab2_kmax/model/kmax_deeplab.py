"""kMaX-DeepLab meta-architecture (Yu et al., "k-means Mask Transformer",
ECCV 2022).

It only composes parts built elsewhere (see builder.py):
  images -> pixel encoder -> pixel decoder -> transformer decoder (cluster
  centers refined by k-means cross-attention) -> prediction head (masks and
  classes per center), plus the auxiliary semantic head on the encoder.
Images are float RGB in [0, 255] of size k*32+1; the model maps them to
[-1, 1]. See outputs.py for what a call returns.
"""
import keras
import tensorflow as tf

from deeplab2_kmax.model import outputs


@keras.saving.register_keras_serializable(package='deeplab2_kmax')
class KMaXDeepLab(keras.Model):
  """Pixel encoder + pixel decoder + transformer decoder + heads."""

  def __init__(self, pixel_encoder, pixel_decoder, transformer_decoder,
               prediction_head, semantic_head=None, **kwargs):
    super().__init__(**kwargs)
    self.pixel_encoder = pixel_encoder
    self.pixel_decoder = pixel_decoder
    self.transformer_decoder = transformer_decoder
    self.prediction_head = prediction_head
    self.semantic_head = semantic_head

  def call(self, images, training=False):
    x = images / 127.5 - 1.0  # [B, H, W, 3] in [-1, 1]
    backbone = self.pixel_encoder(x, training=training)  # {stride: feature}
    pixels = self.pixel_decoder(backbone, training=training)
    class_embedding, mask_embedding, auxiliary = self.transformer_decoder(
        pixels, training=training)
    result = self.prediction_head(pixels[min(pixels)], class_embedding,
                                  mask_embedding, training=training)
    if self.semantic_head is not None:
      result[outputs.SEMANTIC_LOGITS] = self.semantic_head(
          backbone, training=training)
    result[outputs.AUXILIARY_PREDICTIONS] = auxiliary
    return result

  @tf.__internal__.tracking.no_automatic_dependency_tracking
  def _trackable_children(self, save_type='checkpoint', **kwargs):
    """Every weight, keyed by its unique Keras path, for tf.train.Checkpoint.

    Keras 3 does not expose layers held in Python lists (encoder stages,
    decoder layers, ...) to TensorFlow checkpoints, so the default children
    would silently miss most weights; listing the variables makes
    `tf.train.Checkpoint(model=model)` complete and its keys readable.
    """
    if save_type != 'checkpoint':
      return super()._trackable_children(save_type, **kwargs)
    return {variable.path: variable for variable in self.weights}

  def get_config(self):
    config = super().get_config()
    for name in ('pixel_encoder', 'pixel_decoder', 'transformer_decoder',
                 'prediction_head', 'semantic_head'):
      part = getattr(self, name)
      config[name] = (None if part is None
                      else keras.saving.serialize_keras_object(part))
    return config

  @classmethod
  def from_config(cls, config):
    config = dict(config)
    for name in ('pixel_encoder', 'pixel_decoder', 'transformer_decoder',
                 'prediction_head', 'semantic_head'):
      if config.get(name) is not None:
        config[name] = keras.saving.deserialize_keras_object(config[name])
    return cls(**config)
