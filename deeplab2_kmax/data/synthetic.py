"""The built-in synthetic panoptic data set, written in COCO panoptic format.

Writes images drawn by `synthetic_render` (shapes as things, textures as
stuff; see there) laid out like COCO panoptic, so that they go through the
same converter as real data:

  D/images/{train,val}/*.jpg                 JPEG, quality 90, 4:4:4
  D/annotations/panoptic_{train,val}/*.png   segment id = R + 256 G + 65536 B
  D/annotations/panoptic_{train,val}.json    images, annotations, categories

Train image ids are 1, 2, ...; validation ids start at 1,000,001. Image
`index` of a split is drawn from its own generator seeded by
(seed, split, index): the same seed gives byte-identical PNGs and JSON, and
the validation images do not depend on the number of training images.

Every file is written to a temporary name and renamed; the JSON files are
written last, so an interrupted run leaves no complete-looking data set.
A non-empty output folder is refused unless `overwrite` is set, which first
deletes the JSON files, then the four image and PNG folders.

  python -m deeplab2_kmax.data.synthetic --output_dir=D --num_train=500 \
      --num_val=100 --seed=0
"""
import argparse
import io
import json
import pathlib
import shutil
import sys

import numpy as np
from PIL import Image

from deeplab2_kmax import io_utils
from deeplab2_kmax.data import dataset_info
from deeplab2_kmax.data import synthetic_render

SPLITS = ('train', 'val')
JPEG_QUALITY = 90
_FIRST_ID = {'train': 1, 'val': 1_000_001}
_MAX_IMAGES_PER_SPLIT = 1_000_000
_SPLIT_CODE = {'train': 1, 'val': 2}


def sample_rng(seed, split, index):
  """The generator of image `index` of `split`: independent of split sizes."""
  return np.random.default_rng([int(seed), _SPLIT_CODE[split], int(index)])


def _encode(array, image_format, **kwargs):
  """Encodes a uint8 array with PIL; returns the file's bytes."""
  buffer = io.BytesIO()
  Image.fromarray(array).save(buffer, format=image_format, **kwargs)
  return buffer.getvalue()


def _prepare(output_dir, overwrite):
  """Checks that `output_dir` is empty, or clears this generator's files."""
  output_dir.mkdir(parents=True, exist_ok=True)
  entries = sorted(p.name for p in output_dir.iterdir())
  if entries and not overwrite:
    raise FileExistsError(
        f'{output_dir}: expected an empty output folder, found {entries[:5]}'
        f'{" ..." if len(entries) > 5 else ""}; pass --overwrite '
        '(overwrite=True) to replace a data set written there before')
  for split in SPLITS:  # the JSON first: a partial rewrite looks incomplete
    (output_dir / 'annotations' / f'panoptic_{split}.json').unlink(
        missing_ok=True)
  for split in SPLITS:
    for folder in (output_dir / 'images' / split,
                   output_dir / 'annotations' / f'panoptic_{split}'):
      shutil.rmtree(folder, ignore_errors=True)
      folder.mkdir(parents=True)


def _write_split(output_dir, split, count, seed, options, info):
  """Writes the JPEGs and PNGs of one split; returns its JSON object."""
  dataset = info.name
  images, annotations = [], []
  for index in range(count):
    image_id = _FIRST_ID[split] + index
    name = f'{image_id:012d}'
    rng = sample_rng(seed, split, index)
    sample = synthetic_render.render(rng, options, info)
    io_utils.write_bytes(
        output_dir / 'images' / split / f'{name}.jpg',
        _encode(sample.image, 'JPEG', quality=JPEG_QUALITY, subsampling=0))
    rgb = np.stack([(sample.segment_ids >> shift) & 255
                    for shift in (0, 8, 16)], axis=-1).astype(np.uint8)
    io_utils.write_bytes(
        output_dir / 'annotations' / f'panoptic_{split}' / f'{name}.png',
        _encode(rgb, 'PNG'))
    images.append({'id': image_id, 'file_name': f'{name}.jpg',
                   'width': options.width, 'height': options.height})
    annotations.append({'image_id': image_id, 'file_name': f'{name}.png',
                        'segments_info': sample.segments_info})
  return {
      'info': {'description': f'deeplab2_kmax {dataset} ({split})',
               'seed': int(seed), 'version': '1'},
      'licenses': [],
      'images': images,
      'annotations': annotations,
      'categories': info.categories_json(),
  }


