"""Axial self-attention with relative positional encodings.

Axial-DeepLab (Wang et al., ECCV 2020) factorises 2-D self-attention into a
height-axis and a width-axis 1-D attention. Each 1-D attention is global
along its axis and adds learned relative positional terms to the logits
(query-position and key-position terms) and to the output (value-position
term). Following the reference implementation, logits are not scaled by
1/sqrt(d); a batch norm per (term, head) sets their scale instead, and a
batch norm per (term, head, channel) combines the content and positional
outputs. Used by the enhanced pixel decoder of kMaX-DeepLab at strides 32
and 16, and by the MaX-S encoder (Axial-ResNet-50) at strides 16 and 32.
"""
import keras
import tensorflow as tf

from deeplab2_kmax.model import kernels
from deeplab2_kmax.model.kernels import cpu_attention
from deeplab2_kmax.model.layers import conv_bn
from deeplab2_kmax.model.layers import grouped_batch_norm
from deeplab2_kmax.model.layers import sync_batch_norm

# Relative offsets -(MAX_SPAN - 1) .. MAX_SPAN - 1 index a table of
# 2 * MAX_SPAN - 1 rows; row MAX_SPAN - 1 is "same position".
MAX_SPAN = 255
# Longest axis the global attention supports (the reference's query shape).
MAX_AXIS_LENGTH = 129


@keras.saving.register_keras_serializable(package='deeplab2_kmax')
class RelativePositionalEncoding(keras.layers.Layer):
  """A table of embeddings indexed by (key position - query position)."""

  def __init__(self, depth, **kwargs):
    super().__init__(**kwargs)
    self.depth = depth

  def build(self, input_shape=None):
    self.embeddings = self.add_weight(
        name='embeddings', shape=(2 * MAX_SPAN - 1, self.depth),
        initializer=keras.initializers.TruncatedNormal(stddev=1.0))

  def lookup(self, length):
    """Returns [length, length, depth]: entry [l, m] for query l, key m."""
    positions = tf.range(length)
    offsets = positions[None, :] - positions[:, None] + MAX_SPAN - 1
    return tf.gather(self.embeddings, offsets)

  def get_config(self):
    return {**super().get_config(), 'depth': self.depth}


@keras.saving.register_keras_serializable(package='deeplab2_kmax')
class AxialAttention1D(keras.layers.Layer):
  """Global multi-head attention along the middle axis of [N, L, C]."""

  def __init__(self, key_depth, value_depth, num_heads=8, **kwargs):
    super().__init__(**kwargs)
    if key_depth % num_heads or value_depth % num_heads:
      raise ValueError(f'key depth {key_depth} and value depth {value_depth} '
                       f'must be multiples of num_heads {num_heads}')
    self.key_depth = key_depth
    self.value_depth = value_depth
    self.num_heads = num_heads
    head_key, head_value = key_depth // num_heads, value_depth // num_heads
    self.batch_norm_qkv = conv_bn.batch_norm('batch_norm_qkv')
    self.batch_norm_similarity = grouped_batch_norm.GroupedBatchNorm(
        (3, 1, num_heads, 1, 1), name='batch_norm_similarity')
    self.batch_norm_retrieved_output = grouped_batch_norm.GroupedBatchNorm(
        (2, 1, num_heads, 1, head_value), name='batch_norm_retrieved_output')
    self.query_rpe = RelativePositionalEncoding(head_key, name='query_rpe')
    self.key_rpe = RelativePositionalEncoding(head_key, name='key_rpe')
    self.value_rpe = RelativePositionalEncoding(head_value, name='value_rpe')

  def build(self, input_shape):
    channels = input_shape[-1]
    for rpe in (self.query_rpe, self.key_rpe, self.value_rpe):
      rpe.build()
    # The inference path reads these norms' variables without calling them.
    self.batch_norm_qkv.build((None, None, 2 * self.key_depth +
                               self.value_depth))
    self.batch_norm_similarity.build()
    self.batch_norm_retrieved_output.build()
    self.qkv_kernel = self.add_weight(
        name='qkv_kernel', shape=(channels, 2 * self.key_depth +
                                  self.value_depth),
        initializer=keras.initializers.TruncatedNormal(stddev=channels**-0.5))

  def check_length(self, length):
    if length is None:
      raise ValueError(
          f'{self.name}: the attended axis needs a static length (images of '
          'a fixed size k*32+1); got an unknown length')
    if length > MAX_AXIS_LENGTH:
      raise ValueError(
          f'{self.name}: axis length {length} exceeds {MAX_AXIS_LENGTH}, the '
          'longest global axial attention supported; use a smaller input')
    return length

  def split_heads(self, qkv):
    """Normalised [N, L, 2Kd+Vd] -> q, k [N, L, h, dk] and v [N, L, h, dv]."""
    q, k, v = tf.split(qkv, [self.key_depth, self.key_depth,
                             self.value_depth], axis=-1)
    n, length = tf.shape(qkv)[0], qkv.shape[1]
    return tuple(tf.reshape(t, [n, length, self.num_heads, -1])
                 for t in (q, k, v))

  def call(self, x, training=False):
    """Attention along the middle axis of [N, L, C]."""
    if kernels.cpu_optimized('axial_attention'):
      if not training:
        return cpu_attention.attend_inference(self, x[:, :, None], 1)[:, :, 0]
      if sync_batch_norm.single_replica():
        return cpu_attention.attend_training(self, x)
    length = self.check_length(x.shape[1])
    n = tf.shape(x)[0]
    qkv = tf.einsum('nlc,cd->nld', x, self.qkv_kernel)  # [N, L, 2Kd+Vd]
    rpe_q = self.query_rpe.lookup(length)  # [L, M, dk]
    rpe_k = self.key_rpe.lookup(length)  # [L, M, dk]
    rpe_v = self.value_rpe.lookup(length)  # [L, M, dv]
    q, k, v = self.split_heads(self.batch_norm_qkv(qkv, training=training))
    logits = tf.stack([
        tf.einsum('nlhd,nmhd->nhlm', q, k),
        tf.einsum('nlhd,lmd->nhlm', q, rpe_q),
        tf.einsum('nmhd,lmd->nhlm', k, rpe_k),
    ])  # [3, N, h, L, M]
    logits = self.batch_norm_similarity(logits, training=training)
    weights = tf.nn.softmax(  # in float32 also under mixed precision
        tf.cast(tf.reduce_sum(logits, 0), tf.float32), axis=-1)  # [N,h,L,M]
    weights = tf.cast(weights, v.dtype)

    retrieved = tf.stack([
        tf.einsum('nhlm,nmhd->nhld', weights, v),
        tf.einsum('nhlm,lmd->nhld', weights, rpe_v),
    ])  # [2, N, h, L, dv]
    retrieved = self.batch_norm_retrieved_output(retrieved, training=training)
    retrieved = tf.reduce_sum(retrieved, 0)  # [N, h, L, dv]
    retrieved = tf.transpose(retrieved, [0, 2, 1, 3])  # [N, L, h, dv]
    return tf.reshape(retrieved, [n, length, self.value_depth])

  def get_config(self):
    return {**super().get_config(), 'key_depth': self.key_depth,
            'value_depth': self.value_depth, 'num_heads': self.num_heads}


