"""Tests of the axial attention layers against a numpy reference."""
import numpy as np
import pytest
import tensorflow as tf

from deeplab2_kmax.model import kernels
from deeplab2_kmax.model.kernels import cpu_attention
from deeplab2_kmax.model.layers import axial_attention

_EPSILON = 1e-3  # The project's batch-norm epsilon.


def test_attention_1d_output_shape():
  layer = axial_attention.AxialAttention1D(key_depth=8, value_depth=12,
                                           num_heads=4)
  y = layer(tf.random.normal([3, 7, 5]))
  assert y.shape == (3, 7, 12)
  assert layer.qkv_kernel.shape == (5, 2 * 8 + 12)


def test_attention_1d_rejects_depths_not_divisible_by_heads():
  with pytest.raises(ValueError, match='num_heads'):
    axial_attention.AxialAttention1D(key_depth=6, value_depth=8, num_heads=4)


def test_attention_2d_output_shape():
  layer = axial_attention.AxialAttention2D(filters=4, num_heads=2)
  y = layer(tf.random.normal([2, 5, 3, 6]), training=False)
  assert y.shape == (2, 5, 3, 8)
  # Height attention sees the input width; width attention sees 2f channels.
  assert layer.height_axis.qkv_kernel.shape == (6, 4 + 4 + 8)
  assert layer.width_axis.qkv_kernel.shape == (8, 4 + 4 + 8)


def test_attention_2d_runs_in_training_mode():
  layer = axial_attention.AxialAttention2D(filters=4, num_heads=2)
  y = layer(tf.random.normal([2, 3, 5, 6]), training=True)
  assert y.shape == (2, 3, 5, 8)
  assert np.all(np.isfinite(y.numpy()))


def test_attention_2d_attends_along_height_then_width():
  """Each output pixel depends on every input pixel (row then column)."""
  layer = axial_attention.AxialAttention2D(filters=4, num_heads=2)
  x = tf.random.normal([1, 3, 4, 6])
  layer(x)
  with tf.GradientTape() as tape:
    tape.watch(x)
    y = tf.reduce_sum(layer(x, training=False)[0, 0, 0])
  grad = tape.gradient(y, x).numpy()
  assert np.all(np.abs(grad).sum(-1) > 0)


def test_relative_positional_encoding_lookup():
  rpe = axial_attention.RelativePositionalEncoding(3)
  rpe.build()
  table = np.random.RandomState(0).randn(509, 3).astype(np.float32)
  rpe.embeddings.assign(table)
  length = 6
  lookup = rpe.lookup(length).numpy()
  assert lookup.shape == (length, length, 3)
  for query in range(length):
    for key in range(length):
      np.testing.assert_array_equal(lookup[query, key],
                                    table[key - query + 254])
  # The diagonal ("same position") is row 254 for every query.
  np.testing.assert_array_equal(lookup[2, 2], table[254])
  assert rpe.embeddings.shape == (2 * axial_attention.MAX_SPAN - 1, 3)


def _batch_norm(x, bn):
  """Numpy inference-mode batch norm with a layer's current weights."""
  mean = np.asarray(bn.moving_mean)
  variance = np.asarray(bn.moving_variance)
  return ((x - mean) / np.sqrt(variance + _EPSILON) * np.asarray(bn.gamma) +
          np.asarray(bn.beta))


def _softmax(x, axis):
  e = np.exp(x - x.max(axis=axis, keepdims=True))
  return e / e.sum(axis=axis, keepdims=True)


