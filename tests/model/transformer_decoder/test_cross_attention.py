"""Tests of the pixel-to-center aggregation (MaX / CMT / kMaX activations)."""
import numpy as np
import pytest
import tensorflow as tf

from deeplab2_kmax.model.transformer_decoder import cross_attention

Activation = cross_attention.CrossAttentionActivation
SPATIAL = Activation.SPATIAL_SOFTMAX.value
CLUSTER = Activation.CLUSTER_SOFTMAX.value
ARGMAX = Activation.CLUSTER_ARGMAX.value

_B, _P, _N, _D = 2, 12, 5, 3  # Batch, pixels, centers, value width.


def _inputs(seed=0):
  rng = np.random.RandomState(seed)
  logits = rng.normal(size=(_B, _P, _N)).astype(np.float32)
  values = rng.normal(size=(_B, _P, _D)).astype(np.float32)
  return logits, values


def test_argmax_assignment_is_one_hot_of_argmax():
  logits, _ = _inputs()
  weights = cross_attention.assignment(logits, ARGMAX).numpy()
  assert weights.shape == (_B, _P, _N)
  assert weights.dtype == np.float32
  assert set(np.unique(weights)) <= {0.0, 1.0}
  np.testing.assert_array_equal(weights.sum(-1), np.ones((_B, _P)))
  np.testing.assert_array_equal(weights.argmax(-1), logits.argmax(-1))


def test_argmax_aggregate_sums_each_cluster():
  logits, values = _inputs(1)
  update = cross_attention.aggregate(logits, values, ARGMAX).numpy()
  assert update.shape == (_B, _N, _D)
  labels = logits.argmax(-1)  # [B, P]
  expected = np.zeros((_B, _N, _D), np.float32)
  for b in range(_B):
    for p in range(_P):
      expected[b, labels[b, p]] += values[b, p]
  np.testing.assert_allclose(update, expected, atol=1e-5)


def test_argmax_empty_cluster_gathers_zero():
  logits, values = _inputs(2)
  logits[..., -1] = -100.0  # No pixel picks the last center.
  logits[0, :, 1] = -100.0  # Nor, in the first image, center 1,
  logits[1, 0, 1] = 100.0  # which pixel 0 of the second image picks.
  update = cross_attention.aggregate(logits, values, ARGMAX).numpy()
  np.testing.assert_array_equal(update[:, -1], np.zeros((_B, _D)))
  np.testing.assert_array_equal(update[0, 1], np.zeros(_D))
  members = logits[1].argmax(-1) == 1
  np.testing.assert_allclose(update[1, 1], values[1][members].sum(0),
                             atol=1e-5)
  assert np.abs(update[1, 1]).sum() > 0


def test_argmax_blocks_gradient_to_logits_but_not_to_values():
  logits, values = _inputs(3)
  logits, values = tf.constant(logits), tf.constant(values)
  upstream = tf.constant(np.random.RandomState(4).normal(
      size=(_B, _N, _D)).astype(np.float32))
  with tf.GradientTape(persistent=True) as tape:
    tape.watch([logits, values])
    loss = tf.reduce_sum(
        cross_attention.aggregate(logits, values, ARGMAX) * upstream)
  grad_logits = tape.gradient(loss, logits)
  grad_values = tape.gradient(loss, values)
  assert grad_logits is None or not np.any(grad_logits.numpy())
  # d loss / d values[b, p] = upstream[b, cluster of p].
  labels = logits.numpy().argmax(-1)
  expected = np.take_along_axis(upstream.numpy(), labels[..., None], axis=1)
  np.testing.assert_allclose(grad_values.numpy(), expected, atol=1e-6)


def test_cluster_softmax_sums_to_one_over_centers():
  logits, _ = _inputs(5)
  weights = cross_attention.assignment(logits, CLUSTER).numpy()
  np.testing.assert_allclose(weights.sum(axis=2), np.ones((_B, _P)),
                             atol=1e-6)
  e = np.exp(logits - logits.max(2, keepdims=True))
  np.testing.assert_allclose(weights, e / e.sum(2, keepdims=True), atol=1e-6)


def test_cluster_softmax_passes_gradient_to_logits():
  logits, values = _inputs(6)
  logits, values = tf.constant(logits), tf.constant(values)
  with tf.GradientTape() as tape:
    tape.watch(logits)
    loss = tf.reduce_sum(
        cross_attention.aggregate(logits, values, CLUSTER) ** 2)
  grad = tape.gradient(loss, logits)
  assert grad is not None
  assert np.abs(grad.numpy()).max() > 1e-4


def test_spatial_softmax_sums_to_one_over_pixels():
  logits, values = _inputs(7)
  weights = cross_attention.assignment(logits, SPATIAL).numpy()
  np.testing.assert_allclose(weights.sum(axis=1), np.ones((_B, _N)),
                             atol=1e-6)
  assert not np.allclose(weights.sum(axis=2), 1.0, atol=1e-3)
  # Each center gathers a weighted mean of the pixel values.
  update = cross_attention.aggregate(logits, values, SPATIAL).numpy()
  np.testing.assert_allclose(update, np.einsum('bpn,bpd->bnd', weights,
                                               values), atol=1e-5)


def test_accepts_enum_members_and_casts_to_float32():
  logits, values = _inputs(8)
  by_name = cross_attention.aggregate(logits, values, ARGMAX)
  by_enum = cross_attention.aggregate(
      tf.constant(logits, tf.float16), tf.constant(values, tf.float16),
      Activation.CLUSTER_ARGMAX)
  assert by_enum.dtype == tf.float32
  np.testing.assert_allclose(by_enum.numpy(), by_name.numpy(), atol=1e-2)


@pytest.mark.parametrize('name', ['softmax', 'argmax', ''])
def test_unknown_activation_raises(name):
  logits, values = _inputs()
  with pytest.raises(ValueError):
    cross_attention.aggregate(logits, values, name)
