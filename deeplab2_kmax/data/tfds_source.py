"""TensorFlow Datasets as a source of panoptic samples.

Selected by `DatasetOptions.tfds_name` (with `tfds_split`, `tfds_data_dir`);
it replaces the TFRecord shards of `file_pattern` and feeds the same
preprocessing (input_pipeline.py). The builder must have COCO-panoptic
features, as `coco/2017_panoptic` does:

- `image`: the RGB image;
- `panoptic_image`: RGB PNG of segment ids, id = R + 256 G + 65536 B, 0 for
  unlabelled pixels;
- `panoptic_objects`: a sequence of segments with `id` (the segment id of
  the PNG), `label` (a ClassLabel index) and `is_crowd`;
- optionally `image/id` and `image/filename`.

Class labels map to the data set's classes by position: the k-th TFDS label
is the k-th class of the DatasetInfo in source-id order (TFDS lists COCO's
categories in the order of the annotation file, which is by category id).
When TFDS knows the label names they must equal the class names.

Instance ids follow the dataset_info convention: the non-crowd segments of a
thing class get 1, 2, ... in the order of `panoptic_objects`; stuff segments
and crowd regions get 0; pixels of no listed segment are void.

The data must have been prepared beforehand (`tfds build coco/2017_panoptic`
or `tfds.builder(...).download_and_prepare()`); nothing is downloaded here.
"""
import numpy as np
import tensorflow as tf

from deeplab2_kmax import config as config_lib

_OBJECT_FIELDS = ('id', 'label', 'is_crowd')
_NO_SEGMENT = np.iinfo(np.int32).max


def label_tables(label_names, dataset_info, field='tfds_name'):
  """int32 semantic ids [L] and bool thing flags [L] of the TFDS labels."""
  classes = sorted(dataset_info.classes, key=lambda c: c.source_id)
  if len(label_names) != len(classes):
    raise config_lib.ConfigError(
        f'{field}: the TFDS builder has {len(label_names)} class labels but '
        f'data set {dataset_info.name!r} has {len(classes)} classes')
  named = any(name != str(i) for i, name in enumerate(label_names))
  if named:
    wrong = [(i, name, c.name) for i, (name, c) in
             enumerate(zip(label_names, classes)) if name != c.name]
    if wrong:
      shown = ', '.join(f'label {i} {a!r} vs class {b!r}'
                        for i, a, b in wrong[:5])
      raise config_lib.ConfigError(
          f'{field}: TFDS class labels do not match the classes of '
          f'{dataset_info.name!r} in source-id order ({len(wrong)} '
          f'differ: {shown})')
  return (np.array([c.semantic_id for c in classes], np.int32),
          np.array([c.is_thing for c in classes], bool))


def coco_panoptic_to_label(panoptic_rgb, segment_ids, segment_labels,
                           segment_is_crowd, *, label_semantic_ids,
                           label_is_thing, label_divisor, ignore_label):
  """Panoptic label int32 [H, W] of a COCO-panoptic-style example.

  Args:
    panoptic_rgb: uint8 [H, W, 3], segment id = R + 256 G + 65536 B.
    segment_ids: int [S] segment ids of the listed segments.
    segment_labels: int [S] class-label index of each segment.
    segment_is_crowd: bool [S].
    label_semantic_ids: int32 [L] semantic id of each class label.
    label_is_thing: bool [L] whether each class label is a thing.
    label_divisor, ignore_label: of the data set.
  """
  rgb = tf.cast(panoptic_rgb, tf.int32)
  ids = rgb[..., 0] + 256 * rgb[..., 1] + 65536 * rgb[..., 2]  # [H, W]
  segment_ids = tf.cast(segment_ids, tf.int32)  # [S]
  segment_labels = tf.cast(segment_labels, tf.int32)
  semantic = tf.gather(label_semantic_ids, segment_labels)  # [S]
  instance_segment = tf.gather(label_is_thing, segment_labels) & (
      ~tf.cast(segment_is_crowd, tf.bool))  # [S]
  # Instance id: 1 + number of earlier instance segments of the same class.
  position = tf.range(tf.size(segment_ids))
  earlier = position[None, :] < position[:, None]  # [S, S]
  same_class = semantic[:, None] == semantic[None, :]  # [S, S]
  rank = tf.reduce_sum(tf.cast(
      earlier & same_class & instance_segment[None, :], tf.int32), axis=1)
  instance = tf.where(instance_segment, rank + 1, 0)  # [S]
  segment_label = semantic * label_divisor + instance  # [S]

  # Look pixels up among the sorted segment ids; a sentinel ends the list.
  order = tf.argsort(segment_ids)
  sorted_ids = tf.concat([tf.gather(segment_ids, order), [_NO_SEGMENT]], 0)
  sorted_labels = tf.concat([tf.gather(segment_label, order),
                             [ignore_label * label_divisor]], 0)
  flat = tf.reshape(ids, [-1])  # [H*W]
  index = tf.searchsorted(sorted_ids, flat)  # [H*W], at most S
  found = tf.gather(sorted_ids, index) == flat
  label = tf.where(found, tf.gather(sorted_labels, index),
                   ignore_label * label_divisor)
  return tf.reshape(label, tf.shape(ids))


