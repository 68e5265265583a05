"""One table of dataset facts; no code path chooses behaviour from a name.

Ids used in this package:
- *semantic id*: the class id inside panoptic labels
  (`label = semantic_id * label_divisor + instance_id`) and the channel of the
  semantic head. The ignore label is a semantic id of its own (0 for COCO and
  ADE20K, 255 for Cityscapes); `num_semantic_channels` = largest class
  semantic id + 1.
- *class channel*: the channel of the class head. Things first, then stuff,
  each in semantic-id order; channel K (= num_classes) is void.
- *source id*: the category id of the official annotation files (COCO
  category id, Cityscapes label id, ADE20K panoptic category id). Converters
  map source ids to semantic ids.

Instance ids: thing segments get 1, 2, ... per class; stuff segments and
crowd regions of thing classes get instance id 0; void pixels are
`ignore_label * label_divisor`.

The class tables of the public data sets are JSON files in `categories/`
(one per data set, read once at import): `name`, `ignore_label`,
`label_divisor`, optionally `instance_metric` ('coco', the default, or
'cityscapes': which instance AP the evaluation reports), `notes` (where the
ids come from) and `categories`, a list
of COCO-panoptic categories (`id` = source id, `name`, `isthing`, `color`)
that also carry their `semantic_id`:
- coco_panoptic: 133 classes (80 things, then 53 stuff), semantic ids 1..133
  in COCO category-id order (ids 1..200 with gaps); void 0; divisor 256.
- cityscapes_panoptic: the 19 evaluated classes, semantic id = train id
  0..18, source id = Cityscapes label id; void 255; divisor 1000.
- ade20k_panoptic: the 150 objectInfo150 classes (100 things), semantic ids
  1..150 (the values of the ADEChallengeData2016 annotation PNGs); source
  ids 0..149 = semantic id - 1, as in the COCO-format panoptic JSON written
  by Mask2Former's prepare_ade20k_pan_seg.py; void 0; divisor 1000.
A user's data set ("custom") comes from a categories JSON through
`from_categories_json`.
"""
import dataclasses
import importlib.resources
import json
import pathlib

import numpy as np


@dataclasses.dataclass(frozen=True)
class ClassInfo:
  """One class of a data set."""
  semantic_id: int
  name: str
  is_thing: bool
  color: tuple  # (r, g, b), 0..255
  source_id: int


INSTANCE_METRICS = ('coco', 'cityscapes')


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
  """Facts about a panoptic data set."""
  name: str
  classes: tuple  # ClassInfo, sorted by semantic id
  ignore_label: int
  label_divisor: int
  # How instances are scored: 'coco' (COCO mask AP, pycocotools) or
  # 'cityscapes' (the Cityscapes benchmark's instance AP).
  instance_metric: str = 'coco'

  def __post_init__(self):
    if self.instance_metric not in INSTANCE_METRICS:
      raise ValueError(f'{self.name}: instance_metric '
                       f'{self.instance_metric!r}: expected one of '
                       f'{", ".join(INSTANCE_METRICS)}')
    ids = [c.semantic_id for c in self.classes]
    if len(set(ids)) != len(ids):
      raise ValueError(f'{self.name}: duplicate semantic ids')
    if self.ignore_label in ids:
      raise ValueError(f'{self.name}: ignore label {self.ignore_label} is '
                       'also a class')
    sources = [c.source_id for c in self.classes]
    if len(set(sources)) != len(sources):
      raise ValueError(f'{self.name}: duplicate source ids')

  # Counts --------------------------------------------------------------
  @property
  def num_classes(self):
    """Number of thing + stuff classes K (the class head predicts K + 1)."""
    return len(self.classes)

  @property
  def num_things(self):
    return sum(c.is_thing for c in self.classes)

  @property
  def num_stuff(self):
    return self.num_classes - self.num_things

  @property
  def num_semantic_channels(self):
    """Channels of the semantic head: semantic ids 0..max class id."""
    return max(c.semantic_id for c in self.classes) + 1

  # Id maps -------------------------------------------------------------
  @property
  def channel_classes(self):
    """ClassInfo in class-channel order: things, then stuff."""
    return (tuple(c for c in self.classes if c.is_thing) +
            tuple(c for c in self.classes if not c.is_thing))

  @property
  def thing_semantic_ids(self):
    return tuple(c.semantic_id for c in self.classes if c.is_thing)

  @property
  def stuff_semantic_ids(self):
    return tuple(c.semantic_id for c in self.classes if not c.is_thing)

  def semantic_to_channel(self):
    """int32 array [num_semantic_channels]: class channel, -1 for non-classes.

    The ignore label maps to -1 when it lies in range (COCO, ADE20K).
    """
    table = np.full([self.num_semantic_channels], -1, np.int32)
    for channel, c in enumerate(self.channel_classes):
      table[c.semantic_id] = channel
    return table

  def channel_to_semantic(self):
    """int32 array [num_classes]: semantic id of each class channel."""
    return np.array([c.semantic_id for c in self.channel_classes], np.int32)

  def is_thing_semantic(self):
    """bool array [num_semantic_channels]: whether a semantic id is a thing."""
    table = np.zeros([self.num_semantic_channels], bool)
    for c in self.classes:
      table[c.semantic_id] = c.is_thing
    return table

  def by_source_id(self):
    return {c.source_id: c for c in self.classes}

  def by_semantic_id(self):
    return {c.semantic_id: c for c in self.classes}

  @property
  def void_label(self):
    """The panoptic label of void pixels."""
    return self.ignore_label * self.label_divisor

  def categories_json(self):
    """COCO-panoptic `categories` entries (source ids as category ids)."""
    return [{'id': c.source_id, 'name': c.name, 'isthing': int(c.is_thing),
             'color': list(c.color), 'supercategory': c.name}
            for c in self.classes]