def _reference_attention_1d(x, layer):
  """Numpy AxialAttention1D, inference mode, written loop by loop."""
  n, length, _ = x.shape
  heads = layer.num_heads
  dk = layer.key_depth // heads
  dv = layer.value_depth // heads
  qkv = _batch_norm(x @ np.asarray(layer.qkv_kernel), layer.batch_norm_qkv)
  q = qkv[..., :layer.key_depth].reshape(n, length, heads, dk)
  k = qkv[..., layer.key_depth:2 * layer.key_depth].reshape(
      n, length, heads, dk)
  v = qkv[..., 2 * layer.key_depth:].reshape(n, length, heads, dv)
  table_q = np.asarray(layer.query_rpe.embeddings)
  table_k = np.asarray(layer.key_rpe.embeddings)
  table_v = np.asarray(layer.value_rpe.embeddings)
  sim_bn = layer.batch_norm_similarity
  sim_mean = np.asarray(sim_bn.moving_mean).reshape(3, heads)
  sim_var = np.asarray(sim_bn.moving_variance).reshape(3, heads)
  sim_gamma = np.asarray(sim_bn.gamma).reshape(3, heads)
  sim_beta = np.asarray(sim_bn.beta).reshape(3, heads)
  out_bn = layer.batch_norm_retrieved_output
  out_mean = np.asarray(out_bn.moving_mean).reshape(2, heads, dv)
  out_var = np.asarray(out_bn.moving_variance).reshape(2, heads, dv)
  out_gamma = np.asarray(out_bn.gamma).reshape(2, heads, dv)
  out_beta = np.asarray(out_bn.beta).reshape(2, heads, dv)

  def norm(value, mean, var, gamma, beta):
    return (value - mean) / np.sqrt(var + _EPSILON) * gamma + beta

  output = np.zeros((n, length, heads, dv))
  for b in range(n):
    for h in range(heads):
      logits = np.zeros((length, length))
      for l in range(length):
        for m in range(length):
          offset = m - l + 254
          terms = [q[b, l, h] @ k[b, m, h], q[b, l, h] @ table_q[offset],
                   k[b, m, h] @ table_k[offset]]
          logits[l, m] = sum(
              norm(t, sim_mean[i, h], sim_var[i, h], sim_gamma[i, h],
                   sim_beta[i, h]) for i, t in enumerate(terms))
      weights = _softmax(logits, axis=-1)
      for l in range(length):
        content = sum(weights[l, m] * v[b, m, h] for m in range(length))
        position = sum(weights[l, m] * table_v[m - l + 254]
                       for m in range(length))
        output[b, l, h] = (
            norm(content, out_mean[0, h], out_var[0, h], out_gamma[0, h],
                 out_beta[0, h]) +
            norm(position, out_mean[1, h], out_var[1, h], out_gamma[1, h],
                 out_beta[1, h]))
  return output.reshape(n, length, heads * dv)


def _randomise(layer, rng):
  """Assigns random values to every weight of a built AxialAttention1D."""
  for bn in (layer.batch_norm_qkv, layer.batch_norm_similarity,
             layer.batch_norm_retrieved_output):
    shape = bn.gamma.shape
    bn.gamma.assign(rng.uniform(0.5, 1.5, shape).astype(np.float32))
    bn.beta.assign(rng.normal(0.0, 0.2, shape).astype(np.float32))
    bn.moving_mean.assign(rng.normal(0.0, 0.2, shape).astype(np.float32))
    bn.moving_variance.assign(rng.uniform(0.5, 2.0, shape).astype(np.float32))
  layer.qkv_kernel.assign(
      rng.normal(0.0, 0.3, layer.qkv_kernel.shape).astype(np.float32))
  for rpe in (layer.query_rpe, layer.key_rpe, layer.value_rpe):
    rpe.embeddings.assign(
        rng.normal(0.0, 0.5, rpe.embeddings.shape).astype(np.float32))


@pytest.mark.parametrize('policy', ['REFERENCE', 'CPU_OPTIMIZED'])
def test_attention_1d_matches_numpy_reference(policy):
  rng = np.random.RandomState(1)
  layer = axial_attention.AxialAttention1D(key_depth=4, value_depth=6,
                                           num_heads=2)
  x = rng.normal(size=(2, 5, 3)).astype(np.float32)
  layer(x)  # Builds the weights.
  _randomise(layer, rng)
  with kernels.policy_scope(policy):
    y = layer(x, training=False).numpy()
  np.testing.assert_allclose(y, _reference_attention_1d(x, layer),
                             atol=1e-4, rtol=1e-4)


