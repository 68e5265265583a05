"""Cityscapes instance AP against cityscapesScripts' own evaluator."""

import numpy as np
import pytest
from PIL import Image

from deeplab2_kmax.evaluation import cityscapes_ap

# Cityscapes label id -> train id of the labels used here (0 unlabeled is
# void: 255); things: rider 12, person 11, car 13, truck 14.
_TRAIN_IDS = {0: 255, 7: 0, 23: 10, 24: 11, 25: 12, 26: 13, 27: 14}
_THING_TRAIN_IDS = tuple(range(11, 19))  # person .. bicycle
_DIVISOR = 1000


def _ground_truth(rng, height=60, width=90):
  """Label-id instanceIds map: road, sky and void regions, persons, cars,
  a rider, a truck, a car crowd and a person under 100 pixels."""
  ids = np.full([height, width], 7, np.int32)
  ids[:15] = 23
  ids[:, -8:] = 0
  k = {24: 0, 25: 0, 26: 0, 27: 0}
  for label, size in ((24, 14), (24, 11), (26, 16), (26, 12), (25, 10),
                      (27, 18), (24, 6), (26, 13)):
    y, x = rng.integers(0, height - size), rng.integers(0, width - size)
    is_crowd = label == 26 and size == 13
    ids[y:y + size, x:x + size] = label if is_crowd else label * 1000 + k[
        label]
    k[label] += 0 if is_crowd else 1
  return ids


def _to_panoptic(ids):
  """Label-id instanceIds -> this package's panoptic ids."""
  semantic = np.vectorize(lambda i: _TRAIN_IDS[i // 1000 if i >= 1000
                                               else i])(ids)
  instance = np.where(ids >= 1000, ids % 1000 + 1, 0)
  return semantic * _DIVISOR + instance


def _predictions(rng, gt_ids):
  """Non-overlapping predicted segments: a shifted copy of most ground-truth
  instances (some with another class), a few false positives, one mostly
  on void. Returns the panoptic map, [(segment id, label id, score)]."""
  canvas = np.zeros(gt_ids.shape, np.int64)
  segments = []
  height, width = gt_ids.shape
  shapes = []
  for gt_id in np.unique(gt_ids[gt_ids >= 1000]):
    if rng.random() < 0.15:
      continue  # missed
    ys, xs = np.nonzero(gt_ids == gt_id)
    dy, dx = rng.integers(-3, 4, size=2)
    label = gt_id // 1000
    if rng.random() < 0.1:
      label = 26 if label != 26 else 24  # wrong class
    shapes.append((ys.min() + dy, xs.min() + dx, ys.max() - ys.min() + 1,
                   xs.max() - xs.min() + 1 + rng.integers(-2, 3), label))
  for _ in range(3):  # false positives
    shapes.append((rng.integers(0, height - 10), rng.integers(0, width - 10),
                   rng.integers(6, 14), rng.integers(6, 14),
                   int(rng.choice([24, 26, 25]))))
  shapes.append((20, width - 9, 12, 9, 26))  # mostly on void
  for index, (y, x, h, w, label) in enumerate(shapes):
    y0, x0 = max(int(y), 0), max(int(x), 0)
    segment_id = _TRAIN_IDS[label] * _DIVISOR + index + 1
    canvas[y0:y0 + max(int(h), 1), x0:x0 + max(int(w), 1)] = segment_id
    segments.append((segment_id, label, round(float(rng.random()), 4)))
  present = set(np.unique(canvas).tolist())
  return canvas, [s for s in segments if s[0] in present]


