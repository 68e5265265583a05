"""Pixel-to-center aggregation: the one switch between MaX, CMT and kMaX.

Given affinity logits L between P pixels and N cluster centers (the layer's
own mask prediction) and pixel values V, each center gathers
U = A^T V with an assignment A [B, P, N] chosen by the activation:

  SPATIAL_SOFTMAX  A = softmax over pixels, per center: the standard
                   cross-attention of MaX-DeepLab (a weighted mean of pixels).
  CLUSTER_SOFTMAX  A = softmax over centers, per pixel: CMT-DeepLab's soft
                   clustering assignment (a soft sum over each center's
                   pixels; gradients flow into the logits).
  CLUSTER_ARGMAX   A = one_hot(argmax over centers), stop-gradient: the
                   k-means step of kMaX-DeepLab (the sum of each cluster's
                   pixels; an empty cluster gathers 0).
"""
import enum

import tensorflow as tf


class CrossAttentionActivation(enum.Enum):
  SPATIAL_SOFTMAX = 'spatial_softmax'
  CLUSTER_SOFTMAX = 'cluster_softmax'
  CLUSTER_ARGMAX = 'cluster_argmax'


def assignment(logits, activation):
  """[B, P, N] logits -> [B, P, N] assignment weights (float32)."""
  activation = CrossAttentionActivation(activation)
  logits = tf.cast(logits, tf.float32)
  if activation is CrossAttentionActivation.SPATIAL_SOFTMAX:
    return tf.nn.softmax(logits, axis=1)  # sums to 1 over pixels
  if activation is CrossAttentionActivation.CLUSTER_SOFTMAX:
    return tf.nn.softmax(logits, axis=2)  # sums to 1 over centers
  hard = tf.one_hot(tf.argmax(logits, axis=2), depth=logits.shape[2],
                    dtype=tf.float32)  # [B, P, N]
  return tf.stop_gradient(hard)


def aggregate(logits, values, activation):
  """U = A^T V: [B, P, N] logits, [B, P, D] values -> [B, N, D]."""
  values = tf.cast(values, tf.float32)
  if (CrossAttentionActivation(activation) is
      CrossAttentionActivation.CLUSTER_ARGMAX):
    # Same as the one-hot matmul, in P * D additions instead of P * N * D
    # multiply-adds: sum each pixel's value into its cluster.
    batch, num_centers = tf.shape(logits)[0], logits.shape[2]
    cluster = tf.stop_gradient(tf.argmax(logits, axis=2, output_type=tf.int32))
    cluster += tf.range(batch)[:, None] * num_centers  # [B, P] unique ids
    sums = tf.math.unsorted_segment_sum(values, cluster,
                                        batch * num_centers)  # [B*N, D]
    return tf.reshape(sums, [batch, num_centers, values.shape[-1]])
  weights = assignment(logits, activation)
  return tf.einsum('bpn,bpd->bnd', weights, values)
