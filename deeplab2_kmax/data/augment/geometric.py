"""Geometric augmentations of an image and its panoptic label.

kMaX-DeepLab trains and evaluates with DeepLab2's input preprocessing
(`data/preprocessing/input_preprocessing.py` and `preprocess_utils.py`; spec
section 8). Its geometric steps are these pure functions:

* `resize_to_range`: keep the aspect ratio and resize so the longer side has a
  given length (COCO: 1281 before cropping), or so the shorter side reaches
  `min_size` while the longer one stays within `max_size`.
* `random_scale`: resize by a factor drawn from a grid (0.1 steps in all
  configs, e.g. 0.3..1.7 on COCO).
* `pad_to_size`, `random_crop`: pad at the bottom and right with the mean pixel
  and the void label up to the crop size, then cut a crop-sized window at a
  random offset.
* `random_flip`: horizontal flip with probability 0.5.
* `resize_and_pad_for_eval`: evaluation input, an optional resize and then
  padding at the bottom and right to exactly the crop size; the size before
  padding is returned so predictions can be cropped back.

Images are float32 [H, W, 3] with values 0..255 (other dtypes work for the
ops that do not resize); labels are int32 [H, W] panoptic labels
(semantic_id * label_divisor + instance_id) or None. Images are resized
bilinearly and labels by nearest neighbour, both with align_corners=True
(`tf.compat.v1.image.resize`, so corner pixels of input and output coincide),
as DeepLab2 does. Shapes may be dynamic, so every op works inside
`tf.data.Dataset.map`. Random ops take `seed`, an int32/int64 [2] tensor, and
draw with `tf.random.stateless_*` ops, so results are reproducible.

Output sizes, with their rounding:

* `resize_to_range`: the side that sets the scale gets exactly its target and
  the other side is floor(side * target / reference) computed with integers.
  DeepLab2 multiplies in float32 and can land one pixel short of the target
  (302 * float32(1281 / 302) = 1280.99988 -> 1280).
* `random_scale`: new side = int(float32(side) * float32(scale)), truncated,
  exactly as DeepLab2's `randomly_scale_image_and_label`, but at least 1.
* The scale grid is min + k * step for k = 0..round((max - min) / step).
  DeepLab2 counts the points with int(), which on float32 config values can
  drop one (int(15.9999998) = 15 for 0.5..2.0 step 0.1) and then spreads the
  remaining points over the range with linspace; here it is the intended grid.
"""
import tensorflow as tf

_BILINEAR = tf.image.ResizeMethod.BILINEAR
_NEAREST = tf.image.ResizeMethod.NEAREST_NEIGHBOR


def _resize(image, label, size):
  """Resizes image (bilinear) and label (nearest) to size [2], corners kept."""
  image = tf.compat.v1.image.resize(
      image, size, method=_BILINEAR, align_corners=True)  # [h, w, C]
  if label is not None:
    label = tf.compat.v1.image.resize(
        label[..., tf.newaxis], size, method=_NEAREST,
        align_corners=True)[..., 0]  # [h, w]
  return image, label


def _is_set(value):
  return value is not None and value != 0


