"""Tests of miou: hand example; TF matrix = NumPy matrix, also in tf.data."""
import numpy as np
import pytest
import tensorflow as tf

from deeplab2_kmax.data import dataset_info
from deeplab2_kmax.evaluation import miou

CLASSES = (3, 0, 1, 2)  # class 3 never occurs; 255 is ignored
GT = np.array([[0, 0, 1, 1], [2, 2, 255, 1]])
PRED = np.array([[0, 1, 1, 1], [2, 0, 2, 255]])  # 255: no class predicted
MATRIX = [[1, 1, 0, 0, 0],  # rows / columns in id order 0, 1, 2, 3, none
          [0, 2, 0, 0, 1],
          [1, 0, 1, 0, 0],
          [0, 0, 0, 0, 0]]


def test_hand_example():
  np.testing.assert_array_equal(miou.confusion_matrix(GT, PRED, CLASSES),
                                MATRIX)
  metric = miou.MeanIoU(CLASSES).update(GT, PRED)
  result = metric.result()
  # IoU_0 = 1 / (2 + 2 - 1), IoU_1 = 2 / (3 + 3 - 2), IoU_2 = 1 / (2 + 1 - 1).
  assert result['per_class'] == pytest.approx({0: 1 / 3, 1: 0.5, 2: 0.5,
                                               3: 0.0})
  assert result['n'] == 3
  assert result['miou'] == pytest.approx(4 / 9)
  assert metric.scalars()['semantic/miou'] == result['miou']


def test_streaming_merge_and_reset():
  rng = np.random.default_rng(0)
  gt = rng.choice([0, 1, 2, 255], size=[6, 5, 7])
  pred = rng.choice([0, 1, 2, 3, 255], size=[6, 5, 7])
  one_shot = miou.MeanIoU(CLASSES).update(gt, pred)
  streamed = miou.MeanIoU(CLASSES)
  for g, p in zip(gt, pred):
    streamed.update(g, p)
  merged = (miou.MeanIoU(CLASSES).update(gt[:2], pred[:2]) +
            miou.MeanIoU(CLASSES).update(gt[2:], pred[2:]))
  for other in (streamed, merged):
    np.testing.assert_array_equal(other.matrix, one_shot.matrix)
  assert one_shot.matrix.sum() == np.sum(gt != 255)
  one_shot.reset()
  assert one_shot.matrix.sum() == 0 and one_shot.result()['miou'] == 0.0
  with pytest.raises(ValueError, match='different classes'):
    merged.merge(miou.MeanIoU((0, 1)))
  with pytest.raises(ValueError, match='differ in shape'):
    merged.update(gt, pred[:, :2])


def test_tf_matrix_equals_numpy_eagerly_and_in_tf_data():
  rng = np.random.default_rng(1)
  gt = rng.choice([0, 1, 2, 255, 7], size=[4, 6, 5]).astype(np.int32)
  pred = rng.choice([0, 1, 2, 3, 255], size=[4, 6, 5]).astype(np.int32)
  expected = miou.confusion_matrix(gt, pred, CLASSES)
  eager = miou.confusion_matrix_tf(tf.constant(gt), tf.constant(pred),
                                   CLASSES)
  np.testing.assert_array_equal(eager.numpy(), expected)
  dataset = tf.data.Dataset.from_tensor_slices((gt, pred)).map(
      lambda g, p: miou.confusion_matrix_tf(g, p, CLASSES))
  total = sum(m.numpy() for m in dataset)
  np.testing.assert_array_equal(total, expected)
  assert expected.sum() == np.isin(gt, CLASSES).sum()


def test_from_dataset_info():
  info = dataset_info.get_dataset_info('cityscapes_panoptic')
  metric = miou.MeanIoU.from_dataset_info(info)
  assert metric.class_ids == tuple(range(19))
  metric.update(np.array([[0, 255]]), np.array([[0, 0]]))
  assert metric.result()['miou'] == 1.0
