"""Tests of targets.make_targets on hand-made labels (stride 4, 9x9 -> 3x3)."""
import numpy as np
import pytest
import tensorflow as tf

from deeplab2_kmax.data import dataset_info as dataset_info_lib
from deeplab2_kmax.data import targets

ClassInfo = dataset_info_lib.ClassInfo
K = 4  # classes: things a (1), b (2); stuff c (3), d (4)

INFO = dataset_info_lib.DatasetInfo(
    name='tiny',
    classes=(ClassInfo(1, 'a', True, (1, 1, 1), 11),
             ClassInfo(2, 'b', True, (2, 2, 2), 12),
             ClassInfo(3, 'c', False, (3, 3, 3), 13),
             ClassInfo(4, 'd', False, (4, 4, 4), 14)),
    ignore_label=0, label_divisor=100)


def _label():
  """9x9 label; samples at rows/cols 0, 4, 8 are the output pixels."""
  label = np.full([9, 9], 300, np.int32)  # stuff c
  label[0:2, 0:2] = 101  # a#1: 4 px, sampled at (0, 0)
  label[1, 6] = 102  # a#2: 1 px, never sampled -> slot without area
  label[3:6, 3:9] = 201  # b#1: 18 px, sampled at (4, 4) and (4, 8)
  label[8, 0] = 200  # crowd region of b
  label[8, 8] = 0  # void
  label[0, 8] = 0  # void
  label[8, 4] = 400  # stuff d
  return label


def _numpy(result):
  return {k: np.asarray(v) for k, v in result.items()}


def test_exact_targets_with_padding_crowd_void_and_small_instances():
  out = _numpy(targets.make_targets(
      _label(), dataset_info=INFO, output_stride=4, max_thing_id=4,
      small_instance_area=5, small_instance_weight=3.0))
  assert sorted(out) == sorted(targets.TARGET_KEYS)
  np.testing.assert_array_equal(
      out['gt_mask_ids'], [[0, 4, -1], [4, 2, 2], [-1, 5, -1]])
  # Slots: a#1, a#2 (no area at stride 4), b#1, padding, stuff c, stuff d.
  np.testing.assert_array_equal(out['gt_classes'], [0, K, 1, K, 2, 3])
  np.testing.assert_array_equal(
      out['gt_valid'], [True, False, True, False, True, True])
  np.testing.assert_array_equal(
      out['semantic'], [[1, 3, 0], [3, 2, 2], [2, 4, 0]])
  np.testing.assert_array_equal(
      out['void'], [[False, False, True], [False] * 3, [False, False, True]])
  np.testing.assert_allclose(
      out['inverse_area'], [[9, 4.5, 9], [4.5, 4.5, 4.5], [9, 9, 9]])
  # a#1 has 4 < 5 pixels at crop resolution; void gets weight 0.
  np.testing.assert_allclose(
      out['semantic_weights'], [[3, 1, 0], [1, 1, 1], [1, 1, 0]])
  assert out['gt_mask_ids'].dtype == np.int32
  assert out['gt_classes'].dtype == np.int32
  assert out['semantic'].dtype == np.int32
  assert out['inverse_area'].dtype == np.float32
  assert out['semantic_weights'].dtype == np.float32


def test_instances_beyond_max_thing_id_are_treated_like_crowd():
  out = _numpy(targets.make_targets(
      _label(), dataset_info=INFO, output_stride=4, max_thing_id=2))
  # b#1 (201) is the third instance: no mask, but keeps its class.
  np.testing.assert_array_equal(
      out['gt_mask_ids'], [[0, 2, -1], [2, -1, -1], [-1, 3, -1]])
  np.testing.assert_array_equal(out['gt_classes'], [0, K, 2, 3])
  np.testing.assert_array_equal(out['gt_valid'], [True, False, True, True])
  np.testing.assert_array_equal(out['semantic'][1], [3, 2, 2])
  np.testing.assert_allclose(out['inverse_area'][1], [4.5, 9, 9])
  np.testing.assert_allclose(out['semantic_weights'][1], [1, 1, 1])


def test_absent_stuff_and_unknown_semantic_ids():
  label = np.full([5, 5], 300, np.int32)
  label[0, 0] = 700  # semantic id 7 is no class: void
  out = _numpy(targets.make_targets(
      label, dataset_info=INFO, output_stride=4, max_thing_id=1))
  np.testing.assert_array_equal(out['gt_mask_ids'], [[-1, 1], [1, 1]])
  np.testing.assert_array_equal(out['gt_classes'], [K, 2, K])
  np.testing.assert_array_equal(out['gt_valid'], [False, True, False])
  np.testing.assert_array_equal(out['semantic'], [[0, 3], [3, 3]])
  np.testing.assert_array_equal(out['void'], [[True, False], [False] * 2])
  np.testing.assert_allclose(out['inverse_area'], [[4, 4 / 3], [4 / 3] * 2])


