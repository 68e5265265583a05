"""Generated COCO panoptic GT / prediction sets full of edge cases.

Random images are painted from small rectangles (tiny segments of one pixel
included) on 12x16 canvases, with void, crowd segments (also two of one
category, and crowd of stuff), GT ids missing from `segments_info`, and
predictions made by shifting, splitting, re-classing, voiding and adding
segments, so IoU and ignore fractions of exactly 0.5 occur often. A
hand-made image adds the exact-0.5 cases on purpose. Segment ids are random
24-bit values, as in COCO PNGs.
"""
import os

import numpy as np

from deeplab2_kmax.evaluation import coco_format

HEIGHT, WIDTH = 12, 16
# (id, isthing); 11 and 13 never occur (absent classes).
COCO_LIKE = ((1, 1), (2, 1), (3, 1), (5, 0), (7, 0), (9, 0), (11, 1), (13, 0))
CITYSCAPES_LIKE = ((7, 0), (8, 0), (11, 0), (24, 1), (26, 1), (33, 1),
                   (21, 0), (28, 1))
ABSENT = {COCO_LIKE: (11, 13), CITYSCAPES_LIKE: (21, 28)}


def _paint_segments(rng, categories, count):
  """Segment map [H, W] (0 = void) and per-segment category ids."""
  present = [c for c in categories if c[0] not in ABSENT[categories]]
  stuff = [c for c, thing in present if not thing]
  index = np.full([HEIGHT, WIDTH], 1)
  cats = [None, stuff[rng.integers(len(stuff))]]  # background stuff
  for _ in range(count):
    y, x = rng.integers(0, HEIGHT), rng.integers(0, WIDTH)
    h, w = rng.integers(1, 7, size=2)
    if rng.random() < 0.15:
      index[y:y + h, x:x + w] = 0
      continue
    index[y:y + h, x:x + w] = len(cats)
    cats.append(present[rng.integers(len(present))][0])
  return index, cats


def _compact(index, values):
  """Drops segments without pixels; returns (index, kept values)."""
  used = np.unique(index[index > 0])
  remap = np.zeros([len(values)], np.int64)
  remap[used] = np.arange(1, used.size + 1)
  return remap[index], [values[i] for i in used]


def random_image(rng, categories):
  """(gt_index, gt_segments, pred_index, pred_segments) of one image."""
  is_thing = dict(categories)
  gt_index, gt_cats = _paint_segments(rng, categories, rng.integers(3, 10))
  gt_index, gt_cats = _compact(gt_index, gt_cats)
  gt_segments = []
  for cat in gt_cats:
    crowd = rng.random() < (0.25 if is_thing[cat] else 0.05)
    gt_segments.append({'category_id': cat, 'iscrowd': int(crowd),
                        'listed': rng.random() > 0.05})
  # Prediction: the GT segments (crowd ones too) perturbed.
  pred_index = gt_index.copy()
  pred_cats = [None] + [s['category_id'] for s in gt_segments]
  if rng.random() < 0.5:
    pred_index = np.roll(pred_index, rng.choice([-1, 1]),
                         axis=rng.integers(2))
  present = [c for c in is_thing if c not in ABSENT[categories]]
  for _ in range(rng.integers(0, 6)):
    y, x = rng.integers(0, HEIGHT), rng.integers(0, WIDTH)
    h, w = rng.integers(1, 5, size=2)
    op = rng.random()
    if op < 0.2:  # void
      pred_index[y:y + h, x:x + w] = 0
    elif op < 0.5:  # new segment (a split when it lies inside one)
      pred_index[y:y + h, x:x + w] = len(pred_cats)
      pred_cats.append(present[rng.integers(len(present))])
    elif op < 0.8:  # an existing segment grows
      pred_index[y:y + h, x:x + w] = rng.integers(1, len(pred_cats))
    else:  # re-class a segment
      pred_cats[rng.integers(1, len(pred_cats))] = present[
          rng.integers(len(present))]
  pred_index, pred_cats = _compact(pred_index, [None] + pred_cats[1:])
  pred_segments = [{'category_id': c} for c in pred_cats]
  return gt_index, gt_segments, pred_index, pred_segments


