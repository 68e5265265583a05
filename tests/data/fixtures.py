"""Tiny panoptic data sets written in the official on-disk formats.

Each `write_*` builder lays out images, segment-id PNGs and the annotation
JSON exactly as the official tools do (panopticapi for COCO,
cityscapesScripts' createPanopticImgs for Cityscapes, Mask2Former's
preparation script for ADE20K) under a folder, and returns a
`PanopticFixture` with the paths and the drawn images, so that tests can
state expected labels pixel by pixel and corrupt files on purpose.

Images are drawn from character maps: one character per pixel, a legend
maps characters to segments `(segment id, category id, iscrowd)` and `.`
is unlabeled (segment id 0). `segments_info` lists segments in legend
order, which fixes the instance numbering.
"""
import dataclasses
import json
import os
import pathlib

import numpy as np
from PIL import Image
import tensorflow as tf

from deeplab2_kmax.data import record


@dataclasses.dataclass(frozen=True)
class Segment:
  id: int
  category_id: int
  iscrowd: int = 0


@dataclasses.dataclass(frozen=True)
class FixtureImage:
  """One image: where it goes and what it shows."""
  image_id: object
  path: str  # image path relative to the images folder
  png_name: str  # annotations[].file_name
  rows: tuple  # character map, one string per pixel row
  legend: dict  # character -> Segment, in segments_info order
  mode: str = 'RGB'  # 'RGB' or 'L' (grayscale) image content

  @property
  def chars(self):
    return np.array([list(row) for row in self.rows])  # [H, W] str

  @property
  def segment_ids(self):
    ids = np.zeros(self.chars.shape, np.int64)  # [H, W]
    for char, segment in self.legend.items():
      ids[self.chars == char] = segment.id
    return ids

  def label(self, values):
    """int32 [H, W] with `values[char]` at each pixel ('.' included)."""
    return np.vectorize(values.__getitem__, otypes=[np.int32])(self.chars)


@dataclasses.dataclass(frozen=True)
class PanopticFixture:
  root: pathlib.Path
  images_dir: pathlib.Path
  panoptic_json: pathlib.Path
  panoptic_dir: pathlib.Path
  images: tuple  # FixtureImage

  def paths(self):
    """Keyword arguments of converters.convert for the input paths."""
    return {'images_dir': str(self.images_dir),
            'panoptic_json': str(self.panoptic_json),
            'panoptic_dir': str(self.panoptic_dir)}

  def image_path(self, index):
    return self.images_dir / self.images[index].path

  def label_path(self, index):
    return self.panoptic_dir / self.images[index].png_name

  def load_json(self):
    return json.loads(self.panoptic_json.read_text())

  def save_json(self, data):
    self.panoptic_json.write_text(json.dumps(data))


def _bbox(mask):
  ys, xs = np.nonzero(mask)
  return [int(xs.min()), int(ys.min()), int(xs.max() - xs.min() + 1),
          int(ys.max() - ys.min() + 1)]


