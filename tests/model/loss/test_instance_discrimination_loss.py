"""Pixel sampling (Gumbel top-k, stateless) and the instance discrimination
loss, eagerly and inside tf.data."""
import numpy as np
import pytest
import tensorflow as tf

from deeplab2_kmax.model import kernels
from deeplab2_kmax.model.kernels import cpu_loss
from deeplab2_kmax.model.loss import instance_discrimination_loss as idl
from deeplab2_kmax.model.loss import reduction


def _log_softmax(x):
  x = x - x.max(axis=-1, keepdims=True)
  return x - np.log(np.exp(x).sum(axis=-1, keepdims=True))


def _dense_reference(features, ids, temperature):
  """The loss as the reference writes it: [S, S] targets and log-softmax."""
  result = []
  for image_features, image_ids in zip(features, ids):
    log_p = _log_softmax(image_features @ image_features.T / temperature)
    same = (image_ids[:, None] == image_ids[None, :]) & (
        image_ids >= 0)[:, None]
    targets = same / np.maximum(same.sum(axis=-1, keepdims=True), 1)
    rows = -(targets * log_p).sum(axis=-1)
    count = np.count_nonzero(rows)
    result.append(rows.sum() / count if count else 0.0)
  return np.array(result)


def test_loss_by_hand():
  # Samples: two pixels of mask 0 with embedding (1, 0), one pixel of mask 1
  # with (0, 1), one crowd pixel (id -1) with (-1, 0).
  features = np.array([[[1., 0.], [1., 0.], [0., 1.], [-1., 0.]]], np.float32)
  ids = np.array([[0, 0, 1, -1]], np.int32)
  loss = idl.instance_discrimination(features, ids, 2, 0.5).numpy()
  logits = features[0] @ features[0].T / 0.5
  log_p = _log_softmax(logits)
  rows = [-(log_p[0, 0] + log_p[0, 1]) / 2, -(log_p[1, 0] + log_p[1, 1]) / 2,
          -log_p[2, 2]]  # the crowd row has no target
  np.testing.assert_allclose(loss, [np.mean(rows)], rtol=1e-5)


@pytest.mark.parametrize('policy', ['REFERENCE', 'CPU_OPTIMIZED'])
def test_loss_and_gradient_equal_the_dense_formula(monkeypatch, policy):
  # CPU path: 37 samples in blocks of 8 rows (the last block has 5). Two
  # images, one of them all void: values and gradients equal the dense
  # [S, S] formula (gradient of the dense formula by TensorFlow's autodiff).
  monkeypatch.setattr(cpu_loss, '_BLOCK_ROWS', 8)
  features = tf.math.l2_normalize(
      tf.random.stateless_normal([2, 37, 5], seed=[2, 3]), -1)
  ids = tf.concat([
      tf.random.stateless_uniform([1, 37], [4, 5], -1, 6, tf.int32),
      tf.fill([1, 37], -1)], axis=0)
  upstream = tf.constant([0.7, 1.3])

  def dense(features):
    logits = tf.einsum('bse,bte->bst', features, features) / 0.3
    same = tf.cast(tf.logical_and(ids[:, :, None] == ids[:, None, :],
                                  (ids >= 0)[:, :, None]), tf.float32)
    targets = same / tf.maximum(tf.reduce_sum(same, -1, keepdims=True), 1.0)
    rows = -tf.reduce_sum(targets * tf.nn.log_softmax(logits), axis=-1)
    return reduction.mean_over_non_zero(rows)

  results = []
  for fn in (dense, lambda f: idl.instance_discrimination(f, ids, 6, 0.3)):
    with kernels.policy_scope(policy), tf.GradientTape() as tape:
      tape.watch(features)
      loss = fn(features)
      weighted = tf.reduce_sum(loss * upstream)
    results.append((loss.numpy(), tape.gradient(weighted, features).numpy()))
  (dense_loss, dense_grad), (loss, grad) = results
  np.testing.assert_allclose(
      loss, _dense_reference(features.numpy(), ids.numpy(), 0.3), rtol=1e-5)
  np.testing.assert_allclose(loss, dense_loss, rtol=1e-5)
  assert loss[1] == 0.0
  np.testing.assert_allclose(grad, dense_grad, rtol=1e-4, atol=1e-6)
  assert np.abs(grad[0]).max() > 1e-3
  np.testing.assert_array_equal(grad[1], 0.0)


def test_loss_inside_tf_function_equals_eager():
  features = tf.math.l2_normalize(
      tf.random.stateless_normal([1, 20, 4], seed=[6, 6]), -1)
  ids = tf.constant([[0, 1, 2, -1] * 5])
  eager = idl.instance_discrimination(features, ids, 3, 0.3)
  traced = tf.function(idl.instance_discrimination)(features, ids, 3, 0.3)
  np.testing.assert_allclose(traced.numpy(), eager.numpy(), rtol=1e-6)


def test_features_at_the_final_resolution_are_gathered():
  feature = tf.random.stateless_normal([2, 5, 6, 3], seed=[1, 1])
  indices = tf.constant([[0, 7, 29], [3, 3, 12]])
  sampled = idl.sample_features(feature, indices, (5, 6))
  expected = tf.gather(tf.reshape(feature, [2, 30, 3]), indices,
                       batch_dims=1)
  np.testing.assert_array_equal(sampled.numpy(), expected.numpy())