def _official(tmp_path, monkeypatch, images):
  """AP and AP50 of cityscapesScripts' evalInstanceLevelSemanticLabeling."""
  evaluator = pytest.importorskip(
      'cityscapesscripts.evaluation.evalInstanceLevelSemanticLabeling')
  monkeypatch.chdir(tmp_path)  # it writes matches.json to the cwd
  # NumPy 2 removed np.in1d, which the script calls (np.isin is the same).
  monkeypatch.setattr(np, 'in1d', np.isin, raising=False)
  # Its JSON caches (ground-truth instances, matches) fail on NumPy 2's
  # integer scalars; they only cache what it computes.
  monkeypatch.setattr(evaluator, 'writeDict2JSON', lambda *args: None)
  gt_dir, pred_dir = tmp_path / 'gt' / 'frankfurt', tmp_path / 'pred'
  (pred_dir / 'masks').mkdir(parents=True)
  gt_dir.mkdir(parents=True)
  gt_files, pred_files = [], []
  for index, (gt_ids, canvas, segments) in enumerate(images):
    stem = f'frankfurt_000000_{index:06d}'
    gt_file = gt_dir / f'{stem}_gtFine_instanceIds.png'
    Image.fromarray(gt_ids.astype(np.uint16)).save(gt_file)
    lines = []
    for k, (segment_id, label, score) in enumerate(segments):
      mask = f'masks/{stem}_{k}.png'
      Image.fromarray(((canvas == segment_id) * 255).astype(np.uint8)).save(
          pred_dir / mask)
      lines.append(f'{mask} {label} {score}\n')
    pred_file = pred_dir / f'{stem}_leftImg8bit.txt'
    pred_file.write_text(''.join(lines))
    gt_files.append(str(gt_file))
    pred_files.append(str(pred_file))
  args = evaluator.args
  monkeypatch.setattr(args, 'gtInstancesFile', str(tmp_path / 'gt.json'))
  monkeypatch.setattr(args, 'predictionPath', str(pred_dir.resolve()))
  monkeypatch.setattr(args, 'JSONOutput', False)
  monkeypatch.setattr(args, 'quiet', True)
  averages = evaluator.evaluateImgLists(pred_files, gt_files,
                                        args)['averages']
  return averages['allAp'], averages['allAp50%']


@pytest.mark.parametrize('seed', [0, 1, 2])
def test_equals_the_official_instance_level_evaluation(tmp_path, monkeypatch,
                                                       seed):
  rng = np.random.default_rng(seed)
  images = []
  for _ in range(3):
    gt_ids = _ground_truth(rng)
    images.append((gt_ids, *_predictions(rng, gt_ids)))
  official_ap, official_ap50 = _official(tmp_path, monkeypatch, images)
  ours = cityscapes_ap.CityscapesAP(_THING_TRAIN_IDS, label_divisor=_DIVISOR,
                                    void_label=255)
  for gt_ids, canvas, segments in images:
    ours.update(_to_panoptic(gt_ids), canvas, [s[0] for s in segments],
                [s[2] for s in segments])
  result = ours.result()
  assert 0.0 < official_ap < 1.0  # a set with hits, misses and mistakes
  np.testing.assert_allclose(result['AP'], official_ap, rtol=1e-9)
  np.testing.assert_allclose(result['AP50'], official_ap50, rtol=1e-9)


def test_no_ground_truth_is_nan_and_no_prediction_is_zero():
  ap = cityscapes_ap.CityscapesAP([11, 13], label_divisor=1000,
                                  void_label=255)
  gt = np.full([20, 20], 0)
  gt[:12, :12] = 11001  # one person of 144 pixels
  ap.update(gt, np.zeros([20, 20]), [], [])
  result = ap.result()
  assert result['AP'] == 0.0 and result['AP50'] == 0.0
  assert np.isnan(result['AP/13'])  # no car anywhere
  empty = cityscapes_ap.CityscapesAP([11], label_divisor=1000,
                                     void_label=255)
  assert np.isnan(empty.result()['AP'])


def test_a_perfect_prediction_scores_one_and_crowds_are_not_false_positives():
  ap = cityscapes_ap.CityscapesAP([11, 13], label_divisor=1000,
                                  void_label=255)
  gt = np.zeros([30, 30], np.int64)
  gt[:12, :12] = 11001
  gt[15:, 15:] = 13000  # a crowd of cars
  pred = np.zeros_like(gt)
  pred[:12, :12] = 11005
  pred[16:, 16:] = 13007  # inside the crowd: ignored, not a false positive
  ap.update(gt, pred, [11005, 13007], [0.9, 0.8])
  result = ap.result()
  assert result['AP'] == 1.0 and result['AP50'] == 1.0


def test_the_cityscapes_table_selects_this_metric():
  from deeplab2_kmax.data import dataset_info  # pylint: disable=import-outside-toplevel
  from deeplab2_kmax.evaluation import evaluator_metrics  # pylint: disable=import-outside-toplevel
  cityscapes = dataset_info.get_dataset_info('cityscapes_panoptic')
  metrics = evaluator_metrics.PanopticMetrics(cityscapes)
  assert isinstance(metrics.ap, cityscapes_ap.CityscapesAP)
  assert metrics.ap.thing_ids == tuple(range(11, 19))
  assert metrics.ap.void_label == 255
  coco = dataset_info.get_dataset_info('coco_panoptic')
  assert not isinstance(evaluator_metrics.PanopticMetrics(coco).ap,
                        cityscapes_ap.CityscapesAP)
