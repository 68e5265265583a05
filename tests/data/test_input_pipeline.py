"""End-to-end tests of input_pipeline.build_dataset on tiny TFRecords."""
import io

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from deeplab2_kmax import config as config_lib
from deeplab2_kmax.data import dataset_info as dataset_info_lib
from deeplab2_kmax.data import input_pipeline
from deeplab2_kmax.data import record
from deeplab2_kmax.data import targets
from deeplab2_kmax.protos import config_pb2

INFO = dataset_info_lib.get_dataset_info('synthetic_panoptic')
DIVISOR = INFO.label_divisor  # things 1-3, stuff 4-6, ignore 0
CROP = 17
STRIDE = 4
MAX_THING_ID = 6
NUM_SLOTS = MAX_THING_ID + INFO.num_stuff
SIZES = [(20, 14), (12, 16), (16, 16), (9, 21), (18, 12)]


def _encode(array, image_format):
  buffer = io.BytesIO()
  Image.fromarray(array).save(buffer, format=image_format.upper())
  return buffer.getvalue()


def _sample(index, rng, size):
  """A random image and a label with stuff, two things, crowd and void."""
  height, width = size
  image = rng.integers(0, 256, [height, width, 3], dtype=np.uint8)
  label = np.full([height, width], (4 + index % 3) * DIVISOR, np.int32)
  label[: height // 2, : width // 2] = 1 * DIVISOR + 1
  label[height // 2:, width // 2:] = 2 * DIVISOR + 1
  label[: height // 3, width // 2:] = 2 * DIVISOR + 2
  label[-2:, :2] = 3 * DIVISOR  # crowd
  label[0, -1] = 0  # void
  return image, label


def _write_shards(folder, prefix, num_shards, per_shard, seed=0,
                  image_format='jpeg'):
  rng = np.random.default_rng(seed)
  index = 0
  for shard in range(num_shards):
    path = folder / f'{prefix}-{shard:05d}-of-{num_shards:05d}.tfrecord'
    with tf.io.TFRecordWriter(str(path)) as writer:
      for _ in range(per_shard):
        image, label = _sample(index, rng, SIZES[index % len(SIZES)])
        writer.write(record.make_example(
            image_bytes=_encode(image, image_format),
            image_format=image_format, filename=f'img{index}.jpg',
            image_id=index, label=label, label_divisor=DIVISOR))
        index += 1
  return str(folder / f'{prefix}-*.tfrecord')


def _options(pattern, **augmentations):
  options = config_pb2.DatasetOptions(
      dataset='synthetic_panoptic', file_pattern=[pattern], batch_size=2,
      crop_size=[CROP, CROP], resize_longer_side=CROP,
      max_thing_id=MAX_THING_ID, shuffle=True,
      shuffle_buffer_size=8, cycle_length=2)
  options.augmentations.CopyFrom(config_pb2.AugmentationOptions(
      **augmentations))
  return options


ALL_AUGMENTATIONS = dict(
    min_scale_factor=0.5, max_scale_factor=1.5, scale_factor_step_size=0.25,
    autoaugment_policy='simple_classification_policy', flip=True,
    panoptic_copy_paste=True)


@pytest.fixture(scope='module')
def train_pattern(tmp_path_factory):
  return _write_shards(tmp_path_factory.mktemp('train'), 'train', 2, 4)


def _take(dataset, count):
  return [{k: v.numpy() for k, v in batch.items()}
          for batch in dataset.take(count)]


def _build(options, is_training, seed=None):
  return input_pipeline.build_dataset(
      options, dataset_info=INFO, is_training=is_training,
      output_stride=STRIDE, seed=seed)


def _check_targets_match_labels(batch):
  for i, label in enumerate(batch['panoptic']):
    expected = targets.make_targets(
        label, dataset_info=INFO, output_stride=STRIDE,
        max_thing_id=MAX_THING_ID)
    for key in targets.TARGET_KEYS:
      np.testing.assert_array_equal(batch[key][i], expected[key], err_msg=key)


@pytest.mark.slow
def test_training_batches_with_all_augmentations(train_pattern):
  dataset = _build(_options(train_pattern, **ALL_AUGMENTATIONS), True, seed=1)
  h = (CROP - 1) // STRIDE + 1
  expected = {
      'image': ((2, CROP, CROP, 3), tf.float32),
      'panoptic': ((2, CROP, CROP), tf.int32),
      'semantic': ((2, h, h), tf.int32),
      'gt_mask_ids': ((2, h, h), tf.int32),
      'gt_classes': ((2, NUM_SLOTS), tf.int32),
      'gt_valid': ((2, NUM_SLOTS), tf.bool),
      'inverse_area': ((2, h, h), tf.float32),
      'semantic_weights': ((2, h, h), tf.float32),
      'void': ((2, h, h), tf.bool),
      'image_id': ((2,), tf.string),
      'filename': ((2,), tf.string),
  }
  spec = dataset.element_spec
  assert {k: (tuple(s.shape), s.dtype) for k, s in spec.items()} == expected
  batches = _take(dataset, 3)
  for batch in batches:
    assert batch['image'].min() >= 0 and batch['image'].max() <= 255
    semantic = batch['panoptic'] // DIVISOR
    assert set(np.unique(semantic)) <= set(range(7))
    _check_targets_match_labels(batch)
  # Determinism: the same seed gives the same batches, another seed not.
  again = _take(_build(_options(train_pattern, **ALL_AUGMENTATIONS), True,
                       seed=1), 3)
  for first, second in zip(batches, again):
    for key in expected:
      np.testing.assert_array_equal(first[key], second[key], err_msg=key)
  other = _take(_build(_options(train_pattern, **ALL_AUGMENTATIONS), True,
                       seed=2), 3)
  assert any(not np.array_equal(a['image'], b['image'])
             for a, b in zip(batches, other))


def test_training_repeats_and_drops_the_remainder(train_pattern):
  options = _options(train_pattern)
  options.batch_size = 3  # 8 records: an epoch does not divide evenly
  batches = _take(_build(options, True, seed=0), 6)  # > 2 epochs
  assert all(b['image'].shape[0] == 3 for b in batches)
  ids = np.concatenate([b['image_id'] for b in batches])
  assert set(ids) == {str(i).encode() for i in range(8)}


def test_copy_paste_pastes_a_half_scale_sample(tmp_path):
  # Every image is one thing instance (class 1, id 1) with its own gray
  # value, so a pasted region is renumbered to id 2 and keeps its gray.
  with tf.io.TFRecordWriter(str(tmp_path / 'cp.tfrecord')) as writer:
    for index in range(4):
      image = np.full([CROP, CROP, 3], 40 * index + 20, np.uint8)
      label = np.full([CROP, CROP], DIVISOR + 1, np.int32)
      writer.write(record.make_example(
          image_bytes=_encode(image, 'png'), image_format='png',
          filename=f'{index}.png', image_id=index, label=label,
          label_divisor=DIVISOR))
  options = _options(str(tmp_path / 'cp.tfrecord'), flip=False,
                     panoptic_copy_paste=True)
  corners = set()
  for batch in _take(_build(options, True, seed=3), 4):
    for image, label in zip(batch['image'], batch['panoptic']):
      pasted = label == DIVISOR + 2
      # Scale 0.5 of a 17x17 image: a 8x8 pasted square.
      assert pasted.sum() == 64
      assert np.ptp(image[pasted]) == 0  # one image pasted, unresized gray
      assert np.all(label[~pasted] == DIVISOR + 1)
      rows, cols = np.nonzero(pasted)
      corners.add((rows.min(), cols.min()))
  # The small pasted crop lands at a random place (DeepLab2's padding).
  assert len(corners) > 2


def test_evaluation_keeps_every_image_once(tmp_path):
  pattern = _write_shards(tmp_path, 'val', 2, 3, image_format='png')
  options = _options(pattern, **ALL_AUGMENTATIONS)
  options.batch_size = 4
  options.resize_longer_side = 13
  batches = _take(_build(options, False), 5)
  assert [b['image'].shape[0] for b in batches] == [4, 2]
  ids = np.concatenate([b['image_id'] for b in batches])
  assert sorted(ids) == sorted(str(i).encode() for i in range(6))
  for batch in batches:
    _check_targets_match_labels(batch)
    for i, image_id in enumerate(batch['image_id']):
      index = int(image_id)
      height, width = SIZES[index % len(SIZES)]
      np.testing.assert_array_equal(batch['original_size'][i],
                                    [height, width])
      resized = [13 if height >= width else height * 13 // width,
                 13 if width >= height else width * 13 // height]
      np.testing.assert_array_equal(batch['resized_size'][i], resized)
      # Padding: mean gray and void label outside the resized image.
      rows, cols = resized
      assert np.all(batch['panoptic'][i][rows:] == 0)
      assert np.all(batch['panoptic'][i][:, cols:] == 0)
      assert np.all(batch['image'][i][rows:] == 127.5)
      assert batch['panoptic'][i][0, 0] == DIVISOR + 1  # no flip, no crop
  # Evaluation ignores augmentations: a second pass is identical.
  again = _take(_build(options, False), 5)
  np.testing.assert_array_equal(batches[0]['image'], again[0]['image'])


def test_corrupt_record_is_named_in_training_and_evaluation(tmp_path):
  _write_shards(tmp_path, 'bad', 1, 2)
  path = tmp_path / 'bad-00000-of-00001.tfrecord'
  with tf.io.TFRecordWriter(str(path.with_name('bad-zz.tfrecord'))) as w:
    w.write(record.make_example(
        image_bytes=b'garbage', image_format='jpeg', filename='x.jpg',
        image_id=99, label=np.zeros([5, 5], np.int32),
        label_divisor=DIVISOR))
  options = _options(str(tmp_path / 'bad-*.tfrecord'))
  with pytest.raises(tf.errors.InvalidArgumentError,
                     match=r'bad-zz.tfrecord: record 0 cannot be parsed'):
    _take(_build(options, False), 3)
  with pytest.raises(tf.errors.InvalidArgumentError,
                     match=r'bad-zz.tfrecord: record 0 cannot be parsed'):
    _take(_build(options, True, seed=0), 3)


def test_truncated_shard_is_named(tmp_path):
  _write_shards(tmp_path, 'cut', 1, 3)
  path = tmp_path / 'cut-00000-of-00001.tfrecord'
  path.write_bytes(path.read_bytes()[:-7])
  options = _options(str(tmp_path / 'cut-*'))
  with pytest.raises(tf.errors.InvalidArgumentError,
                     match=r'cut-00000-of-00001.tfrecord: cannot read '
                     'record 2'):
    _take(_build(options, False), 3)


def test_file_pattern_errors(tmp_path, monkeypatch):
  monkeypatch.delenv('H4_NO_SUCH_DIR', raising=False)
  with pytest.raises(config_lib.ConfigError,
                     match=r'train_dataset_options.file_pattern.*H4_NO_SUCH'):
    _build(_options('${H4_NO_SUCH_DIR}/train-*.tfrecord'), True)
  with pytest.raises(config_lib.ConfigError,
                     match=r'eval_dataset_options.file_pattern = .* matches '
                     'no file'):
    _build(_options(str(tmp_path / 'val-*.tfrecord')), False)


def test_crop_size_must_fit_the_output_stride(train_pattern):
  options = _options(train_pattern)
  options.crop_size[:] = [16, 17]
  with pytest.raises(ValueError, match='crop_size: 16 is not of the form'):
    _build(options, True)


def test_sample_processor_eager_and_in_tf_data_agree(train_pattern):
  options = _options(train_pattern, **ALL_AUGMENTATIONS)
  processor = input_pipeline.SampleProcessor(
      options, INFO, [CROP, CROP], output_stride=STRIDE,
      max_thing_id=MAX_THING_ID, small_instance_area=30,
      small_instance_weight=3.0)
  path = sorted(tf.io.gfile.glob(train_pattern))[0]
  raw = list(tf.data.TFRecordDataset(path).take(2))
  samples = [record.parse_example(r) for r in raw]
  seed = tf.constant([5, 6], tf.int64)
  eager = processor.train_sample(samples[0], samples[1], seed)
  dataset = tf.data.Dataset.from_tensors((raw[0], raw[1], seed)).map(
      lambda a, b, s: processor.train_sample(
          record.parse_example(a), record.parse_example(b), s))
  (in_data,) = list(dataset)
  for key, value in eager.items():
    np.testing.assert_array_equal(value, in_data[key], err_msg=key)
  assert np.any(eager['semantic_weights'].numpy() == 3.0)


def test_skip_batches_resumes_the_same_stream(train_pattern):
  options = _options(train_pattern, min_scale_factor=0.5,
                     max_scale_factor=1.5, scale_factor_step_size=0.25,
                     panoptic_copy_paste=True)
  full = _take(_build(options, True, seed=4), 3)
  resumed = _take(input_pipeline.build_dataset(
      options, dataset_info=INFO, is_training=True, output_stride=STRIDE,
      seed=4, skip_batches=2), 1)
  for key in ('image', 'panoptic', 'gt_mask_ids', 'image_id'):
    np.testing.assert_array_equal(full[2][key], resumed[0][key], err_msg=key)


@pytest.mark.parametrize('num_shards', [1, 2])
def test_input_context_splits_the_evaluation_data(tmp_path, num_shards):
  pattern = _write_shards(tmp_path, 'val', num_shards, 6 // num_shards)
  ids = []
  for pipeline in range(2):
    context = tf.distribute.InputContext(
        num_input_pipelines=2, input_pipeline_id=pipeline,
        num_replicas_in_sync=2)
    dataset = input_pipeline.build_dataset(
        _options(pattern), dataset_info=INFO, is_training=False,
        output_stride=STRIDE, input_context=context)
    ids.append(np.concatenate([b['image_id'] for b in _take(dataset, 9)]))
  assert len(ids[0]) == len(ids[1]) == 3
  assert sorted(np.concatenate(ids)) == sorted(
      str(i).encode() for i in range(6))


def test_list_files_of_options(train_pattern, tmp_path):
  assert len(input_pipeline.list_files(_options(train_pattern))) == 2
  with pytest.raises(config_lib.ConfigError,
                     match=r'train_dataset_options.file_pattern = .*'):
    input_pipeline.list_files(_options(str(tmp_path / 'x-*')),
                              'train_dataset_options')
  tfds_options = _options(str(tmp_path / 'x-*'))
  tfds_options.tfds_name = 'coco/2017_panoptic'
  assert input_pipeline.list_files(tfds_options) == []
