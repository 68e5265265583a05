"""PQ of generated edge-case folders equals the official tools (1e-9).

References: panopticapi's `pq_compute` (package panopticapi-lite) and
cityscapesscripts' `evaluatePanoptic`, both run single-process (their
multiprocessing pools are replaced by the single-core function they call).
"""
import numpy as np
import pytest

from deeplab2_kmax.evaluation import coco_format
from tests.evaluation import generated_sets

panopticapi = pytest.importorskip('panopticapi.evaluation')

TOL = 1e-9


def _single_core(module):
  def run(matched, gt_folder, pred_folder, categories):
    return module.pq_compute_single_core(0, matched, gt_folder, pred_folder,
                                         categories)
  return run


@pytest.fixture(scope='module', params=['coco_like', 'cityscapes_like'])
def generated(request, tmp_path_factory):
  categories = {'coco_like': generated_sets.COCO_LIKE,
                'cityscapes_like': generated_sets.CITYSCAPES_LIKE}[
                    request.param]
  folder = tmp_path_factory.mktemp(request.param)
  return generated_sets.generate(str(folder), categories, num_images=60,
                                 seed=len(request.param))


def _assert_same(ours, official):
  for group in ('All', 'Things', 'Stuff'):
    assert ours[group]['n'] == official[group]['n'], group
    for key in ('pq', 'sq', 'rq'):
      assert abs(ours[group][key] - official[group][key]) <= TOL, (group, key)
  assert set(ours['per_class']) == set(official['per_class'])
  for category, values in official['per_class'].items():
    for key in ('pq', 'sq', 'rq'):
      assert abs(ours['per_class'][category][key] - values[key]) <= TOL, (
          category, key)


def test_equals_panopticapi_pq_compute(generated, monkeypatch):
  gt_json, gt_dir, pred_json, pred_dir = generated
  monkeypatch.setattr(panopticapi, 'pq_compute_multi_core',
                      _single_core(panopticapi))
  official = panopticapi.pq_compute(gt_json, pred_json, gt_dir, pred_dir)
  ours = coco_format.evaluate_folders(gt_json, gt_dir, pred_json, pred_dir)
  _assert_same(ours.result(), official)
  # The generated set must exercise every rule, or the comparison is weak.
  stats = ours.stats
  assert stats.tp.sum() > 20 and stats.fp.sum() > 20 and stats.fn.sum() > 20
  assert ours.result()['All']['n'] == 6  # two categories never occur


def test_equals_panopticapi_counts_per_category(generated):
  gt_json, gt_dir, pred_json, pred_dir = generated
  gt = coco_format.load_panoptic_json(gt_json, 'ground-truth')
  pred = coco_format.load_panoptic_json(pred_json, 'prediction')
  by_image = {a['image_id']: a for a in pred['annotations']}
  matched = [(a, by_image[a['image_id']]) for a in gt['annotations']]
  categories = {c['id']: c for c in gt['categories']}
  official = panopticapi.pq_compute_single_core(0, matched, gt_dir, pred_dir,
                                                categories)
  ours = coco_format.evaluate_folders(gt_json, gt_dir, pred_json, pred_dir,
                                      num_threads=2)
  for i, category in enumerate(ours.categories):
    reference = official.pq_per_cat[category.id]
    assert (ours.stats.tp[i], ours.stats.fp[i], ours.stats.fn[i]) == (
        reference.tp, reference.fp, reference.fn), category
    np.testing.assert_allclose(ours.stats.iou[i], reference.iou, rtol=0,
                               atol=TOL)


def test_equals_cityscapes_evaluate_panoptic(generated, monkeypatch,
                                             tmp_path):
  cityscapes = pytest.importorskip(
      'cityscapesscripts.evaluation.evalPanopticSemanticLabeling')
  gt_json, gt_dir, pred_json, pred_dir = generated
  monkeypatch.setattr(cityscapes, 'pq_compute_multi_core',
                      _single_core(cityscapes))
  official = cityscapes.evaluatePanoptic(gt_json, gt_dir, pred_json, pred_dir,
                                         str(tmp_path / 'results.json'))
  ours = coco_format.evaluate_folders(gt_json, gt_dir, pred_json, pred_dir)
  _assert_same(ours.result(), official)


# (IoU sum, TP, FP, FN) per category of exact_half_image. Category 1: c
# matches (IoU 3/4); a, b, d are missed; p1, p2, p4, p5 are FPs. Category 5:
# the stuff segment is missed, p7 is an FP. Category 2: p8 is an FP.
EXACT_HALF_EXPECTED = {1: (0.75, 1, 4, 3), 5: (0.0, 0, 1, 1),
                       2: (0.0, 0, 1, 0)}


def test_exact_half_image_by_hand(tmp_path):
  rng = np.random.default_rng(0)
  paths = generated_sets.write_set(
      str(tmp_path), [generated_sets.exact_half_image()],
      generated_sets.COCO_LIKE, rng)
  ours = coco_format.evaluate_folders(*paths)
  for i, category in enumerate(ours.categories):
    expected = EXACT_HALF_EXPECTED.get(category.id, (0.0, 0, 0, 0))
    got = (ours.stats.iou[i], ours.stats.tp[i], ours.stats.fp[i],
           ours.stats.fn[i])
    assert got == expected, category
