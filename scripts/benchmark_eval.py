r"""Benchmarks our COCO panoptic evaluation against panopticapi's pq_compute.

Writes --num_images COCO-sized GT / prediction pairs as COCO panoptic
folders in a temporary directory (COCO categories; each GT has stuff regions,
thing ellipses, void boundaries and blobs, sometimes a crowd region; each
prediction is the GT shifted by a few pixels with segments dropped,
re-classed or merged and false positives added; segment ids are random
24-bit colors), then times, in this one process:

  official      panopticapi `pq_compute`, its pool replaced by the single
                core function it runs (`pq_compute_single_core`; it decodes
                with Pillow)
  ours          `coco_format.evaluate_folders` with each installed PNG
                decoder (builtin, pyspng, opencv, pillow) on 1 and on --threads
                threads; `ours_default` is its default configuration
                (the first installed decoder) on --threads threads
  png_decode    only reading the PNGs (both sides) into ids with each
                decoder, one thread: the floor of an evaluation of the
                folders
  official_mem / ours_mem   the first --memory_images images with their PNGs
                decoded (by PIL) beforehand: the evaluation work alone

Each time is the best of --repeats runs; every run decodes every PNG. The
script checks that ours gives the official numbers (PQ / SQ / RQ of All,
Things, Stuff and every class, within 1e-9) and prints one JSON object.

  python scripts/benchmark_eval.py --num_images=500 --threads=2
"""
import argparse
import contextlib
import io
import json
import os
import sys
import tempfile
import time
from unittest import mock

import numpy as np
from PIL import Image

from deeplab2_kmax.data import dataset_info
from deeplab2_kmax.evaluation import coco_format