def load_samples(options, field, *, dataset_info, shuffle, repeat,
                 shuffle_seed=None, record_seed=None, deterministic=True,
                 input_context=None, skip=0):
  """Samples with the keys of record.parse_example, read from TFDS.

  Args:
    options: the DatasetOptions (tfds_name, tfds_split, tfds_data_dir,
      cycle_length, shuffle_buffer_size).
    field: its name in the config, for errors.
    dataset_info: the data set's DatasetInfo.
    shuffle: shuffle the files and the examples.
    repeat: repeat forever.
    shuffle_seed, record_seed: seeds of the two shuffles (None: random).
    deterministic: keep the order fixed.
    input_context: tf.distribute.InputContext; TFDS reads this pipeline's
      share of the files.
    skip: examples to skip (before decoding).
  """
  import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel
  name = options.tfds_name
  split = options.tfds_split or ('train' if repeat else 'validation')
  data_dir = (config_lib.resolved(options.tfds_data_dir,
                                  f'{field}.tfds_data_dir')
              if options.tfds_data_dir else None)
  read_config = tfds.ReadConfig(
      shuffle_seed=shuffle_seed,
      interleave_cycle_length=max(1, options.cycle_length),
      input_context=input_context, enable_ordering_guard=False)
  read_config.options.deterministic = deterministic
  try:
    dataset, info = tfds.load(
        name, split=split, data_dir=data_dir, download=False,
        shuffle_files=shuffle, with_info=True, read_config=read_config,
        decoders={'image': tfds.decode.SkipDecoding(),
                  'panoptic_image': tfds.decode.SkipDecoding()})
  except (AssertionError, FileNotFoundError,
          tfds.core.DatasetNotFoundError) as e:
    raise config_lib.ConfigError(
        f'{field}.tfds_name = {name!r}, split {split!r}, data_dir '
        f'{data_dir or "default"}: cannot load it ({e}); prepare it first '
        f'with `tfds build {name}`') from None
  check_features(info.features, f'{field}.tfds_name = {name!r}')
  semantic_ids, is_thing = label_tables(
      info.features['panoptic_objects']['label'].names, dataset_info,
      f'{field}.tfds_name')

  if repeat:
    dataset = dataset.repeat()
  if shuffle:
    dataset = dataset.shuffle(options.shuffle_buffer_size, seed=record_seed)
  dataset = dataset.skip(skip)

  def convert(example):
    image = _decoded(example['image'])  # [H, W, 3] uint8
    objects = example['panoptic_objects']
    panoptic = coco_panoptic_to_label(
        _decoded(example['panoptic_image']), objects['id'], objects['label'],
        objects['is_crowd'], label_semantic_ids=semantic_ids,
        label_is_thing=is_thing, label_divisor=dataset_info.label_divisor,
        ignore_label=dataset_info.ignore_label)
    size = tf.shape(image)
    return {
        'image': image,
        'panoptic': panoptic,
        'image_id': (tf.strings.as_string(example['image/id'])
                     if 'image/id' in example else tf.constant('')),
        'filename': example.get('image/filename', tf.constant('')),
        'height': size[0],
        'width': size[1],
        'label_divisor': tf.constant(dataset_info.label_divisor, tf.int32),
    }

  return dataset.map(convert, num_parallel_calls=tf.data.AUTOTUNE,
                     deterministic=deterministic)


def check_features(features, what):
  """Raises ConfigError unless `features` are COCO-panoptic-like."""
  keys = set(features.keys())
  missing = [k for k in ('image', 'panoptic_image', 'panoptic_objects')
             if k not in keys]
  if not missing:
    object_keys = set(features['panoptic_objects'].feature.keys())
    missing = [f'panoptic_objects/{k}' for k in _OBJECT_FIELDS
               if k not in object_keys]
  if missing:
    raise config_lib.ConfigError(
        f'{what}: the builder lacks the COCO-panoptic features {missing}; '
        f'found {sorted(keys)}')


def _decoded(image):
  """uint8 [H, W, 3] from encoded bytes (SkipDecoding) or a decoded image."""
  if image.dtype == tf.string:
    image = tf.io.decode_image(image, channels=3, expand_animations=False)
  return tf.ensure_shape(image, [None, None, 3])
