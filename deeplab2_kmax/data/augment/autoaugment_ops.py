"""Photometric image ops of AutoAugment, in TensorFlow, matching PIL.

AutoAugment (Cubuk et al., CVPR 2019) draws its operations from PIL; DeepLab2
uses the reduced operation space of RandAugment (Cubuk et al., CVPR 2020):
AutoContrast, Equalize, Invert, Posterize, Solarize, Color, Contrast,
Brightness and Sharpness. Every op here takes and returns a uint8 [H, W, C]
RGB image and follows the PIL function it names, integer rounding included:

* `blend(a, b, f)` is `PIL.Image.blend`: a + f * (b - a), clipped to 0..255
  and truncated. The four enhance ops of `PIL.ImageEnhance` blend a
  "degenerate" image toward the input with factor f (f = 1 keeps the input):
  Brightness from black, Color from the grey version, Contrast from a flat
  image at the rounded mean grey level, Sharpness from the image smoothed
  with PIL's SMOOTH kernel [[1, 1, 1], [1, 5, 1], [1, 1, 1]] / 13 (rounded,
  the one-pixel border kept from the input).
* Grey levels are PIL's "L" conversion, ITU-R 601-2 luma in fixed point:
  (19595 R + 38470 G + 7471 B + 2^15) >> 16.
* `equalize`, `autocontrast`, `solarize`, `posterize`, `invert` are the
  per-channel look-up tables of `PIL.ImageOps`.

Two ops differ from the TF port in DeepLab2 / TF Model Garden
(`autoaugment_utils.py`), which is close to PIL but not equal: its Contrast
blends toward num_pixels / 256 (the histogram's total, not its mean grey
level), and its Sharpness and grey conversion truncate instead of rounding.
"""
import tensorflow as tf

_SMOOTH_KERNEL = ((1, 1, 1), (1, 5, 1), (1, 1, 1))  # PIL ImageFilter.SMOOTH
_SMOOTH_SCALE = 13


def blend(image1, image2, factor):
  """PIL Image.blend: image1 + factor * (image2 - image1), as uint8."""
  image1 = tf.cast(image1, tf.float32)
  image2 = tf.cast(image2, tf.float32)
  factor = tf.cast(factor, tf.float32)
  blended = image1 + factor * (image2 - image1)
  return tf.cast(tf.clip_by_value(blended, 0.0, 255.0), tf.uint8)


def grayscale(image):
  """PIL "L" conversion of a uint8 [H, W, 3] RGB image -> uint8 [H, W, 1]."""
  rgb = tf.cast(image, tf.int32)
  luma = tf.bitwise.right_shift(
      19595 * rgb[..., 0] + 38470 * rgb[..., 1] + 7471 * rgb[..., 2]
      + (1 << 15), 16)  # [H, W]
  return tf.cast(luma[..., tf.newaxis], tf.uint8)


def brightness(image, factor):
  """PIL ImageEnhance.Brightness: blends from a black image."""
  return blend(tf.zeros_like(image), image, factor)


def color(image, factor):
  """PIL ImageEnhance.Color: blends from the grey version of the image."""
  grey = tf.broadcast_to(grayscale(image), tf.shape(image))  # [H, W, 3]
  return blend(grey, image, factor)


def contrast(image, factor):
  """PIL ImageEnhance.Contrast: blends from the rounded mean grey level."""
  grey = tf.cast(grayscale(image), tf.float64)  # [H, W, 1]
  mean = tf.floor(tf.reduce_mean(grey) + 0.5)
  return blend(tf.fill(tf.shape(image), tf.cast(mean, tf.float32)), image,
               factor)