def write_panoptic(images_dir, panoptic_json, panoptic_dir, images,
                   categories):
  """Writes images, PNGs and JSON of `images` (FixtureImage list)."""
  images_dir, panoptic_dir = pathlib.Path(images_dir), pathlib.Path(
      panoptic_dir)
  panoptic_dir.mkdir(parents=True, exist_ok=True)
  data = {'images': [], 'annotations': [], 'categories': categories}
  for index, image in enumerate(images):
    ids = image.segment_ids
    height, width = ids.shape
    rng = np.random.default_rng(index)
    pixels = rng.integers(0, 256, [height, width, 3], dtype=np.uint8)
    path = images_dir / image.path
    path.parent.mkdir(parents=True, exist_ok=True)
    fmt = 'JPEG' if path.suffix == '.jpg' else 'PNG'
    Image.fromarray(pixels).convert(image.mode).save(path, format=fmt)
    rgb = np.stack([ids % 256, ids // 256 % 256, ids // 65536],
                   axis=-1).astype(np.uint8)  # [H, W, 3]
    Image.fromarray(rgb, 'RGB').save(panoptic_dir / image.png_name)
    data['images'].append({'id': image.image_id,
                           'file_name': os.path.basename(image.path),
                           'height': height, 'width': width})
    data['annotations'].append({
        'image_id': image.image_id, 'file_name': image.png_name,
        'segments_info': [
            {'id': s.id, 'category_id': s.category_id, 'iscrowd': s.iscrowd,
             'area': int((ids == s.id).sum()), 'bbox': _bbox(ids == s.id)}
            for s in image.legend.values()]})
  pathlib.Path(panoptic_json).write_text(json.dumps(data))


# COCO panoptic ---------------------------------------------------------------

COCO_CATEGORIES = [  # A subset of the official list, official fields.
    {'supercategory': 'person', 'color': [220, 20, 60], 'isthing': 1,
     'id': 1, 'name': 'person'},
    {'supercategory': 'vehicle', 'color': [0, 0, 142], 'isthing': 1,
     'id': 3, 'name': 'car'},
    {'supercategory': 'animal', 'color': [0, 226, 252], 'isthing': 1,
     'id': 18, 'name': 'dog'},
    {'supercategory': 'ground', 'color': [128, 64, 128], 'isthing': 0,
     'id': 149, 'name': 'road'},
    {'supercategory': 'sky', 'color': [70, 130, 180], 'isthing': 0,
     'id': 187, 'name': 'sky-other-merged'},
]

COCO_IMAGES = (
    # Sky, two persons, a crowd of cars, road and unlabeled pixels.
    FixtureImage(
        image_id=139, path='000000000139.jpg', png_name='000000000139.png',
        rows=('SSSSSSSS',
              'SSppSSqq',
              'SSppSSqq',
              'RRppRRcc',
              'RRRR..cc',
              'RRRR..cc'),
        legend={'S': Segment(0x46_82_B4, 187), 'p': Segment(3937500, 1),
                'q': Segment(4260062, 1), 'c': Segment(0x10_20_30, 3, 1),
                'R': Segment(8421504, 149)}),
    # Two dogs listed right-to-left, so segment order != raster order; a
    # PNG image.
    FixtureImage(
        image_id=285, path='000000000285.png', png_name='000000000285.png',
        rows=('ddddR',
              'ddddR',
              'DD..R',
              'DDRRR'),
        legend={'D': Segment(0x01_00_00, 18), 'd': Segment(0x00_01_00, 18),
                'R': Segment(0x00_00_01, 149)}),
    # Grayscale JPEG, mostly unlabeled.
    FixtureImage(
        image_id=632, path='000000000632.jpg', png_name='000000000632.png',
        rows=('.....',
              '.cc..',
              '.cc..',
              '...pp',
              '...pp'),
        legend={'c': Segment(777, 3), 'p': Segment(778, 1)}, mode='L'),
)


def write_coco_panoptic(root, split='val2017', images=COCO_IMAGES,
                        categories=None):
  """ROOT/{split}/, ROOT/annotations/panoptic_{split}{.json,/}."""
  root = pathlib.Path(root)
  fixture = PanopticFixture(
      root=root, images_dir=root / split,
      panoptic_json=root / 'annotations' / f'panoptic_{split}.json',
      panoptic_dir=root / 'annotations' / f'panoptic_{split}',
      images=tuple(images))
  write_panoptic(fixture.images_dir, fixture.panoptic_json,
                 fixture.panoptic_dir, fixture.images,
                 COCO_CATEGORIES if categories is None else categories)
  return fixture


# Cityscapes panoptic ---------------------------------------------------------

# (label id, name, category, has instances, color) of the 19 classes that
# createPanopticImgs keeps (ignoreInEval False), in labels.py order.
_CITYSCAPES_LABELS = (
    (7, 'road', 'flat', 0, (128, 64, 128)),
    (8, 'sidewalk', 'flat', 0, (244, 35, 232)),
    (11, 'building', 'construction', 0, (70, 70, 70)),
    (12, 'wall', 'construction', 0, (102, 102, 156)),
    (13, 'fence', 'construction', 0, (190, 153, 153)),
    (17, 'pole', 'object', 0, (153, 153, 153)),
    (19, 'traffic light', 'object', 0, (250, 170, 30)),
    (20, 'traffic sign', 'object', 0, (220, 220, 0)),
    (21, 'vegetation', 'nature', 0, (107, 142, 35)),
    (22, 'terrain', 'nature', 0, (152, 251, 152)),
    (23, 'sky', 'sky', 0, (70, 130, 180)),
    (24, 'person', 'human', 1, (220, 20, 60)),
    (25, 'rider', 'human', 1, (255, 0, 0)),
    (26, 'car', 'vehicle', 1, (0, 0, 142)),
    (27, 'truck', 'vehicle', 1, (0, 0, 70)),
    (28, 'bus', 'vehicle', 1, (0, 60, 100)),
    (31, 'train', 'vehicle', 1, (0, 80, 100)),
    (32, 'motorcycle', 'vehicle', 1, (0, 0, 230)),
    (33, 'bicycle', 'vehicle', 1, (119, 11, 32)),
)
CITYSCAPES_CATEGORIES = [
    {'id': label_id, 'name': name, 'color': list(color),
     'supercategory': category, 'isthing': thing}
    for label_id, name, category, thing, color in _CITYSCAPES_LABELS]
# The same classes with train ids (createPanopticImgs --use-train-id).
CITYSCAPES_TRAIN_ID_CATEGORIES = [
    dict(c, id=train_id) for train_id, c in enumerate(CITYSCAPES_CATEGORIES)]


def _cityscapes_image(city, sequence, frame, rows, legend):
  stem = f'{city}_{sequence:06d}_{frame:06d}'
  return FixtureImage(
      image_id=stem, path=f'{city}/{stem}_leftImg8bit.png',
      png_name=f'{stem}_gtFine_panoptic.png', rows=rows, legend=legend)


CITYSCAPES_IMAGES = (
    # Segment ids: label_id * 1000 + k for instances (k from 0), the label
    # id for stuff and for crowd regions.
    _cityscapes_image(
        'frankfurt', 0, 294,
        rows=('SSSSSS',
              'PPSScc',
              'PPxxcc',
              'rrrr..'),
        legend={'S': Segment(23, 23), 'P': Segment(24000, 24),
                'x': Segment(24001, 24), 'c': Segment(26, 26, 1),
                'r': Segment(7, 7)}),
    _cityscapes_image(
        'lindau', 1, 19,
        rows=('bbbb',
              'bCCb',
              'bCCb'),
        legend={'b': Segment(11, 11), 'C': Segment(26000, 26)}),
)


def write_cityscapes_panoptic(root, split='val', images=CITYSCAPES_IMAGES,
                              categories=None):
  """ROOT/leftImg8bit/{split}/{city}/, ROOT/gtFine/cityscapes_panoptic_*."""
  root = pathlib.Path(root)
  fixture = PanopticFixture(
      root=root, images_dir=root / 'leftImg8bit' / split,
      panoptic_json=root / 'gtFine' / f'cityscapes_panoptic_{split}.json',
      panoptic_dir=root / 'gtFine' / f'cityscapes_panoptic_{split}',
      images=tuple(images))
  write_panoptic(fixture.images_dir, fixture.panoptic_json,
                 fixture.panoptic_dir, fixture.images,
                 CITYSCAPES_CATEGORIES if categories is None else categories)
  # createPanopticImgs names the images after their label files:
  # {city}_{seq}_{frame}_gtFine_leftImg8bit.png.
  data = json.loads(fixture.panoptic_json.read_text())
  for entry in data['images']:
    entry['file_name'] = f'{entry["id"]}_gtFine_leftImg8bit.png'
  fixture.panoptic_json.write_text(json.dumps(data))
  return fixture


# ADE20K panoptic -------------------------------------------------------------

ADE20K_CATEGORIES = [  # A subset of the script's 150 (ids 0..149).
    {'name': 'wall', 'id': 0, 'isthing': 0, 'color': [120, 120, 120]},
    {'name': 'sky', 'id': 2, 'isthing': 0, 'color': [6, 230, 230]},
    {'name': 'road, route', 'id': 6, 'isthing': 0, 'color': [140, 140, 140]},
    {'name': 'person', 'id': 12, 'isthing': 1, 'color': [150, 5, 61]},
    {'name': 'car', 'id': 20, 'isthing': 1, 'color': [0, 102, 200]},
]

ADE20K_IMAGES = (
    # Segment ids are colors near the category color (panopticapi's
    # IdGenerator).
    FixtureImage(
        image_id='ADE_val_00000001', path='ADE_val_00000001.jpg',
        png_name='ADE_val_00000001.png',
        rows=('ssssss',
              'wwppss',
              'wwppcc',
              'rrrrcc',
              'rr..cc'),
        legend={'w': Segment(120 + 120 * 256 + 120 * 65536, 0),
                's': Segment(6 + 230 * 256 + 230 * 65536, 2),
                'r': Segment(140 + 140 * 256 + 140 * 65536, 6),
                'p': Segment(150 + 5 * 256 + 61 * 65536, 12),
                'c': Segment(0 + 102 * 256 + 200 * 65536, 20)}),
    FixtureImage(
        image_id='ADE_val_00000002', path='ADE_val_00000002.jpg',
        png_name='ADE_val_00000002.png',
        rows=('pppw',
              'qqqw'),
        legend={'w': Segment(7, 0), 'p': Segment(8, 12),
                'q': Segment(9, 12)}),
)


def write_ade20k_panoptic(root, split='validation', images=ADE20K_IMAGES,
                          categories=None):
  """ROOT/images/{split}/, ROOT/ade20k_panoptic_{train,val}{.json,/}."""
  root = pathlib.Path(root)
  short = {'training': 'train', 'validation': 'val'}[split]
  fixture = PanopticFixture(
      root=root, images_dir=root / 'images' / split,
      panoptic_json=root / f'ade20k_panoptic_{short}.json',
      panoptic_dir=root / f'ade20k_panoptic_{short}', images=tuple(images))
  write_panoptic(fixture.images_dir, fixture.panoptic_json,
                 fixture.panoptic_dir, fixture.images,
                 ADE20K_CATEGORIES if categories is None else categories)
  return fixture


def read_shards(paths):
  """Records of TFRecord files, parsed eagerly by record.parse_example.

  Returns a list of dicts of NumPy values (bytes for the string fields).
  """
  examples = []
  for path in paths:
    for serialized in tf.data.TFRecordDataset(str(path)):
      parsed = record.parse_example(serialized)
      examples.append({key: value.numpy() for key, value in parsed.items()})
  return examples
