"""Tests of panoptic_quality: hand example, streaming, merging, array path."""
import numpy as np
import pytest

from deeplab2_kmax.data import dataset_info
from deeplab2_kmax.evaluation import coco_format
from deeplab2_kmax.evaluation import panoptic_quality

SYNTHETIC = dataset_info.get_dataset_info('synthetic_panoptic')  # 1-3 things
CITYSCAPES = dataset_info.get_dataset_info('cityscapes_panoptic')

# Divisor 256, void 0. Classes: 1, 2 things; 4, 5, 6 stuff.
GT = np.array([
    [257, 257, 257, 257, 0, 0],           # class 1 instance 1 (4 px), void
    [1024] * 6,                           # stuff 4
    [256, 256, 513, 513, 513, 0],         # crowd of class 1, class 2 inst 1
    [1280] * 6])                          # stuff 5
PRED = np.array([
    [258, 258, 258, 0, 258, 258],         # 3 px of 257 + 2 void: IoU 3/4
    [1024] * 6,                           # IoU 1
    [259, 259, 513, 513, 0, 0],           # 259 on crowd: ignored; IoU 2/3
    [1536] * 3 + [1280] * 3])             # stuff 6 FP; stuff 5 IoU 0.5: none


def test_hand_example():
  metric = panoptic_quality.PanopticQuality.from_dataset_info(SYNTHETIC)
  metric.update(GT, PRED)
  np.testing.assert_array_equal(metric.stats.tp, [1, 1, 0, 1, 0, 0])
  np.testing.assert_array_equal(metric.stats.fp, [0, 0, 0, 0, 1, 1])
  np.testing.assert_array_equal(metric.stats.fn, [0, 0, 0, 0, 1, 0])
  np.testing.assert_allclose(metric.stats.iou, [0.75, 2 / 3, 0, 1, 0, 0])
  result = metric.result()
  assert result['per_class'][1] == {'pq': 0.75, 'sq': 0.75, 'rq': 1.0}
  assert result['per_class'][3] == {'pq': 0.0, 'sq': 0.0, 'rq': 0.0}
  assert result['per_class'][5] == {'pq': 0.0, 'sq': 0.0, 'rq': 0.0}
  assert result['Things']['n'] == 2 and result['Stuff']['n'] == 3
  assert result['Things']['pq'] == pytest.approx((0.75 + 2 / 3) / 2)
  assert result['Stuff']['pq'] == pytest.approx(1 / 3)
  assert result['All']['pq'] == pytest.approx((0.75 + 2 / 3 + 1) / 5)
  assert result['All']['rq'] == pytest.approx((1 + 1 + 1 + 0 + 0) / 5)
  scalars = metric.scalars()
  assert scalars['panoptic/pq_thing'] == result['Things']['pq']
  assert 'disk' in metric.table()


def test_group_without_classes_reports_zero():
  metric = panoptic_quality.PanopticQuality.from_dataset_info(SYNTHETIC)
  metric.update(np.full([2, 2], 1024), np.full([2, 2], 1024))
  assert metric.result()['Things'] == {'pq': 0.0, 'sq': 0.0, 'rq': 0.0,
                                       'n': 0}
  assert metric.result()['Stuff']['pq'] == 1.0


def _random_labels(rng, info, count, shape=(10, 12)):
  """Panoptic labels of random blocks: classes, crowd, void, instances."""
  semantic = np.array([c.semantic_id for c in info.classes] +
                      [info.ignore_label])
  labels = []
  for _ in range(count):
    sem = semantic[rng.integers(0, semantic.size, (5, 6))]
    sem = sem.repeat(2, 0).repeat(2, 1)[:shape[0], :shape[1]]
    inst = rng.integers(0, 4, shape) * info.is_thing_semantic()[
        np.minimum(sem, info.num_semantic_channels - 1)]
    inst[sem == info.ignore_label] = 0
    labels.append(sem * info.label_divisor + inst)
  return np.stack(labels)


def _predictions(gt):
  pred = gt.copy()
  pred[:, ::3] = np.roll(gt, 1, axis=2)[:, ::3]
  return pred


def test_streaming_equals_one_shot_and_replicas_merge():
  rng = np.random.default_rng(0)
  gt = _random_labels(rng, CITYSCAPES, 12)
  pred = _predictions(gt)
  one_shot = panoptic_quality.PanopticQuality.from_dataset_info(CITYSCAPES)
  one_shot.update(gt, pred)
  streamed = panoptic_quality.PanopticQuality.from_dataset_info(CITYSCAPES)
  for g, p in zip(gt, pred):
    streamed.update(g, p)
  replicas = []
  for part in np.array_split(np.arange(12), 3):
    replica = panoptic_quality.PanopticQuality.from_dataset_info(CITYSCAPES)
    replicas.append(replica.update(gt[part], pred[part]))
  merged = replicas[0] + replicas[1] + replicas[2]
  via_array = panoptic_quality.PanopticQuality.from_dataset_info(CITYSCAPES)
  via_array.add(panoptic_quality.PQStats.from_array(
      sum(r.stats.to_array() for r in replicas)))
  assert one_shot.stats.tp.sum() > 10 and one_shot.stats.fp.sum() > 10
  for other in (streamed, merged, via_array):
    for field in ('tp', 'fp', 'fn'):
      np.testing.assert_array_equal(getattr(other.stats, field),
                                    getattr(one_shot.stats, field))
    np.testing.assert_allclose(other.stats.iou, one_shot.stats.iou,
                               rtol=1e-12)
  assert merged.result()['All']['pq'] == pytest.approx(
      one_shot.result()['All']['pq'], abs=1e-12)
  one_shot.reset()
  assert one_shot.stats.tp.sum() == 0


