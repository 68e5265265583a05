"""Tests of tfds_source: example -> label conversion and a mocked TFDS run."""
import io

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from deeplab2_kmax import config as config_lib
from deeplab2_kmax.data import dataset_info as dataset_info_lib
from deeplab2_kmax.data import input_pipeline
from deeplab2_kmax.data import tfds_source
from deeplab2_kmax.protos import config_pb2

tfds = pytest.importorskip('tensorflow_datasets')

COCO = dataset_info_lib.get_dataset_info('coco_panoptic')
TFDS_NAME = 'coco/2017_panoptic'

# Hand-made example: class labels 0 (thing, semantic 3), 1 (stuff, 5),
# 2 (thing, 8); label divisor 10, ignore label 0.
SEMANTIC_IDS = np.array([3, 5, 8], np.int32)
IS_THING = np.array([True, False, True])
SEGMENT_IDS = np.array([300, 5, 70000, 8, 12])
SEGMENT_LABELS = np.array([0, 2, 1, 0, 0])
SEGMENT_CROWD = np.array([False, False, False, True, False])
PIXEL_IDS = np.array([[300, 300, 5, 0],
                      [70000, 70000, 8, 9],
                      [12, 12, 70000, 70000]], np.int32)
EXPECTED = np.array([[31, 31, 81, 0],
                     [50, 50, 30, 0],
                     [32, 32, 50, 50]], np.int32)


