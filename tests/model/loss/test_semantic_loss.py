"""Semantic loss: weighted cross-entropy, hard-pixel mining with
small-instance weights, ignore label, sampling and strided subsampling."""
import math

import numpy as np
import pytest
import tensorflow as tf

from deeplab2_kmax.model.loss import semantic_loss

LOG2, LOG4, LOG43 = math.log(2.), math.log(4.), math.log(4. / 3.)


def _pixels():
  # 4 pixels, 2 classes. CE per pixel: log 2, log 4, log 4/3, anything.
  logits = np.array([[[0., 0.], [0., math.log(3.)], [0., math.log(3.)],
                      [9., 0.]]], np.float32)
  labels = np.array([[0, 0, 1, 1]], np.int32)
  # Pixel 1 lies in a small instance (weight 3); pixel 3 is void.
  weights = np.array([[1., 3., 1., 0.]], np.float32)
  return logits, labels, weights


def test_cross_entropy_by_hand():
  loss = semantic_loss.semantic_cross_entropy(*_pixels())
  np.testing.assert_allclose(loss.numpy(), [(LOG2 + 3 * LOG4 + LOG43) / 3],
                             rtol=1e-6)


def test_hard_pixel_mining_keeps_largest_weighted_losses():
  # Weighted losses: log 2 = .69, 3 log 4 = 4.16, log 4/3 = .29, 0;
  # keeping half (2 of 4) keeps the small-instance pixel and log 2.
  loss = semantic_loss.semantic_cross_entropy(*_pixels(), top_k_fraction=0.5)
  np.testing.assert_allclose(loss.numpy(), [(3 * LOG4 + LOG2) / 2],
                             rtol=1e-6)
  # Without the small-instance weight pixel 1 is still the hardest.
  logits, labels, _ = _pixels()
  loss = semantic_loss.semantic_cross_entropy(
      logits, labels, np.array([[1., 1., 1., 0.]], np.float32), 0.25)
  np.testing.assert_allclose(loss.numpy(), [LOG4], rtol=1e-6)


def test_rejects_bad_top_k_fraction():
  with pytest.raises(ValueError, match='top_k_fraction'):
    semantic_loss.semantic_cross_entropy(*_pixels(), top_k_fraction=0.0)


def _maps(height=5, width=5, seed=0):
  rng = np.random.RandomState(seed)
  logits = rng.normal(size=[1, height, width, 4]).astype(np.float32)
  semantic = rng.randint(1, 4, size=[1, height, width]).astype(np.int32)
  void = np.zeros([1, height, width], bool)
  void[0, 0, :] = True
  semantic[void] = 0  # ignore label 0
  weights = np.where(void, 0.0, 1.0).astype(np.float32)
  inverse_area = rng.uniform(1, 5, size=[1, height, width]).astype(np.float32)
  return logits, semantic, weights, inverse_area, void


def _all_pixels_reference(logits, semantic, weights):
  flat = logits.reshape(-1, logits.shape[-1])
  flat = flat - flat.max(-1, keepdims=True)
  log_p = flat - np.log(np.exp(flat).sum(-1, keepdims=True))
  ce = -log_p[np.arange(len(flat)), semantic.reshape(-1)] * weights.ravel()
  return ce[ce != 0].mean()


def test_ignore_label_never_counts_even_with_weight():
  logits, semantic, weights, inverse_area, void = _maps()
  kwargs = dict(ignore_label=0, sample_k=0, sample_temperature=2.0,
                top_k_fraction=1.0, seed=[0, 0])
  loss = semantic_loss.semantic_loss(
      logits, semantic, np.ones_like(weights), inverse_area,
      np.zeros_like(void), **kwargs)
  np.testing.assert_allclose(
      loss.numpy(), [_all_pixels_reference(logits, semantic, weights)],
      rtol=1e-5)


def test_sampling_all_pixels_equals_the_full_loss_and_is_seeded():
  logits, semantic, weights, inverse_area, void = _maps()
  kwargs = dict(ignore_label=0, sample_temperature=2.0, top_k_fraction=1.0)
  full = semantic_loss.semantic_loss(logits, semantic, weights, inverse_area,
                                     void, sample_k=0, seed=[0, 0], **kwargs)
  sampled = semantic_loss.semantic_loss(
      logits, semantic, weights, inverse_area, void, sample_k=4096,
      seed=[1, 2], **kwargs)
  np.testing.assert_allclose(sampled.numpy(), full.numpy(), rtol=1e-5)
  few = [semantic_loss.semantic_loss(
      logits, semantic, weights, inverse_area, void, sample_k=5, seed=seed,
      **kwargs).numpy() for seed in ([1, 2], [1, 2], [3, 4])]
  np.testing.assert_array_equal(few[0], few[1])
  assert not np.array_equal(few[0], few[2])


def test_coarse_logits_use_strided_subsampled_targets():
  # Cityscapes-style: logits at 3x3 against 5x5 targets (stride 2).
  logits, _, _, _, _ = _maps(3, 3)
  _, semantic, weights, inverse_area, void = _maps(5, 5, seed=1)
  loss = semantic_loss.semantic_loss(
      logits, semantic, weights, inverse_area, void, ignore_label=0,
      sample_k=0, sample_temperature=2.0, top_k_fraction=1.0, seed=[0, 0])
  expected = _all_pixels_reference(logits, semantic[:, ::2, ::2],
                                   weights[:, ::2, ::2])
  np.testing.assert_allclose(loss.numpy(), [expected], rtol=1e-5)


def test_subsample_to_rejects_non_integer_strides():
  with pytest.raises(ValueError, match='height 5'):
    semantic_loss.subsample_to(tf.zeros([1, 5, 9]), (4, 5))
  np.testing.assert_array_equal(
      semantic_loss.subsample_to(tf.reshape(tf.range(45), [1, 5, 9]),
                                 (3, 5)).numpy(),
      np.arange(45).reshape(1, 5, 9)[:, ::2, ::2])


def test_inside_tf_function_equals_eager():
  args = _maps()
  kwargs = dict(ignore_label=0, sample_k=7, sample_temperature=2.0,
                top_k_fraction=0.5, seed=tf.constant([5, 6]))
  eager = semantic_loss.semantic_loss(*args, **kwargs)
  graph = tf.function(
      lambda *a: semantic_loss.semantic_loss(*a, **kwargs))(*args)
  np.testing.assert_allclose(graph.numpy(), eager.numpy(), rtol=1e-6)
