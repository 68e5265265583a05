"""Panoptic quality (PQ, SQ, RQ), streaming, with the official matching rules.

PQ (Kirillov et al., "Panoptic Segmentation", CVPR 2019) of a class c:

  PQ_c = sum_{(g, p) in TP_c} IoU(g, p) / (|TP_c| + |FP_c| / 2 + |FN_c| / 2)
       = SQ_c (mean IoU of the matches) x RQ_c (an F1 score of detection).

The rules are those of the COCO panoptic API (panopticapi `pq_compute`) and
of Cityscapes' `evaluatePanoptic` (cityscapesscripts), which share one
algorithm:
- A ground-truth (GT) segment g and a predicted segment p of the same
  category match when IoU > 0.5 (strictly). The union leaves out the pixels
  of p that are void in the GT:
    union = |p| + |g| - |g n p| - |p n void|.
  A match is unique on both sides, since IoU > 0.5.
- GT crowd segments (`iscrowd`) never match and are never false negatives.
- A predicted segment that matches nothing is a false positive unless more
  than half of its pixels (`> 0.5`, strictly) lie on void or on the crowd
  segment of its own category (the last one of that category in the image's
  segment list, as in the official code).
- A non-crowd GT segment that matches nothing is a false negative.
- Per-category sums (IoU of matches, TP, FP, FN) add over images and over
  replicas (`PQStats`). PQ, SQ and RQ of All / Things / Stuff average the
  per-class values over the categories with TP + FP + FN > 0 (their number
  is `n`); the other categories report 0 and are left out of the average.

One image is summarised by the pixel counts of its (GT id, predicted id)
pairs, added up over the runs of equal pairs in row-major order
(`pixel_runs`: a few vectorised comparisons, as segment maps are piecewise
constant), where the official code sorts the keys `gt * offset + pred` of
all pixels (`np.unique`) and loops over them in Python. Everything else
works on the small [G, P] matrix of pair intersections (`image_stats`), so
an image costs a few vectorised passes over its pixels.
The COCO-folder reader (`coco_format.py`) and the array API of this module
(`PanopticQuality.update`, on labels `semantic_id * label_divisor +
instance_id`) share `image_stats`.

`PanopticQuality.result()` has the structure `pq_compute` returns:
{'All' | 'Things' | 'Stuff': {'pq', 'sq', 'rq', 'n'},
 'per_class': {category id: {'pq', 'sq', 'rq'}}}.
"""
import dataclasses

import numpy as np

MATCH_IOU = 0.5  # a match needs IoU above this
# An unmatched predicted segment is no false positive when more than this
# fraction of its pixels lies on void or on same-category crowd.
IGNORED_FRACTION = 0.5


@dataclasses.dataclass(frozen=True)
class Category:
  """One evaluated category: its id in the labels, name and thing flag."""
  id: int
  name: str
  is_thing: bool


@dataclasses.dataclass
class PQStats:
  """Per-category sums; they add over images and replicas (`+`)."""
  iou: np.ndarray  # float64 [K]: sum of the IoUs of the matches
  tp: np.ndarray  # int64 [K]
  fp: np.ndarray  # int64 [K]
  fn: np.ndarray  # int64 [K]

  @classmethod
  def zeros(cls, num_categories):
    return cls(np.zeros([num_categories], np.float64),
               *(np.zeros([num_categories], np.int64) for _ in range(3)))

  def __add__(self, other):
    if not isinstance(other, PQStats):
      return NotImplemented
    if self.iou.shape != other.iou.shape:
      raise ValueError(f'cannot add PQ sums of {other.iou.shape[0]} '
                       f'categories to sums of {self.iou.shape[0]}')
    return PQStats(self.iou + other.iou, self.tp + other.tp,
                   self.fp + other.fp, self.fn + other.fn)

  def to_array(self):
    """float64 [4, K] (iou, tp, fp, fn), e.g. for a cross-replica sum."""
    return np.stack([self.iou, self.tp, self.fp, self.fn]).astype(np.float64)

  @classmethod
  def from_array(cls, array):
    array = np.asarray(array, np.float64)
    if array.ndim != 2 or array.shape[0] != 4:
      raise ValueError(f'expected PQ sums of shape [4, K], got {array.shape}')
    counts = np.rint(array[1:]).astype(np.int64)
    return cls(array[0].copy(), counts[0], counts[1], counts[2])