def test_coarse_features_equal_resize_then_gather():
  # A stride-4 feature (5x6) against the 17x21 grid, and a 1x1 feature.
  from deeplab2_kmax.model.layers import resize  # pylint: disable=import-outside-toplevel
  for shape in ([2, 5, 6, 4], [2, 1, 1, 4]):
    feature = tf.random.stateless_normal(shape, seed=[2, 2])
    indices = tf.random.stateless_uniform([2, 50], [3, 3], 0, 17 * 21,
                                          tf.int32)
    sampled = idl.sample_features(feature, indices, (17, 21))
    resized = tf.math.l2_normalize(
        resize.resize_align_corners(feature, (17, 21)), -1)
    expected = tf.gather(tf.reshape(resized, [2, 17 * 21, 4]), indices,
                         batch_dims=1)
    np.testing.assert_allclose(sampled.numpy(), expected.numpy(),
                               rtol=1e-5, atol=1e-6)


def test_loss_only_sees_the_sampled_pixels():
  features = tf.math.l2_normalize(
      tf.random.stateless_normal([1, 2, 3, 3], seed=[1, 1]), -1)
  ids = tf.constant([[0, 1, 0, 1, 2, 2]])
  indices = tf.constant([[0, 2, 4]])
  sample_ids = tf.gather(ids, indices, batch_dims=1)

  def loss(features):
    return idl.instance_discrimination(
        idl.sample_features(features, indices, (2, 3)), sample_ids, 3, 0.3)

  changed = tf.tensor_scatter_nd_update(features, [[0, 0, 1]], [[0., 0., 1.]])
  np.testing.assert_allclose(loss(features).numpy(), loss(changed).numpy(),
                             rtol=1e-6)


def test_sampling_is_deterministic_by_seed_and_without_replacement():
  inverse_area = tf.random.stateless_uniform([2, 64], [7, 7], 1.0, 9.0)
  void = tf.zeros([2, 64], tf.bool)
  first = idl.sample_pixels(inverse_area, void, 20, 1.5, [1, 2]).numpy()
  again = idl.sample_pixels(inverse_area, void, 20, 1.5, [1, 2]).numpy()
  other = idl.sample_pixels(inverse_area, void, 20, 1.5, [1, 3]).numpy()
  np.testing.assert_array_equal(first, again)
  assert not np.array_equal(first, other)
  assert first.shape == (2, 20)
  for row in first:
    assert len(set(row.tolist())) == 20


def test_void_pixels_come_last_and_k_is_capped_at_the_pixel_count():
  void = np.zeros([1, 16], bool)
  void[0, [1, 5, 9, 13]] = True
  indices = idl.sample_pixels(tf.ones([1, 16]), void, 4096, 1.5,
                              [4, 2]).numpy()
  assert indices.shape == (1, 16)
  assert set(indices[0, :12].tolist()) == set(np.flatnonzero(~void[0]))
  assert set(indices[0, 12:].tolist()) == {1, 5, 9, 13}


def test_small_masks_are_drawn_first():
  # Pixels 0 and 1 form a mask of area 2, the 14 others one of area 14;
  # at temperature 10 the log-odds gap is 10 log 7 = 19.5 nats.
  inverse_area = np.full([1, 16], 16 / 14, np.float32)
  inverse_area[0, :2] = 16 / 2
  for seed in range(5):
    indices = idl.sample_pixels(inverse_area, np.zeros([1, 16], bool), 2,
                                10.0, [seed, 0]).numpy()
    assert set(indices[0].tolist()) == {0, 1}


def test_sampling_inside_tf_data_equals_eager():
  inverse_area = tf.random.stateless_uniform([3, 1, 25], [3, 3], 1.0, 5.0)
  void = tf.random.stateless_uniform([3, 1, 25], [4, 4]) < 0.2
  seeds = tf.constant([[1, 1], [2, 2], [3, 3]], tf.int64)
  dataset = tf.data.Dataset.from_tensor_slices((inverse_area, void, seeds))
  dataset = dataset.map(lambda a, v, s: idl.sample_pixels(a, v, 8, 1.5, s))
  for index, from_data in enumerate(dataset):
    eager = idl.sample_pixels(inverse_area[index], void[index], 8, 1.5,
                              seeds[index])
    np.testing.assert_array_equal(from_data.numpy(), eager.numpy())


def test_gradient_pulls_same_mask_embeddings_together():
  features = tf.Variable(tf.math.l2_normalize(
      tf.random.stateless_normal([1, 8, 4], seed=[9, 9]), -1))
  ids = tf.constant([[0, 0, 0, 0, 1, 1, 1, 1]])
  optimizer_step = 0.5
  before = idl.instance_discrimination(features, ids, 2, 0.3)
  for _ in range(5):
    with tf.GradientTape() as tape:
      loss = idl.instance_discrimination(features, ids, 2, 0.3)
    features.assign(tf.math.l2_normalize(
        features - optimizer_step * tape.gradient(loss, features), -1))
  after = idl.instance_discrimination(features, ids, 2, 0.3)
  assert after.numpy()[0] < before.numpy()[0]
