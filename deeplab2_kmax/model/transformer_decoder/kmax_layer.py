"""One k-means cross-attention layer of kMaX-DeepLab (Yu et al., ECCV 2022).

The object queries are cluster centers C [B, N, D]. A layer
  1. projects the pixel feature (already activated by the caller, which
     shares it between the layers at one stride) to Pb [B, P, D] and the
     centers to Cb [B, N, D];
  2. predicts masks and classes from (Pb, Cb) with its own prediction head:
     the mask logits L [B, P, N] are the pixel-to-center affinities and this
     prediction is deeply supervised;
  3. k-means step: assigns each pixel to its arg-max center and adds the sum
     of each cluster's pixel values to the center (cross_attention.py; the
     same slot gives MaX's spatial softmax and CMT's cluster softmax);
  4. in parallel (from Cb, as in the reference code), multi-head
     self-attention among the centers;
  5. C <- act(C + update + self-attention), then a feed-forward network.
The pixel features are never modified. Residual branches end in a batch
norm with gamma initialised to 0 and are subject to drop path.
"""
import keras
import tensorflow as tf

from deeplab2_kmax.model import outputs
from deeplab2_kmax.model.heads import mask_prediction_head
from deeplab2_kmax.model.layers import conv_bn
from deeplab2_kmax.model.layers import drop_path
from deeplab2_kmax.model.layers import grouped_batch_norm
from deeplab2_kmax.model.transformer_decoder import cross_attention


