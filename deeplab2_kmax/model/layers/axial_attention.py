"""Axial self-attention with relative positional encodings.

Axial-DeepLab (Wang et al., ECCV 2020) factorises 2-D self-attention into a
height-axis and a width-axis 1-D attention. Each 1-D attention is global
along its axis and adds learned relative positional terms to the logits
(query-position and key-position terms) and to the output (value-position
term). Following the reference implementation, logits are not scaled by
1/sqrt(d); a batch norm per (term, head) sets their scale instead, and a
batch norm per (term, head, channel) combines the content and positional
outputs. Used by the enhanced pixel decoder of kMaX-DeepLab at strides 32
and 16.
"""
import keras
import tensorflow as tf

from deeplab2_kmax.model.layers import conv_bn
from deeplab2_kmax.model.layers import grouped_batch_norm
from deeplab2_kmax.model.layers import sync_batch_norm

# Relative offsets -(MAX_SPAN - 1) .. MAX_SPAN - 1 index a table of
# 2 * MAX_SPAN - 1 rows; row MAX_SPAN - 1 is "same position".
MAX_SPAN = 255
# Longest axis the global attention supports (the reference's query shape).
MAX_AXIS_LENGTH = 129


@tf.function(jit_compile=True)
def _attention_inference(qkv, qkv_scale, qkv_shift, logit_scale, logit_shift,
                         output_scale, output_shift, rpe_q, rpe_k, rpe_v,
                         axis):
  """The inference-time attention along `axis` (1 or 2) of [B, H, W, C] qkv.

  Equal to the training-time graph with moving statistics, but with every
  batch norm folded in, without materialising the stacked [3, N, h, L, M]
  logits or transposing the feature map, in one XLA kernel. logit_scale
  [3, h] and output_scale [2, h, dv] are the per-(term, head) and
  per-(term, head, channel) scales; the shifts are summed over terms.
  """
  heads, dk, dv = logit_shift.shape[0], rpe_q.shape[-1], rpe_v.shape[-1]
  # l / m: query / key position on the attended axis, w: the other axis.
  query = 'blw' if axis == 1 else 'bwl'
  key = query.replace('l', 'm')
  batch, height, width = tf.shape(qkv)[0], qkv.shape[1], qkv.shape[2]
  qkv = qkv * qkv_scale + qkv_shift
  q, k, v = tf.split(qkv, [heads * dk, heads * dk, heads * dv], axis=-1)
  q = tf.reshape(q, [batch, height, width, heads, dk])
  k = tf.reshape(k, [batch, height, width, heads, dk])
  v = tf.reshape(v, [batch, height, width, heads, dv])
  logits = (
      tf.einsum(f'{query}hd,{key}hd->bwhlm', q * logit_scale[0][:, None], k) +
      tf.einsum(f'{query}hd,lmd->bwhlm', q * logit_scale[1][:, None], rpe_q) +
      tf.einsum(f'{key}hd,lmd->bwhlm', k * logit_scale[2][:, None], rpe_k) +
      logit_shift[:, None, None])  # [B, W, h, L, M]
  weights = tf.nn.softmax(logits, axis=-1)
  retrieved = (
      tf.einsum(f'bwhlm,{key}hd->{query}hd', weights, v) * output_scale[0] +
      tf.einsum(f'bwhlm,lmd->{query}hd', weights, rpe_v) * output_scale[1] +
      output_shift)  # [B, H, W, h, dv]
  return tf.reshape(retrieved, [batch, height, width, heads * dv])


def _project_for_training(x, kernel):
  """x [N, L, C] times kernel [C, D] as one 2-D matmul -> [N, L, D].

  The same product as tf.einsum('nlc,cd->nld'), but oneDNN's einsum runs it
  25-30% slower on this model's shapes ([41 * 41, 512] x [512, 1024]: 9.2
  against 6.4 ms forward, 16.0 against 13.5 ms for both gradients); the
  training step is 1.6% shorter with it. Inference keeps the einsum: with
  the matmul its peak memory was about 18 MiB higher.
  """
  n, length = tf.shape(x)[0], x.shape[1]
  flat = tf.matmul(tf.reshape(x, [-1, x.shape[-1]]), kernel)
  return tf.reshape(flat, [n, length, kernel.shape[-1]])


