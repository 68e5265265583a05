r"""Builds sharded TFRecords from a panoptic data set in an official format.

  python -m deeplab2_kmax.data.build_tfrecords --format=coco_panoptic \
      --images_dir=coco/val2017 \
      --panoptic_json=coco/annotations/panoptic_val2017.json \
      --panoptic_dir=coco/annotations/panoptic_val2017 \
      --output=records/val --num_shards=8

writes records/val-00000-of-00008.tfrecord ... records/val-00007-of-00008
.tfrecord (schema: deeplab2_kmax/data/record.py). With the official folder
layout, `--root=coco --split=val2017` fills in the three input paths (see
`layout()` in each module of deeplab2_kmax/data/converters/); explicit
flags win. `--panoptic_dir` defaults to the JSON path without `.json`.

Formats: coco_panoptic (also any data set in COCO panoptic format),
cityscapes_panoptic (cityscapesScripts' createPanopticImgs output; images
under leftImg8bit/{split}/{city}/), ade20k_panoptic (Mask2Former's
preparation script). `--dataset` picks the dataset table entry (default:
the format's); `--dataset=custom` takes the classes from the JSON's
categories, with `--label_divisor` (default 1000).

An invalid image (missing or corrupt file, segments of PNG and JSON that
disagree, unknown category, size mismatch, too many instances) stops the
run with an error naming it; `--skip_invalid` leaves such images out and
lists them at the end. Shards appear under their final names only when all
of them are complete. Exit status: 0 on success, 1 on a conversion error.
"""
import argparse
import os
import sys

from deeplab2_kmax.data import converters
from deeplab2_kmax.data.converters import panoptic_format


def _parser():
  parser = argparse.ArgumentParser(
      prog='python -m deeplab2_kmax.data.build_tfrecords',
      description=__doc__.split('\n\n', maxsplit=1)[0],
      formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--format', required=True,
                      choices=sorted(converters.FORMATS),
                      help='annotation format of the input')
  parser.add_argument('--images_dir', help='folder of the images')
  parser.add_argument('--panoptic_json', help='COCO-panoptic-format JSON')
  parser.add_argument('--panoptic_dir',
                      help='folder of the segment-id PNGs (default: the '
                           'JSON path without .json)')
  parser.add_argument('--root',
                      help='data set root in the official layout; fills in '
                           'unset input paths (needs --split)')
  parser.add_argument('--split',
                      help='split of the official layout, e.g. val2017 '
                           '(COCO), val (Cityscapes), validation (ADE20K)')
  parser.add_argument('--output', required=True,
                      help='shard prefix, e.g. records/train')
  parser.add_argument('--num_shards', type=int, default=1)
  parser.add_argument('--dataset', default=None,
                      help='dataset table entry (default: the format name); '
                           '"custom" for classes from the JSON categories')
  parser.add_argument('--label_divisor', type=int, default=None,
                      help='label divisor of a custom dataset (default 1000)')
  parser.add_argument('--skip_invalid', action='store_true',
                      help='skip invalid images and list them at the end')
  parser.add_argument('--num_workers', type=int, default=1,
                      help='processes reading and encoding images')
  parser.add_argument('--overwrite', action='store_true',
                      help='replace existing shards of --output')
  parser.add_argument('--no_progress', action='store_true',
                      help='no progress bar')
  return parser


def _input_paths(args, parser):
  """(images_dir, panoptic_json, panoptic_dir) from flags and --root."""
  paths = {'images_dir': args.images_dir,
           'panoptic_json': args.panoptic_json,
           'panoptic_dir': args.panoptic_dir}
  if args.root is not None:
    if args.split is None:
      parser.error('--root needs --split')
    layout = converters.FORMATS[args.format].layout(args.root, args.split)
    paths = {key: value or layout[key] for key, value in paths.items()}
  if paths['panoptic_dir'] is None and paths['panoptic_json']:
    paths['panoptic_dir'] = os.path.splitext(paths['panoptic_json'])[0]
  for key in ('images_dir', 'panoptic_json'):
    if paths[key] is None:
      parser.error(f'--{key} (or --root and --split) is required')
  return paths['images_dir'], paths['panoptic_json'], paths['panoptic_dir']


def main(argv=None):
  """Runs the conversion; returns the exit status."""
  parser = _parser()
  args = parser.parse_args(argv)
  images_dir, panoptic_json, panoptic_dir = _input_paths(args, parser)
  if args.num_shards < 1 or args.num_workers < 1:
    parser.error('--num_shards and --num_workers must be >= 1')
  try:
    report = converters.convert(
        args.format, images_dir=images_dir, panoptic_json=panoptic_json,
        panoptic_dir=panoptic_dir, output=args.output,
        num_shards=args.num_shards, dataset=args.dataset,
        label_divisor=args.label_divisor, skip_invalid=args.skip_invalid,
        num_workers=args.num_workers, overwrite=args.overwrite,
        progress=not args.no_progress)
  except panoptic_format.InvalidImageError as e:
    print(f'build_tfrecords: error: {panoptic_json}: {e}\n(nothing was '
          'written; pass --skip_invalid to leave such images out)',
          file=sys.stderr)
    return 1
  except (ValueError, OSError) as e:
    print(f'build_tfrecords: error: {e}', file=sys.stderr)
    return 1
  print(report.summary())
  return 0


if __name__ == '__main__':
  sys.exit(main())