@keras.saving.register_keras_serializable(package='deeplab2_kmax')
class AxialAttention2D(keras.layers.Layer):
  """Height-axis attention, then width-axis attention, on [B, H, W, C].

  With `strides` s > 1 (MaX-S's strided stage-5 block), as in DeepLab2: the
  height attention runs on every row, then rows [::s] are kept; the width
  attention runs on those rows at full width, then columns [::s] are kept.
  The batch norms therefore see the same positions as DeepLab2's in training.
  """

  def __init__(self, filters, num_heads=8, strides=1, **kwargs):
    super().__init__(**kwargs)
    self.filters = filters
    self.num_heads = num_heads
    self.strides = strides
    self.height_axis = AxialAttention1D(filters, 2 * filters, num_heads,
                                        name='height_axis')
    self.width_axis = AxialAttention1D(filters, 2 * filters, num_heads,
                                       name='width_axis')

  def build(self, input_shape):
    # The CPU inference path calls the layers' kernels, not the layers.
    self.height_axis.build((None, None, input_shape[-1]))
    self.width_axis.build((None, None, 2 * self.filters))

  def call(self, x, training=False):
    if not training and kernels.cpu_optimized('axial_attention'):
      # Attends along an axis of the map, without transposes.
      x = cpu_attention.attend_inference(self.height_axis, x, 1)  # [B,H,W,2f]
      x = cpu_attention.attend_inference(self.width_axis, self._rows(x), 2)
      return self._columns(x)  # [B, H/s, W/s, 2f]
    b, h, w = tf.shape(x)[0], x.shape[1], x.shape[2]
    x = tf.transpose(x, [0, 2, 1, 3])  # [B, W, H, C]
    x = tf.reshape(x, [-1, h, x.shape[-1]])  # [B*W, H, C]
    x = self.height_axis(x, training=training)  # [B*W, H, 2f]
    x = tf.transpose(tf.reshape(x, [b, w, h, -1]), [0, 2, 1, 3])  # [B,H,W,2f]
    x = self._rows(x)  # [B, H', W, 2f], H' = ceil(H / s)
    h = x.shape[1]
    x = tf.reshape(x, [-1, w, 2 * self.filters])  # [B*H', W, 2f]
    x = self.width_axis(x, training=training)
    x = tf.reshape(x, [b, h, w, 2 * self.filters])  # [B, H', W, 2f]
    return self._columns(x)  # [B, H', W', 2f]

  def _rows(self, x):
    return x if self.strides == 1 else x[:, ::self.strides]

  def _columns(self, x):
    return x if self.strides == 1 else x[:, :, ::self.strides]

  def get_config(self):
    return {**super().get_config(), 'filters': self.filters,
            'num_heads': self.num_heads, 'strides': self.strides}
