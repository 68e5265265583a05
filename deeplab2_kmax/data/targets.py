"""Ground truth of the kMaX-DeepLab losses, from a crop-size panoptic label.

The model predicts at `output_stride` (4 on COCO and ADE20K, 2 on
Cityscapes). Crops have sizes k * stride + 1, so the ground truth at the
output resolution h x w, h = (H - 1) / stride + 1, is the label sampled at
every stride-th pixel starting at 0 (`label[::stride, ::stride]`). Ground
truth is never interpolated (spec 5.1).

GT masks are not built densely here (a [h, w, M] tensor of 1281 x 1281 crops
would not fit a useful shuffle/prefetch buffer); instead each output pixel
carries the index of its mask, and the loss builds one-hot masks from it.
There are M = max_thing_id + num_stuff mask slots:

- slots 0 .. max_thing_id - 1: one per non-crowd thing instance of the crop,
  in increasing panoptic-label order (so by class, then instance id); unused
  slots are padding. An instance counts when it has a pixel in the crop at
  full resolution; it may still be absent at the output resolution, and is
  then not valid. Thing instances beyond the first max_thing_id are treated
  like crowd regions: they keep their class in `semantic` but belong to no
  mask.
- slots max_thing_id + j: the j-th stuff class in class-channel order (every
  stuff class has a slot, absent classes are empty).

Void pixels (the ignore label, or a semantic id that is not a class of the
data set) and crowd regions (thing class, instance id 0) belong to no mask.

Returned dict (h, w at the output resolution, K = number of classes):

- `semantic` int32 [h, w]: semantic id; the ignore label at void (crowd
  pixels keep their class).
- `gt_mask_ids` int32 [h, w]: mask slot 0 .. M-1 of the pixel; -1 at void
  and crowd.
- `gt_classes` int32 [M]: class channel of each slot (things first, then
  stuff); K (void) for empty and padded slots.
- `gt_valid` bool [M]: the slot's mask has area > 0 at the output resolution.
- `inverse_area` float32 [h, w]: h*w / max(area of the pixel's mask at the
  output resolution, 1); h*w at void and crowd.
- `semantic_weights` float32 [h, w]: small_instance_weight on non-crowd
  thing instances with fewer than small_instance_area pixels at crop
  resolution, 0 at void, else 1.
- `void` bool [h, w]: the pixel is void.
"""
import tensorflow as tf

TARGET_KEYS = ('semantic', 'gt_mask_ids', 'gt_classes', 'gt_valid',
               'inverse_area', 'semantic_weights', 'void')


def output_size(size, output_stride):
  """Output resolution (size - 1) / stride + 1 of a crop size k*stride+1."""
  if (size - 1) % output_stride:
    raise ValueError(f'crop size {size} is not of the form k*{output_stride}'
                     f'+1, so the output-stride-{output_stride} ground truth '
                     'cannot be subsampled from it')
  return (size - 1) // output_stride + 1


