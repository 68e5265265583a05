"""Cityscapes instance AP, as the benchmark's instance-level script scores it.

The Cityscapes benchmark (`cityscapesscripts`'
evalInstanceLevelSemanticLabeling) does not score instances as COCO does:

- ground-truth instances of fewer than 100 pixels, and crowd ("group")
  regions, are not to be found; a prediction that hits them is neither a
  true nor a false positive;
- a prediction matches a ground-truth instance of its class when their IoU
  is *above* the threshold (10 thresholds 0.5, 0.55, ..., 0.95); of several
  matches the best-scored is the true positive, the others false
  positives;
- an unmatched prediction is a false positive unless more than the
  threshold's fraction of it lies on void, crowd or small instances;
- per class and threshold the precision-recall curve over all images is
  integrated stepwise (with an artificial point at recall 0, precision 1);
  AP is the mean over classes and thresholds, NaN where a class has no
  ground truth, and AP50 the mean over classes at 0.5.

This module computes the same numbers from panoptic maps (a test compares
it with the official script on generated sets). It is written here, not
called from cityscapesscripts, because that script reads only files (PNG
masks, a text file per image and a global cache of ground-truth instances)
and would make the trainer's evaluation write and re-read every mask.

Ids are the panoptic ids of this package: `semantic * label_divisor +
instance`, thing instances from 1, crowd regions instance 0, void the
ignore label's semantic id.
"""
import numpy as np

OVERLAPS = np.arange(0.5, 1.0, 0.05)
MIN_REGION_SIZE = 100
STAT_NAMES = ('AP', 'AP50')