def generate(output_dir, num_train, num_val, seed, options=None,
             overwrite=False, info=None):
  """Writes the data set to `output_dir`; returns {split: JSON path}.

  `info`: a DatasetInfo of other classes to draw (e.g.
  dataset_info.from_categories_json of a user's categories), each named
  after a shape (things) or a texture (stuff) of synthetic_render; its
  categories go into the JSON, so the data set converts with
  build_tfrecords --dataset=custom. Default: the built-in classes.
  """
  options = options or synthetic_render.SyntheticOptions()
  info = info or dataset_info.get_dataset_info(synthetic_render.DATASET)
  output_dir = pathlib.Path(output_dir)
  counts = {'train': num_train, 'val': num_val}
  for split, count in counts.items():
    if not 0 <= count <= _MAX_IMAGES_PER_SPLIT:
      raise ValueError(f'num_{split}: expected 0..{_MAX_IMAGES_PER_SPLIT} '
                       f'images, got {count}')
  synthetic_render.check_classes(info)  # fail before touching any file
  _prepare(output_dir, overwrite)
  documents = {split: _write_split(output_dir, split, count, seed, options,
                                   info)
               for split, count in counts.items()}
  paths = {}
  for split, document in documents.items():
    paths[split] = output_dir / 'annotations' / f'panoptic_{split}.json'
    io_utils.write_bytes(paths[split], json.dumps(document).encode('utf-8'))
  return paths


def write_tfrecords(data_dir, *, num_train, num_val, seed, train_shards=4,
                    info=None):
  """The data set as TFRecords, as the synthetic configs read them.

  Generates the COCO panoptic files in `data_dir`/raw unless they are there
  (same seed, same files), then converts them to
  `data_dir`/{train,val}-*.tfrecord (what ${SYNTHETIC_DATA} names). With
  `info` (other classes, see generate) the conversion is a custom data
  set's: classes from the JSON's categories, label divisor 1000.
  """
  # Imported here: the converters import this package's dataset tables.
  from deeplab2_kmax.data import converters  # pylint: disable=import-outside-toplevel
  data_dir = pathlib.Path(data_dir)
  raw = data_dir / 'raw'
  if not all((raw / 'annotations' / f'panoptic_{split}.json').exists()
             for split in SPLITS):
    generate(raw, num_train=num_train, num_val=num_val, seed=seed,
             overwrite=True, info=info)
  for split, shards in (('train', train_shards), ('val', 1)):
    converters.convert(
        'coco_panoptic', images_dir=raw / 'images' / split,
        panoptic_json=raw / 'annotations' / f'panoptic_{split}.json',
        panoptic_dir=raw / 'annotations' / f'panoptic_{split}',
        output=data_dir / split, num_shards=shards,
        dataset='synthetic_panoptic' if info is None else 'custom',
        overwrite=True, progress=False)
  return raw


def main(argv=None):
  """Command line entry point; returns the exit status."""
  parser = argparse.ArgumentParser(
      prog='python -m deeplab2_kmax.data.synthetic',
      description='Writes the synthetic panoptic data set (COCO format).')
  parser.add_argument('--output_dir', required=True)
  parser.add_argument('--num_train', type=int, default=500)
  parser.add_argument('--num_val', type=int, default=100)
  parser.add_argument('--seed', type=int, default=0)
  defaults = synthetic_render.SyntheticOptions()
  parser.add_argument('--height', type=int, default=defaults.height)
  parser.add_argument('--width', type=int, default=defaults.width)
  parser.add_argument('--overwrite', action='store_true',
                      help='replace a data set already in --output_dir')
  parser.add_argument('--categories_json', default=None,
                      help='COCO panoptic categories to draw instead of the '
                           'built-in ones, each named after a shape (things: '
                           f'{", ".join(synthetic_render.SHAPE_NAMES)}) or a '
                           'texture (stuff: '
                           f'{", ".join(synthetic_render.TEXTURE_NAMES)})')
  args = parser.parse_args(argv)
  try:
    info = None
    if args.categories_json:
      info = dataset_info.from_categories_json(args.categories_json)
    paths = generate(args.output_dir, args.num_train, args.num_val, args.seed,
                     synthetic_render.SyntheticOptions(
                         height=args.height, width=args.width),
                     overwrite=args.overwrite, info=info)
  except (ValueError, FileExistsError) as e:
    print(f'error: {e}', file=sys.stderr)
    return 1
  print(f'wrote {args.num_train} train and {args.num_val} val images; '
        f'annotations: {", ".join(str(p) for p in paths.values())}')
  return 0


if __name__ == '__main__':
  sys.exit(main())