def _parse_args(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--num_images', type=int, default=500)
  parser.add_argument('--height', type=int, default=480)
  parser.add_argument('--width', type=int, default=640)
  parser.add_argument('--things', type=int, default=14,
                      help='thing segments per image (plus ~7 stuff)')
  parser.add_argument('--threads', type=int, default=os.cpu_count() or 1,
                      help='threads of the threaded runs of ours')
  parser.add_argument('--memory_images', type=int, default=100)
  parser.add_argument('--seed', type=int, default=0)
  parser.add_argument('--repeats', type=int, default=3,
                      help='each timing is the best of this many runs')
  return parser.parse_args(argv)


def _paint_ellipse(index, value, rng):
  """Paints a random ellipse (semi-axes up to 1/16 of the size) in place."""
  height, width = index.shape
  scale = max(height, width) / 16
  cy, cx = rng.uniform(0, height), rng.uniform(0, width)
  a, b = rng.uniform(0.1, 1.0, size=2) * scale
  y0, y1 = int(max(cy - a - b, 0)), int(min(cy + a + b + 1, height))
  x0, x1 = int(max(cx - a - b, 0)), int(min(cx + a + b + 1, width))
  y, x = np.mgrid[y0:y1, x0:x1]  # the bounding window only
  y, x = y - cy, x - cx
  angle = rng.uniform(0, np.pi)
  u = (x * np.cos(angle) + y * np.sin(angle)) / a
  v = (-x * np.sin(angle) + y * np.cos(angle)) / b
  index[y0:y1, x0:x1][u * u + v * v < 1] = value


def _ground_truth(rng, info, height, width, num_things):
  """(segment index [H, W] (0 = void), category ids, crowd flags)."""
  h, w = height // 4, width // 4  # drawn at 1/4 resolution
  yy, xx = np.mgrid[0:h, 0:w]
  num_stuff = rng.integers(4, 9)
  centers = rng.uniform([0, 0], [h, w], size=[num_stuff, 2])
  dist = ((yy[..., None] - centers[:, 0]) ** 2 +
          (xx[..., None] - centers[:, 1]) ** 2 +
          rng.normal(0, 20, [h, w, num_stuff]))
  index = np.argmin(dist, axis=-1) + 1  # [h, w] stuff 1..num_stuff
  stuff = rng.choice(info.stuff_semantic_ids, num_stuff, replace=False)
  things = rng.choice(info.thing_semantic_ids, num_things)
  for k in range(num_things):
    _paint_ellipse(index, num_stuff + 1 + k, rng)
  for _ in range(rng.integers(0, 3)):  # unlabeled blobs
    _paint_ellipse(index, 0, rng)
  index = index.repeat(4, 0).repeat(4, 1)  # [H, W]
  edge = np.zeros(index.shape, bool)  # void between segments, as in COCO
  edge[1:] |= index[1:] != index[:-1]
  edge[:, 1:] |= index[:, 1:] != index[:, :-1]
  index[edge & (rng.random(index.shape) < 0.7)] = 0
  by_semantic = info.by_semantic_id()
  categories = [by_semantic[s].source_id for s in [*stuff, *things]]
  crowd = [False] * num_stuff + [False] * num_things
  if rng.random() < 0.2:
    crowd[num_stuff + rng.integers(num_things)] = True
  return index, categories, crowd


def _prediction(rng, info, gt_index, categories):
  """The GT perturbed: shifted, segments dropped / re-classed / merged."""
  categories = list(categories)
  things = [c.source_id for c in info.classes if c.is_thing]
  remap = np.arange(len(categories) + 1)  # segment -> predicted segment
  for k in range(1, len(categories) + 1):
    r = rng.random()
    if r < 0.1:
      remap[k] = 0  # dropped
    elif r < 0.2:
      categories[k - 1] = things[rng.integers(len(things))]  # re-classed
    elif r < 0.25 and k > 1:
      remap[k] = remap[k - 1]  # merged into the previous one
  index = np.roll(remap[gt_index], rng.integers(-4, 5, size=2), axis=(0, 1))
  for _ in range(rng.integers(1, 4)):  # false positives
    _paint_ellipse(index, len(categories) + 1, rng)
    categories.append(things[rng.integers(len(things))])
  return index, categories


def _write_image(rng, folder, side, file_name, index, categories, crowd):
  """Writes one PNG with random 24-bit ids; returns its segments_info."""
  areas = np.bincount(index.ravel(), minlength=len(categories) + 1)
  present = np.flatnonzero(areas[1:]) + 1
  ids = np.zeros([len(categories) + 1], np.int64)
  while True:
    drawn = rng.integers(1, 1 << 24, size=present.size)
    if np.unique(drawn).size == present.size:
      break
  ids[present] = drawn
  coco_format.write_id_png(os.path.join(folder, side, file_name), ids[index])
  segments = []
  for k in present:
    segment = {'id': int(ids[k]), 'category_id': int(categories[k - 1])}
    if crowd is not None:
      segment.update(iscrowd=int(crowd[k - 1]), area=int(areas[k]))
    segments.append(segment)
  return segments


def generate(folder, args):
  """Writes gt/, pred/ and their JSONs under `folder`."""
  info = dataset_info.get_dataset_info('coco_panoptic')
  rng = np.random.default_rng(args.seed)
  anns = {'gt': [], 'pred': []}
  for side in anns:
    os.makedirs(os.path.join(folder, side))
  for image_id in range(args.num_images):
    name = f'{image_id:012d}.png'
    gt_index, categories, crowd = _ground_truth(rng, info, args.height,
                                                args.width, args.things)
    pred_index, pred_categories = _prediction(rng, info, gt_index,
                                              categories)
    for side, index, cats, flags in (
        ('gt', gt_index, categories, crowd),
        ('pred', pred_index, pred_categories, None)):
      anns[side].append({'image_id': image_id, 'file_name': name,
                         'segments_info': _write_image(
                             rng, folder, side, name, index, cats, flags)})
  for side in anns:
    coco_format.write_json(os.path.join(folder, f'{side}.json'), {
        'annotations': anns[side],
        'categories': info.categories_json()})
  return anns


def _official(folder):
  from panopticapi import evaluation  # pylint: disable=import-outside-toplevel

  def single_core(matched, gt_folder, pred_folder, categories):
    return evaluation.pq_compute_single_core(0, matched, gt_folder,
                                             pred_folder, categories)

  with mock.patch.object(evaluation, 'pq_compute_multi_core', single_core), \
      contextlib.redirect_stdout(io.StringIO()):
    return evaluation.pq_compute(
        os.path.join(folder, 'gt.json'), os.path.join(folder, 'pred.json'),
        os.path.join(folder, 'gt'), os.path.join(folder, 'pred'))


def _ours(folder, threads, decoder):
  return coco_format.evaluate_folders(
      os.path.join(folder, 'gt.json'), os.path.join(folder, 'gt'),
      os.path.join(folder, 'pred.json'), os.path.join(folder, 'pred'),
      num_threads=threads, png_decoder=decoder).result()


def _max_difference(ours, official):
  diffs = [abs(ours[g][k] - official[g][k])
           for g in ('All', 'Things', 'Stuff') for k in ('pq', 'sq', 'rq')]
  assert all(ours[g]['n'] == official[g]['n']
             for g in ('All', 'Things', 'Stuff'))
  assert set(ours['per_class']) == set(official['per_class'])
  for category, values in official['per_class'].items():
    diffs += [abs(ours['per_class'][category][k] - values[k])
              for k in ('pq', 'sq', 'rq')]
  return max(diffs)


def _timed(fn, *args, repeats=1):
  """(result, best wall time of `repeats` runs)."""
  best = float('inf')
  for _ in range(repeats):
    start = time.perf_counter()
    result = fn(*args)
    best = min(best, time.perf_counter() - start)
  return result, best


def _in_memory(folder, args):
  """Both evaluations of the first images with PNGs decoded beforehand."""
  from panopticapi import evaluation  # pylint: disable=import-outside-toplevel
  subset = os.path.join(folder, 'subset')
  os.makedirs(subset)
  cache = {}  # path -> decoded PIL image
  for side in ('gt', 'pred'):
    with open(os.path.join(folder, f'{side}.json'), encoding='utf-8') as f:
      data = json.load(f)
    data['annotations'] = data['annotations'][:args.memory_images]
    coco_format.write_json(os.path.join(subset, f'{side}.json'), data)
    os.symlink(os.path.join(folder, side), os.path.join(subset, side))
    for ann in data['annotations']:
      path = os.path.join(subset, side, ann['file_name'])
      cache[path] = Image.open(path)
      cache[path].load()

  class CachedImage:  # stands in for PIL.Image in panopticapi
    @staticmethod
    def open(path):
      return cache[path]

  def cached_ids(path, where, unused_decoder):
    return coco_format.image_to_ids(cache[path], where)

  with mock.patch.object(evaluation, 'Image', CachedImage):
    official, official_s = _timed(_official, subset, repeats=args.repeats)
  with mock.patch.object(coco_format, 'read_id_png', cached_ids):
    ours, ours_s = _timed(_ours, subset, 1, None, repeats=args.repeats)
  return official, official_s, ours, ours_s


def _decode_all(folder, anns, decoder):
  """Reads every PNG of both sides into ids, in one thread."""
  for side in anns:
    for ann in anns[side]:
      coco_format.read_id_png(os.path.join(folder, side, ann['file_name']),
                              'benchmark', decoder)


def _rounded(value):
  """`value` with its floats (also inside lists and dicts) to 4 decimals."""
  if isinstance(value, float):
    return round(value, 4)
  if isinstance(value, dict):
    return {k: _rounded(v) for k, v in value.items()}
  if isinstance(value, list):
    return [_rounded(v) for v in value]
  return value


def main(argv=None):
  args = _parse_args(argv)
  decoders = coco_format.available_png_decoders()
  default = {'threads': args.threads, 'decoder': decoders[0]}
  report = {'num_images': args.num_images,
            'size': f'{args.width}x{args.height}', 'cpus': os.cpu_count(),
            'load_average': os.getloadavg(), 'decoders': decoders}
  results = []
  with tempfile.TemporaryDirectory(prefix='benchmark_eval_') as folder:
    anns, report['generate_s'] = _timed(generate, folder, args)
    report['segments_per_image'] = {
        side: float(np.mean([len(a['segments_info']) for a in anns[side]]))
        for side in anns}
    official, report['official_s'] = _timed(_official, folder,
                                            repeats=args.repeats)
    report['ours'] = []
    for decoder in decoders:
      for threads in sorted({1, args.threads}):
        result, seconds = _timed(_ours, folder, threads, decoder,
                                 repeats=args.repeats)
        results.append(result)
        report['ours'].append({
            'threads': threads, 'decoder': decoder, 'seconds': seconds,
            'speedup': report['official_s'] / seconds})
    report['ours_default'] = next(
        run for run in report['ours']
        if run['threads'] == default['threads'] and
        run['decoder'] == default['decoder'])
    report['png_decode_s'] = {
        decoder: _timed(_decode_all, folder, anns, decoder,
                        repeats=args.repeats)[1] for decoder in decoders}
    memory = _in_memory(folder, args)
  report['max_abs_difference'] = max(
      [_max_difference(memory[2], memory[0])] +
      [_max_difference(result, official) for result in results])
  report['memory_images'] = args.memory_images
  report['official_mem_s'], report['ours_mem_s'] = memory[1], memory[3]
  report['speedup_mem'] = memory[1] / memory[3]
  report['pq'] = official['All']['pq']
  report['load_average_after'] = os.getloadavg()
  print(json.dumps(_rounded(report), indent=1))
  if report['max_abs_difference'] > 1e-9:
    print('numbers differ from the official ones', file=sys.stderr)
    return 1
  return 0


if __name__ == '__main__':
  sys.exit(main())
