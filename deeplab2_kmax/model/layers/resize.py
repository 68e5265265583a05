"""Bilinear resizing with align_corners=True (the reference's convention).

Every spatial size in the model is k * stride + 1, so an align-corners
resize between strides maps grid points exactly onto grid points.
"""
import tensorflow as tf


def resize_align_corners(images, size):
  """Resizes [B, H, W, C] to `size` = (height, width); a no-op if equal."""
  height, width = size
  if images.shape[1] == height and images.shape[2] == width:
    return images
  resized = tf.raw_ops.ResizeBilinear(
      images=images, size=tf.constant([height, width], tf.int32),
      align_corners=True, half_pixel_centers=False)
  return tf.cast(resized, images.dtype)
