"""Pictures for TensorBoard: panels and the raw per-pixel prediction."""
import numpy as np
import tensorflow as tf

from deeplab2_kmax.data import dataset_info as dataset_info_lib
from deeplab2_kmax.trainer import image_summaries

INFO = dataset_info_lib.get_dataset_info('synthetic_panoptic')


def test_per_pixel_panoptic_takes_the_class_of_the_assigned_center():
  things = INFO.num_things
  channel_to_semantic = INFO.channel_to_semantic()
  # Center 0: a thing, center 1: a stuff class, center 2: void.
  classes = np.array([[0, things, INFO.num_classes]])  # [1, N=3]
  clusters = np.array([[[0, 1], [2, 0]]])  # [1, 2, 2]
  panoptic = image_summaries.per_pixel_panoptic(classes, clusters, INFO)
  div = INFO.label_divisor
  thing = channel_to_semantic[0] * div + 1  # instance = center index + 1
  stuff = channel_to_semantic[things] * div
  np.testing.assert_array_equal(
      panoptic, [[[thing, stuff], [INFO.void_label, thing]]])


def test_panels_put_input_truth_and_prediction_side_by_side():
  images = np.full([2, 9, 9, 3], 100.0, np.float32)
  gt = np.full([2, 9, 9], INFO.void_label, np.int32)
  gt[:, :4] = INFO.channel_to_semantic()[-1] * INFO.label_divisor
  prediction = np.full([2, 3, 3], INFO.void_label, np.int32)  # stride 4
  pictures = image_summaries.panels(images, gt, prediction, INFO)
  assert pictures.shape == (2, 9, 3 * 9 + 2 * 4, 3)
  assert pictures.dtype == np.uint8
  first, second, third = (pictures[0, :, 0:9], pictures[0, :, 13:22],
                          pictures[0, :, 26:35])
  np.testing.assert_array_equal(first, images[0].astype(np.uint8))
  # Void shows the image; labelled pixels are tinted.
  np.testing.assert_array_equal(third, first)
  assert np.any(second[:4] != first[:4])
  np.testing.assert_array_equal(second[5:], first[5:])  # row 4: boundary


def test_prediction_at_the_output_stride_is_taken_to_the_crop():
  label = np.array([[1, 2, 3], [4, 5, 6], [7, 8, 9]])
  up = image_summaries._nearest_align_corners(label, (9, 9))
  # Align corners: input pixel i sits at output pixel 4 i.
  np.testing.assert_array_equal(up[::4, ::4], label)
  assert up.shape == (9, 9)


def test_write_records_only_when_summaries_are_recorded(tmp_path):
  images = np.zeros([1, 5, 5, 3], np.float32)
  labels = np.zeros([1, 5, 5], np.int32)
  writer = tf.summary.create_file_writer(str(tmp_path))
  with writer.as_default():
    with tf.summary.record_if(False):
      image_summaries.write('skipped', images, labels, labels, INFO, step=1)
    image_summaries.write('kept', images, labels, labels, INFO, step=2)
  writer.close()
  tags = [v.tag for path in tmp_path.iterdir()
          for event in tf.compat.v1.train.summary_iterator(str(path))
          for v in event.summary.value]
  assert tags == ['kept']