def _synthetic():
  # The built-in synthetic data set (deeplab2_kmax.data.synthetic): three
  # shape classes of things, three textured stuff classes.
  rows = [
      ('disk', True, (220, 20, 60)),
      ('triangle', True, (0, 130, 255)),
      ('square', True, (255, 200, 0)),
      ('stripes', False, (107, 142, 35)),
      ('checker', False, (152, 60, 200)),
      ('noise', False, (70, 70, 70)),
  ]
  return DatasetInfo(
      name='synthetic_panoptic',
      classes=tuple(ClassInfo(i + 1, name, thing, color, i + 1)
                    for i, (name, thing, color) in enumerate(rows)),
      ignore_label=0, label_divisor=256)


# Reading categories JSON ---------------------------------------------------
def _is_int(value):
  return isinstance(value, int) and not isinstance(value, bool)


def _read_json(path):
  try:
    return json.loads(path.read_text(encoding='utf-8'))
  except (OSError, ValueError) as e:
    raise ValueError(f'{path}: cannot read categories JSON: {e}') from None


def _category_list(path, data):
  """The checked categories of `data`: a list, or {"categories": [...]}."""
  categories = data.get('categories') if isinstance(data, dict) else data
  if not isinstance(categories, list) or not categories:
    found = (f'an object with keys {sorted(data)}' if isinstance(data, dict)
             else type(data).__name__)
    raise ValueError(f'{path}: expected a non-empty list of categories, or '
                     f'an object with a "categories" list; found {found}')
  for index, category in enumerate(categories):
    if not isinstance(category, dict):
      raise ValueError(f'{path}: categories[{index}] is {category!r}; '
                       'expected an object with "id" and "name"')
    missing = [key for key in ('id', 'name') if key not in category]
    if missing:
      raise ValueError(f'{path}: categories[{index}] lacks {missing}; found '
                       f'keys {sorted(category)}')
    if not _is_int(category['id']) or category['id'] < 0:
      raise ValueError(f'{path}: categories[{index}]: "id" must be a '
                       f'non-negative integer; found {category["id"]!r}')
  return categories