def _grouped_normalize(x, axes, gamma, beta, epsilon):
  """GroupedBatchNorm's training map on the local batch statistics over
  `axes` (one replica: no cross-replica sums inside the XLA kernel).

  Returns (normalised x, mean, variance); mean and variance have gamma's
  shape.
  """
  mean = tf.reduce_mean(x, axes, keepdims=True)
  variance = tf.maximum(
      tf.reduce_mean(tf.square(x), axes, keepdims=True) - tf.square(mean),
      0.0)
  return (grouped_batch_norm.normalize(x, mean, variance, gamma, beta,
                                       epsilon), mean, variance)


@tf.function(jit_compile=True)
def _attention_training(q, k, v, rpe_q, rpe_k, rpe_v, similarity_gamma,
                        similarity_beta, similarity_epsilon, output_gamma,
                        output_beta, output_epsilon):
  """The training-time attention of one replica as one XLA kernel.

  The graph of `AxialAttention1D.call` from the normalised q, k, v on,
  with its two grouped batch norms on the batch statistics, in float32;
  XLA compiles its gradient as well (1.3-1.4x faster than TensorFlow's ops
  for a 41-long axis, forward and backward). Only for one replica: with
  several, the statistics must be summed across replicas between the steps.

  Args:
    q, k: [N, L, h, dk]; v: [N, L, h, dv].
    rpe_q, rpe_k: [L, L, dk]; rpe_v: [L, L, dv].
    similarity_gamma, similarity_beta: [3, 1, h, 1, 1].
    similarity_epsilon: Python float.
    output_gamma, output_beta: [2, 1, h, 1, dv].
    output_epsilon: Python float.

  Returns:
    retrieved [N, L, h * dv] and the batch mean and variance of the
    similarity and output norms (their parameters' shapes).
  """
  q, k, v = (tf.cast(t, tf.float32) for t in (q, k, v))
  logits = tf.stack([
      tf.einsum('nlhd,nmhd->nhlm', q, k),
      tf.einsum('nlhd,lmd->nhlm', q, rpe_q),
      tf.einsum('nmhd,lmd->nhlm', k, rpe_k),
  ])  # [3, N, h, L, M]
  logits, similarity_mean, similarity_variance = _grouped_normalize(
      logits, [1, 3, 4], similarity_gamma, similarity_beta,
      similarity_epsilon)
  weights = tf.nn.softmax(tf.reduce_sum(logits, 0), axis=-1)  # [N, h, L, M]
  retrieved = tf.stack([
      tf.einsum('nhlm,nmhd->nhld', weights, v),
      tf.einsum('nhlm,lmd->nhld', weights, rpe_v),
  ])  # [2, N, h, L, dv]
  retrieved, output_mean, output_variance = _grouped_normalize(
      retrieved, [1, 3], output_gamma, output_beta, output_epsilon)
  retrieved = tf.transpose(tf.reduce_sum(retrieved, 0),
                           [0, 2, 1, 3])  # [N, L, h, dv]
  n, length, heads, dv = (tf.shape(retrieved)[0], retrieved.shape[1],
                          retrieved.shape[2], retrieved.shape[3])
  return (tf.reshape(retrieved, [n, length, heads * dv]), similarity_mean,
          similarity_variance, output_mean, output_variance)


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

  def attend_inference(self, x, axis):
    """Inference attention along `axis` (1 or 2) of [B, H, W, C] -> 2f."""
    length = self._check_length(x.shape[axis])
    heads, head_value = self.num_heads, self.value_depth // self.num_heads
    qkv = tf.einsum('bhwc,cd->bhwd', x, self.qkv_kernel)  # [B, H, W, 2Kd+Vd]
    logit_scale, logit_shift = conv_bn.inference_affine(
        self.batch_norm_similarity)
    output_scale, output_shift = conv_bn.inference_affine(
        self.batch_norm_retrieved_output)
    # In float32 also under mixed precision (softmax and folded norms).
    def f32(t):
      return tf.cast(t, tf.float32)

    retrieved = _attention_inference(
        f32(qkv), *conv_bn.inference_affine(self.batch_norm_qkv),
        tf.reshape(logit_scale, [3, heads]),
        tf.reduce_sum(tf.reshape(logit_shift, [3, heads]), 0),
        tf.reshape(output_scale, [2, heads, head_value]),
        tf.reduce_sum(tf.reshape(output_shift, [2, heads, head_value]), 0),
        f32(self.query_rpe.lookup(length)), f32(self.key_rpe.lookup(length)),
        f32(self.value_rpe.lookup(length)), axis)
    return tf.cast(retrieved, x.dtype)

  def _check_length(self, length):
    if length is None:
      raise ValueError(
          f'{self.name}: the attended axis needs a static length (images of '
          'a fixed size k*32+1); got an unknown length')
    if length > MAX_AXIS_LENGTH:
      raise ValueError(
          f'{self.name}: axis length {length} exceeds {MAX_AXIS_LENGTH}, the '
          'longest global axial attention supported; use a smaller input')
    return length

  def call(self, x, training=False):
    """Attention along the middle axis of [N, L, C]."""
    if not training:
      return self.attend_inference(x[:, :, None], axis=1)[:, :, 0]
    length = self._check_length(x.shape[1])
    n = tf.shape(x)[0]
    heads = self.num_heads
    qkv = _project_for_training(x, self.qkv_kernel)  # [N, L, 2Kd+Vd]
    rpe_q = self.query_rpe.lookup(length)  # [L, M, dk]
    rpe_k = self.key_rpe.lookup(length)  # [L, M, dk]
    rpe_v = self.value_rpe.lookup(length)  # [L, M, dv]
    qkv = self.batch_norm_qkv(qkv, training=training)
    q, k, v = tf.split(qkv, [self.key_depth, self.key_depth,
                             self.value_depth], axis=-1)
    q = tf.reshape(q, [n, length, heads, -1])  # [N, L, h, dk]
    k = tf.reshape(k, [n, length, heads, -1])  # [N, M, h, dk]
    v = tf.reshape(v, [n, length, heads, -1])  # [N, M, h, dv]
    if sync_batch_norm.single_replica():
      similarity = self.batch_norm_similarity
      output = self.batch_norm_retrieved_output
      # Tensors, not Keras variables, as the compiled function's arguments.
      retrieved, *moments = _attention_training(
          q, k, v, *(tf.cast(t, tf.float32) for t in (
              rpe_q, rpe_k, rpe_v, similarity.gamma, similarity.beta)),
          float(similarity.epsilon),
          *(tf.cast(t, tf.float32) for t in (output.gamma, output.beta)),
          float(output.epsilon))
      similarity.update_moving_statistics(*moments[:2])
      output.update_moving_statistics(*moments[2:])
      return tf.cast(retrieved, x.dtype)  # [N, L, Vd]
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
  """Height-axis attention, then width-axis attention, on [B, H, W, C]."""

  def __init__(self, filters, num_heads=8, **kwargs):
    super().__init__(**kwargs)
    self.filters = filters
    self.num_heads = num_heads
    self.height_axis = AxialAttention1D(filters, 2 * filters, num_heads,
                                        name='height_axis')
    self.width_axis = AxialAttention1D(filters, 2 * filters, num_heads,
                                       name='width_axis')

  def build(self, input_shape):
    # The inference path calls attend_inference, not the layers themselves.
    self.height_axis.build((None, None, input_shape[-1]))
    self.width_axis.build((None, None, 2 * self.filters))

  def call(self, x, training=False):
    if not training:  # no transposes: the kernels attend along an axis
      x = self.height_axis.attend_inference(x, axis=1)  # [B, H, W, 2f]
      return self.width_axis.attend_inference(x, axis=2)
    b, h, w = tf.shape(x)[0], x.shape[1], x.shape[2]
    x = tf.transpose(x, [0, 2, 1, 3])  # [B, W, H, C]
    x = tf.reshape(x, [-1, h, x.shape[-1]])  # [B*W, H, C]
    x = self.height_axis(x, training=training)  # [B*W, H, 2f]
    x = tf.transpose(tf.reshape(x, [b, w, h, -1]), [0, 2, 1, 3])  # [B,H,W,2f]
    x = tf.reshape(x, [-1, w, 2 * self.filters])  # [B*H, W, 2f]
    x = self.width_axis(x, training=training)
    return tf.reshape(x, [b, h, w, 2 * self.filters])  # [B, H, W, 2f]

  def get_config(self):
    return {**super().get_config(), 'filters': self.filters,
            'num_heads': self.num_heads}
