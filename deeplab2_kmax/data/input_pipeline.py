"""The tf.data input pipeline of kMaX-DeepLab training and evaluation.

`build_dataset(options, dataset_info=..., is_training=...)` turns a
`DatasetOptions` message into batches for the model and the losses.

Training (DeepLab2's recipe, spec section 8):
1. Shards from `file_pattern` (globs) are shuffled and read in parallel,
   interleaved (`cycle_length`); serialized records go through a shuffle
   buffer (`shuffle_buffer_size`) and the stream repeats forever. With
   `tfds_name` set, examples come from TensorFlow Datasets instead
   (tfds_source.py).
2. Each record is decoded (a bad record raises an error naming its shard and
   index, see shard_reader.py) and augmented: resize so the longer side is
   `resize_longer_side` (if set), random scale from the grid min:step:max,
   AutoAugment (if `autoaugment_policy` is set; applied to the scaled image,
   before padding, as in DeepLab2), pad to at least the crop size (image
   127.5, label void; a smaller image lands at a random offset, as in
   DeepLab2), random crop to `crop_size`, horizontal flip.
3. Panoptic copy-paste (if enabled): a second stream, shuffled on its own,
   gives a sample augmented the same way with the scale range multiplied by
   `panoptic_copy_paste_scale`; its segments are pasted (copy_paste.py).
4. Loss targets at `output_stride` (targets.py); batches of `batch_size`
   with the remainder dropped, so all shapes are static.

Randomness: every sample gets a seed [2] from `tf.data.Dataset.random`, split
into sub-seeds for the stateless ops; with `seed` set, the same seed gives
the same batches (shuffles are seeded and interleaves deterministic), and
`skip_batches` continues that stream where a resumed run left off. With
several input pipelines (`input_context`), each reads a disjoint share of the
shards (of the records when shards are fewer than pipelines) and draws its
own random streams.

Evaluation: files in sorted order, once; no augmentation; the image is
resized so its longer side is `resize_longer_side` (if set; otherwise it must
fit the crop) and padded at the bottom and right to `crop_size`.

Keys of each batch (B batch size, H x W the crop, h x w = (H-1)/s+1 x
(W-1)/s+1 at output stride s, M = max_thing_id + number of stuff classes):

| key | dtype, shape | content |
|---|---|---|
| `image` | float32 [B, H, W, 3] | RGB 0..255, padding 127.5 |
| `panoptic` | int32 [B, H, W] | panoptic label of the crop, void at padding |
| `semantic` | int32 [B, h, w] | semantic id, ignore label at void |
| `gt_mask_ids` | int32 [B, h, w] | GT mask slot of each pixel, -1 at void/crowd |
| `gt_classes` | int32 [B, M] | class channel of each slot, K at empty slots |
| `gt_valid` | bool [B, M] | slot has pixels at h x w |
| `inverse_area` | float32 [B, h, w] | h*w / area of the pixel's mask |
| `semantic_weights` | float32 [B, h, w] | semantic-loss weight |
| `void` | bool [B, h, w] | void pixel |
| `image_id` | string [B] | image id of the annotations |
| `filename` | string [B] | image file name |
| `original_size` | int32 [B, 2] | evaluation only: image size before resizing |
| `resized_size` | int32 [B, 2] | evaluation only: size of the resized image in the crop |

Evaluation batches keep the last partial batch (B may be smaller there).
"""
import tensorflow as tf

from deeplab2_kmax.data import copy_paste
from deeplab2_kmax.data import shard_reader
from deeplab2_kmax.data import targets as targets_lib
from deeplab2_kmax.data.augment import autoaugment
from deeplab2_kmax.data.augment import geometric

IMAGE_PAD_VALUE = 127.5
# Random streams of the training pipeline, each seeded from `seed`.
_SHARDS, _RECORDS, _PASTE_SHARDS, _PASTE_RECORDS, _SAMPLES = range(5)