def make_targets(panoptic, *, dataset_info, output_stride, max_thing_id,
                 small_instance_area=0, small_instance_weight=1.0):
  """Loss targets of one crop-size panoptic label (see the module docstring).

  Args:
    panoptic: int32 [H, W] panoptic label, H and W of the form
      k * output_stride + 1.
    dataset_info: the data set's `DatasetInfo`.
    output_stride: stride of the predictions (4, or 2 on Cityscapes).
    max_thing_id: number of thing mask slots.
    small_instance_area: instances with fewer pixels than this (at crop
      resolution) get `small_instance_weight` in `semantic_weights`.
    small_instance_weight: the semantic-loss weight of small instances.

  Returns:
    A dict with the keys of TARGET_KEYS.
  """
  info = dataset_info
  divisor = info.label_divisor
  num_things = info.num_things
  num_classes = info.num_classes
  num_slots = max_thing_id + info.num_stuff
  channel_table = tf.constant(info.semantic_to_channel())  # [C]

  panoptic = tf.convert_to_tensor(panoptic)
  panoptic = tf.cast(panoptic, tf.int32)
  panoptic.shape.assert_has_rank(2)
  for size in panoptic.shape:
    if size is not None:
      output_size(size, output_stride)
  panoptic = _assert_stride_size(panoptic, output_stride)

  # Full crop resolution: the thing instances and their areas.
  channel_full = _class_channel(panoptic // divisor, channel_table)  # [H, W]
  instance_full = (channel_full >= 0) & (channel_full < num_things) & (
      panoptic % divisor > 0)  # [H, W] non-crowd thing pixels
  ids, _, counts = tf.unique_with_counts(
      tf.boolean_mask(panoptic, instance_full))  # [U], [U]
  order = tf.argsort(ids)
  ids = tf.gather(ids, order)  # [U] sorted panoptic labels
  counts = tf.gather(counts, order)  # [U] areas at crop resolution

  # Output resolution.
  label = panoptic[::output_stride, ::output_stride]  # [h, w]
  height, width = tf.shape(label)[0], tf.shape(label)[1]
  semantic = label // divisor
  channel = _class_channel(semantic, channel_table)  # [h, w]
  void = channel < 0
  is_stuff = channel >= num_things
  is_instance = (~void) & (~is_stuff) & (label % divisor > 0)
  # Rank of each instance pixel's label among the instance labels.
  flat = tf.reshape(label, [-1])
  rank = tf.reshape(tf.searchsorted(ids, flat), tf.shape(label))  # [h, w]
  mask_ids = tf.where(is_instance & (rank < max_thing_id), rank, -1)
  mask_ids = tf.where(is_stuff, max_thing_id + channel - num_things,
                      mask_ids)  # [h, w]

  # Area of each slot at output resolution; slot M collects void and crowd.
  area = tf.math.unsorted_segment_sum(
      tf.ones_like(flat), tf.reshape(tf.where(mask_ids < 0, num_slots,
                                              mask_ids), [-1]),
      num_slots + 1)[:num_slots]  # [M]
  valid = area > 0

  num_kept = tf.minimum(tf.size(ids), max_thing_id)
  thing_classes = tf.gather(channel_table, ids[:num_kept] // divisor)
  thing_classes = tf.pad(thing_classes, [[0, max_thing_id - num_kept]],
                         constant_values=num_classes)  # [max_thing_id]
  stuff_classes = tf.range(num_things, num_classes, dtype=tf.int32)
  classes = tf.concat([thing_classes, stuff_classes], axis=0)  # [M]
  classes = tf.where(valid, classes, num_classes)
  classes = tf.ensure_shape(classes, [num_slots])

  num_pixels = tf.cast(height * width, tf.float32)
  pixel_area = tf.gather(area, tf.maximum(mask_ids, 0))  # [h, w]
  inverse_area = tf.where(
      mask_ids >= 0,
      num_pixels / tf.cast(tf.maximum(pixel_area, 1), tf.float32),
      num_pixels)  # [h, w]

  # Crop-resolution area of each instance pixel's instance; padded so that
  # non-instance pixels (rank U) gather a harmless value.
  counts = tf.concat([counts, [small_instance_area]], axis=0)  # [U + 1]
  pixel_count = tf.gather(counts, tf.minimum(rank, tf.size(ids)))  # [h, w]
  small = is_instance & (pixel_count < small_instance_area)
  weights = tf.where(small, tf.cast(small_instance_weight, tf.float32), 1.0)
  weights = tf.where(void, 0.0, weights)  # [h, w]

  return {
      'semantic': tf.where(void, info.ignore_label, semantic),
      'gt_mask_ids': mask_ids,
      'gt_classes': classes,
      'gt_valid': tf.ensure_shape(valid, [num_slots]),
      'inverse_area': inverse_area,
      'semantic_weights': weights,
      'void': void,
  }


def _class_channel(semantic, channel_table):
  """Class channel of each semantic id, -1 for void and non-class ids."""
  size = channel_table.shape[0]
  in_range = (semantic >= 0) & (semantic < size)
  channel = tf.gather(channel_table, tf.clip_by_value(semantic, 0, size - 1))
  return tf.where(in_range, channel, -1)


def _assert_stride_size(panoptic, output_stride):
  """Checks at run time that H and W are k * output_stride + 1."""
  if panoptic.shape.is_fully_defined():
    return panoptic
  shape = tf.shape(panoptic)
  check = tf.debugging.assert_equal(
      (shape - 1) % output_stride, tf.zeros([2], tf.int32),
      message=(f'make_targets: label height and width must be of the form '
               f'k*{output_stride}+1'))
  with tf.control_dependencies([check]):
    return tf.identity(panoptic)

