"""The trainer's metric adapter: crops padding, saves COCO-format predictions."""
import json

import numpy as np
import pytest

from deeplab2_kmax.data import dataset_info
from deeplab2_kmax.evaluation import evaluator_metrics

INFO = dataset_info.get_dataset_info('synthetic_panoptic')


def _batch_and_prediction():
  # A 6x8 crop whose image is 4x6 (resized size); padding is void.
  gt = np.zeros([1, 6, 8], np.int32)
  gt[0, :4, :6] = 4 * 256           # stuff 'stripes'
  gt[0, :2, :2] = 1 * 256 + 1       # one disk
  pred = gt.copy()
  pred[0, 4:, :] = 5 * 256          # garbage in the padding: must not count
  pred[0, :, 6:] = 5 * 256
  batch = {'panoptic': gt, 'resized_size': np.array([[4, 6]]),
           'original_size': np.array([[8, 12]]),
           'image_id': np.array([b'7']), 'filename': np.array([b'img7.jpg'])}
  predictions = {
      'panoptic': pred, 'semantic': pred // 256,
      'segment_ids': np.array([[1 * 256 + 1, 4 * 256, 5 * 256]]),
      'segment_scores': np.array([[0.9, 0.8, 0.7]], np.float32),
      'segment_areas': np.array([[4, 20, 24]])}
  return batch, predictions


def test_perfect_prediction_inside_the_image_scores_100(tmp_path):
  batch, predictions = _batch_and_prediction()
  metrics = evaluator_metrics.PanopticMetrics(
      INFO, prediction_dir_fn=lambda: tmp_path / 'pred')
  metrics.reset()
  metrics.update(predictions, batch)
  result = metrics.result()
  assert result['panoptic/pq'] == pytest.approx(1.0)
  assert result['semantic/miou'] == pytest.approx(1.0)
  assert result['instance/AP'] == pytest.approx(1.0)
  saved = json.loads((tmp_path / 'pred' / 'predictions.json').read_text())
  (annotation,) = saved['annotations']
  assert annotation['image_id'] == 7 and annotation['file_name'] == 'img7.png'
  assert sorted(s['category_id'] for s in annotation['segments_info']) == [
      1, 4]
  assert saved['images'][0]['height'] == 8  # original size
  assert (tmp_path / 'pred' / 'panoptic' / 'img7.png').exists()


def test_wrong_prediction_lowers_pq():
  batch, predictions = _batch_and_prediction()
  predictions['panoptic'][0, :2, :2] = 4 * 256  # the disk is missed
  metrics = evaluator_metrics.PanopticMetrics(INFO)
  metrics.reset()
  metrics.update(predictions, batch)
  assert metrics.result()['panoptic/pq_thing'] == 0.0
