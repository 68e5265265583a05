r"""Evaluates COCO panoptic prediction folders against ground truth (PQ).

  python -m deeplab2_kmax.evaluation.evaluate \
      --gt_json=panoptic_val2017.json --gt_dir=panoptic_val2017 \
      --pred_json=predictions.json --pred_dir=predictions \
      --output_json=pq.json

Prints a per-class table (PQ, SQ, RQ in percent, TP, FP, FN) and the
All / Things / Stuff summary. --output_json receives what panopticapi's
`pq_compute` returns: `All`, `Things`, `Stuff` (each `pq`, `sq`, `rq`, `n`)
and `per_class` (category id -> `pq`, `sq`, `rq`), written to a temporary
file and renamed. The numbers equal `pq_compute`'s (see
panoptic_quality.py for the rules). A malformed input stops with one error
line naming the file, the image and the segment.
"""
import os
import sys
import time

from absl import app
from absl import flags

from deeplab2_kmax.evaluation import coco_format

_GT_JSON = flags.DEFINE_string('gt_json', None, 'Ground-truth panoptic JSON.')
_GT_DIR = flags.DEFINE_string(
    'gt_dir', None, 'Folder of ground-truth PNGs (default: --gt_json '
    'without .json).')
_PRED_JSON = flags.DEFINE_string('pred_json', None, 'Prediction JSON.')
_PRED_DIR = flags.DEFINE_string(
    'pred_dir', None, 'Folder of predicted PNGs (default: --pred_json '
    'without .json).')
_OUTPUT_JSON = flags.DEFINE_string('output_json', None,
                                   'Where to write the results (optional).')
_NUM_THREADS = flags.DEFINE_integer(
    'num_threads', None,
    'Images evaluated in parallel (PNG decoding dominates); default: the '
    'number of CPUs.', lower_bound=1)
_PNG_DECODER = flags.DEFINE_enum(
    'png_decoder', None, coco_format.PNG_DECODERS,
    'PNG decoder (installed ones only); default: the fastest installed one '
    '(builtin, the package\'s own reader, then pyspng, opencv, pillow).')


def evaluate(gt_json, gt_dir, pred_json, pred_dir, output_json=None,
             num_threads=None, png_decoder=None):
  """Evaluates the folders; returns (results dict, PanopticQuality)."""
  metric = coco_format.evaluate_folders(gt_json, gt_dir, pred_json, pred_dir,
                                        num_threads=num_threads,
                                        png_decoder=png_decoder)
  results = metric.result()
  if output_json:
    coco_format.write_json(output_json, results)
  return results, metric


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  for flag in (_GT_JSON, _PRED_JSON):
    if not flag.value:
      raise app.UsageError(f'--{flag.name} is required')
  gt_dir = _GT_DIR.value or os.path.splitext(_GT_JSON.value)[0]
  pred_dir = _PRED_DIR.value or os.path.splitext(_PRED_JSON.value)[0]
  num_threads = _NUM_THREADS.value or os.cpu_count() or 1
  available = coco_format.available_png_decoders()
  png_decoder = _PNG_DECODER.value or available[0]
  if png_decoder not in available:
    raise app.UsageError(f'--png_decoder={png_decoder} is not installed; '
                         f'available: {available}')
  start = time.perf_counter()
  try:
    results, metric = evaluate(_GT_JSON.value, gt_dir, _PRED_JSON.value,
                               pred_dir, _OUTPUT_JSON.value, num_threads,
                               png_decoder)
  except coco_format.CocoFormatError as e:
    print(f'error: {e}', file=sys.stderr)
    return 1
  print(metric.table())
  print(f'{len(results["per_class"])} categories, '
        f'{time.perf_counter() - start:.2f} s ({num_threads} threads, PNG '
        f'decoder {png_decoder})')
  if _OUTPUT_JSON.value:
    print(f'results written to {_OUTPUT_JSON.value}')
  return 0


if __name__ == '__main__':
  app.run(main)