def pixel_runs(gt_ids, pred_ids):
  """Maximal runs of pixels (row-major order) with one (GT id, predicted id).

  Segment maps are piecewise constant, so an image has far fewer runs than
  pixels (about 10,000 against 307,200 for a COCO-sized pair): counting per
  run needs three vectorised comparisons over the pixels and no sort.

  Args:
    gt_ids, pred_ids: integer maps of one shape.

  Returns:
    (run_gt [R], run_pred [R], length [R]) in pixel order; the ids keep the
    dtype of the maps, the lengths are int64. A pair may occur in several
    runs.
  """
  gt = np.asarray(gt_ids).ravel()  # [H*W]
  pred = np.asarray(pred_ids).ravel()  # [H*W]
  if gt.shape != pred.shape:
    raise ValueError(f'GT and prediction differ in size: {gt.size} vs '
                     f'{pred.size} pixels')
  if not gt.size:
    return gt, pred, np.zeros([0], np.int64)
  starts_run = np.empty(gt.shape, bool)  # [H*W]
  starts_run[0] = True
  np.not_equal(gt[1:], gt[:-1], out=starts_run[1:])
  starts_run[1:] |= pred[1:] != pred[:-1]
  starts = np.flatnonzero(starts_run)  # [R]
  length = np.diff(starts, append=gt.size)
  return gt[starts], pred[starts], length.astype(np.int64)


def pair_areas(gt_ids, pred_ids):
  """Pixel count of each (GT id, predicted id) pair present in an image.

  Args:
    gt_ids, pred_ids: non-negative integer maps of one shape.

  Returns:
    (pair_gt [N], pair_pred [N], count [N]) int64, sorted by (gt, pred).
  """
  run_gt, run_pred, length = pixel_runs(gt_ids, pred_ids)
  if not length.size:
    return length, length, length
  if min(run_gt.min(), run_pred.min()) < 0:
    raise ValueError('segment ids must be non-negative; found '
                     f'{min(run_gt.min(), run_pred.min())}')
  offset = int(run_pred.max()) + 1
  if int(run_gt.max()) >= (1 << 62) // offset:
    raise ValueError(f'ids too large to pair: GT up to {run_gt.max()}, '
                     f'prediction up to {run_pred.max()}')
  key = run_gt.astype(np.int64) * offset + run_pred  # [R]
  keys, run_pair = np.unique(key, return_inverse=True)  # [N], [R]
  count = np.bincount(run_pair, weights=length, minlength=keys.size)
  # float64 sums of pixel counts are exact (images have < 2^53 pixels).
  return keys // offset, keys % offset, count.astype(np.int64)


def positions(values, ids):
  """Index of each value in `ids` (unsorted, unique), -1 where absent."""
  values = np.asarray(values, np.int64)
  ids = np.asarray(ids, np.int64)
  if not ids.size:
    return np.full(values.shape, -1, np.int64)
  order = np.argsort(ids, kind='stable')
  sorted_ids = ids[order]
  at = np.minimum(np.searchsorted(sorted_ids, values), ids.size - 1)
  return np.where(sorted_ids[at] == values, order[at], -1)


def segment_index(values, segments, void):
  """Row / column of each id in an intersection matrix of `segments`.

  Returns int64 like `values`: 0 for `void`, 1..S for `segments` (in their
  order), S + 1 for any other id.
  """
  num_segments = len(segments)
  # One sorted look-up of [void, *segments]; the stable sort puts void
  # first, so it wins should it be listed as a segment too.
  keys = np.append(np.asarray(void, np.int64),
                   np.asarray(segments, np.int64))  # [S + 1]
  order = np.argsort(keys, kind='stable')
  keys = keys[order]
  at = np.searchsorted(keys, values)
  np.minimum(at, num_segments, out=at)
  return np.where(keys[at] == values, order[at], num_segments + 1)


def count_pairs(row, col, count, shape):
  """int64 [shape] sums of `count` at the (row, col) pairs (repeats add)."""
  num_rows, num_cols = shape
  flat = np.bincount(np.asarray(row) * num_cols + col, weights=count,
                     minlength=num_rows * num_cols)
  # float64 sums of pixel counts are exact (images have < 2^53 pixels).
  return flat.astype(np.int64).reshape(shape)


