"""The mask-transformer prediction head (MaX-DeepLab, Wang et al., CVPR 2021).

From a pixel feature map and per-center class and mask embeddings it
predicts, for each of the N cluster centers, class logits and a mask:
  * pixel embedding g: depthwise-separable conv -> 1x1 conv -> BN -> L2 norm;
  * mask embedding f: 1x1 projection + BN of the mask embedding;
  * mask logits = g f^T followed by a batch norm with a single scalar
    (shared by all pixels and centers);
  * class logits: a 1x1 projection with bias, plus a constant on the void
    logit so that p(void) starts near 0.9.
kMaX-DeepLab uses one such head after the transformer decoder and one inside
every k-means layer, whose mask logits are that layer's cluster assignment.
"""
import math

import keras
import tensorflow as tf

from deeplab2_kmax.model import outputs
from deeplab2_kmax.model.layers import conv_bn

VOID_PRIOR_PROBABILITY = 0.9


def void_logit_offset(num_logits):
  """log((C - 1) * p / (1 - p)) for C = num_logits (COCO: log(133 * 9))."""
  p = VOID_PRIOR_PROBABILITY
  return math.log((num_logits - 1) * p / (1.0 - p))


@keras.saving.register_keras_serializable(package='deeplab2_kmax')
class MaskPredictionHead(keras.layers.Layer):
  """(pixels [B,h,w,C], class emb [B,N,D], mask emb [B,N,D]) -> predictions."""

  def __init__(self, num_class_logits, embedding_dim=128, head_width=256,
               **kwargs):
    super().__init__(**kwargs)
    self.num_class_logits = num_class_logits
    self.embedding_dim = embedding_dim
    self.head_width = head_width
    self.pixel_conv = conv_bn.SeparableConvBN(
        head_width, 5, activation='gelu', name='pixel_space_head_conv')
    self.pixel_final_conv = conv_bn.Conv2D(
        embedding_dim, 1, use_bias=True, name='pixel_space_head_final_conv',
        kernel_initializer=keras.initializers.TruncatedNormal(stddev=0.01))
    self.pixel_feature_bn = conv_bn.batch_norm(
        'pixel_space_feature_batch_norm')
    self.mask_bn = conv_bn.batch_norm(
        'pixel_space_mask_batch_norm',
        gamma_initializer=keras.initializers.Constant(0.1))
    self.mask_head = conv_bn.DenseBN(embedding_dim,
                                     name='transformer_mask_head')
    self.class_head = keras.layers.Dense(
        num_class_logits, use_bias=True, name='transformer_class_head',
        kernel_initializer=keras.initializers.TruncatedNormal(stddev=0.01))
    offset = [0.0] * (num_class_logits - 1) + [
        void_logit_offset(num_class_logits)]
    self._void_offset = tf.constant(offset, tf.float32)

  def build(self, pixels_shape, class_embedding_shape=None,
            mask_embedding_shape=None):
    # Built with the head, so that checkpoints find every weight.
    self.pixel_feature_bn.build((None, None, None, self.embedding_dim))
    self.mask_bn.build((None, None, None, None, 1))

  def call(self, pixels, class_embedding, mask_embedding, training=False):
    g = self.pixel_conv(pixels, training=training)  # [B, h, w, head_width]
    g = self.pixel_final_conv(g)  # [B, h, w, E]
    f = self.mask_head(mask_embedding, training=training)  # [B, N, E]
    g = self.pixel_feature_bn(g, training=training)
    g = tf.math.l2_normalize(g, axis=-1)  # [B, h, w, E]
    mask_logits = tf.einsum('bhwe,bne->bhwn', g, f)  # [B, h, w, N]
    mask_logits = self.mask_bn(mask_logits[..., None],
                               training=training)[..., 0]
    # The predictions are float32 whatever the compute dtype: matching,
    # softmaxes, k-means updates and losses read them.
    class_logits = (tf.cast(self.class_head(class_embedding), tf.float32) +
                    self._void_offset)
    mask_logits = tf.cast(mask_logits, tf.float32)
    g = tf.cast(g, tf.float32)
    return {
        outputs.CLASS_LOGITS: class_logits,  # [B, N, K + 1]
        outputs.MASK_LOGITS: mask_logits,  # [B, h, w, N]
        outputs.PIXEL_FEATURE: g,  # [B, h, w, E]
    }

  def get_config(self):
    return {**super().get_config(), 'num_class_logits': self.num_class_logits,
            'embedding_dim': self.embedding_dim,
            'head_width': self.head_width}
