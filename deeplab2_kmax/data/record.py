"""The TFRecord schema shared by the converters and the input pipeline.

One `tf.train.Example` per image:

| key | type | content |
|---|---|---|
| `image/encoded` | bytes | the image file as read (JPEG or PNG) |
| `image/format` | bytes | `jpeg` or `png` |
| `image/filename` | bytes | file name of the image, relative to the images folder |
| `image/id` | bytes | the image id of the annotation file, as a string |
| `image/height`, `image/width` | int64 | size of image and label |
| `image/panoptic/encoded` | bytes | RGB PNG of the panoptic label, label = R + 256 G + 65536 B |
| `image/panoptic/format` | bytes | `png_rgb24` |
| `image/panoptic/label_divisor` | int64 | the divisor the label was written with |

The panoptic label is `semantic_id * label_divisor + instance_id`
(see `dataset_info` for the ids): thing segments have instance ids 1, 2, ...
per class, stuff segments and crowd regions instance id 0, void pixels
`ignore_label * label_divisor`. 24 bits hold labels below 16,777,216.
"""
import io

import numpy as np
import tensorflow as tf

PANOPTIC_FORMAT = 'png_rgb24'
MAX_LABEL = (1 << 24) - 1

FEATURES = {
    'image/encoded': tf.io.FixedLenFeature([], tf.string),
    'image/format': tf.io.FixedLenFeature([], tf.string),
    'image/filename': tf.io.FixedLenFeature([], tf.string),
    'image/id': tf.io.FixedLenFeature([], tf.string),
    'image/height': tf.io.FixedLenFeature([], tf.int64),
    'image/width': tf.io.FixedLenFeature([], tf.int64),
    'image/panoptic/encoded': tf.io.FixedLenFeature([], tf.string),
    'image/panoptic/format': tf.io.FixedLenFeature([], tf.string),
    'image/panoptic/label_divisor': tf.io.FixedLenFeature([], tf.int64),
}


def encode_label_png(label):
  """int [H, W] panoptic label -> RGB PNG bytes (label = R + 256G + 65536B)."""
  from PIL import Image  # pylint: disable=import-outside-toplevel
  label = np.asarray(label)
  if label.ndim != 2:
    raise ValueError(f'panoptic label must be [H, W], got {label.shape}')
  if label.size and (label.min() < 0 or label.max() > MAX_LABEL):
    raise ValueError(f'panoptic label values must lie in [0, {MAX_LABEL}], '
                     f'got [{label.min()}, {label.max()}]')
  label = label.astype(np.uint32)
  rgb = np.stack([label & 255, (label >> 8) & 255, (label >> 16) & 255],
                 axis=-1).astype(np.uint8)
  buffer = io.BytesIO()
  Image.fromarray(rgb, 'RGB').save(buffer, format='PNG')
  return buffer.getvalue()


def rgb_to_id(rgb):
  """[..., 3] uint8 -> int32 id = R + 256 G + 65536 B (COCO panoptic PNGs)."""
  rgb = np.asarray(rgb).astype(np.int32)
  return rgb[..., 0] + 256 * rgb[..., 1] + 65536 * rgb[..., 2]


def make_example(*, image_bytes, image_format, filename, image_id, label,
                 label_divisor):
  """A serialized tf.train.Example for one image and its panoptic label."""
  label = np.asarray(label)
  height, width = label.shape

  def _bytes(value):
    if isinstance(value, str):
      value = value.encode('utf-8')
    return tf.train.Feature(bytes_list=tf.train.BytesList(value=[value]))

  def _int(value):
    return tf.train.Feature(int64_list=tf.train.Int64List(value=[int(value)]))

  features = {
      'image/encoded': _bytes(image_bytes),
      'image/format': _bytes(image_format),
      'image/filename': _bytes(filename),
      'image/id': _bytes(str(image_id)),
      'image/height': _int(height),
      'image/width': _int(width),
      'image/panoptic/encoded': _bytes(encode_label_png(label)),
      'image/panoptic/format': _bytes(PANOPTIC_FORMAT),
      'image/panoptic/label_divisor': _int(label_divisor),
  }
  return tf.train.Example(
      features=tf.train.Features(feature=features)).SerializeToString()


def decode_label_png(encoded):
  """TF op: RGB PNG bytes -> int32 [H, W] panoptic label."""
  rgb = tf.cast(tf.io.decode_png(encoded, channels=3), tf.int32)
  return rgb[..., 0] + 256 * rgb[..., 1] + 65536 * rgb[..., 2]


def parse_example(serialized):
  """TF op: serialized Example -> dict with decoded `image` and `panoptic`.

  `image`: uint8 [H, W, 3]; `panoptic`: int32 [H, W]; plus `image_id`,
  `filename`, `height`, `width`, `label_divisor`.
  """
  parsed = tf.io.parse_single_example(serialized, FEATURES)
  image = tf.io.decode_image(parsed['image/encoded'], channels=3,
                             expand_animations=False)
  image = tf.ensure_shape(image, [None, None, 3])
  panoptic = decode_label_png(parsed['image/panoptic/encoded'])
  return {
      'image': image,
      'panoptic': panoptic,
      'image_id': parsed['image/id'],
      'filename': parsed['image/filename'],
      'height': tf.cast(parsed['image/height'], tf.int32),
      'width': tf.cast(parsed['image/width'], tf.int32),
      'label_divisor': tf.cast(parsed['image/panoptic/label_divisor'],
                               tf.int32),
  }