def intersection_matrix(pair_gt, pair_pred, count, *, gt_segments,
                        pred_segments, gt_void, pred_void):
  """int64 [G + 2, P + 1] pixel counts of segment pairs.

  Rows: 0 = GT void, 1..G = `gt_segments`, G + 1 = any other GT id (pixels
  that are neither void nor a listed segment). Columns: 0 = predicted void,
  1..P = `pred_segments`. Every other predicted id is an error of the caller
  (checked here). The (id, id, count) triples may repeat a pair (e.g. the
  runs of `pixel_runs`); their counts add.
  """
  num_gt, num_pred = len(gt_segments), len(pred_segments)
  row = segment_index(pair_gt, gt_segments, gt_void)
  col = segment_index(pair_pred, pred_segments, pred_void)
  unknown = np.asarray(pair_pred)[col > num_pred]
  if unknown.size:
    raise ValueError(f'predicted ids {sorted(set(unknown.tolist()))} are '
                     'neither void nor listed segments')
  return count_pairs(row, col, count, (num_gt + 2, num_pred + 1))


def image_stats(intersection, *, gt_category, gt_crowd, pred_category,
                num_categories, gt_area=None):
  """PQ sums of one image from its segment-pair intersections.

  Args:
    intersection: int [G + 2, P + 1] from `intersection_matrix` (rows: GT
      void, G segments, other GT ids; columns: predicted void, P segments).
    gt_category: int [G] category index of each GT segment, -1 for a
      category that is not evaluated (such segments are only context).
    gt_crowd: bool [G].
    pred_category: int [P] category index (0..K-1) of each predicted segment.
    num_categories: K.
    gt_area: int [G] GT areas for the union; default the row sums (the COCO
      reader passes the `area` of the GT JSON, as the official code does).

  Returns:
    PQStats.
  """
  intersection = np.asarray(intersection, np.int64)
  gt_category = np.asarray(gt_category, np.int64)
  gt_crowd = np.asarray(gt_crowd, bool)
  pred_category = np.asarray(pred_category, np.int64)
  num_gt, num_pred = gt_category.size, pred_category.size
  if intersection.shape != (num_gt + 2, num_pred + 1):
    raise ValueError(f'intersection matrix {intersection.shape} does not fit '
                     f'{num_gt} GT and {num_pred} predicted segments')
  if num_pred and (pred_category.min() < 0 or
                   pred_category.max() >= num_categories):
    raise ValueError('predicted segments need category indices in '
                     f'[0, {num_categories}); found {pred_category}')
  inter = intersection[1:num_gt + 1, 1:]  # [G, P]
  pred_area = intersection[:, 1:].sum(axis=0)  # [P]
  pred_void = intersection[0, 1:]  # [P]
  if np.any(pred_area == 0):
    raise ValueError('predicted segments must cover at least one pixel')
  if gt_area is None:
    gt_area = intersection[1:num_gt + 1].sum(axis=1)  # [G]
  gt_area = np.asarray(gt_area)
  evaluated = gt_category >= 0  # [G]

  # Matches: same category, GT not crowd, IoU > 0.5 (void-free union).
  candidate = ((gt_category[:, None] == pred_category[None, :]) &
               (inter > 0) & (evaluated & ~gt_crowd)[:, None])  # [G, P]
  union = (pred_area[None, :] + gt_area[:, None] - inter -
           pred_void[None, :])  # [G, P]
  iou = np.zeros(inter.shape, np.float64)
  np.divide(inter, union, out=iou, where=candidate)
  matched = candidate & (iou > MATCH_IOU)  # [G, P]
  match_gt, match_pred = np.nonzero(matched)
  category = gt_category[match_gt]
  tp = np.bincount(category, minlength=num_categories)
  iou_sum = np.bincount(category, weights=iou[match_gt, match_pred],
                        minlength=num_categories)

  # False negatives: unmatched, evaluated, non-crowd GT segments.
  missed = evaluated & ~gt_crowd & ~matched.any(axis=1)
  fn = np.bincount(gt_category[missed], minlength=num_categories)

  # False positives: unmatched predictions not mostly on void + crowd.
  crowd_row = np.full([num_categories], -1, np.int64)
  for row in np.flatnonzero(gt_crowd & evaluated):
    crowd_row[gt_category[row]] = row  # the last crowd segment wins
  row = crowd_row[pred_category]  # [P]
  has_crowd = row >= 0  # [P]
  on_crowd = np.zeros([num_pred], np.int64)  # [P]
  on_crowd[has_crowd] = inter[row[has_crowd], np.flatnonzero(has_crowd)]
  ignored = (pred_void + on_crowd) / pred_area > IGNORED_FRACTION  # [P]
  false = ~matched.any(axis=0) & ~ignored
  fp = np.bincount(pred_category[false], minlength=num_categories)
  return PQStats(iou_sum.astype(np.float64), tp.astype(np.int64),
                 fp.astype(np.int64), fn.astype(np.int64))


