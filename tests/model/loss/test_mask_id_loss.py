"""Mask-ID cross-entropy: hand-computed values, void and crowd pixels, GT
masks without a slot."""
import math

import numpy as np
import tensorflow as tf

from deeplab2_kmax.model.loss import mask_id_loss


def _case():
  # 5 pixels, 2 slots, 3 GT masks. Pixel 0: mask 0; pixel 1: mask 1;
  # pixel 2: crowd (no mask, not void); pixel 3: void; pixel 4: mask 2,
  # which got no slot. Mask 0 -> slot 1, mask 1 -> slot 0.
  gt = np.zeros([1, 5, 3], np.float32)
  gt[0, 0, 0] = gt[0, 1, 1] = gt[0, 4, 2] = 1.0
  logits = np.array([[[0., math.log(3.)],  # p(slot 1) = 3/4
                      [math.log(4.), 0.],  # p(slot 0) = 4/5
                      [5., -5.], [-5., 5.], [0., 0.]]], np.float32)
  assignment = np.array([[[0., 1.], [1., 0.], [0., 0.]]], np.float32)
  weights = np.array([[1., 1., 1., 0., 1.]], np.float32)
  return logits, gt, assignment, weights


def test_mask_id_cross_entropy_by_hand():
  loss = mask_id_loss.mask_id_cross_entropy(*_case())
  # Only pixels 0 and 1 have a target slot.
  expected = (-math.log(.75) - math.log(.8)) / 2.0
  np.testing.assert_allclose(loss.numpy(), [expected], rtol=1e-6)


def test_void_pixels_are_ignored_even_with_a_target():
  logits, gt, assignment, weights = _case()
  gt[0, 3, 0] = 1.0  # a void pixel that (wrongly) carries a mask
  loss = mask_id_loss.mask_id_cross_entropy(logits, gt, assignment, weights)
  np.testing.assert_allclose(
      loss.numpy(), [(-math.log(.75) - math.log(.8)) / 2.0], rtol=1e-6)


def test_gradient_flows_only_from_pixels_with_a_target():
  logits, gt, assignment, weights = _case()
  logits = tf.Variable(logits)
  with tf.GradientTape() as tape:
    loss = mask_id_loss.mask_id_cross_entropy(logits, gt, assignment,
                                              weights)
  gradient = tape.gradient(loss, logits).numpy()
  np.testing.assert_array_equal(gradient[0, 2:], 0.0)
  assert gradient[0, 0, 1] < 0 and gradient[0, 1, 0] < 0


def test_all_void_image_gives_zero_not_nan():
  logits, gt, assignment, _ = _case()
  loss = mask_id_loss.mask_id_cross_entropy(logits, gt, assignment,
                                            np.zeros([1, 5], np.float32))
  np.testing.assert_array_equal(loss.numpy(), [0.0])


def test_inside_tf_function_equal_eager():
  args = _case()
  eager = mask_id_loss.mask_id_cross_entropy(*args)
  graph = tf.function(mask_id_loss.mask_id_cross_entropy)(*args)
  np.testing.assert_allclose(graph.numpy(), eager.numpy(), rtol=1e-6)
