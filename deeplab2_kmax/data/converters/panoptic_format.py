"""Reads COCO-panoptic-format annotations into panoptic labels.

COCO panoptic, Cityscapes panoptic (cityscapesScripts' createPanopticImgs)
and ADE20K panoptic (the Mask2Former preparation script) share one format:

- a JSON file with `images[]` (id, file_name, height, width),
  `annotations[]` (image_id, file_name of the PNG, `segments_info[]` with
  id, category_id, iscrowd, area, bbox) and `categories[]` (id, name,
  isthing, color);
- one RGB PNG per image whose pixels hold segment ids,
  id = R + 256 G + 256^2 B; id 0 is unlabeled (void).

Each segment becomes `label = semantic_id * label_divisor + instance_id`,
the semantic id taken from the segment's category (a *source id*) through
the dataset table. Thing segments get instance ids 1, 2, ... per class in
the order of `segments_info`; stuff segments and crowd segments of thing
classes get instance id 0; pixels with segment id 0 become the void label.

Reading uses PIL and NumPy, not TF ops, so that every problem is reported
as an `InvalidImageError` naming the image (file name and id) and, where
one is at fault, the segment id.
"""
import dataclasses
import io
import json
import os

import numpy as np
from PIL import Image

from deeplab2_kmax.data import record

_MAGIC = ((b'\xff\xd8\xff', 'jpeg'), (b'\x89PNG\r\n\x1a\n', 'png'))


class InvalidImageError(ValueError):
  """One image (or its annotation) cannot be converted."""

  def __init__(self, file_name, image_id, reason, segment_id=None):
    self.file_name = file_name
    self.image_id = image_id
    self.segment_id = segment_id
    self.reason = reason
    where = f'image {file_name!r} (id {image_id!r})'
    if segment_id is not None:
      where += f', segment {segment_id}'
    super().__init__(f'{where}: {reason}')

  def __reduce__(self):  # Crosses process boundaries (worker pool).
    return (InvalidImageError,
            (self.file_name, self.image_id, self.reason, self.segment_id))


@dataclasses.dataclass(frozen=True)
class PanopticFormat:
  """How one official layout differs from plain COCO panoptic."""
  name: str
  # Dataset-table entry used when the caller names none.
  default_dataset: str
  # images[] entry -> image path relative to the images folder.
  image_file_name: object
  # Whether a JSON segment with no pixel in the PNG is accepted (with a
  # warning) instead of making the image invalid.
  allow_absent_segments: bool = False
  # Whether JSON categories that do not match the default table entry fall
  # back to a dataset made from the JSON's own categories.
  custom_fallback: bool = False
  # (root, split) -> dict of images_dir, panoptic_json, panoptic_dir of the
  # official layout.
  layout: object = None


@dataclasses.dataclass(frozen=True)
class LabelSpec:
  """What turning segments into labels needs, free of the dataset table."""
  dataset: str
  # source id -> (semantic id, is thing).
  categories: dict
  label_divisor: int
  void_label: int
  allow_absent_segments: bool = False

  @classmethod
  def from_dataset_info(cls, info, allow_absent_segments=False):
    return cls(
        dataset=info.name,
        categories={c.source_id: (c.semantic_id, c.is_thing)
                    for c in info.classes},
        label_divisor=info.label_divisor, void_label=info.void_label,
        allow_absent_segments=allow_absent_segments)


@dataclasses.dataclass(frozen=True)
class ImageTask:
  """One image to convert: where its files are and its JSON segments."""
  image_id: object  # int (COCO) or str (Cityscapes, ADE20K), as in the JSON
  file_name: str  # image path relative to the images folder
  image_path: str
  label_path: str
  height: object  # int from the JSON, or None
  width: object
  segments: tuple  # segments_info entries (dicts)


def load_json(path):
  """The annotation JSON, checked for the three top-level lists."""
  try:
    with open(path, encoding='utf-8') as f:
      data = json.load(f)
  except (OSError, ValueError) as e:
    raise ValueError(f'{path}: cannot read the panoptic JSON: {e}') from None
  if not isinstance(data, dict):
    raise ValueError(f'{path}: expected a JSON object with images, '
                     f'annotations and categories; found {type(data).__name__}')
  for key in ('images', 'annotations', 'categories'):
    if not isinstance(data.get(key), list):
      raise ValueError(f'{path}: field "{key}" must be a list; found '
                       f'{type(data.get(key)).__name__}')
  return data


