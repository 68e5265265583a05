"""COCO instance mask AP of panoptic predictions, through pycocotools.

AP^mask as in the kMaX-DeepLab and DeepLab2 papers: the thing segments of a
panoptic prediction, each with its score (the post-processor's ranking
score), are evaluated as instance detections by
`pycocotools.cocoeval.COCOeval(iouType='segm')` (AP averaged over IoU
thresholds 0.50:0.05:0.95 and the thing categories; maxDets 1 / 10 / 100).
The ground truth is the non-crowd thing segments; a crowd region (a thing
label with instance id 0) is an `iscrowd` annotation, which COCOeval lets
detections match without counting them.

Masks are stored as run-length encodings (`pycocotools.mask`) per image, so
an accumulator is small; accumulators of replicas merge with `+`. The COCO
ground-truth and result objects are built in memory exactly as
`COCO.loadRes` builds results (area and box from the RLE, ids from 1).
"""
import contextlib
import io

import numpy as np
from pycocotools import coco as coco_api
from pycocotools import cocoeval
from pycocotools import mask as mask_api

STAT_NAMES = ('AP', 'AP50', 'AP75', 'APs', 'APm', 'APl',
              'AR1', 'AR10', 'AR100', 'ARs', 'ARm', 'ARl')


def encode_masks(masks):
  """bool [N, H, W] -> N COCO RLEs (dicts with `size` and `counts`)."""
  masks = np.asarray(masks, bool)
  if masks.ndim != 3:
    raise ValueError(f'masks must be [N, H, W]; found shape {masks.shape}')
  if not masks.shape[0]:
    return []
  return mask_api.encode(np.asfortranarray(
      masks.transpose(1, 2, 0).astype(np.uint8)))  # [H, W, N]


def panoptic_instances(panoptic, *, thing_ids, label_divisor, void_label):
  """Thing segments of a panoptic label [H, W] as RLEs.

  Returns (labels [N], N RLEs) in label order, including thing labels with
  instance id 0 (crowd regions in ground truth). Masks are encoded one at a
  time, so memory stays at one image.
  """
  panoptic = np.asarray(panoptic, np.int64)
  labels, index = np.unique(panoptic, return_inverse=True)
  index = index.reshape(panoptic.shape)  # [H, W]
  keep = np.isin(labels // label_divisor, list(thing_ids)) & (
      labels != void_label)
  chosen = np.flatnonzero(keep)  # [N]
  rles = [encode_masks((index == k)[None])[0] for k in chosen]
  return labels[chosen], rles