class CityscapesAP:
  """Streaming Cityscapes instance AP over images."""

  def __init__(self, thing_ids, *, label_divisor, void_label):
    """Args:
      thing_ids: semantic ids of the evaluated thing classes.
      label_divisor: of the panoptic ids.
      void_label: semantic id of void (the ignore label).
    """
    self.thing_ids = tuple(int(c) for c in thing_ids)
    self.label_divisor = int(label_divisor)
    self.void_label = int(void_label)
    self.reset()

  @classmethod
  def from_dataset_info(cls, info):
    return cls(info.thing_semantic_ids, label_divisor=info.label_divisor,
               void_label=info.ignore_label)

  def reset(self):
    # Per class: ground-truth instances [pixels, is_group, [(pred index,
    # intersection)]] and predictions [score, pixels, void pixels,
    # [(gt index, intersection)]], indices into the class's own lists.
    self._gts = {c: [] for c in self.thing_ids}
    self._preds = {c: [] for c in self.thing_ids}

  def update(self, gt_panoptic, pred_panoptic, segment_ids, segment_scores):
    """Adds one image.

    Args:
      gt_panoptic: int [H, W] ground-truth panoptic ids.
      pred_panoptic: int [H, W] predicted panoptic ids (segments do not
        overlap).
      segment_ids: the predicted segments' ids (others are ignored).
      segment_scores: their confidences.
    """
    gt = np.asarray(gt_panoptic, np.int64).ravel()
    pred = np.asarray(pred_panoptic, np.int64).ravel()
    divisor = self.label_divisor
    void = gt // divisor == self.void_label
    gt_index = {}  # panoptic id -> (class, index in self._gts[class])
    for gt_id, pixels in zip(*np.unique(gt, return_counts=True)):
      category = int(gt_id) // divisor
      if category in self._gts:
        gt_index[int(gt_id)] = (category, len(self._gts[category]))
        self._gts[category].append(
            [int(pixels), int(gt_id) % divisor == 0, []])
    # Pixel counts of every (predicted id, ground-truth id) pair.
    pairs, counts = np.unique(np.stack([pred, gt]), axis=1,
                              return_counts=True)  # [2, P], [P]
    for segment_id, score in zip(np.asarray(segment_ids).ravel(),
                                 np.asarray(segment_scores).ravel()):
      segment_id = int(segment_id)
      category = segment_id // divisor
      mask = pred == segment_id
      pixels = int(mask.sum())
      if category not in self._preds or not pixels:
        continue
      preds = self._preds[category]
      record = [float(score), pixels, int((mask & void).sum()), []]
      for gt_id, intersection in zip(pairs[1][pairs[0] == segment_id],
                                     counts[pairs[0] == segment_id]):
        target = gt_index.get(int(gt_id))
        if target is None or target[0] != category:
          continue
        record[3].append((target[1], int(intersection)))
        self._gts[category][target[1]][2].append(
            (len(preds), int(intersection)))
      preds.append(record)

  def _class_ap(self, category, overlap):
    """AP of one class at one IoU threshold (NaN without ground truth)."""
    gts, preds = self._gts[category], self._preds[category]
    truth, scores, missed = [], [], 0
    for pixels, is_group, matches in gts:
      if is_group or pixels < MIN_REGION_SIZE:
        continue
      found = [preds[p][0] for p, inter in matches
               if inter / (pixels + preds[p][1] - inter) > overlap]
      if not found:
        missed += 1
        continue
      found.sort(reverse=True)
      truth += [1.0] + [0.0] * (len(found) - 1)  # the best is the hit
      scores += found
    for score, pixels, void_pixels, matches in preds:
      if any(inter / (gts[g][0] + pixels - inter) > overlap
             for g, inter in matches):
        continue  # matched: counted above (or a crowd / small instance)
      ignored = void_pixels
      for g, inter in matches:
        ignored += inter * (gts[g][1] + (gts[g][0] < MIN_REGION_SIZE))
      if ignored / pixels <= overlap:
        truth.append(0.0)
        scores.append(score)
    have_gt = any(not group and pixels >= MIN_REGION_SIZE
                  for pixels, group, _ in gts)
    if not have_gt:
      return float('nan')
    if not preds:
      return 0.0
    return _stepwise_ap(np.array(truth), np.array(scores), missed)

  def result(self):
    """{'AP': ..., 'AP50': ...} in [0, 1] (NaN if no class has ground
    truth), and per class {'AP/<semantic id>': ...}."""
    aps = np.array([[self._class_ap(c, o) for o in OVERLAPS]
                    for c in self.thing_ids])  # [classes, overlaps]
    result = {}
    with np.errstate(all='ignore'):
      result['AP'] = _nanmean(aps)
      result['AP50'] = _nanmean(aps[:, 0])
      for c, row in zip(self.thing_ids, aps):
        result[f'AP/{c}'] = float(np.mean(row))
    return result

  def scalars(self, prefix='instance/'):
    """The summary numbers as {prefix + name: value}."""
    result = self.result()
    return {prefix + name: result[name] for name in STAT_NAMES}


def _nanmean(values):
  values = np.asarray(values, np.float64)
  if np.all(np.isnan(values)):
    return float('nan')
  return float(np.nanmean(values))


def _stepwise_ap(truth, scores, missed):
  """The benchmark's stepwise integral of the precision-recall curve.

  Args:
    truth: 1 for a true positive, 0 for a false positive, per detection.
    scores: their scores.
    missed: ground-truth instances no detection found.
  """
  if not len(truth):
    return 0.0
  order = np.argsort(scores)  # ascending, as the benchmark sorts
  truth, scores = truth[order], scores[order]
  cumulative = np.append(np.cumsum(truth), 0.0)  # index -1 reads the 0
  total_true = cumulative[-2]
  _, first = np.unique(scores, return_index=True)
  # One point per distinct score (detections at or above it), then the
  # artificial point (recall 0, precision 1).
  precision = np.ones(len(first) + 1)
  recall = np.zeros(len(first) + 1)
  for k, start in enumerate(first):
    below = cumulative[start - 1]
    tp = total_true - below
    fp = len(scores) - start - tp
    precision[k] = tp / (tp + fp)
    recall[k] = tp / (tp + below + missed)
  # Step widths: half the recall gap to each neighbour (the first point's
  # left neighbour is itself, the artificial point's right one is 0).
  padded = np.concatenate([recall[:1], recall, [0.0]])
  widths = (padded[2:] - padded[:-2]) * -0.5
  return float(np.dot(precision, widths))
