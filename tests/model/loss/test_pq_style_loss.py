"""PQ-style loss: similarities, matching cost padding, class and Dice terms,
against numbers worked out by hand from the formulas."""
import math

import numpy as np
import pytest
import tensorflow as tf

from deeplab2_kmax.model.loss import pq_style_loss


def test_dice_similarity_by_hand():
  # 4 pixels, GT mask on pixels 0 and 1; slot 0 predicts 0.5 on pixels 0..2,
  # slot 1 is 1 on pixel 3 only.
  gt = tf.constant([[[1.], [1.], [0.], [0.]]])  # [1, 4, 1]
  probs = tf.constant([[[.5, 0.], [.5, 0.], [.5, 0.], [0., 1.]]])  # [1, 4, 2]
  dice = pq_style_loss.dice_similarity(gt, probs).numpy()
  # Intersection 1, areas 2 and 1.5 -> 1 / 1.75; slot 1: no overlap.
  np.testing.assert_allclose(dice, [[[1.0 / (1.75 + 1e-5), 0.0]]], rtol=1e-6)


def test_class_similarity_reads_gt_class_and_zeroes_padding():
  # K = 2 classes + void; 2 slots; GT masks of class 1 and padding (K = 2).
  probs = tf.constant([[[.1, .6, .3], [.7, .2, .1]]])  # [1, N=2, 3]
  gt_classes = tf.constant([[1, 2]])
  sim = pq_style_loss.class_similarity(probs, gt_classes).numpy()
  np.testing.assert_allclose(sim, [[[.6, .2], [0., 0.]]], rtol=1e-6)


@pytest.mark.parametrize('num_masks,num_slots,pad', [
    (2, 3, -999.0),  # every row gets a slot: padding costs -999
    (3, 3, -999.0),
    (3, 2, 999.0),  # not every row gets a slot: padding costs +999
])
def test_matching_cost_padding_rule(num_masks, num_slots, pad):
  rng = np.random.RandomState(0)
  dice = rng.uniform(size=[1, num_masks, num_slots]).astype(np.float32)
  sim = rng.uniform(size=[1, num_masks, num_slots]).astype(np.float32)
  valid = np.zeros([1, num_masks], bool)
  valid[0, 0] = True
  cost = pq_style_loss.matching_cost(dice, sim, valid).numpy()
  np.testing.assert_allclose(cost[0, 0], -dice[0, 0] * sim[0, 0], rtol=1e-6)
  np.testing.assert_array_equal(cost[0, 1:], pad)


def test_void_ratio_by_hand():
  probs = tf.constant([[[.2, .5], [.3, .5], [.5, 0.]]])  # [1, 3, 2]
  void = tf.constant([[True, False, False]])
  ratio = pq_style_loss.void_ratio(probs, void).numpy()
  np.testing.assert_allclose(ratio, [[.2 / (1 + 1e-5), .5 / (1 + 1e-5)]],
                             rtol=1e-6)


def test_class_term_by_hand():
  # K = 1 class + void, 2 slots. Slot 0 matched to class 0 (logits equal:
  # CE log 2, weight 0.5, alpha 0.75); slot 1 unmatched, target void with
  # p(void) = 3/4 (CE -log 0.75, weight 0.2, 1 - alpha = 0.25).
  logits = tf.constant([[[0., 0.], [0., math.log(3.)]]])
  slot_classes = tf.constant([[0, 1]])
  weights = tf.constant([[.5, .2]])
  loss = pq_style_loss.class_term(logits, slot_classes, weights, 0.75)
  expected = (0.75 * 0.5 * math.log(2.) - 0.25 * 0.2 * math.log(0.75)) / 2
  np.testing.assert_allclose(loss.numpy(), [expected], rtol=1e-6)


def test_class_term_ignores_zero_weight_slots_in_the_count():
  logits = tf.constant([[[0., 0.], [0., math.log(3.)]]])
  loss = pq_style_loss.class_term(logits, tf.constant([[0, 1]]),
                                  tf.constant([[.5, 0.]]), 0.75)
  np.testing.assert_allclose(loss.numpy(), [0.75 * 0.5 * math.log(2.)],
                             rtol=1e-6)


def test_dice_term_by_hand():
  # 4 pixels: GT mask 0 on pixels 0, 1; GT mask 1 on pixel 2; pixel 3 is in
  # no mask (void or crowd) and does not count. Two slots with equal logits
  # (probability 0.5 everywhere); mask 0 -> slot 1, mask 1 -> slot 0.
  gt = tf.constant([[[1., 0.], [1., 0.], [0., 1.], [0., 0.]]])  # [1, 4, 2]
  logits = tf.zeros([1, 4, 2])
  assignment = tf.constant([[[0., 1.], [1., 0.]]])
  weights = tf.constant([[.8, .1]])
  loss = pq_style_loss.dice_term(logits, gt, assignment, weights)
  # Mask 0: sum p = 1.5 (pixel 3 dropped), sum pg = 1, |g| = 2:
  #   1 - 3 / 4.5 = 1/3. Mask 1: sum p = 1.5, sum pg = .5, |g| = 1:
  #   1 - 2 / 3.5 = 3/7.
  np.testing.assert_allclose(loss.numpy(), [.8 / 3. + .1 * 3. / 7.],
                             rtol=1e-6)


def test_dice_term_gradients_reach_the_matched_slot_only():
  gt = tf.constant([[[1.], [0.], [1.]]])  # [1, 3, 1]
  logits = tf.Variable(tf.random.stateless_normal([1, 3, 3], seed=[1, 2]))
  assignment = tf.constant([[[0., 1., 0.]]])
  with tf.GradientTape() as tape:
    loss = pq_style_loss.dice_term(logits, gt, assignment, tf.ones([1, 1]))
  gradient = tape.gradient(loss, logits).numpy()
  # Pixel 1 is in no GT mask: nothing to learn there.
  np.testing.assert_array_equal(gradient[0, 1], 0.0)
  # The matched slot's logit is pushed up on the mask's pixels.
  assert np.all(gradient[0, [0, 2], 1] < 0)


def test_terms_inside_tf_function_equal_eager():
  logits = tf.random.stateless_normal([2, 4, 4], seed=[3, 4])
  slot_classes = tf.constant([[0, 3, 3, 1], [3, 2, 3, 3]])
  weights = tf.random.stateless_uniform([2, 4], seed=[5, 6])
  eager = pq_style_loss.class_term(logits, slot_classes, weights, .75)
  graph = tf.function(pq_style_loss.class_term)(logits, slot_classes,
                                                weights, .75)
  np.testing.assert_allclose(graph.numpy(), eager.numpy(), rtol=1e-6)