class MaskAP:
  """Streaming COCO mask AP over images (see the module docstring)."""

  def __init__(self, category_ids, *, label_divisor=None, void_label=None):
    self.category_ids = tuple(int(c) for c in category_ids)
    if not self.category_ids:
      raise ValueError('MaskAP needs at least one thing category')
    self.label_divisor = label_divisor
    self.void_label = void_label
    self.images = []  # (height, width, gt annotations, detections)

  @classmethod
  def from_dataset_info(cls, info):
    """Categories = the thing classes, keyed by semantic id."""
    return cls(info.thing_semantic_ids, label_divisor=info.label_divisor,
               void_label=info.void_label)

  def reset(self):
    self.images = []

  def merge(self, other):
    if other.category_ids != self.category_ids:
      raise ValueError('cannot merge MaskAP accumulators of different '
                       'categories')
    self.images.extend(other.images)
    return self

  def __add__(self, other):
    if not isinstance(other, MaskAP):
      return NotImplemented
    total = MaskAP(self.category_ids, label_divisor=self.label_divisor,
                   void_label=self.void_label)
    return total.merge(self).merge(other)

  def add_image(self, *, height, width, gt_masks, gt_categories,
                pred_masks, pred_categories, pred_scores, gt_iscrowd=None):
    """Adds one image's instances.

    Masks are bool [N, H, W] arrays or lists of RLEs of size (H, W);
    categories are ids among `category_ids`; `gt_iscrowd` bool [N]
    (default all False); `pred_scores` float [M].
    """
    gt = self._instances(gt_masks, gt_categories, height, width, 'GT')
    pred = self._instances(pred_masks, pred_categories, height, width,
                           'predicted')
    crowd = (np.zeros([len(gt)], bool) if gt_iscrowd is None
             else np.asarray(gt_iscrowd, bool).reshape([-1]))
    scores = np.asarray(pred_scores, np.float64).reshape([-1])
    if crowd.size != len(gt) or scores.size != len(pred):
      raise ValueError(f'{len(gt)} GT masks with {crowd.size} crowd flags, '
                       f'{len(pred)} predicted masks with {scores.size} '
                       'scores')
    self.images.append((
        int(height), int(width),
        [(rle, c, bool(k)) for (rle, c), k in zip(gt, crowd)],
        [(rle, c, float(s)) for (rle, c), s in zip(pred, scores)]))

  def _instances(self, masks, categories, height, width, which):
    if isinstance(masks, np.ndarray):
      if masks.ndim != 3 or masks.shape[1:] != (height, width):
        raise ValueError(f'{which} masks must be [N, {height}, {width}]; '
                         f'found {masks.shape}')
      masks = encode_masks(masks)
    categories = [int(c) for c in np.asarray(categories).reshape([-1])]
    if len(masks) != len(categories):
      raise ValueError(f'{len(masks)} {which} masks but {len(categories)} '
                       'categories')
    for rle, c in zip(masks, categories):
      if c not in self.category_ids:
        raise ValueError(f'{which} instance of category {c}, which is not '
                         f'one of {self.category_ids}')
      if tuple(rle['size']) != (height, width):
        raise ValueError(f'{which} RLE of size {rle["size"]}, image is '
                         f'{height}x{width}')
    return list(zip(masks, categories))

  def update(self, gt_panoptic, pred_panoptic, segment_ids, segment_scores):
    """Adds images of panoptic labels ([H, W] or [B, H, W]).

    `segment_ids` / `segment_scores` ([N] or [B, N]) give the score of each
    predicted label (the post-processor's segment table); every predicted
    thing segment needs one.
    """
    if self.label_divisor is None or self.void_label is None:
      raise ValueError('MaskAP.update needs label_divisor and void_label '
                       '(use from_dataset_info)')
    gt, pred = np.asarray(gt_panoptic), np.asarray(pred_panoptic)
    ids, scores = np.asarray(segment_ids), np.asarray(segment_scores)
    if gt.shape != pred.shape or gt.ndim not in (2, 3):
      raise ValueError(f'expected GT and prediction of one shape [H, W] or '
                       f'[B, H, W]; found {gt.shape} and {pred.shape}')
    if gt.ndim == 2:
      gt, pred, ids, scores = gt[None], pred[None], ids[None], scores[None]
    options = dict(thing_ids=self.category_ids,
                   label_divisor=self.label_divisor,
                   void_label=self.void_label)
    for gt_image, pred_image, image_ids, image_scores in zip(gt, pred, ids,
                                                             scores):
      gt_labels, gt_rles = panoptic_instances(gt_image, **options)
      pred_labels, pred_rles = panoptic_instances(pred_image, **options)
      score_of = dict(zip(image_ids.tolist(), image_scores.tolist()))
      missing = [int(v) for v in pred_labels if int(v) not in score_of]
      if missing:
        raise ValueError(f'predicted thing segments {missing} have no score '
                         'in segment_ids')
      self.add_image(
          height=gt_image.shape[0], width=gt_image.shape[1],
          gt_masks=gt_rles, gt_categories=gt_labels // self.label_divisor,
          gt_iscrowd=gt_labels % self.label_divisor == 0,
          pred_masks=pred_rles,
          pred_categories=pred_labels // self.label_divisor,
          pred_scores=[score_of[int(v)] for v in pred_labels])
    return self

  def coco_objects(self):
    """(ground truth, results) pycocotools COCO objects of the images."""
    images = [{'id': i + 1, 'height': h, 'width': w}
              for i, (h, w, _, _) in enumerate(self.images)]
    categories = [{'id': c, 'name': str(c)} for c in self.category_ids]
    gt_anns, dt_anns = [], []
    for image_id, (_, _, gt, pred) in enumerate(self.images, start=1):
      for rle, category, crowd in gt:
        gt_anns.append(_annotation(len(gt_anns) + 1, image_id, rle, category,
                                   iscrowd=int(crowd)))
      for rle, category, score in pred:
        dt_anns.append(_annotation(len(dt_anns) + 1, image_id, rle, category,
                                   iscrowd=0, score=score))
    gt_coco, dt_coco = coco_api.COCO(), coco_api.COCO()
    with contextlib.redirect_stdout(io.StringIO()):
      for coco, anns in ((gt_coco, gt_anns), (dt_coco, dt_anns)):
        coco.dataset = {'images': images, 'categories': categories,
                        'annotations': anns}
        coco.createIndex()
    return gt_coco, dt_coco

  def result(self):
    """{name: float} of the 12 COCO stats (-1 where undefined)."""
    if not self.images:
      return {name: -1.0 for name in STAT_NAMES}
    gt_coco, dt_coco = self.coco_objects()
    evaluator = cocoeval.COCOeval(gt_coco, dt_coco, iouType='segm')
    with contextlib.redirect_stdout(io.StringIO()):
      evaluator.evaluate()
      evaluator.accumulate()
      evaluator.summarize()
    return {name: float(v) for name, v in zip(STAT_NAMES, evaluator.stats)}

  def scalars(self, prefix='instance/'):
    return {f'{prefix}{name}': value for name, value in self.result().items()}


def _annotation(ann_id, image_id, rle, category, *, iscrowd, score=None):
  ann = {'id': ann_id, 'image_id': image_id, 'category_id': category,
         'segmentation': rle, 'area': float(mask_api.area(rle)),
         'bbox': [float(v) for v in mask_api.toBbox(rle)],
         'iscrowd': iscrowd}
  if score is not None:
    ann['score'] = score
  return ann