def test_attention_1d_is_not_translation_invariant():
  """Relative positions matter: a shifted sequence does not shift outputs."""
  rng = np.random.RandomState(2)
  layer = axial_attention.AxialAttention1D(key_depth=4, value_depth=4,
                                           num_heads=2)
  x = rng.normal(size=(1, 6, 3)).astype(np.float32)
  layer(x)
  _randomise(layer, rng)
  y = layer(x).numpy()
  y_flipped = layer(x[:, ::-1]).numpy()[:, ::-1]
  assert not np.allclose(y, y_flipped, atol=1e-3)


def test_attention_1d_accepts_the_longest_axis():
  layer = axial_attention.AxialAttention1D(key_depth=2, value_depth=2,
                                           num_heads=1)
  y = layer(tf.zeros([1, axial_attention.MAX_AXIS_LENGTH, 2]))
  assert y.shape == (1, 129, 2)


def test_attention_1d_rejects_long_axis():
  layer = axial_attention.AxialAttention1D(key_depth=2, value_depth=2,
                                           num_heads=1)
  with pytest.raises(ValueError, match='130'):
    layer(tf.zeros([1, 130, 2]))


def test_cpu_training_kernel_equals_the_reference_graph():
  """The CPU path's one-replica XLA training attention against the plain
  graph: outputs, gradients of every weight and input, moving statistics."""
  rng = np.random.RandomState(3)
  x = tf.constant(rng.normal(size=(3, 7, 5)).astype(np.float32))
  upstream = tf.constant(rng.normal(size=(3, 7, 6)).astype(np.float32))
  results = []
  for policy in ('CPU_OPTIMIZED', 'REFERENCE'):
    layer = axial_attention.AxialAttention1D(key_depth=4, value_depth=6,
                                             num_heads=2)
    layer(x)
    _randomise(layer, np.random.RandomState(4))
    @tf.function
    def train_step(x, layer=layer):
      with tf.GradientTape() as tape:
        tape.watch(x)
        y = layer(x, training=True)
      return y, tape.gradient(y, [x] + layer.trainable_weights,
                              output_gradients=upstream)

    with kernels.policy_scope(policy):
      y, grads = train_step(x)
    stats = [w for w in layer.non_trainable_weights]
    results.append([y] + [tf.convert_to_tensor(g) for g in grads] + stats)
  assert len(results[0]) == len(results[1])
  for got, want in zip(*results):
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


def test_training_kernel_under_mixed_precision():
  """Inside a bfloat16 parent the grouped norms' weights stay float32."""
  import keras  # pylint: disable=import-outside-toplevel
  layer = axial_attention.AxialAttention1D(key_depth=4, value_depth=6,
                                           num_heads=2, dtype='mixed_bfloat16')
  x = tf.random.stateless_normal([3, 7, 5], seed=[5, 5])
  y = tf.function(lambda x: layer(x, training=True))(x)
  assert y.dtype == tf.bfloat16
  for bn in (layer.batch_norm_similarity, layer.batch_norm_retrieved_output):
    assert bn.moving_mean.dtype == 'float32'
    assert not np.allclose(bn.moving_mean.numpy(), 0.0)
  assert keras.config.dtype_policy().name == 'float32'