def _rgb(ids):
  return np.stack([ids % 256, ids // 256 % 256, ids // 65536],
                  axis=-1).astype(np.uint8)


def _convert(rgb, ids, labels, crowd):
  return tfds_source.coco_panoptic_to_label(
      rgb, ids, labels, crowd, label_semantic_ids=SEMANTIC_IDS,
      label_is_thing=IS_THING, label_divisor=10, ignore_label=0)


def test_example_to_label_on_a_hand_made_example():
  label = _convert(_rgb(PIXEL_IDS), SEGMENT_IDS, SEGMENT_LABELS,
                   SEGMENT_CROWD)
  np.testing.assert_array_equal(label, EXPECTED)
  assert label.dtype == tf.int32


def test_example_to_label_in_tf_data_and_without_segments():
  dataset = tf.data.Dataset.from_tensors(
      (_rgb(PIXEL_IDS), SEGMENT_IDS, SEGMENT_LABELS, SEGMENT_CROWD)).map(
          _convert)
  np.testing.assert_array_equal(next(iter(dataset)), EXPECTED)
  empty = _convert(_rgb(PIXEL_IDS), np.zeros([0], np.int64),
                   np.zeros([0], np.int64), np.zeros([0], bool))
  np.testing.assert_array_equal(empty, np.zeros_like(EXPECTED))


def test_label_tables_by_position_and_checked_by_name():
  names = [str(i) for i in range(133)]  # TFDS without label names
  semantic, thing = tfds_source.label_tables(names, COCO)
  by_source = sorted(COCO.classes, key=lambda c: c.source_id)
  assert semantic[0] == by_source[0].semantic_id
  assert thing.sum() == COCO.num_things
  real = [c.name for c in by_source]
  np.testing.assert_array_equal(tfds_source.label_tables(real, COCO)[0],
                                semantic)
  real[3] = 'zebra crossing'
  with pytest.raises(config_lib.ConfigError, match="label 3 'zebra"):
    tfds_source.label_tables(real, COCO)
  with pytest.raises(config_lib.ConfigError, match='has 5 class labels'):
    tfds_source.label_tables(names[:5], COCO)


def test_builder_features_are_coco_panoptic():
  features = tfds.builder(TFDS_NAME).info.features
  tfds_source.check_features(features, TFDS_NAME)
  objects = features['panoptic_objects'].feature
  assert objects['label'].num_classes == COCO.num_classes
  assert objects['is_crowd'].dtype == tf.bool
  with pytest.raises(config_lib.ConfigError, match='lacks the COCO-panoptic'):
    tfds_source.check_features(tfds.builder('mnist').info.features, 'mnist')


def _png(array):
  buffer = io.BytesIO()
  Image.fromarray(array).save(buffer, format='PNG')
  return buffer.getvalue()


def _mock_examples(num_examples):
  """COCO-panoptic examples as `tfds.load` gives them with SkipDecoding."""
  rng = np.random.default_rng(0)
  examples = []
  for index in range(num_examples):
    height, width = 12 + index, 15
    ids = np.zeros([height, width], np.int64)
    ids[:, : width // 2] = 1000 + index  # stuff (label 100)
    ids[: height // 2, width // 2:] = 7  # person (label 0)
    ids[height // 2:, width // 2:] = 8  # crowd person
    examples.append({
        'image': _png(rng.integers(0, 256, [height, width, 3], np.uint8)),
        'image/filename': f'{index:012d}.jpg',
        'image/id': index,
        'panoptic_image': _png(_rgb(ids)),
        'panoptic_image/filename': f'{index:012d}.png',
        'panoptic_objects': {
            'id': np.array([1000 + index, 7, 8]),
            'area': np.array([1, 1, 1]),
            'bbox': np.zeros([3, 4], np.float32),
            'label': np.array([100, 0, 0]),
            'is_crowd': np.array([False, False, True]),
        },
    })
  return examples


def _as_dataset(self, *args, **kwargs):
  del self, args, kwargs
  examples = _mock_examples(3)
  return tf.data.Dataset.from_generator(
      lambda: iter(examples),
      output_signature={
          'image': tf.TensorSpec([], tf.string),
          'image/filename': tf.TensorSpec([], tf.string),
          'image/id': tf.TensorSpec([], tf.int64),
          'panoptic_image': tf.TensorSpec([], tf.string),
          'panoptic_image/filename': tf.TensorSpec([], tf.string),
          'panoptic_objects': {
              'id': tf.TensorSpec([None], tf.int64),
              'area': tf.TensorSpec([None], tf.int64),
              'bbox': tf.TensorSpec([None, 4], tf.float32),
              'label': tf.TensorSpec([None], tf.int64),
              'is_crowd': tf.TensorSpec([None], tf.bool),
          }})


def _options(**kwargs):
  options = config_pb2.DatasetOptions(
      dataset='coco_panoptic', tfds_name=TFDS_NAME, batch_size=2,
      crop_size=[17, 17], resize_longer_side=17, max_thing_id=4,
      shuffle=True, shuffle_buffer_size=4, **kwargs)
  options.augmentations.min_scale_factor = 0.5
  options.augmentations.max_scale_factor = 1.5
  options.augmentations.panoptic_copy_paste = True
  return options


@pytest.mark.slow
def test_pipeline_runs_on_mocked_tfds():
  stuff = sorted(COCO.classes, key=lambda c: c.source_id)[100].semantic_id
  person = sorted(COCO.classes, key=lambda c: c.source_id)[0].semantic_id
  with tfds.testing.mock_data(as_dataset_fn=_as_dataset):
    train = input_pipeline.build_dataset(
        _options(tfds_split='train'), dataset_info=COCO, is_training=True,
        seed=0)
    batch = next(iter(train))
    evaluation = input_pipeline.build_dataset(
        _options(tfds_split='validation'), dataset_info=COCO,
        is_training=False)
    eval_batches = list(evaluation)
  assert batch['image'].shape == [2, 17, 17, 3]
  assert batch['gt_classes'].shape == [2, 4 + COCO.num_stuff]
  semantic = set(np.unique(batch['panoptic'].numpy() // 256))
  assert semantic <= {0, person, stuff} and stuff in semantic
  assert [b['image'].shape[0] for b in eval_batches] == [2, 1]
  first = eval_batches[0]
  np.testing.assert_array_equal(first['original_size'][0], [12, 15])
  np.testing.assert_array_equal(first['image_id'], [b'0', b'1'])
  label = first['panoptic'][0].numpy()
  assert label[0, 0] == stuff * 256  # stuff: instance 0
  assert label[0, -3] == person * 256 + 1  # first person instance
  assert label[10, -3] == person * 256  # crowd person


def test_unprepared_tfds_data_is_a_clear_error(tmp_path):
  options = _options(tfds_split='train', tfds_data_dir=str(tmp_path))
  with pytest.raises(config_lib.ConfigError,
                     match=r"tfds_name = 'coco/2017_panoptic'.*tfds build"):
    input_pipeline.build_dataset(options, dataset_info=COCO, is_training=True)
