"""The auxiliary semantic head: shapes with and without the decoder, and the
ASPP pooling branch."""
import numpy as np
import tensorflow as tf

from deeplab2_kmax.model.heads import semantic_head


def _features(batch=1, size=65):
  return {s: tf.random.normal([batch, (size - 1) // s + 1,
                               (size - 1) // s + 1, 8 * s], seed=s)
          for s in (2, 4, 8, 16, 32)}


def test_decoder_predicts_at_the_finest_low_level_stride():
  head = semantic_head.SemanticHead(
      5, use_decoder=True, aspp_channels=8, atrous_rates=(1, 2, 3),
      low_level=[semantic_head.LowLevelSkip(8, 4),
                 semantic_head.LowLevelSkip(4, 2)],
      decoder_channels=8, head_channels=8)
  logits = head(_features(), training=False)
  assert logits.shape == (1, 17, 17, 5)


def test_without_decoder_predicts_at_stride_32():
  head = semantic_head.SemanticHead(19, use_decoder=False, head_channels=8)
  assert head(_features(2), training=False).shape == (2, 3, 3, 19)


def test_aspp_pool_branch_is_the_global_mean_broadcast():
  aspp = semantic_head.ASPP(4, atrous_rates=(1,))
  x = tf.random.normal([2, 5, 5, 3], seed=7)
  aspp(x)
  pooled = aspp.pool_conv(tf.reduce_mean(x, [1, 2], keepdims=True),
                          training=False).numpy()
  # Zero every branch but the pool branch in the projection.
  kernel = np.zeros(aspp.projection.kernel.shape, np.float32)
  kernel[0, 0, 8:12, :] = np.eye(4)
  aspp.projection.kernel.assign(kernel)
  y = aspp(x, training=False).numpy()
  expected = aspp.projection.bn(
      np.broadcast_to(pooled, (2, 5, 5, 4)), training=False).numpy()
  np.testing.assert_allclose(y, tf.nn.gelu(expected, approximate=False),
                             atol=1e-5)
