"""Tests of mask_ap.MaskAP against pycocotools used directly."""
import contextlib
import io
import json

import numpy as np
import pytest
from pycocotools import coco as coco_api
from pycocotools import cocoeval

from deeplab2_kmax.data import dataset_info
from deeplab2_kmax.evaluation import mask_ap

INFO = dataset_info.get_dataset_info('synthetic_panoptic')  # things 1, 2, 3


def _box(y0, x0, y1, x1, size=(8, 8)):
  mask = np.zeros(size, bool)
  mask[y0:y1, x0:x1] = True
  return mask


# Two 8x8 images: (GT masks, categories, crowd), (pred masks, cats, scores).
IMAGES = [
    ((np.stack([_box(0, 0, 4, 4), _box(4, 4, 8, 8), _box(0, 5, 3, 8)]),
      [1, 1, 2], [False, False, True]),
     (np.stack([_box(0, 0, 4, 3), _box(4, 4, 8, 7), _box(0, 5, 2, 8),
                _box(5, 0, 8, 3)]),
      [1, 1, 2, 1], [0.9, 0.6, 0.8, 0.7])),
    ((np.stack([_box(2, 2, 6, 6)]), [2], [False]),
     (np.stack([_box(2, 2, 6, 5), _box(0, 0, 2, 2)]), [2, 1], [0.4, 0.95])),
]


def _direct_pycocotools(tmp_path):
  """COCO stats from a GT JSON file and loadRes, the documented way."""
  images, gt_anns, results = [], [], []
  for image_id, ((gt, gt_cats, crowd), (pred, pred_cats, scores)) in (
      enumerate(IMAGES, start=1)):
    images.append({'id': image_id, 'height': 8, 'width': 8})
    for mask, rle, c, k in zip(gt, mask_ap.encode_masks(gt), gt_cats, crowd):
      rle['counts'] = rle['counts'].decode('ascii')
      gt_anns.append({'id': len(gt_anns) + 1, 'image_id': image_id,
                      'category_id': c, 'segmentation': rle,
                      'area': float(mask.sum()), 'bbox': [0, 0, 1, 1],
                      'iscrowd': int(k)})
    for rle, c, s in zip(mask_ap.encode_masks(pred), pred_cats, scores):
      results.append({'image_id': image_id, 'category_id': c,
                      'segmentation': rle, 'score': s})
  path = tmp_path / 'gt.json'
  path.write_text(json.dumps({
      'images': images, 'annotations': gt_anns,
      'categories': [{'id': c} for c in (1, 2, 3)]}))
  with contextlib.redirect_stdout(io.StringIO()):
    gt_coco = coco_api.COCO(str(path))
    evaluator = cocoeval.COCOeval(gt_coco, gt_coco.loadRes(results), 'segm')
    evaluator.evaluate()
    evaluator.accumulate()
    evaluator.summarize()
  return list(evaluator.stats)


def _ours(images):
  metric = mask_ap.MaskAP([1, 2, 3])
  for (gt, gt_cats, crowd), (pred, pred_cats, scores) in images:
    metric.add_image(height=8, width=8, gt_masks=gt, gt_categories=gt_cats,
                     gt_iscrowd=crowd, pred_masks=pred,
                     pred_categories=pred_cats, pred_scores=scores)
  return metric


def test_equals_direct_pycocotools(tmp_path):
  expected = _direct_pycocotools(tmp_path)
  result = _ours(IMAGES).result()
  assert list(result) == list(mask_ap.STAT_NAMES)
  assert list(result.values()) == expected
  assert 0 < result['AP'] < result['AP50'] < 1


def test_merge_equals_single_accumulator():
  single = _ours(IMAGES).result()
  merged = _ours(IMAGES[:1]) + _ours(IMAGES[1:])
  assert merged.result() == single
  assert _ours(IMAGES[:1]).merge(_ours(IMAGES[1:])).result() == single


def test_update_from_panoptic_equals_masks():
  # Labels: divisor 256, void 0; class 4 is stuff (not evaluated).
  gt = np.full([8, 8], 4 * 256)
  pred = np.full([8, 8], 4 * 256)
  gt_masks, _, _ = IMAGES[0][0]
  pred_masks, pred_cats, scores = IMAGES[0][1]
  gt[gt_masks[0]], gt[gt_masks[1]], gt[gt_masks[2]] = 257, 258, 512  # crowd
  labels = [257, 259, 513, 260]
  for mask, label in zip(pred_masks, labels):
    pred[mask] = label
  pred[7, 6] = 0  # void inside the second predicted instance
  pred_masks = pred_masks.copy()
  pred_masks[1, 7, 6] = False
  metric = mask_ap.MaskAP.from_dataset_info(INFO)
  metric.update(gt[None], pred[None], np.array([labels + [1024]]),
                np.array([scores + [0.1]]))
  expected = mask_ap.MaskAP([1, 2, 3])
  expected.add_image(height=8, width=8, gt_masks=gt_masks,
                     gt_categories=[1, 1, 2], gt_iscrowd=[False, False, True],
                     pred_masks=pred_masks, pred_categories=pred_cats,
                     pred_scores=scores)
  assert metric.result() == expected.result()
  with pytest.raises(ValueError, match=r'segments \[260\] have no score'):
    metric.update(gt, pred, labels[:3], scores[:3])


def test_empty_and_errors():
  metric = mask_ap.MaskAP([1, 2])
  assert set(metric.result().values()) == {-1.0}
  with pytest.raises(ValueError, match='category 5'):
    metric.add_image(height=8, width=8, gt_masks=IMAGES[0][0][0],
                     gt_categories=[1, 5, 2], pred_masks=np.zeros([0, 8, 8]),
                     pred_categories=[], pred_scores=[])
  with pytest.raises(ValueError, match='2 predicted masks with 1 scores'):
    metric.add_image(height=8, width=8, gt_masks=np.zeros([0, 8, 8]),
                     gt_categories=[], pred_masks=IMAGES[1][1][0],
                     pred_categories=[2, 1], pred_scores=[0.5])
  with pytest.raises(ValueError, match=r'must be \[N, 8, 8\]'):
    metric.add_image(height=8, width=8, gt_masks=np.zeros([1, 4, 4]),
                     gt_categories=[1], pred_masks=np.zeros([0, 8, 8]),
                     pred_categories=[], pred_scores=[])