def build_dataset(options, *, dataset_info, is_training, output_stride=4,
                  seed=None, max_thing_id=None, small_instance_area=0,
                  small_instance_weight=1.0, input_context=None,
                  skip_batches=0):
  """Batched tf.data.Dataset of training or evaluation samples.

  Args:
    options: a `config_pb2.DatasetOptions`; its batch size is the batch of
      this dataset (per replica when there are several).
    dataset_info: the data set's `DatasetInfo`.
    is_training: augment, shuffle and repeat (training) or not (evaluation).
    output_stride: stride of the loss targets (4; 2 on Cityscapes).
    seed: python int making the pipeline reproducible, or None.
    max_thing_id: thing mask slots; default `options.max_thing_id`.
    small_instance_area, small_instance_weight: semantic-loss weighting of
      small instances (LossOptions of the trainer).
    input_context: a `tf.distribute.InputContext` when several input
      pipelines run (one per worker): each reads its share of the shards
      (of the records if there are fewer shards than pipelines) and, in
      training, draws its own random streams.
    skip_batches: training with a seed: skip this many batches, so a resumed
      run sees the batches an uninterrupted one would. Records are skipped
      before decoding, but they are still read and shuffled.

  Returns:
    A dataset of dicts with the keys of the module docstring.

  Raises:
    ConfigError: a file pattern holds an unset ${VAR} or matches no file, or
      the TFDS data set cannot be loaded.
    ValueError: crop_size is not [k*stride+1, k*stride+1], or a size option
      is not positive.
  """
  field = 'train_dataset_options' if is_training else 'eval_dataset_options'
  crop_size = _checked_crop_size(options, field, output_stride)
  process = SampleProcessor(
      options, dataset_info, crop_size, output_stride=output_stride,
      max_thing_id=max_thing_id or options.max_thing_id,
      small_instance_area=small_instance_area,
      small_instance_weight=small_instance_weight)
  source = dict(options=options, field=field, dataset_info=dataset_info,
                input_context=input_context)

  if not is_training:
    samples = _samples(**source, is_training=False, deterministic=True)
    dataset = samples.map(process.eval_sample,
                          num_parallel_calls=tf.data.AUTOTUNE)
    return dataset.batch(options.batch_size).prefetch(tf.data.AUTOTUNE)

  deterministic = seed is not None
  if seed is not None and input_context is not None:
    seed += 7919 * input_context.input_pipeline_id
  skip = skip_batches * options.batch_size if seed is not None else 0
  samples = _samples(**source, is_training=True, deterministic=deterministic,
                     shard_seed=_sub_seed(seed, _SHARDS),
                     record_seed=_sub_seed(seed, _RECORDS), skip=skip)
  if options.augmentations.panoptic_copy_paste:
    # Its own shuffle, so a sample is rarely pasted onto itself.
    pastes = _samples(**source, is_training=True, force_shuffle=True,
                      deterministic=deterministic,
                      shard_seed=_sub_seed(seed, _PASTE_SHARDS),
                      record_seed=_sub_seed(seed, _PASTE_RECORDS), skip=skip)
  else:
    pastes = tf.data.Dataset.from_tensors(0).repeat()
  sample_seeds = tf.data.Dataset.random(
      seed=_sub_seed(seed, _SAMPLES)).batch(2)  # int64 [2] per sample
  dataset = tf.data.Dataset.zip((samples, pastes, sample_seeds.skip(skip)))
  dataset = dataset.map(process.train_sample,
                        num_parallel_calls=tf.data.AUTOTUNE,
                        deterministic=deterministic)
  dataset = dataset.batch(options.batch_size, drop_remainder=True)
  dataset = dataset.prefetch(tf.data.AUTOTUNE)
  data_options = tf.data.Options()
  data_options.deterministic = deterministic
  return dataset.with_options(data_options)


def list_files(options, field='dataset_options'):
  """Sorted shard paths of `options.file_pattern` ([] with tfds_name set).

  Raises:
    ConfigError naming `{field}.file_pattern`: a pattern holds an unset
      ${VAR} or matches no file.
  """
  if options.tfds_name:
    return []
  return shard_reader.list_files(options.file_pattern,
                                 field=f'{field}.file_pattern')