def test_training_projection_equals_the_einsum_with_gradients():
  """The training path's qkv projection (one 2-D matmul) against
  tf.einsum('nlc,cd->nld'): values and both gradients, traced with an
  unknown batch size."""
  rng = np.random.RandomState(6)
  x = tf.constant(rng.normal(size=(3, 7, 5)).astype(np.float32))
  kernel = tf.constant(rng.normal(size=(5, 4)).astype(np.float32))
  upstream = tf.constant(rng.normal(size=(3, 7, 4)).astype(np.float32))

  def value_and_gradients(project):
    @tf.function(input_signature=[tf.TensorSpec([None, 7, 5]),
                                  tf.TensorSpec([5, 4])])
    def run(x, kernel):
      with tf.GradientTape() as tape:
        tape.watch([x, kernel])
        y = project(x, kernel)
      return [y] + tape.gradient(y, [x, kernel], output_gradients=upstream)
    return run(x, kernel)

  got = value_and_gradients(cpu_attention._project_for_training)  # pylint: disable=protected-access
  want = value_and_gradients(
      lambda x, kernel: tf.einsum('nlc,cd->nld', x, kernel))
  assert got[0].shape == (3, 7, 4)
  for g, w in zip(got, want):
    np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-5)


def _reference_attention_2d(x, layer):
  """Numpy AxialAttention2D at inference, strided as DeepLab2: height
  attention on every row, rows [::s], width attention, columns [::s]."""
  b, h, w, c = x.shape
  s = layer.strides
  columns = x.transpose(0, 2, 1, 3).reshape(b * w, h, c)  # [B*W, H, C]
  y = _reference_attention_1d(columns, layer.height_axis)
  y = y.reshape(b, w, h, -1).transpose(0, 2, 1, 3)[:, ::s]  # [B, H', W, V]
  rows = y.shape[1]
  y = _reference_attention_1d(y.reshape(b * rows, w, -1), layer.width_axis)
  return y.reshape(b, rows, w, -1)[:, :, ::s]  # [B, H', W', V]


def _strided_pair(rng, x):
  """A strided AxialAttention2D and an unstrided one with equal weights."""
  strided = axial_attention.AxialAttention2D(filters=4, num_heads=2,
                                             strides=2)
  plain = axial_attention.AxialAttention2D(filters=4, num_heads=2)
  strided(x)
  plain(x)
  _randomise(strided.height_axis, rng)
  _randomise(strided.width_axis, rng)
  for ours, theirs in zip(plain.weights, strided.weights):
    ours.assign(theirs)
  return strided, plain


@pytest.mark.parametrize('policy', ['REFERENCE', 'CPU_OPTIMIZED'])
def test_strided_attention_2d_matches_numpy_reference(policy):
  rng = np.random.RandomState(7)
  x = rng.normal(size=(2, 5, 7, 6)).astype(np.float32)
  strided, plain = _strided_pair(rng, x)
  with kernels.policy_scope(policy):
    y = strided(x, training=False).numpy()
    # At inference rows are independent: the unstrided output subsampled.
    y_plain = plain(x, training=False).numpy()[:, ::2, ::2]
  assert y.shape == (2, 3, 4, 8)
  np.testing.assert_allclose(y, _reference_attention_2d(x, strided),
                             atol=1e-4, rtol=1e-4)
  np.testing.assert_allclose(y, y_plain, atol=1e-5, rtol=1e-5)


def test_strided_attention_2d_training_agrees_across_policies():
  """Training mode (batch statistics over the strided rows): both kernel
  policies give the same outputs and moving statistics."""
  rng = np.random.RandomState(8)
  x = tf.constant(rng.normal(size=(2, 5, 7, 6)).astype(np.float32))
  strided, _ = _strided_pair(rng, x)
  weights = [v.numpy() for v in strided.weights]
  results = []
  for policy in ('REFERENCE', 'CPU_OPTIMIZED'):
    for v, w in zip(strided.weights, weights):
      v.assign(w)
    with kernels.policy_scope(policy):
      y = tf.function(lambda x: strided(x, training=True))(x)
    results.append([y.numpy()] + [v.numpy()
                                  for v in strided.non_trainable_weights])
  assert results[0][0].shape == (2, 3, 4, 8)
  for got, want in zip(*results):
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