@keras.saving.register_keras_serializable(package='deeplab2_kmax')
class KMaXLayer(keras.layers.Layer):
  """(act(pixels) [B,h,w,Cp], centers [B,N,D]) -> (centers, prediction)."""

  def __init__(self, num_class_logits, center_width=256, num_heads=8,
               ffn_width=2048, embedding_dim=128, head_width=256,
               cross_attention_activation='cluster_argmax',
               drop_path_keep_prob=1.0, **kwargs):
    super().__init__(**kwargs)
    self.num_class_logits = num_class_logits
    self.center_width = center_width
    self.num_heads = num_heads
    self.ffn_width = ffn_width
    self.embedding_dim = embedding_dim
    self.head_width = head_width
    self.cross_attention_activation = cross_attention.CrossAttentionActivation(
        cross_attention_activation).value
    self.drop_path_keep_prob = drop_path_keep_prob
    self.key_depth = center_width // 2
    width = center_width
    qk_init = keras.initializers.TruncatedNormal(stddev=width**-0.5)

    self.pixel_conv1 = conv_bn.DenseBN(width, activation='gelu',
                                       name='pixel_conv1_bn_act')
    self.memory_conv1 = conv_bn.DenseBN(width, activation='gelu',
                                        name='memory_conv1_bn_act')
    self.memory_qkv = conv_bn.DenseBN(2 * self.key_depth + width,
                                      kernel_initializer=qk_init,
                                      name='memory_qkv_conv_bn')
    self.pixel_v = conv_bn.DenseBN(width, kernel_initializer=qk_init,
                                   name='pixel_v_conv_bn')
    self.predictor = mask_prediction_head.MaskPredictionHead(
        num_class_logits, embedding_dim, head_width,
        name='auxiliary_clustering_predictor')
    # k-means update.
    self.kmeans_bn = conv_bn.batch_norm(
        'kmeans_memory_batch_norm_retrieved_value')
    self.kmeans_conv3 = conv_bn.DenseBN(width, bn_gamma_initializer='zeros',
                                        name='kmeans_memory_conv3_bn')
    # Self-attention among centers.
    self.similarity_bn = grouped_batch_norm.GroupedBatchNorm(
        (1, num_heads, 1, 1), name='memory_attention_batch_norm_similarity')
    self.retrieved_value_bn = grouped_batch_norm.GroupedBatchNorm(
        (1, num_heads, 1, width // num_heads),
        name='memory_attention_batch_norm_retrieved_value')
    self.memory_conv3 = conv_bn.DenseBN(width, bn_gamma_initializer='zeros',
                                        name='memory_conv3_bn')
    # Feed-forward network.
    self.ffn_conv1 = conv_bn.DenseBN(ffn_width, activation='gelu',
                                     name='memory_ffn_conv1_bn_act')
    self.ffn_conv2 = conv_bn.DenseBN(width, bn_gamma_initializer='zeros',
                                     name='memory_ffn_conv2_bn')
    self.drop_kmeans = drop_path.DropPath(drop_path_keep_prob)
    self.drop_attention = drop_path.DropPath(drop_path_keep_prob)
    self.drop_ffn = drop_path.DropPath(drop_path_keep_prob)

  def call(self, pixels, centers, training=False):
    b, h, w = tf.shape(pixels)[0], pixels.shape[1], pixels.shape[2]
    n, width = centers.shape[1], self.center_width
    pixels = tf.reshape(pixels, [b, h * w, pixels.shape[-1]])  # activated
    pixel_b = self.pixel_conv1(pixels, training=training)  # [B, P, D]
    center_b = self.memory_conv1(centers, training=training)  # [B, N, D]

    prediction = self.predictor(tf.reshape(pixel_b, [b, h, w, width]),
                                center_b, center_b, training=training)
    logits = tf.reshape(prediction[outputs.MASK_LOGITS], [b, h * w, n])

    # Clustering update: each center gathers its pixels' values.
    values = self.pixel_v(pixel_b, training=training)  # [B, P, D]
    update = cross_attention.aggregate(
        logits, values, self.cross_attention_activation)  # [B, N, D]
    update = self.kmeans_bn(update, training=training)
    update = self.kmeans_conv3(update, training=training)  # [B, N, D]

    retrieved = self.self_attention(center_b, training)  # [B, N, D]
    centers = self.update_centers(
        centers, [self.drop_kmeans(update, training=training),
                  self.drop_attention(retrieved, training=training)],
        training)
    return centers, prediction

  def self_attention(self, center_b, training):
    """Multi-head self-attention among the (projected) centers [B, N, D]."""
    b, n = tf.shape(center_b)[0], center_b.shape[1]
    heads, width = self.num_heads, self.center_width
    qkv = self.memory_qkv(center_b, training=training)  # [B, N, 2Dk + D]
    q, k, v = tf.split(qkv, [self.key_depth, self.key_depth, width], -1)
    q = tf.reshape(q, [b, n, heads, -1])  # [B, N, h, dk]
    k = tf.reshape(k, [b, n, heads, -1])  # [B, N, h, dk]
    v = tf.reshape(v, [b, n, heads, -1])  # [B, N, h, dv]
    similarity = tf.einsum('bnhd,bmhd->bhnm', q, k)  # [B, h, N, N]
    similarity = self.similarity_bn(similarity, training=training)
    attention = tf.nn.softmax(similarity, axis=-1)
    retrieved = tf.einsum('bhnm,bmhd->bhnd', attention, v)  # [B, h, N, dv]
    retrieved = conv_bn.gelu(
        self.retrieved_value_bn(retrieved, training=training))
    retrieved = tf.reshape(tf.transpose(retrieved, [0, 2, 1, 3]),
                           [b, n, width])  # [B, N, D]
    return self.memory_conv3(retrieved, training=training)

  def update_centers(self, centers, branches, training):
    """C <- act(C + sum of the (dropped) branches), then the FFN."""
    for branch in branches:  # left to right, as written out before
      centers = centers + branch
    centers = conv_bn.gelu(centers)
    ffn = self.ffn_conv2(self.ffn_conv1(centers, training=training),
                         training=training)  # [B, N, D]
    return conv_bn.gelu(centers + self.drop_ffn(ffn, training=training))

  def get_config(self):
    return {**super().get_config(), 'num_class_logits': self.num_class_logits,
            'center_width': self.center_width, 'num_heads': self.num_heads,
            'ffn_width': self.ffn_width, 'embedding_dim': self.embedding_dim,
            'head_width': self.head_width,
            'cross_attention_activation': self.cross_attention_activation,
            'drop_path_keep_prob': self.drop_path_keep_prob}
