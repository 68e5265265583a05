r"""Fetches a published checkpoint by name into the local cache.

  python -m deeplab2_kmax.tools.fetch --name=kmax_convnext_large_coco_train
  python -m deeplab2_kmax.tools.fetch --list

Downloads NAME.tar.gz with a progress bar (resuming a broken download),
checks and unpacks it, converts a kMaX model to deeplab2_kmax's format once
and prints the local checkpoint prefix. `zoo:NAME` in a config's
initial_checkpoint or pretrained_weights, or in --checkpoint of export and
predict, does the same. See deeplab2_kmax/zoo.py for the cache and the
mirror variable.
"""
import argparse
import sys

from deeplab2_kmax import zoo
from deeplab2_kmax.checkpoints import deeplab2_import
from deeplab2_kmax import zoo_registry


def parse_args(argv):
  parser = argparse.ArgumentParser(
      prog='python -m deeplab2_kmax.tools.fetch',
      description='Fetches a DeepLab2 kMaX-DeepLab or ImageNet checkpoint '
                  'by name.')
  group = parser.add_mutually_exclusive_group(required=True)
  group.add_argument('--name', help='archive name without .tar.gz')
  group.add_argument('--list', action='store_true',
                     help='list the names, their configs and metrics')
  parser.add_argument('--no_progress', action='store_true',
                      help='no progress bar')
  return parser.parse_args(argv)


def _listing():
  lines = []
  for item in zoo_registry.ENTRIES:
    if item.kind == zoo_registry.KMAX:
      metrics = ', '.join(f'{k} {v}' for k, v in item.metrics)
      lines.append(f'{item.name}  {item.config}  ({metrics})')
    else:
      lines.append(f'{item.name}  ImageNet {item.backbone} backbone')
  return '\n'.join(lines)


def main(argv=None):
  args = parse_args(argv)
  if args.list:
    print(_listing())
    return 0
  try:
    path = zoo.fetch(args.name, progress=not args.no_progress)
  except (zoo.ZooError, deeplab2_import.CheckpointMismatchError) as e:
    # (The second: a converted checkpoint that does not fit its config.)
    print(f'error: {e}', file=sys.stderr)
    return 1
  print(path)
  return 0


if __name__ == '__main__':
  sys.exit(main())
