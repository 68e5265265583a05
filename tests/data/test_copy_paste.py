"""Tests of copy_paste.panoptic_copy_paste on hand-made 4x4 samples."""
import numpy as np
import pytest
import tensorflow as tf

from deeplab2_kmax.data import copy_paste

DIVISOR = 100
THINGS = (1, 2)
KWARGS = dict(label_divisor=DIVISOR, ignore_label=0, thing_semantic_ids=THINGS)

# First sample: things 101, 102 (class 1), stuff 300, void.
LABEL = np.array([[101, 101, 300, 300],
                  [102, 102, 300, 300],
                  [300, 300, 300, 0],
                  [300, 300, 300, 0]], np.int32)
# Pasted sample: thing 101 (class 1), thing 201 (class 2), crowd 200,
# stuff 400 and void (e.g. padding).
PASTE_LABEL = np.array([[0, 0, 101, 101],
                        [0, 0, 201, 400],
                        [200, 400, 400, 400],
                        [400, 400, 0, 0]], np.int32)
IMAGE = np.zeros([4, 4, 3], np.float32)
PASTE_IMAGE = np.full([4, 4, 3], 200.0, np.float32)


def _paste(seed, label=LABEL, paste_label=PASTE_LABEL, **kwargs):
  image, panoptic = copy_paste.panoptic_copy_paste(
      IMAGE, label, PASTE_IMAGE, paste_label, tf.constant([seed, 7]),
      **{**KWARGS, **kwargs})
  return np.asarray(image), np.asarray(panoptic)


def test_things_forced_void_never_pasted_and_ids_renumbered():
  stuff_pasted = []
  for seed in range(24):
    image, label = _paste(seed)
    pasted = image[..., 0] == 200.0
    np.testing.assert_array_equal(image[..., 1:], image[..., :1].repeat(2, -1))
    # The label is pasted exactly where the image is.
    np.testing.assert_array_equal(pasted, label != LABEL)
    # Void pixels of the pasted sample are never pasted.
    assert not pasted[PASTE_LABEL == 0].any()
    # Every thing segment (crowd included) is pasted, renumbered above the
    # first sample's class-1 instances (largest id 2): 101 -> 103.
    assert (label[0, 2:] == 103).all()
    assert label[1, 2] == 201  # class 2 is absent from the first sample
    assert label[2, 0] == 200  # crowd keeps instance id 0
    # Stuff 400 is all or nothing.
    stuff = PASTE_LABEL == 400
    assert pasted[stuff].all() or not pasted[stuff].any()
    stuff_pasted.append(bool(pasted[stuff].all()))
    # Untouched pixels keep the first sample.
    np.testing.assert_array_equal(label[~pasted], LABEL[~pasted])
    # Instance ids stay unique: 103 never collides with the first's 101/102.
    assert not np.isin(label[pasted], [101, 102]).any()
  # Stuff is random: both outcomes happen.
  assert any(stuff_pasted) and not all(stuff_pasted)


def test_same_seed_same_result_and_different_seeds_differ():
  first = _paste(3)
  np.testing.assert_array_equal(first[1], _paste(3)[1])
  labels = {_paste(seed)[1].tobytes() for seed in range(24)}
  assert len(labels) == 2  # stuff pasted or not


def test_instances_that_would_overflow_the_divisor_are_not_pasted():
  label = np.full([4, 4], 18, np.int32)  # divisor 10: class 1, instance 8
  paste = np.array([[11, 11, 12, 12]] * 4, np.int32)  # instances 1 and 2
  _, out = _paste(0, label=label, paste_label=paste, label_divisor=10)
  np.testing.assert_array_equal(out[:, :2], 19)  # 1 + 8
  np.testing.assert_array_equal(out[:, 2:], 18)  # 2 + 8 = 10 cannot be written


def test_without_thing_classes_everything_is_random():
  results = {_paste(seed, thing_semantic_ids=())[1].tobytes()
             for seed in range(24)}
  assert len(results) > 2


def test_eager_and_tf_data_agree():
  seeds = np.array([[s, 1] for s in range(6)], np.int64)
  dataset = tf.data.Dataset.from_tensor_slices(seeds).map(
      lambda s: copy_paste.panoptic_copy_paste(
          IMAGE, LABEL, PASTE_IMAGE, PASTE_LABEL, s, **KWARGS))
  for seed, (image, label) in zip(seeds, dataset.as_numpy_iterator()):
    eager_image, eager_label = copy_paste.panoptic_copy_paste(
        IMAGE, LABEL, PASTE_IMAGE, PASTE_LABEL, seed, **KWARGS)
    np.testing.assert_array_equal(image, eager_image)
    np.testing.assert_array_equal(label, eager_label)
  assert dataset.element_spec[1].shape == [4, 4]


@pytest.mark.parametrize('dtype', [tf.uint8, tf.float32])
def test_image_dtype_is_kept(dtype):
  image, _ = copy_paste.panoptic_copy_paste(
      tf.cast(IMAGE, dtype), LABEL, tf.cast(PASTE_IMAGE, dtype), PASTE_LABEL,
      [1, 2], **KWARGS)
  assert image.dtype == dtype
