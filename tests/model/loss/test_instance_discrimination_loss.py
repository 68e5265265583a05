"""Pixel sampling (Gumbel top-k, stateless) and the instance discrimination
loss, eagerly and inside tf.data."""
import numpy as np
import tensorflow as tf

from deeplab2_kmax.model.loss import instance_discrimination_loss as idl


def _log_softmax(x):
  x = x - x.max(axis=-1, keepdims=True)
  return x - np.log(np.exp(x).sum(axis=-1, keepdims=True))


def test_loss_by_hand():
  # Samples: two pixels of mask 0 with embedding (1, 0), one pixel of mask 1
  # with (0, 1), one crowd pixel (id -1) with (-1, 0).
  features = np.array([[[1., 0.], [1., 0.], [0., 1.], [-1., 0.]]], np.float32)
  ids = np.array([[0, 0, 1, -1]], np.int32)
  indices = np.array([[0, 1, 2, 3]], np.int32)
  loss = idl.instance_discrimination(features, ids, indices, 0.5).numpy()
  logits = features[0] @ features[0].T / 0.5
  log_p = _log_softmax(logits)
  rows = [-(log_p[0, 0] + log_p[0, 1]) / 2, -(log_p[1, 0] + log_p[1, 1]) / 2,
          -log_p[2, 2]]  # the crowd row has no target
  np.testing.assert_allclose(loss, [np.mean(rows)], rtol=1e-5)


def test_loss_only_sees_the_sampled_pixels():
  features = tf.math.l2_normalize(
      tf.random.stateless_normal([1, 6, 3], seed=[1, 1]), -1)
  ids = tf.constant([[0, 1, 0, 1, 2, 2]])
  full = idl.instance_discrimination(features, ids, [[0, 2, 4]], 0.3)
  changed = tf.tensor_scatter_nd_update(features, [[0, 1]], [[0., 0., 1.]])
  same = idl.instance_discrimination(changed, ids, [[0, 2, 4]], 0.3)
  np.testing.assert_allclose(full.numpy(), same.numpy(), rtol=1e-6)


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
  indices = tf.constant([list(range(8))])
  optimizer_step = 0.5
  before = idl.instance_discrimination(features, ids, indices, 0.3)
  for _ in range(5):
    with tf.GradientTape() as tape:
      loss = idl.instance_discrimination(features, ids, indices, 0.3)
    features.assign(tf.math.l2_normalize(
        features - optimizer_step * tape.gradient(loss, features), -1))
  after = idl.instance_discrimination(features, ids, indices, 0.3)
  assert after.numpy()[0] < before.numpy()[0]