def sharpness(image, factor):
  """PIL ImageEnhance.Sharpness: blends from the SMOOTH-filtered image."""
  kernel = tf.constant(_SMOOTH_KERNEL, tf.float32)[:, :, None, None]
  planes = tf.transpose(tf.cast(image, tf.float32), [2, 0, 1])  # [C, H, W]
  # Sums of at most 13 * 255 are exact in float32.
  sums = tf.nn.conv2d(planes[..., tf.newaxis], kernel, 1, 'SAME')[..., 0]
  sums = tf.transpose(sums, [1, 2, 0])  # [H, W, C]
  # round(sums / 13) in integers; never a tie since 13 is odd.
  smooth = (2 * tf.cast(sums, tf.int32) + _SMOOTH_SCALE) // (2 * _SMOOTH_SCALE)
  # PIL leaves the one-pixel border unfiltered.
  shape = tf.shape(image)
  rows, cols = tf.range(shape[0]), tf.range(shape[1])
  inner_rows = (rows >= 1) & (rows <= shape[0] - 2)  # [H]
  inner_cols = (cols >= 1) & (cols <= shape[1] - 2)  # [W]
  inner = inner_rows[:, None, None] & inner_cols[None, :, None]  # [H, W, 1]
  degenerate = tf.where(inner, tf.cast(smooth, image.dtype), image)
  return blend(degenerate, image, factor)


def _apply_lut(image, lut):
  """Maps each channel of uint8 [H, W, C] through int32 lut [C, 256]."""
  channels = tf.shape(image)[-1]
  index = tf.cast(image, tf.int32) + 256 * tf.range(channels)  # [H, W, C]
  return tf.cast(tf.gather(tf.reshape(lut, [-1]), index), tf.uint8)


def _histograms(image):
  """Per-channel histograms of uint8 [H, W, C] -> int32 [C, 256]."""
  channels = tf.shape(image)[-1]
  index = tf.cast(image, tf.int32) + 256 * tf.range(channels)  # [H, W, C]
  counts = tf.math.bincount(tf.reshape(index, [-1]), minlength=256 * channels,
                            maxlength=256 * channels)
  return tf.reshape(counts, tf.stack([channels, 256]))


def equalize(image):
  """PIL ImageOps.equalize: per-channel histogram equalisation.

  For each channel: step = (pixels - count of the highest occupied level)
  // 255; level v maps to (step // 2 + pixels below v) // step, clipped to
  255; channels with step 0 (e.g. a single level) are left unchanged.
  """
  hist = _histograms(image)  # [C, 256]
  levels = tf.range(256)
  top = tf.maximum(tf.reduce_max(tf.where(hist > 0, levels, -1), axis=1), 0)
  top_count = tf.gather(hist, top, batch_dims=1)  # [C]
  step = (tf.reduce_sum(hist, axis=1) - top_count) // 255  # [C]
  safe_step = tf.maximum(step, 1)[:, tf.newaxis]  # [C, 1]
  below = tf.cumsum(hist, axis=1, exclusive=True)  # [C, 256]
  lut = tf.minimum((safe_step // 2 + below) // safe_step, 255)
  lut = tf.where(step[:, tf.newaxis] > 0, lut, levels)  # [C, 256]
  return _apply_lut(image, lut)


def autocontrast(image):
  """PIL ImageOps.autocontrast (no cutoff): stretch each channel to 0..255.

  Level v maps to int(v * s - lo * s), s = 255 / (hi - lo), with lo / hi the
  lowest / highest level present, computed in float64 like PIL; channels with
  a single level are left unchanged.
  """
  values = tf.cast(image, tf.float64)
  low = tf.reduce_min(values, axis=[0, 1])  # [C]
  high = tf.reduce_max(values, axis=[0, 1])  # [C]
  scale = 255.0 / tf.maximum(high - low, 1.0)
  stretched = values * scale + (-low * scale)  # [H, W, C]
  stretched = tf.cast(tf.clip_by_value(stretched, 0.0, 255.0), tf.uint8)
  return tf.where(high > low, stretched, image)


def solarize(image, threshold):
  """PIL ImageOps.solarize: levels >= threshold are inverted."""
  values = tf.cast(image, tf.int32)
  return tf.cast(tf.where(values < threshold, values, 255 - values), tf.uint8)


def posterize(image, bits):
  """PIL ImageOps.posterize: keeps the `bits` high bits (0 gives black)."""
  shift = 8 - tf.cast(bits, tf.int32)
  values = tf.cast(image, tf.int32)
  return tf.cast(tf.bitwise.left_shift(
      tf.bitwise.right_shift(values, shift), shift), tf.uint8)


def invert(image):
  """PIL ImageOps.invert: 255 - level."""
  return tf.constant(255, tf.uint8) - tf.convert_to_tensor(image, tf.uint8)