def _class_info(path, index, category, semantic_id):
  """ClassInfo of `categories[index]` (checked by _category_list)."""
  where = f'{path}: categories[{index}] (id {category["id"]})'
  name = category['name']
  if not isinstance(name, str) or not name.strip():
    raise ValueError(f'{where}: "name" must be a non-empty string; found '
                     f'{name!r}')
  is_thing = category.get('isthing', 0)
  if not isinstance(is_thing, (bool, int)) or is_thing not in (0, 1):
    raise ValueError(f'{where}: "isthing" must be 0 or 1; found {is_thing!r}')
  color = category.get('color')
  if color is None:
    color = _palette(semantic_id)
  elif (not isinstance(color, (list, tuple)) or len(color) != 3 or
        not all(_is_int(v) and 0 <= v <= 255 for v in color)):
    raise ValueError(f'{where}: "color" must be [r, g, b] with values in '
                     f'0..255; found {color!r}')
  return ClassInfo(semantic_id=semantic_id, name=name.strip(),
                   is_thing=bool(is_thing),
                   color=tuple(int(v) for v in color),
                   source_id=category['id'])


def _dataset_info(path, **fields):
  try:
    return DatasetInfo(**fields)
  except ValueError as e:
    raise ValueError(f'{path}: {e}') from None


def _load_table(path):
  """DatasetInfo of one file of categories/ (format: module docstring)."""
  data = _read_json(path)
  missing = [key for key in ('name', 'ignore_label', 'label_divisor')
             if not isinstance(data, dict) or key not in data]
  if missing:
    raise ValueError(f'{path}: dataset table lacks {missing}')
  for key in ('ignore_label', 'label_divisor'):
    if not _is_int(data[key]) or data[key] < 0:
      raise ValueError(f'{path}: "{key}" must be a non-negative integer; '
                       f'found {data[key]!r}')
  classes = []
  for index, category in enumerate(_category_list(path, data)):
    semantic_id = category.get('semantic_id')
    if not _is_int(semantic_id) or semantic_id < 0:
      raise ValueError(f'{path}: categories[{index}]: "semantic_id" must be '
                       f'a non-negative integer; found {semantic_id!r}')
    classes.append(_class_info(path, index, category, semantic_id))
  return _dataset_info(
      path, name=data['name'],
      classes=tuple(sorted(classes, key=lambda c: c.semantic_id)),
      ignore_label=data['ignore_label'], label_divisor=data['label_divisor'],
      instance_metric=data.get('instance_metric', 'coco'))


def _load_tables():
  folder = importlib.resources.files(__package__) / 'categories'
  paths = sorted((p for p in folder.iterdir() if p.name.endswith('.json')),
                 key=lambda p: p.name)
  return [_load_table(path) for path in paths]


DATASETS = {info.name: info for info in [*_load_tables(), _synthetic()]}


def get_dataset_info(name):
  """Returns the DatasetInfo of `name`; a clear error lists the known ones."""
  try:
    return DATASETS[name]
  except KeyError:
    raise ValueError(
        f'unknown dataset {name!r}; expected one of {sorted(DATASETS)}'
    ) from None


def from_categories_json(path, name='custom', label_divisor=1000):
  """DatasetInfo of a user's data set from a COCO-panoptic categories list.

  `path` holds either a list of categories or an object with a `categories`
  list (a COCO panoptic annotation file). Each category needs `id` (a
  non-negative integer, unique) and `name`; `isthing` defaults to 0 and
  `color` to a fixed palette entry of the semantic id. Semantic ids are
  1..K in the order of the category ids; 0 is ignore. Errors name the file
  and the category.
  """
  path = pathlib.Path(path)
  categories = _category_list(path, _read_json(path))
  first = {}  # category id -> index of its first category
  for index, category in enumerate(categories):
    source_id = category['id']
    if source_id in first:
      raise ValueError(f'{path}: categories[{index}] repeats id {source_id} '
                       f'of categories[{first[source_id]}]; category ids '
                       'must be unique')
    first[source_id] = index
  order = sorted(range(len(categories)), key=lambda i: categories[i]['id'])
  classes = tuple(_class_info(path, index, categories[index], semantic_id)
                  for semantic_id, index in enumerate(order, start=1))
  return _dataset_info(path, name=name, classes=classes, ignore_label=0,
                       label_divisor=label_divisor)


def _palette(semantic_id):
  """A fixed pseudo-random color for classes without one."""
  rng = np.random.default_rng(semantic_id)
  return tuple(int(v) for v in rng.integers(0, 256, 3))
