"""The trainer's metric adapter: crops padding, saves COCO-format predictions."""
import json

import numpy as np
import pytest
from PIL import Image

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


def test_cityscapes_formats_at_the_original_size(tmp_path):
  # Cityscapes' table: train ids 0..18 inside labels, label ids in files
  # (road = 7, car = 26, train id 13).
  info = dataset_info.get_dataset_info('cityscapes_panoptic')
  road, car = 0, 13
  div = info.label_divisor
  gt = np.full([1, 4, 6], road * div, np.int32)
  gt[0, :2, :2] = car * div + 1
  pred = gt.copy()
  pred[0, 2:, 4:] = car * div + 2  # a second, low-scoring car
  batch = {'panoptic': gt, 'resized_size': np.array([[4, 6]]),
           'original_size': np.array([[8, 12]]), 'image_id': np.array(
               [b'aachen_000000_000019']),
           'filename': np.array([b'aachen_000000_000019_leftImg8bit.png'])}
  predictions = {
      'panoptic': pred, 'semantic': pred // div,
      'segment_ids': np.array([[car * div + 1, car * div + 2, road * div]]),
      'segment_scores': np.array([[0.9, 0.3, 0.8]], np.float32),
      'segment_areas': np.array([[4, 4, 16]])}
  metrics = evaluator_metrics.PanopticMetrics(
      info, prediction_dir_fn=lambda: tmp_path / 'pred',
      cityscapes_predictions=True)
  metrics.reset()
  metrics.update(predictions, batch)
  metrics.result()
  folder = tmp_path / 'pred' / 'cityscapes'
  stem = 'aachen_000000_000019_leftImg8bit'
  semantic = np.asarray(Image.open(folder / 'semantic' / f'{stem}.png'))
  assert semantic.shape == (8, 12) and semantic.dtype == np.uint8
  assert set(np.unique(semantic)) == {7, 26}  # label ids, not train ids
  assert np.all(semantic[:4, :4] == 26)
  lines = (folder / 'instance' / f'{stem}.txt').read_text().splitlines()
  assert lines == [f'masks/{stem}_0.png 26 0.900000',
                   f'masks/{stem}_1.png 26 0.300000']
  first = np.asarray(Image.open(folder / 'instance' / 'masks' /
                                f'{stem}_0.png'))
  assert first.shape == (8, 12)
  assert set(np.unique(first)) == {0, 255}
  assert np.all(first[:4, :4] == 255) and first.sum() == 16 * 255