def make_tasks(data, images_dir, panoptic_dir, source_format):
  """ImageTask per `images[]` entry, in JSON order.

  Entries that cannot be paired (no annotation, duplicate id, missing
  fields) and annotations without an image come back as InvalidImageError
  instances in the list, so that callers can report or skip them.
  """
  annotations = {}
  for index, annotation in enumerate(data['annotations']):
    if not isinstance(annotation, dict) or 'image_id' not in annotation:
      annotations[('#', index)] = InvalidImageError(
          '?', f'annotations[{index}]', 'annotation has no "image_id"')
    elif annotation['image_id'] in annotations:
      annotations[('#', index)] = InvalidImageError(
          str(annotation.get('file_name', '?')), annotation['image_id'],
          'a second annotation for this image id')
    else:
      annotations[annotation['image_id']] = annotation
  tasks, seen = [], set()
  for index, image in enumerate(data['images']):
    if not isinstance(image, dict) or 'id' not in image or (
        'file_name' not in image):
      tasks.append(InvalidImageError('?', f'images[{index}]',
                                     'image entry needs "id" and "file_name"'))
      continue
    image_id = image['id']
    try:
      file_name = source_format.image_file_name(image)
    except ValueError as e:
      tasks.append(InvalidImageError(image['file_name'], image_id, str(e)))
      continue
    if image_id in seen:
      tasks.append(InvalidImageError(file_name, image_id,
                                     'a second images[] entry with this id'))
      continue
    seen.add(image_id)
    annotation = annotations.pop(image_id, None)
    if annotation is None:
      tasks.append(InvalidImageError(file_name, image_id,
                                     'no entry in "annotations"'))
      continue
    segments = annotation.get('segments_info')
    if not isinstance(segments, list) or 'file_name' not in annotation:
      tasks.append(InvalidImageError(
          file_name, image_id,
          'annotation needs "file_name" and a "segments_info" list'))
      continue
    tasks.append(ImageTask(
        image_id=image_id, file_name=file_name,
        image_path=os.path.join(images_dir, file_name),
        label_path=os.path.join(panoptic_dir, annotation['file_name']),
        height=image.get('height'), width=image.get('width'),
        segments=tuple(segments)))
  for key, annotation in annotations.items():
    if isinstance(annotation, InvalidImageError):
      tasks.append(annotation)
    else:
      tasks.append(InvalidImageError(
          str(annotation.get('file_name', '?')), key,
          'annotation whose image_id has no entry in "images"'))
  return tasks


def image_format(data):
  """'jpeg' or 'png' from the file's magic bytes, else None."""
  for magic, name in _MAGIC:
    if data.startswith(magic):
      return name
  return None


