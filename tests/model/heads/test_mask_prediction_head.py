"""The MaX prediction head: its folded inference path equals the plain
computation with moving statistics, and the void prior."""
import math

import numpy as np
import tensorflow as tf

from deeplab2_kmax.model import outputs
from deeplab2_kmax.model.heads import mask_prediction_head


def _randomize(layer, seed):
  rng = np.random.RandomState(seed)
  for variable in layer.weights:
    if 'variance' in variable.path:
      value = rng.uniform(0.5, 2.0, variable.shape)
    else:
      value = rng.normal(0.0, 0.5, variable.shape)
    variable.assign(value.astype(np.float32))


def test_inference_path_equals_plain_computation():
  head = mask_prediction_head.MaskPredictionHead(7, embedding_dim=8,
                                                 head_width=12)
  pixels = tf.random.normal([2, 9, 9, 12], seed=1)
  centers = tf.random.normal([2, 5, 16], seed=2)
  head(pixels, centers, centers)
  _randomize(head, 3)
  result = head(pixels, centers, centers, training=False)

  g = head.pixel_final_conv(head.pixel_conv(pixels, training=False))
  g = tf.math.l2_normalize(head.pixel_feature_bn(g, training=False), -1)
  f = head.mask_head(centers, training=False)
  logits = tf.einsum('bhwe,bne->bhwn', g, f)
  logits = head.mask_bn(logits[..., None], training=False)[..., 0]
  np.testing.assert_allclose(result[outputs.PIXEL_FEATURE], g, atol=1e-5)
  np.testing.assert_allclose(result[outputs.MASK_LOGITS], logits, rtol=1e-4,
                             atol=1e-4)


def test_void_logit_carries_the_prior():
  assert math.isclose(mask_prediction_head.void_logit_offset(134),
                      math.log(133 * 9), rel_tol=1e-12)
  head = mask_prediction_head.MaskPredictionHead(5, embedding_dim=4,
                                                 head_width=4)
  zeros = tf.zeros([1, 3, 6])
  result = head(tf.zeros([1, 5, 5, 4]), zeros, zeros, training=False)
  class_logits = result[outputs.CLASS_LOGITS].numpy()
  np.testing.assert_allclose(class_logits[..., :-1], 0.0, atol=1e-6)
  np.testing.assert_allclose(class_logits[..., -1], math.log(4 * 9),
                             rtol=1e-6)
  # At initialisation p(void) is about 0.9.
  probabilities = tf.nn.softmax(class_logits).numpy()
  np.testing.assert_allclose(probabilities[..., -1], 0.9, rtol=1e-5)
