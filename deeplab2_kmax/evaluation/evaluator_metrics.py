"""The trainer's evaluation metrics: PQ, mask AP and mIoU on eval batches.

The evaluator post-processes each replica's model outputs in TensorFlow
(mask-wise merging at the padded crop size) and hands NumPy arrays to
`PanopticMetrics.update(predictions, batch)`, which crops every image back
to its resized size (the padding is not part of the image) and accumulates:

- PQ / SQ / RQ (all, things, stuff) against the panoptic label of the crop,
- the instance AP of the thing segments with their ranking scores: COCO
  mask AP (mask_ap.py), or for a data set whose table says
  `instance_metric: cityscapes` the Cityscapes benchmark's AP and AP50
  (cityscapes_ap.py), under the same `instance/AP`, `instance/AP50` names,
- mIoU of the pixel-wise semantic map (ignore label excluded).

Labels are compared at the evaluation resolution (the image resized so its
longer side is `resize_longer_side`, as in DeepLab2). With `save_predictions`
the panoptic predictions are also written at the original image size in COCO
panoptic format (PNG + JSON, real category ids), ready for the official
evaluation or a test server, and with `cityscapes_predictions` also in the
semantic and instance formats of the Cityscapes scripts
(cityscapes_format.py).
"""
import pathlib

import numpy as np
from PIL import Image

from deeplab2_kmax.evaluation import cityscapes_ap
from deeplab2_kmax.evaluation import cityscapes_format
from deeplab2_kmax.evaluation import coco_format
from deeplab2_kmax.evaluation import mask_ap
from deeplab2_kmax.evaluation import miou
from deeplab2_kmax.evaluation import panoptic_quality


class PanopticMetrics:
  """Accumulates PQ, mask AP and mIoU over evaluation batches."""

  def __init__(self, dataset_info, *, compute_mask_ap=True,
               prediction_dir_fn=None, cityscapes_predictions=False):
    self.info = dataset_info
    self.cityscapes_predictions = cityscapes_predictions
    # Called at each reset: a folder for this evaluation's predictions, or
    # None not to save them.
    self.prediction_dir_fn = prediction_dir_fn
    self.pq = panoptic_quality.PanopticQuality.from_dataset_info(dataset_info)
    self.miou = miou.MeanIoU.from_dataset_info(dataset_info)
    # The data set's instance AP: COCO's, or the Cityscapes benchmark's.
    ap_class = (cityscapes_ap.CityscapesAP
                if dataset_info.instance_metric == 'cityscapes'
                else mask_ap.MaskAP)
    self.ap = (ap_class.from_dataset_info(dataset_info)
               if compute_mask_ap else None)
    self.prediction_dir = None  # set to save predictions in COCO format
    self._writer = None
    self._cityscapes_writer = None

  def reset(self):
    self.pq.reset()
    self.miou.reset()
    if self.ap is not None:
      self.ap.reset()
    self._close_writer()
    if self.prediction_dir_fn is not None:
      self.start_saving(self.prediction_dir_fn())

  def start_saving(self, directory):
    """Writes this evaluation's predictions to `directory` (PNG + JSON)."""
    directory = pathlib.Path(directory)
    self.prediction_dir = directory
    self._writer = coco_format.PanopticFolderWriter(
        directory / 'predictions.json', directory / 'panoptic',
        self.info, groundtruth=False)
    if self.cityscapes_predictions:
      self._cityscapes_writer = cityscapes_format.CityscapesWriter(
          directory / 'cityscapes', self.info)

  def update(self, predictions, batch):
    """One replica's batch: `predictions` from `mask_wise_merging.merge`."""
    divisor = self.info.label_divisor
    for i in range(predictions['panoptic'].shape[0]):
      height, width = (int(v) for v in batch['resized_size'][i])
      gt = batch['panoptic'][i, :height, :width]
      pred = predictions['panoptic'][i, :height, :width]
      self.pq.update(gt, pred)
      gt_semantic = gt // divisor
      self.miou.update(gt_semantic,
                       predictions['semantic'][i, :height, :width])
      if self.ap is not None:
        self.ap.update(gt, pred, predictions['segment_ids'][i],
                       predictions['segment_scores'][i])
      if self._writer is not None:
        self._save(batch, i, pred, predictions)

  def _save(self, batch, i, pred, predictions):
    original = tuple(int(v) for v in batch['original_size'][i])
    height, width = pred.shape
    pred = _to_size(pred, original)
    image_id = batch['image_id'][i]
    image_id = image_id.decode() if isinstance(image_id, bytes) else image_id
    file_name = batch['filename'][i]
    file_name = (file_name.decode() if isinstance(file_name, bytes)
                 else file_name)
    stem = pathlib.Path(file_name).stem
    kept = predictions['segment_areas'][i] > 0
    scores = dict(zip(predictions['segment_ids'][i][kept].tolist(),
                      predictions['segment_scores'][i][kept].tolist()))
    self._writer.add(_json_id(image_id), pred, file_name=stem + '.png',
                     scores=scores)
    if self._cityscapes_writer is not None:
      semantic = _to_size(predictions['semantic'][i, :height, :width],
                          original)
      self._cityscapes_writer.add(stem, semantic, pred, scores)

  def _close_writer(self):
    if self._writer is not None:
      self._writer.close()
      self._writer = None
    self._cityscapes_writer = None

  def result(self):
    """Flat {name: float}: panoptic/pq..., instance/ap..., semantic/miou."""
    self._close_writer()
    result = dict(self.pq.scalars())
    result.update(self.miou.scalars())
    if self.ap is not None:
      result.update(self.ap.scalars())
    return result


def _to_size(label, size):
  """int label map [h, w] -> size (nearest neighbour: labels are ids)."""
  if label.shape == tuple(size):
    return label
  return np.asarray(Image.fromarray(label.astype(np.int32), mode='I')
                    .resize(size[::-1], Image.NEAREST))


def _json_id(image_id):
  """COCO image ids are integers; keep others as strings."""
  try:
    return int(image_id)
  except ValueError:
    return image_id