def read_image(task):
  """(file bytes, 'jpeg' | 'png', (height, width)) of a decodable image."""
  try:
    with open(task.image_path, 'rb') as f:
      data = f.read()
  except OSError as e:
    raise InvalidImageError(task.file_name, task.image_id,
                            f'cannot read the image: {e}') from None
  fmt = image_format(data)
  if fmt is None:
    raise InvalidImageError(
        task.file_name, task.image_id,
        f'{task.image_path} is neither JPEG nor PNG (first bytes '
        f'{data[:8]!r})')
  try:
    with Image.open(io.BytesIO(data)) as image:
      width, height = image.size
      if fmt == 'jpeg':  # Decoding at 1/8 scale still reads every byte.
        image.draft('RGB', (max(1, width // 8), max(1, height // 8)))
      image.load()
  except (OSError, ValueError, SyntaxError) as e:
    raise InvalidImageError(task.file_name, task.image_id,
                            f'corrupt image {task.image_path}: {e}') from None
  return data, fmt, (height, width)


def read_segment_ids(task):
  """int32 [H, W] segment ids of the task's panoptic PNG."""
  try:
    with Image.open(task.label_path) as image:
      if image.format != 'PNG':
        raise InvalidImageError(
            task.file_name, task.image_id,
            f'panoptic label {task.label_path} is {image.format}, not PNG')
      if image.mode not in ('RGB', 'RGBA', 'P'):
        raise InvalidImageError(
            task.file_name, task.image_id,
            f'panoptic label {task.label_path} has mode {image.mode}; '
            'expected an RGB PNG (id = R + 256 G + 256^2 B)')
      rgb = np.asarray(image.convert('RGB'))  # [H, W, 3] uint8
  except OSError as e:
    raise InvalidImageError(
        task.file_name, task.image_id,
        f'cannot read panoptic label {task.label_path}: {e}') from None
  return record.rgb_to_id(rgb)  # [H, W] int32


def _segment_fields(segment, file_name, image_id):
  """(id, category_id, iscrowd) of a segments_info entry, as ints."""
  try:
    return (int(segment['id']), int(segment['category_id']),
            int(segment.get('iscrowd', 0)))
  except (KeyError, TypeError, ValueError):
    raise InvalidImageError(
        file_name, image_id,
        f'segments_info entry {segment!r} needs integer "id" and '
        '"category_id"') from None


def panoptic_label(segment_ids, segments, spec, file_name, image_id):
  """Panoptic label of one image.

  Args:
    segment_ids: int [H, W] ids of the PNG.
    segments: segments_info entries of the JSON.
    spec: LabelSpec.
    file_name, image_id: name the image in errors.

  Returns:
    (label int32 [H, W], ids of JSON segments with no pixel; empty unless
    `spec.allow_absent_segments`).
  """
  fields = [_segment_fields(s, file_name, image_id) for s in segments]
  values, instances, listed = [], {}, set()
  for segment_id, category_id, iscrowd in fields:
    if segment_id <= 0:
      raise InvalidImageError(file_name, image_id,
                              'segment ids must be positive (0 is void)',
                              segment_id)
    if segment_id in listed:
      raise InvalidImageError(file_name, image_id,
                              'listed twice in segments_info', segment_id)
    listed.add(segment_id)
    if category_id not in spec.categories:
      raise InvalidImageError(
          file_name, image_id,
          f'category_id {category_id} is not a class of dataset '
          f'{spec.dataset!r} (pass --dataset=custom to take the classes '
          'from the JSON categories)', segment_id)
    semantic_id, is_thing = spec.categories[category_id]
    instance_id = 0
    if is_thing and not iscrowd:
      instance_id = instances.get(semantic_id, 0) + 1
      instances[semantic_id] = instance_id
      if instance_id >= spec.label_divisor:
        raise InvalidImageError(
            file_name, image_id,
            f'instance {instance_id} of category {category_id} does not fit '
            f'below label_divisor {spec.label_divisor}', segment_id)
    values.append(semantic_id * spec.label_divisor + instance_id)

  ids = np.asarray(segment_ids, np.int64)  # [H, W]
  order = np.argsort([f[0] for f in fields]).astype(np.int64)  # [S]
  sorted_ids = np.array([fields[i][0] for i in order], np.int64)  # [S]
  # Position of each pixel's id among the sorted JSON ids.
  position = np.searchsorted(sorted_ids, ids)  # [H, W]
  position = np.minimum(position, max(len(sorted_ids) - 1, 0))
  matched = (sorted_ids[position] == ids if len(sorted_ids)
             else np.zeros(ids.shape, bool))  # [H, W]
  unlisted = ~matched & (ids != 0)
  if unlisted.any():
    extra = np.unique(ids[unlisted])
    raise InvalidImageError(
        file_name, image_id,
        f'in the PNG but not in the JSON segments_info ({len(extra)} such '
        f'id(s): {extra[:5].tolist()})', int(extra[0]))
  counts = np.bincount(position[matched], minlength=len(sorted_ids))  # [S]
  absent = [int(sorted_ids[k]) for k in np.flatnonzero(counts == 0)]
  if absent and not spec.allow_absent_segments:
    raise InvalidImageError(
        file_name, image_id, 'in the JSON segments_info but has no pixel in '
        f'the PNG ({len(absent)} such id(s): {absent[:5]})', absent[0])
  table = np.array([values[i] for i in order] + [spec.void_label],
                   np.int32)  # [S + 1]; last entry: void.
  position[~matched] = len(sorted_ids)
  return table[position], absent  # [H, W]


def convert_image(task, spec):
  """(serialized tf.train.Example, absent segment ids) of one image."""
  image_bytes, fmt, image_size = read_image(task)
  segment_ids = read_segment_ids(task)
  if segment_ids.shape != image_size:
    raise InvalidImageError(
        task.file_name, task.image_id,
        f'image is {image_size[0]}x{image_size[1]} (HxW) but panoptic label '
        f'{task.label_path} is {segment_ids.shape[0]}x{segment_ids.shape[1]}')
  json_size = (task.height, task.width)
  if None not in json_size and tuple(json_size) != image_size:
    raise InvalidImageError(
        task.file_name, task.image_id,
        f'JSON height x width is {json_size[0]}x{json_size[1]} but the image '
        f'is {image_size[0]}x{image_size[1]}')
  label, absent = panoptic_label(segment_ids, task.segments, spec,
                                 task.file_name, task.image_id)
  example = record.make_example(
      image_bytes=image_bytes, image_format=fmt, filename=task.file_name,
      image_id=task.image_id, label=label, label_divisor=spec.label_divisor)
  return example, absent
