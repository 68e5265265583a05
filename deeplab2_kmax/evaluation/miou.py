"""Mean IoU of semantic segmentation from a streaming confusion matrix.

The confusion matrix counts pixels by (GT class, predicted class) over the C
evaluated classes (semantic ids), with one extra prediction column for
predicted values that are no class (e.g. void in a panoptic prediction,
which is an error wherever the GT has a class). GT pixels whose value is no
class (the ignore label) are left out. Per class

  IoU_c = TP_c / (TP_c + FP_c + FN_c),

and mIoU is the mean over the classes with TP + FP + FN > 0 (classes absent
from both the GT and the predictions are left out, as Keras' MeanIoU, used
by DeepLab2, does).

`confusion_matrix` (NumPy) and `confusion_matrix_tf` (TensorFlow, static
shapes, usable inside tf.function on every replica) compute the same
[C, C + 1] matrix of a batch; matrices add over batches and replicas.
"""
import numpy as np

from deeplab2_kmax.evaluation import panoptic_quality


def _sorted_ids(class_ids):
  ids = np.asarray(class_ids, np.int64).reshape([-1])
  if not ids.size or np.unique(ids).size != ids.size:
    raise ValueError(f'class ids must be unique and non-empty; found {ids}')
  return np.sort(ids)


def confusion_matrix(gt_semantic, pred_semantic, class_ids):
  """int64 [C, C + 1] pixel counts; rows GT class, columns predicted class
  (column C: prediction is no class). Classes in sorted id order."""
  ids = _sorted_ids(class_ids)
  gt, pred = np.asarray(gt_semantic), np.asarray(pred_semantic)
  if gt.shape != pred.shape:
    raise ValueError(f'GT {gt.shape} and prediction {pred.shape} differ in '
                     'shape')
  num = ids.size
  row = panoptic_quality.positions(gt.ravel(), ids)  # [P], -1 = ignored
  col = panoptic_quality.positions(pred.ravel(), ids)  # [P]
  col = np.where(col < 0, num, col)
  flat = (row * (num + 1) + col)[row >= 0]
  return np.bincount(flat, minlength=num * (num + 1)).reshape(
      num, num + 1).astype(np.int64)


def confusion_matrix_tf(gt_semantic, pred_semantic, class_ids):
  """TensorFlow version of `confusion_matrix` (any shapes, static output)."""
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  ids_np = _sorted_ids(class_ids)
  num = ids_np.size
  ids = tf.constant(ids_np, tf.int64)

  def index(values):
    values = tf.reshape(tf.cast(values, tf.int64), [-1])  # [P]
    at = tf.minimum(tf.searchsorted(ids, values, out_type=tf.int64),
                    num - 1)
    return tf.where(tf.equal(tf.gather(ids, at), values), at,
                    tf.constant(-1, tf.int64))

  row = index(gt_semantic)  # [P]
  col = index(pred_semantic)  # [P]
  col = tf.where(col < 0, tf.cast(num, tf.int64), col)
  size = num * (num + 1)
  # Ignored pixels go to one extra bin that is dropped.
  flat = tf.where(row >= 0, row * (num + 1) + col, size)
  counts = tf.math.bincount(tf.cast(flat, tf.int32), minlength=size + 1,
                            maxlength=size + 1, dtype=tf.int64)
  return tf.reshape(counts[:size], [num, num + 1])


class MeanIoU:
  """Streaming mIoU; merge accumulators of replicas with `+`."""

  def __init__(self, class_ids):
    self.class_ids = tuple(int(c) for c in _sorted_ids(class_ids))
    num = len(self.class_ids)
    self.matrix = np.zeros([num, num + 1], np.int64)

  @classmethod
  def from_dataset_info(cls, info):
    return cls([c.semantic_id for c in info.classes])

  def reset(self):
    self.matrix = np.zeros_like(self.matrix)

  def add(self, matrix):
    """Adds a confusion matrix from `confusion_matrix(_tf)`."""
    matrix = np.asarray(matrix, np.int64)
    if matrix.shape != self.matrix.shape:
      raise ValueError(f'confusion matrix {matrix.shape}, expected '
                       f'{self.matrix.shape}')
    self.matrix = self.matrix + matrix
    return self

  def update(self, gt_semantic, pred_semantic):
    """Adds pixels: semantic ids of one shape (any batch layout)."""
    return self.add(confusion_matrix(gt_semantic, pred_semantic,
                                     self.class_ids))

  def merge(self, other):
    if other.class_ids != self.class_ids:
      raise ValueError('cannot merge MeanIoU accumulators of different '
                       'classes')
    return self.add(other.matrix)

  def __add__(self, other):
    if not isinstance(other, MeanIoU):
      return NotImplemented
    return MeanIoU(self.class_ids).merge(self).merge(other)

  def per_class_iou(self):
    """float64 [C] IoU per class; NaN for classes that never occur."""
    tp = np.diag(self.matrix[:, :-1]).astype(np.float64)  # [C]
    gt_total = self.matrix.sum(axis=1)  # [C] TP + FN
    pred_total = self.matrix[:, :-1].sum(axis=0)  # [C] TP + FP
    union = gt_total + pred_total - tp
    return np.divide(tp, union, out=np.full(tp.shape, np.nan),
                     where=union > 0)

  def result(self):
    """{'miou': mean over occurring classes, 'per_class': {id: IoU}}."""
    iou = self.per_class_iou()
    present = ~np.isnan(iou)
    return {'miou': float(iou[present].mean()) if present.any() else 0.0,
            'n': int(present.sum()),
            'per_class': {c: (float(v) if p else 0.0)
                          for c, v, p in zip(self.class_ids, iou, present)}}

  def scalars(self, prefix='semantic/'):
    return {f'{prefix}miou': self.result()['miou']}