def test_ignore_label_outside_the_class_table():
  info = dataset_info_lib.DatasetInfo(
      name='cityscapes_like', classes=INFO.classes, ignore_label=255,
      label_divisor=1000)
  label = np.array([[255000, 1001], [3000, 4000]], np.int32)
  label = np.kron(label, np.ones([2, 2], np.int32))[:3, :3]  # 3x3
  out = _numpy(targets.make_targets(
      label, dataset_info=info, output_stride=2, max_thing_id=2))
  np.testing.assert_array_equal(out['semantic'], [[255, 1], [3, 4]])
  np.testing.assert_array_equal(out['gt_mask_ids'], [[-1, 0], [2, 3]])
  np.testing.assert_array_equal(out['gt_classes'], [0, K, 2, 3])


def _reference_mask_ids(label, info, stride, max_thing_id):
  """Slow per-pixel loop following the module docstring."""
  table = info.semantic_to_channel()

  def channel(value):
    semantic = value // info.label_divisor
    return int(table[semantic]) if 0 <= semantic < len(table) else -1

  things = sorted({int(v) for v in label.ravel()
                   if 0 <= channel(v) < info.num_things and
                   v % info.label_divisor})
  slots = {v: i for i, v in enumerate(things[:max_thing_id])}
  sub = label[::stride, ::stride]
  mask_ids = np.full(sub.shape, -1, np.int32)
  for (y, x), v in np.ndenumerate(sub):
    c = channel(v)
    if c >= info.num_things:
      mask_ids[y, x] = max_thing_id + c - info.num_things
    elif c >= 0 and int(v) in slots:
      mask_ids[y, x] = slots[int(v)]
  return mask_ids


@pytest.mark.parametrize('seed', range(3))
def test_random_labels_match_a_loop_reference(seed):
  rng = np.random.default_rng(seed)
  semantic = rng.integers(0, 6, [17, 17])  # 0 void, 5 no class
  instance = np.where(np.isin(semantic, [1, 2]), rng.integers(0, 4, [17, 17]),
                      0)
  label = (semantic * 100 + instance).astype(np.int32)
  out = targets.make_targets(label, dataset_info=INFO, output_stride=4,
                             max_thing_id=3)
  np.testing.assert_array_equal(
      out['gt_mask_ids'], _reference_mask_ids(label, INFO, 4, 3))
  ids = np.asarray(out['gt_mask_ids'])
  area = np.bincount(ids[ids >= 0], minlength=3 + INFO.num_stuff)
  np.testing.assert_array_equal(out['gt_valid'], area > 0)
  assert np.all((np.asarray(out['gt_classes']) == K) == (area == 0))


def test_eager_and_tf_data_agree():
  label = _label()
  kwargs = dict(dataset_info=INFO, output_stride=4, max_thing_id=4,
                small_instance_area=5, small_instance_weight=3.0)
  eager = _numpy(targets.make_targets(label, **kwargs))
  dataset = tf.data.Dataset.from_tensors(label).map(
      lambda x: targets.make_targets(x, **kwargs))
  assert dataset.element_spec['gt_classes'].shape == [6]
  assert dataset.element_spec['gt_mask_ids'].shape == [3, 3]
  (in_data,) = list(dataset.as_numpy_iterator())
  for key in targets.TARGET_KEYS:
    np.testing.assert_array_equal(eager[key], in_data[key], err_msg=key)


def test_dynamic_shapes_are_checked_at_run_time():
  fn = tf.function(
      lambda x: targets.make_targets(x, dataset_info=INFO, output_stride=4,
                                     max_thing_id=4),
      input_signature=[tf.TensorSpec([None, None], tf.int32)])
  out = fn(tf.constant(_label()))
  assert out['gt_mask_ids'].shape == [3, 3]
  with pytest.raises(tf.errors.InvalidArgumentError, match='k\\*4\\+1'):
    fn(tf.zeros([8, 9], tf.int32))


def test_static_bad_size_is_a_clear_error():
  with pytest.raises(ValueError, match='crop size 8 is not of the form'):
    targets.make_targets(np.zeros([8, 9], np.int32), dataset_info=INFO,
                         output_stride=4, max_thing_id=4)