def exact_half_image():
  """Hand-made 6x8 image of exact 0.5 IoU and ignore fractions.

  Categories of COCO_LIKE: 1, 2 things, 5 stuff. GT rows (0 = void):
  four 4-pixel segments of class 1 (a, b, c, d), crowd regions of class 1
  (first e, then f: only the last one counts) and stuff.
  """
  gt = np.array([
      [1, 1, 2, 2, 3, 3, 0, 0],
      [1, 1, 2, 2, 3, 3, 0, 0],
      [4, 4, 5, 5, 6, 6, 7, 7],
      [4, 4, 5, 5, 6, 6, 7, 7],
      [7, 7, 7, 7, 7, 7, 7, 7],
      [0, 0, 0, 0, 0, 0, 0, 0]])
  gt_segments = [
      {'category_id': 1, 'iscrowd': 0},  # 1: a
      {'category_id': 1, 'iscrowd': 0},  # 2: b
      {'category_id': 1, 'iscrowd': 0},  # 3: c
      {'category_id': 1, 'iscrowd': 0},  # 4: d
      {'category_id': 1, 'iscrowd': 1},  # 5: crowd e (overridden by f)
      {'category_id': 1, 'iscrowd': 1},  # 6: crowd f
      {'category_id': 5, 'iscrowd': 0},  # 7: stuff
  ]
  for s in gt_segments:
    s['listed'] = True
  pred = np.array([
      [1, 0, 2, 2, 3, 3, 3, 0],
      [1, 0, 0, 0, 3, 0, 4, 4],
      [0, 0, 5, 5, 6, 6, 4, 4],
      [0, 0, 5, 0, 6, 6, 0, 0],
      [8, 8, 0, 0, 0, 0, 0, 7],
      [8, 8, 0, 0, 0, 0, 0, 7]])
  pred_segments = [
      {'category_id': 1},  # 1: 2 px of a: IoU 2/4 = 0.5, no match -> FP
      {'category_id': 1},  # 2: 2 px of b: IoU 0.5, no match -> FP
      {'category_id': 1},  # 3: 3 px of c + 1 void: IoU 3/(4+4-3-1), match
      {'category_id': 1},  # 4: 2 void + 2 stuff: ignored 0.5 -> FP
      {'category_id': 1},  # 5: 3 px on crowd e (not the last crowd) -> FP
      {'category_id': 1},  # 6: 4 px on crowd f -> ignored
      {'category_id': 5},  # 7: 1 stuff + 1 void: ignored 0.5 -> FP
      {'category_id': 2},  # 8: 2 void + 2 stuff -> FP
  ]
  return gt, gt_segments, pred, pred_segments


def _random_ids(rng, count):
  """`count` distinct random segment ids in [1, 2^24)."""
  while True:
    ids = rng.integers(1, 1 << 24, size=count)
    if np.unique(ids).size == count:
      return ids


def write_set(folder, images, categories, rng):
  """Writes images as gt/, pred/ folders + JSONs; returns their paths."""
  paths = {}
  for side in ('gt', 'pred'):
    os.makedirs(os.path.join(folder, side), exist_ok=True)
    paths[side] = (os.path.join(folder, f'{side}.json'),
                   os.path.join(folder, side))
  anns = {'gt': [], 'pred': []}
  for image_id, (gt_index, gt_segments, pred_index,
                 pred_segments) in enumerate(images):
    for side, index, segments in (('gt', gt_index, gt_segments),
                                  ('pred', pred_index, pred_segments)):
      ids = _random_ids(rng, len(segments))
      file_name = f'{image_id:04d}.png'
      coco_format.write_id_png(os.path.join(paths[side][1], file_name),
                               np.append(0, ids)[index])
      info = []
      for k, (segment_id, s) in enumerate(zip(ids, segments), start=1):
        if side == 'gt' and not s['listed']:
          continue
        entry = {'id': int(segment_id), 'category_id': s['category_id']}
        if side == 'gt':
          entry.update(iscrowd=s['iscrowd'], area=int((index == k).sum()))
        info.append(entry)
      anns[side].append({'image_id': f'img{image_id}', 'file_name': file_name,
                         'segments_info': info})
  cats = [{'id': c, 'name': f'class{c}', 'isthing': t} for c, t in categories]
  for side in ('gt', 'pred'):
    data = {'annotations': anns[side], 'categories': cats}
    coco_format.write_json(paths[side][0], data)
  return paths['gt'] + paths['pred']


def generate(folder, categories, num_images, seed):
  """Random images plus the hand-made one, written under `folder`."""
  rng = np.random.default_rng(seed)
  images = [random_image(rng, categories) for _ in range(num_images)]
  if categories is COCO_LIKE:
    images.append(exact_half_image())
  return write_set(folder, images, categories, rng)
