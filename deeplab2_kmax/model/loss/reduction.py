"""The per-image reduction shared by the kMaX-DeepLab loss terms.

Cross-entropy terms of DeepLab2 average over the entries with a non-zero
weighted loss: entries that are ignored (weight 0, or a target row of all
zeros such as a crowd pixel) then neither add to the sum nor to the count.
"""
import tensorflow as tf


def mean_over_non_zero(losses):
  """[B, ...] -> [B]: sum over the non-batch axes / number of non-zeros.

  An image whose losses are all zero gets 0 (not NaN).
  """
  losses = tf.reshape(losses, [tf.shape(losses)[0], -1])  # [B, X]
  count = tf.reduce_sum(tf.cast(tf.not_equal(losses, 0.0), tf.float32), 1)
  return tf.math.divide_no_nan(tf.reduce_sum(losses, axis=1), count)