def _sub_seed(seed, stream):
  """Python seed of one random stream (None stays None)."""
  return None if seed is None else (seed * 1_000_003 + stream) % (1 << 31)


def _checked_crop_size(options, field, output_stride):
  """The crop size [height, width], after checking the options it uses."""
  crop = list(options.crop_size)
  if len(crop) != 2:
    raise ValueError(f'{field}.crop_size: expected [height, width]; got '
                     f'{crop}')
  for size in crop:
    if size < 1 or (size - 1) % output_stride:
      raise ValueError(f'{field}.crop_size: {size} is not of the form '
                       f'k*{output_stride}+1; got {crop}')
  for name in ('batch_size', 'shuffle_buffer_size'):
    if getattr(options, name) < 1:
      raise ValueError(f'{field}.{name}: must be positive; got '
                       f'{getattr(options, name)}')
  augment = options.augmentations
  if augment.panoptic_copy_paste and augment.panoptic_copy_paste_scale <= 0:
    raise ValueError(
        f'{field}.augmentations.panoptic_copy_paste_scale: must be positive '
        f'with panoptic_copy_paste on; got '
        f'{augment.panoptic_copy_paste_scale}')
  return crop


def _samples(*, options, field, dataset_info, input_context, is_training,
             deterministic, shard_seed=None, record_seed=None,
             force_shuffle=False, skip=0):
  """Decoded samples (dicts of record.parse_example) from files or TFDS."""
  shuffle = is_training and (options.shuffle or force_shuffle)
  if options.tfds_name:
    # Imported on use: tensorflow_datasets takes seconds to import.
    from deeplab2_kmax.data import tfds_source  # pylint: disable=import-outside-toplevel
    return tfds_source.load_samples(
        options, field, dataset_info=dataset_info, shuffle=shuffle,
        repeat=is_training, shuffle_seed=shard_seed, record_seed=record_seed,
        deterministic=deterministic, input_context=input_context, skip=skip)
  files = list_files(options, field)
  pipelines, pipeline = 1, 0
  if input_context is not None:
    pipelines = input_context.num_input_pipelines
    pipeline = input_context.input_pipeline_id
  shard_files = pipelines > 1 and len(files) >= pipelines
  if shard_files:
    files = files[pipeline::pipelines]
  records = shard_reader.read_shards(
      files, shuffle=shuffle, repeat=is_training, seed=shard_seed,
      cycle_length=options.cycle_length if is_training else 1,
      deterministic=deterministic)
  if pipelines > 1 and not shard_files:
    records = records.shard(pipelines, pipeline)
  if shuffle:
    records = records.shuffle(options.shuffle_buffer_size, seed=record_seed)
  return shard_reader.decode_records(
      records.skip(skip), decode_fn=shard_reader.parse_checked,
      deterministic=deterministic)