def resized_size(height, width, *, min_size=None, max_size=None,
                 longer_side=None):
  """Returns int32 [2], the [height, width] chosen by `resize_to_range`.

  Args:
    height: int scalar (Python or tensor), the input height.
    width: int scalar, the input width.
    min_size: target of the shorter side, or None/0 for none.
    max_size: largest allowed longer side, or None/0 for no limit.
    longer_side: target of the longer side, or None/0; excludes the others.

  Returns:
    int32 [2] new [height, width], or [height, width] itself when nothing is
    set.
  """
  if _is_set(longer_side) and (_is_set(min_size) or _is_set(max_size)):
    raise ValueError(
        'resize_to_range: set either longer_side or min_size/max_size, not '
        f'both; got longer_side={longer_side}, min_size={min_size}, '
        f'max_size={max_size}.')
  for name, value in (('min_size', min_size), ('max_size', max_size),
                      ('longer_side', longer_side)):
    if value is not None and value < 0:
      raise ValueError(f'resize_to_range: {name} must be >= 0 (0 = off), '
                       f'got {value}.')
  size = tf.cast(tf.stack([height, width]), tf.int64)  # [2]
  shorter, longer = tf.reduce_min(size), tf.reduce_max(size)
  # The scale is the exact ratio numerator / denominator.
  numerator, denominator = tf.constant(1, tf.int64), tf.constant(1, tf.int64)
  if _is_set(longer_side):
    numerator, denominator = tf.constant(longer_side, tf.int64), longer
  if _is_set(min_size):
    numerator, denominator = tf.constant(min_size, tf.int64), shorter
  if _is_set(max_size):
    limit = tf.constant(max_size, tf.int64)
    too_long = longer * numerator > limit * denominator
    numerator = tf.where(too_long, limit, numerator)
    denominator = tf.where(too_long, longer, denominator)
  return tf.cast(size * numerator // denominator, tf.int32)  # [2]


def resize_to_range(image, label, *, min_size=None, max_size=None,
                    longer_side=None):
  """Resizes keeping the aspect ratio (DeepLab2's min/max resize value).

  With `longer_side`, the longer side becomes `longer_side`. Otherwise the
  shorter side becomes `min_size`, unless the longer side would then exceed
  `max_size`, in which case the longer side becomes `max_size` (with only
  `max_size`, images are only ever shrunk). None or 0 means unset; with
  nothing set the inputs are returned unchanged.

  Args:
    image: float32 [H, W, C] image.
    label: int32 [H, W] panoptic label, or None.
    min_size: target of the shorter side.
    max_size: largest allowed longer side.
    longer_side: target of the longer side.

  Returns:
    (image float32 [h, w, C], label int32 [h, w] or None).
  """
  if not (_is_set(min_size) or _is_set(max_size) or _is_set(longer_side)):
    return image, label
  shape = tf.shape(image)
  size = resized_size(shape[0], shape[1], min_size=min_size,
                      max_size=max_size, longer_side=longer_side)
  return _resize(image, label, size)


def scale_grid(min_scale, max_scale, step):
  """Returns the scale factors `random_scale` draws from, as Python floats.

  Args:
    min_scale: smallest factor, > 0.
    max_scale: largest factor, >= min_scale.
    step: grid spacing; 0 means a continuous range, returned as its two ends.

  Returns:
    (min_scale, min_scale + step, ..., max_scale); (min_scale,) when
    min_scale == max_scale.
  """
  if not 0 < min_scale <= max_scale:
    raise ValueError(
        'random_scale: expected 0 < min_scale <= max_scale (augmentations.'
        f'min_scale_factor / max_scale_factor), got min_scale={min_scale}, '
        f'max_scale={max_scale}.')
  if step < 0:
    raise ValueError('random_scale: step (augmentations.'
                     f'scale_factor_step_size) must be >= 0, got {step}.')
  if min_scale == max_scale:
    return (float(min_scale),)
  if step == 0:
    return (float(min_scale), float(max_scale))
  intervals = (max_scale - min_scale) / step
  num_intervals = round(intervals)
  if abs(intervals - num_intervals) > 1e-3 or num_intervals < 1:
    raise ValueError(
        'random_scale: max_scale - min_scale must be a whole number of steps '
        f'(augmentations.scale_factor_step_size); got min_scale={min_scale}, '
        f'max_scale={max_scale}, step={step}.')
  return tuple(min_scale + (max_scale - min_scale) * k / num_intervals
               for k in range(num_intervals + 1))


def random_scale(image, label, seed, *, min_scale, max_scale, step):
  """Resizes by a random factor from `scale_grid(min_scale, max_scale, step)`.

  With step 0 the factor is uniform in [min_scale, max_scale); with
  min_scale == max_scale it is fixed (and 1 leaves the inputs unchanged).

  Args:
    image: float32 [H, W, C] image.
    label: int32 [H, W] panoptic label, or None.
    seed: int32/int64 [2] seed.
    min_scale: smallest factor.
    max_scale: largest factor.
    step: grid spacing, or 0 for continuous.

  Returns:
    (image float32 [h, w, C], label int32 [h, w] or None) with
    h = max(int(H * scale), 1) and likewise w.
  """
  grid = scale_grid(min_scale, max_scale, step)
  if grid == (1.0,):
    return image, label
  if len(grid) == 1:
    scale = tf.constant(grid[0], tf.float32)
  elif step == 0:
    scale = tf.random.stateless_uniform(
        [], seed, minval=min_scale, maxval=max_scale)
  else:
    index = tf.random.stateless_uniform(
        [], seed, minval=0, maxval=len(grid), dtype=tf.int32)
    scale = tf.gather(tf.constant(grid, tf.float32), index)
  size = tf.cast(tf.cast(tf.shape(image)[:2], tf.float32) * scale, tf.int32)
  return _resize(image, label, tf.maximum(size, 1))


def _static_shape(image, height, width):
  """The [height, width, C] to set on an output, with None where unknown."""
  def static(value):
    value = tf.get_static_value(value)
    return None if value is None else int(value)
  return [static(height), static(width), image.shape[-1]]


def pad_to_size(image, label, height, width, *, image_pad_value=127.5,
                label_pad_value):
  """Pads at the bottom and right up to at least [height, width].

  Axes already at least as large are left as they are.

  Args:
    image: [H, W, C] image (any dtype; the pad value is cast to it).
    label: int32 [H, W] panoptic label, or None.
    height: int scalar, the smallest output height.
    width: int scalar, the smallest output width.
    image_pad_value: value of padded image pixels (the mean pixel 127.5).
    label_pad_value: value of padded label pixels, the void label
      `ignore_label * label_divisor` of the data set.

  Returns:
    (image [max(H, height), max(W, width), C], label likewise or None).
  """
  shape = tf.shape(image)
  pad_height = tf.maximum(height - shape[0], 0)
  pad_width = tf.maximum(width - shape[1], 0)
  image = tf.pad(image, [[0, pad_height], [0, pad_width], [0, 0]],
                 constant_values=tf.cast(image_pad_value, image.dtype))
  if label is not None:
    label = tf.pad(label, [[0, pad_height], [0, pad_width]],
                   constant_values=tf.cast(label_pad_value, label.dtype))
  return image, label


def random_crop(image, label, height, width, seed):
  """Cuts a [height, width] window at a uniformly random offset.

  Args:
    image: [H, W, C] image with H >= height and W >= width.
    label: [H, W] label of the same size, or None.
    height: int scalar, the crop height.
    width: int scalar, the crop width.
    seed: int32/int64 [2] seed.

  Returns:
    (image [height, width, C], label [height, width] or None), both cut at the
    same offset.
  """
  shape = tf.shape(image)
  checks = [
      tf.debugging.assert_greater_equal(
          shape[:2], tf.stack([height, width]),
          message=('random_crop: the image [H, W] is smaller than the crop '
                   '[height, width]; pad it with pad_to_size first')),
  ]
  if label is not None:
    checks.append(tf.debugging.assert_equal(
        tf.shape(label), shape[:2],
        message='random_crop: label [H, W] differs from image [H, W]'))
  with tf.control_dependencies(checks):
    seeds = tf.random.experimental.stateless_split(seed, 2)
    offset_y = tf.random.stateless_uniform(
        [], seeds[0], minval=0, maxval=shape[0] - height + 1, dtype=tf.int32)
    offset_x = tf.random.stateless_uniform(
        [], seeds[1], minval=0, maxval=shape[1] - width + 1, dtype=tf.int32)
  image = tf.slice(image, tf.stack([offset_y, offset_x, 0]),
                   tf.stack([height, width, -1]))  # [height, width, C]
  image.set_shape(_static_shape(image, height, width))
  if label is not None:
    label = tf.slice(label, tf.stack([offset_y, offset_x]),
                     tf.stack([height, width]))  # [height, width]
    label.set_shape(_static_shape(image, height, width)[:2])
  return image, label


def random_flip(image, label, seed, *, prob=0.5):
  """Flips image and label left-right together with probability `prob`.

  Args:
    image: [H, W, C] image.
    label: [H, W] label, or None.
    seed: int32/int64 [2] seed.
    prob: probability of flipping.

  Returns:
    (image, label), both flipped or both not.
  """
  flip = tf.random.stateless_uniform([], seed) < prob
  image = tf.cond(flip, lambda: tf.reverse(image, [1]), lambda: image)
  if label is not None:
    label = tf.cond(flip, lambda: tf.reverse(label, [1]), lambda: label)
  return image, label


def resize_and_pad_for_eval(image, label, height, width, *, longer_side=None,
                            image_pad_value=127.5, label_pad_value):
  """Prepares an evaluation input: optional resize, then pad to the crop.

  Args:
    image: float32 [H, W, C] image.
    label: int32 [H, W] panoptic label, or None.
    height: int, the crop height.
    width: int, the crop width.
    longer_side: resize so the longer side has this length first (None/0 to
      keep the input size).
    image_pad_value: value of padded image pixels.
    label_pad_value: value of padded label pixels (the void label).

  Returns:
    (image [height, width, C], label [height, width] or None,
    resized_size int32 [2], the [h, w] of the image before padding).

  Raises:
    tf.errors.InvalidArgumentError: when the (resized) image is larger than
      the crop.
  """
  image, label = resize_to_range(image, label, longer_side=longer_side)
  size = tf.shape(image)[:2]  # [2]
  check = tf.debugging.assert_less_equal(
      size, tf.stack([height, width]),
      message=('resize_and_pad_for_eval: the (resized) image [h, w] is larger '
               'than the crop [height, width]; raise crop_size or set '
               'resize_longer_side to at most the smaller crop side'))
  with tf.control_dependencies([check]):
    size = tf.identity(size)
    image, label = pad_to_size(image, label, height, width,
                               image_pad_value=image_pad_value,
                               label_pad_value=label_pad_value)
  image.set_shape(_static_shape(image, height, width))
  if label is not None:
    label.set_shape(_static_shape(image, height, width)[:2])
  return image, label, size