class PanopticQuality:
  """Streaming PQ over images; merge accumulators of replicas with `+`.

  `update(gt_panoptic, pred_panoptic)` takes labels `semantic_id *
  label_divisor + instance_id` ([H, W] or [B, H, W]): a GT thing label with
  instance id 0 is a crowd region, `ignore_label * label_divisor` is void,
  and category ids are semantic ids. `add(PQStats)` adds sums computed
  elsewhere (the COCO-folder reader).
  """

  def __init__(self, categories, *, label_divisor=None, ignore_label=None):
    self.categories = tuple(categories)
    ids = [c.id for c in self.categories]
    if not ids or len(set(ids)) != len(ids):
      raise ValueError(f'categories need unique ids; found {ids}')
    self.label_divisor = label_divisor
    self.ignore_label = ignore_label
    self._ids = np.array(ids, np.int64)
    self._is_thing = np.array([c.is_thing for c in self.categories], bool)
    self.stats = PQStats.zeros(len(ids))

  @classmethod
  def from_dataset_info(cls, info):
    """Categories = the data set's classes, keyed by semantic id."""
    return cls([Category(c.semantic_id, c.name, c.is_thing)
                for c in info.classes],
               label_divisor=info.label_divisor,
               ignore_label=info.ignore_label)

  @property
  def num_categories(self):
    return len(self.categories)

  def category_index(self, category_ids):
    """Index of each category id, -1 for ids that are not evaluated."""
    return positions(category_ids, self._ids)

  def reset(self):
    self.stats = PQStats.zeros(self.num_categories)

  def add(self, stats):
    self.stats = self.stats + stats
    return self

  def merge(self, other):
    """Adds the sums of another accumulator of the same categories."""
    if other.categories != self.categories:
      raise ValueError('cannot merge PQ accumulators of different categories')
    return self.add(other.stats)

  def __add__(self, other):
    if not isinstance(other, PanopticQuality):
      return NotImplemented
    total = PanopticQuality(self.categories, label_divisor=self.label_divisor,
                            ignore_label=self.ignore_label)
    return total.merge(self).merge(other)

  def update(self, gt_panoptic, pred_panoptic):
    """Adds images: int labels [H, W] or [B, H, W] of equal shapes."""
    gt, pred = np.asarray(gt_panoptic), np.asarray(pred_panoptic)
    if gt.shape != pred.shape or gt.ndim not in (2, 3):
      raise ValueError(f'expected GT and prediction of one shape [H, W] or '
                       f'[B, H, W]; found {gt.shape} and {pred.shape}')
    if gt.ndim == 2:
      gt, pred = gt[None], pred[None]
    for gt_image, pred_image in zip(gt, pred):
      self.add(self.panoptic_image_stats(gt_image, pred_image))
    return self

  def panoptic_image_stats(self, gt_panoptic, pred_panoptic):
    """PQStats of one image of panoptic labels (see the class docstring)."""
    if self.label_divisor is None or self.ignore_label is None:
      raise ValueError('PanopticQuality.update needs label_divisor and '
                       'ignore_label (use from_dataset_info)')
    divisor = self.label_divisor
    void = self.ignore_label * divisor
    pair_gt, pair_pred, count = pair_areas(gt_panoptic, pred_panoptic)
    gt_segments = np.setdiff1d(pair_gt, [void])  # [G]
    pred_segments = np.setdiff1d(pair_pred, [void])  # [P]
    gt_category = self._label_category(gt_segments, 'ground-truth')
    pred_category = self._label_category(pred_segments, 'predicted')
    gt_crowd = self._is_thing[gt_category] & (gt_segments % divisor == 0)
    matrix = intersection_matrix(
        pair_gt, pair_pred, count, gt_segments=gt_segments,
        pred_segments=pred_segments, gt_void=void, pred_void=void)
    return image_stats(matrix, gt_category=gt_category, gt_crowd=gt_crowd,
                       pred_category=pred_category,
                       num_categories=self.num_categories)

  def _label_category(self, labels, which):
    index = self.category_index(labels // self.label_divisor)
    if np.any(index < 0):
      bad = labels[index < 0]
      raise ValueError(
          f'{which} labels {bad.tolist()} (semantic ids '
          f'{(bad // self.label_divisor).tolist()}) are neither a category '
          f'({self._ids.tolist()}) nor void '
          f'({self.ignore_label} * {self.label_divisor})')
    return index

  def result(self):
    """The structure `pq_compute` returns (per_class keyed by category id)."""
    results = {}
    for name, select in (('All', None), ('Things', True), ('Stuff', False)):
      results[name], per_class = self._average(select)
      if select is None:
        results['per_class'] = per_class
    return results

  def _average(self, select):
    """Mean PQ / SQ / RQ over the selected categories that occur."""
    pq = sq = rq = 0.0
    n = 0
    per_class = {}
    for i, category in enumerate(self.categories):
      if select is not None and category.is_thing != select:
        continue
      iou = float(self.stats.iou[i])
      tp, fp, fn = (int(self.stats.tp[i]), int(self.stats.fp[i]),
                    int(self.stats.fn[i]))
      if tp + fp + fn == 0:
        per_class[category.id] = {'pq': 0.0, 'sq': 0.0, 'rq': 0.0}
        continue
      n += 1
      pq_c = iou / (tp + 0.5 * fp + 0.5 * fn)
      sq_c = iou / tp if tp else 0.0
      rq_c = tp / (tp + 0.5 * fp + 0.5 * fn)
      per_class[category.id] = {'pq': pq_c, 'sq': sq_c, 'rq': rq_c}
      pq, sq, rq = pq + pq_c, sq + sq_c, rq + rq_c
    if not n:
      return {'pq': 0.0, 'sq': 0.0, 'rq': 0.0, 'n': 0}, per_class
    return {'pq': pq / n, 'sq': sq / n, 'rq': rq / n, 'n': n}, per_class

  def scalars(self, prefix='panoptic/'):
    """Flat {name: float} of the summary (for logs and the trainer)."""
    results = self.result()
    out = {}
    for group, suffix in (('All', ''), ('Things', '_thing'),
                          ('Stuff', '_stuff')):
      for key in ('pq', 'sq', 'rq'):
        out[f'{prefix}{key}{suffix}'] = float(results[group][key])
    return out

  def table(self):
    """Per-class and summary table (percent), as text."""
    results = self.result()
    lines = [f'{"category":24s} {"th":>2s} | {"PQ":>6s} {"SQ":>6s} {"RQ":>6s}'
             f' | {"TP":>7s} {"FP":>7s} {"FN":>7s}']
    lines.append('-' * len(lines[0]))
    for i, c in enumerate(self.categories):
      r = results['per_class'][c.id]
      lines.append(
          f'{c.name[:24]:24s} {"T" if c.is_thing else "S":>2s} | '
          f'{100 * r["pq"]:6.2f} {100 * r["sq"]:6.2f} {100 * r["rq"]:6.2f} | '
          f'{self.stats.tp[i]:7d} {self.stats.fp[i]:7d} {self.stats.fn[i]:7d}')
    lines.append('-' * len(lines[0]))
    for group in ('All', 'Things', 'Stuff'):
      r = results[group]
      lines.append(f'{group:27s} | {100 * r["pq"]:6.2f} {100 * r["sq"]:6.2f} '
                   f'{100 * r["rq"]:6.2f} | n = {r["n"]}')
    return '\n'.join(lines)