class SampleProcessor:
  """Per-sample preprocessing of one DatasetOptions (pure functions)."""

  def __init__(self, options, dataset_info, crop_size, *, output_stride,
               max_thing_id, small_instance_area, small_instance_weight):
    self._augment = options.augmentations
    self._resize_longer_side = options.resize_longer_side or None
    self._info = dataset_info
    self._crop_size = crop_size
    self._void = dataset_info.void_label
    self._targets_kwargs = dict(
        dataset_info=dataset_info, output_stride=output_stride,
        max_thing_id=max_thing_id, small_instance_area=small_instance_area,
        small_instance_weight=small_instance_weight)

  def train_sample(self, sample, paste, seed):
    """Augmented crop, pasted segments and targets of one training sample."""
    seeds = tf.random.experimental.stateless_split(seed, 3)
    augment = self._augment
    image, label = self.augment(sample, seeds[0], augment.min_scale_factor,
                                augment.max_scale_factor)
    if augment.panoptic_copy_paste:
      factor = augment.panoptic_copy_paste_scale
      paste_image, paste_label = self.augment(
          paste, seeds[1], augment.min_scale_factor * factor,
          augment.max_scale_factor * factor)
      image, label = copy_paste.panoptic_copy_paste(
          image, label, paste_image, paste_label, seeds[2],
          label_divisor=self._info.label_divisor,
          ignore_label=self._info.ignore_label,
          thing_semantic_ids=self._info.thing_semantic_ids)
    return self._finish(image, label, sample)

  def augment(self, sample, seed, min_scale, max_scale):
    """Resize, random scale, AutoAugment, pad, random crop and flip."""
    seeds = tf.random.experimental.stateless_split(seed, 5)
    image = tf.cast(sample['image'], tf.float32)  # [H, W, 3]
    label = sample['panoptic']  # [H, W]
    if self._resize_longer_side:
      image, label = geometric.resize_to_range(
          image, label, longer_side=self._resize_longer_side)
    if min_scale != 1.0 or max_scale != 1.0:
      image, label = geometric.random_scale(
          image, label, seeds[0], min_scale=min_scale, max_scale=max_scale,
          step=self._augment.scale_factor_step_size)
    if self._augment.autoaugment_policy:
      image = autoaugment.distort_image(
          _to_uint8(image), seeds[1],
          policy=self._augment.autoaugment_policy,
          magnitude_scale=self._augment.autoaugment_magnitude_scale)
      image = tf.cast(image, tf.float32)
    image, label = self._random_pad(image, label, seeds[2])
    crop_height, crop_width = self._crop_size
    image, label = geometric.random_crop(image, label, crop_height,
                                         crop_width, seeds[3])
    if self._augment.flip:
      image, label = geometric.random_flip(image, label, seeds[4])
    image = tf.ensure_shape(image, [crop_height, crop_width, 3])
    label = tf.ensure_shape(label, [crop_height, crop_width])
    return image, label

  def _random_pad(self, image, label, seed):
    """Pads to at least the crop; a smaller image lands at a random offset.

    DeepLab2 places an image smaller than the crop at a uniformly random
    offset inside the padded canvas; geometric.pad_to_size pads only at the
    bottom and right, so the top/left padding is added here first.
    """
    seeds = tf.random.experimental.stateless_split(seed, 2)
    offsets = []
    for axis, crop in enumerate(self._crop_size):
      margin = tf.maximum(crop - tf.shape(label)[axis], 0)
      offsets.append(tf.random.stateless_uniform(
          [], seeds[axis], minval=0, maxval=margin + 1, dtype=tf.int32))
    image = tf.pad(image, [[offsets[0], 0], [offsets[1], 0], [0, 0]],
                   constant_values=IMAGE_PAD_VALUE)
    label = tf.pad(label, [[offsets[0], 0], [offsets[1], 0]],
                   constant_values=self._void)
    crop_height, crop_width = self._crop_size
    return geometric.pad_to_size(
        image, label, crop_height, crop_width,
        image_pad_value=IMAGE_PAD_VALUE, label_pad_value=self._void)

  def eval_sample(self, sample):
    """Resized and padded image, label and targets of one evaluation image."""
    crop_height, crop_width = self._crop_size
    image, label, resized_size = geometric.resize_and_pad_for_eval(
        tf.cast(sample['image'], tf.float32), sample['panoptic'],
        crop_height, crop_width, longer_side=self._resize_longer_side,
        image_pad_value=IMAGE_PAD_VALUE, label_pad_value=self._void)
    image = tf.ensure_shape(image, [crop_height, crop_width, 3])
    label = tf.ensure_shape(label, [crop_height, crop_width])
    element = self._finish(image, label, sample)
    element['original_size'] = tf.stack([sample['height'], sample['width']])
    element['resized_size'] = tf.cast(resized_size, tf.int32)
    return element

  def _finish(self, image, label, sample):
    element = {'image': image, 'panoptic': label}
    element.update(targets_lib.make_targets(label, **self._targets_kwargs))
    element['image_id'] = sample['image_id']
    element['filename'] = sample['filename']
    return element


def _to_uint8(image):
  return tf.cast(tf.clip_by_value(tf.round(image), 0.0, 255.0), tf.uint8)
