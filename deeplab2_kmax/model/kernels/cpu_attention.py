"""CPU paths of the axial attention (layers/axial_attention.py).

Same values as the layer's plain graph, faster on oneDNN CPUs (measured
gains: docs/benchmarks.md):
  * inference: every batch norm folded, one XLA kernel per axis attending
    along an axis of the [B, H, W, C] map, without transposes;
  * training on one replica: the qkv projection as one 2-D matmul (oneDNN's
    einsum is slower), and the attention from the normalised q, k, v on
    (logits, their grouped norm, softmax, outputs, their grouped norm) as
    one XLA kernel that returns the batch moments for the moving averages.
Used only under the CPU_OPTIMIZED kernel policy.
"""
import tensorflow as tf

from deeplab2_kmax.model.kernels import cpu_conv
from deeplab2_kmax.model.layers import grouped_batch_norm


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


def attend_inference(layer, x, axis):
  """`layer`'s (an AxialAttention1D) inference attention along `axis` (1 or
  2) of [B, H, W, C] -> [B, H, W, value_depth]."""
  length = layer.check_length(x.shape[axis])
  heads, head_value = layer.num_heads, layer.value_depth // layer.num_heads
  qkv = tf.einsum('bhwc,cd->bhwd', x, layer.qkv_kernel)  # [B, H, W, 2Kd+Vd]
  logit_scale, logit_shift = cpu_conv.inference_affine(
      layer.batch_norm_similarity)
  output_scale, output_shift = cpu_conv.inference_affine(
      layer.batch_norm_retrieved_output)
  # In float32 also under mixed precision (softmax and folded norms).
  def f32(t):
    return tf.cast(t, tf.float32)

  retrieved = _attention_inference(
      f32(qkv), *cpu_conv.inference_affine(layer.batch_norm_qkv),
      tf.reshape(logit_scale, [3, heads]),
      tf.reduce_sum(tf.reshape(logit_shift, [3, heads]), 0),
      tf.reshape(output_scale, [2, heads, head_value]),
      tf.reduce_sum(tf.reshape(output_shift, [2, heads, head_value]), 0),
      f32(layer.query_rpe.lookup(length)), f32(layer.key_rpe.lookup(length)),
      f32(layer.value_rpe.lookup(length)), axis)
  return tf.cast(retrieved, x.dtype)


def attend_training(layer, x):
  """`layer`'s training attention along the middle axis of [N, L, C], on
  one replica; updates the layer's moving statistics."""
  length = layer.check_length(x.shape[1])
  qkv = _project_for_training(x, layer.qkv_kernel)  # [N, L, 2Kd+Vd]
  q, k, v = layer.split_heads(  # [N, L, h, dk], [N, M, h, dk], [N, M, h, dv]
      layer.batch_norm_qkv(qkv, training=True))
  similarity = layer.batch_norm_similarity
  output = layer.batch_norm_retrieved_output
  # Tensors, not Keras variables, as the compiled function's arguments.
  retrieved, *moments = _attention_training(
      q, k, v, *(tf.cast(t, tf.float32) for t in (
          layer.query_rpe.lookup(length), layer.key_rpe.lookup(length),
          layer.value_rpe.lookup(length), similarity.gamma, similarity.beta)),
      float(similarity.epsilon),
      *(tf.cast(t, tf.float32) for t in (output.gamma, output.beta)),
      float(output.epsilon))
  similarity.update_moving_statistics(*moments[:2])
  output.update_moving_statistics(*moments[2:])
  return tf.cast(retrieved, x.dtype)  # [N, L, Vd]