def test_array_path_equals_coco_folder_path(tmp_path):
  # Cityscapes: void 255000 and the road class has label 0.
  rng = np.random.default_rng(1)
  gt = _random_labels(rng, CITYSCAPES, 6)
  pred = _predictions(gt)
  gt_json, pred_json = str(tmp_path / 'gt.json'), str(tmp_path / 'pred.json')
  with coco_format.PanopticFolderWriter(
      gt_json, str(tmp_path / 'gt'), CITYSCAPES, groundtruth=True) as gw, \
      coco_format.PanopticFolderWriter(
          pred_json, str(tmp_path / 'pred'), CITYSCAPES,
          groundtruth=False) as pw:
    for i, (g, p) in enumerate(zip(gt, pred)):
      gw.add(i, g)
      pw.add(i, p)
  folders = coco_format.evaluate_folders(gt_json, str(tmp_path / 'gt'),
                                         pred_json, str(tmp_path / 'pred'))
  arrays = panoptic_quality.PanopticQuality.from_dataset_info(CITYSCAPES)
  arrays.update(gt, pred)
  assert [c.id for c in folders.categories] == [
      c.source_id for c in CITYSCAPES.classes]
  for field in ('tp', 'fp', 'fn'):
    np.testing.assert_array_equal(getattr(folders.stats, field),
                                  getattr(arrays.stats, field))
  np.testing.assert_allclose(folders.stats.iou, arrays.stats.iou, rtol=1e-12)
  assert arrays.stats.fn.sum() > 0 and arrays.stats.tp.sum() > 10


def test_pair_areas_and_intersection_matrix():
  gt = np.array([[5, 5, 0], [7, 9, 9]])  # 9 is an unlisted GT id
  pred = np.array([[1 << 24, 3, 3], [0, 3, 0]])
  pair_gt, pair_pred, count = panoptic_quality.pair_areas(gt, pred)
  assert list(zip(pair_gt, pair_pred, count)) == [
      (0, 3, 1), (5, 3, 1), (5, 1 << 24, 1), (7, 0, 1), (9, 0, 1), (9, 3, 1)]
  matrix = panoptic_quality.intersection_matrix(
      pair_gt, pair_pred, count, gt_segments=[7, 5],
      pred_segments=[1 << 24, 3], gt_void=0, pred_void=0)
  np.testing.assert_array_equal(matrix, [[0, 0, 1],   # GT void
                                         [1, 0, 0],   # 7
                                         [0, 1, 1],   # 5
                                         [1, 0, 1]])  # other GT ids
  with pytest.raises(ValueError, match=r'predicted ids \[3\]'):
    panoptic_quality.intersection_matrix(
        pair_gt, pair_pred, count, gt_segments=[7, 5],
        pred_segments=[1 << 24], gt_void=0, pred_void=0)
  empty = panoptic_quality.pair_areas(np.zeros([0, 3]), np.zeros([0, 3]))
  assert all(a.size == 0 for a in empty)


def test_pixel_runs_and_segment_index():
  gt = np.array([[5, 5, 0], [0, 9, 9]], np.uint32)
  pred = np.array([[3, 3, 3], [3, 3, 4]], np.uint32)
  run_gt, run_pred, length = panoptic_quality.pixel_runs(gt, pred)
  # Runs continue across row ends (row-major order).
  assert list(zip(run_gt, run_pred, length)) == [
      (5, 3, 2), (0, 3, 2), (9, 3, 1), (9, 4, 1)]
  assert run_gt.dtype == np.uint32 and length.dtype == np.int64
  np.testing.assert_array_equal(
      panoptic_quality.segment_index(run_gt, [9, 5], 0), [2, 0, 1, 1])
  np.testing.assert_array_equal(  # 7 is neither void nor listed: S + 1
      panoptic_quality.segment_index([7, 0, 3], [3], 0), [2, 0, 1])
  np.testing.assert_array_equal(
      panoptic_quality.segment_index([7, 0], [], 0), [1, 0])
  np.testing.assert_array_equal(
      panoptic_quality.count_pairs([0, 1, 0], [1, 0, 1], [2, 5, 3], (2, 2)),
      [[0, 5], [5, 0]])
  empty = panoptic_quality.pixel_runs(np.zeros([0, 3]), np.zeros([0, 3]))
  assert all(a.size == 0 for a in empty)


def test_errors():
  metric = panoptic_quality.PanopticQuality.from_dataset_info(SYNTHETIC)
  with pytest.raises(ValueError, match=r'predicted labels \[1793\]'):
    metric.update(GT, np.where(PRED == 1536, 1793, PRED))  # semantic id 7
  with pytest.raises(ValueError, match='one shape'):
    metric.update(GT, PRED[:, :4])
  plain = panoptic_quality.PanopticQuality(metric.categories)
  with pytest.raises(ValueError, match='label_divisor'):
    plain.update(GT, PRED)
  with pytest.raises(ValueError, match='different categories'):
    metric.merge(panoptic_quality.PanopticQuality(metric.categories[:2]))
  with pytest.raises(ValueError, match='unique ids'):
    panoptic_quality.PanopticQuality(metric.categories * 2)
