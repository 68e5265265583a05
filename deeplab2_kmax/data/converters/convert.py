"""Converts a panoptic data set into sharded TFRecords (the Python API).

  report = convert('coco_panoptic', images_dir='coco/val2017',
                   panoptic_json='coco/annotations/panoptic_val2017.json',
                   panoptic_dir='coco/annotations/panoptic_val2017',
                   output='records/val', num_shards=8)

1. The classes come from the dataset table (`dataset`, by default the
   format's entry) or, for `dataset='custom'`, from the JSON's
   `categories`. The JSON's categories are checked against the table: a
   category id that the table names differently is an error (e.g. a
   Cityscapes JSON written with train ids). A COCO-format JSON whose
   categories are not the table's falls back to its own categories when no
   dataset was named, so any data set in COCO panoptic format converts.
2. Images are taken in the order of the JSON's `images` list; image i of n
   goes to shard `i * num_shards // n`.
3. Each image is read and checked (`panoptic_format.convert_image`), in a
   process pool when `num_workers > 1`, results kept in order.
4. An invalid image stops the conversion with an error naming it, or with
   `skip_invalid` is left out and listed in the report. Shards appear under
   their final names only when everything was written (`ShardedWriter`).
"""
import dataclasses
import multiprocessing
import re
import sys

import tqdm

from deeplab2_kmax.data import dataset_info as dataset_info_lib
from deeplab2_kmax.data import record
from deeplab2_kmax.data.converters import ade20k_panoptic
from deeplab2_kmax.data.converters import cityscapes_panoptic
from deeplab2_kmax.data.converters import coco_panoptic
from deeplab2_kmax.data.converters import panoptic_format
from deeplab2_kmax.data.converters import sharded_writer

FORMATS = {f.name: f for f in (coco_panoptic.FORMAT,
                               cityscapes_panoptic.FORMAT,
                               ade20k_panoptic.FORMAT)}
CUSTOM = 'custom'
CUSTOM_LABEL_DIVISOR = 1000


@dataclasses.dataclass(frozen=True)
class ConversionReport:
  """What `convert` wrote and what it left out."""
  format: str
  dataset: str  # Name of the DatasetInfo used ('custom' for JSON classes).
  label_divisor: int
  shards: tuple  # Final shard paths, in order.
  images_per_shard: tuple
  skipped: tuple  # panoptic_format.InvalidImageError per skipped image.
  warnings: tuple  # Strings.

  @property
  def num_images(self):
    return sum(self.images_per_shard)

  @property
  def num_skipped(self):
    return len(self.skipped)

  def summary(self):
    """Human-readable account, one fact per line."""
    lines = [f'wrote {self.num_images} images of dataset {self.dataset!r} '
             f'(label_divisor {self.label_divisor}) to {len(self.shards)} '
             f'shards: {self.shards[0]} ... {self.shards[-1]}']
    lines += [f'warning: {w}' for w in self.warnings]
    if self.skipped:
      lines.append(f'skipped {self.num_skipped} invalid images:')
      lines += [f'  {error}' for error in self.skipped]
    return '\n'.join(lines)


def _aliases(name):
  """Normalized comma-separated alternatives of a class name."""
  return {re.sub('[^a-z0-9]', '', part.lower())
          for part in str(name).split(',')} - {''}


def category_mismatches(categories, info):
  """(conflicts, missing) of JSON categories against a DatasetInfo.

  conflicts: strings for category ids that the table names differently;
  missing: category ids the table does not have.
  """
  table = info.by_source_id()
  conflicts, missing = [], []
  for category in categories:
    source_id = category.get('id') if isinstance(category, dict) else None
    entry = table.get(source_id)
    if entry is None:
      missing.append(source_id)
    elif not _aliases(category.get('name', '')) & _aliases(entry.name):
      conflicts.append(f'id {source_id} is {category.get("name")!r} in the '
                       f'JSON but {entry.name!r} in the table')
  return conflicts, missing


def resolve_dataset(source_format, dataset, panoptic_json, categories,
                    label_divisor=None):
  """(DatasetInfo, warnings) for a conversion; see the module docstring."""
  warnings = []
  if label_divisor is not None and label_divisor < 1:
    raise ValueError(f'label_divisor must be >= 1, got {label_divisor}')
  use_json = dataset == CUSTOM or (
      dataset is None and source_format.custom_fallback and
      source_format.default_dataset not in dataset_info_lib.DATASETS)
  if not use_json:
    name = dataset or source_format.default_dataset
    info = dataset_info_lib.get_dataset_info(name)
    conflicts, missing = category_mismatches(categories, info)
    if dataset is None and source_format.custom_fallback and (
        conflicts or missing):
      use_json = True
      differences = conflicts + [f'id {m} is not in the table'
                                 for m in missing]
      warnings.append(
          f'{panoptic_json}: {len(differences)} of {len(categories)} '
          f'categories differ from dataset table entry {name!r} (e.g. '
          f'{differences[0]}); classes taken from the JSON categories')
    elif conflicts:
      raise ValueError(
          f'{panoptic_json}: categories disagree with dataset table entry '
          f'{name!r}: {"; ".join(conflicts[:3])}'
          f'{" ..." if len(conflicts) > 3 else ""}. Use a JSON with the '
          f'official category ids, or pass --dataset={CUSTOM} to take the '
          'classes from the JSON')
    elif missing:
      warnings.append(
          f'{panoptic_json}: category ids {missing[:5]} are not classes of '
          f'{name!r}; images with segments of them are invalid')
    if not use_json and label_divisor not in (None, info.label_divisor):
      raise ValueError(
          f'label_divisor {label_divisor} conflicts with dataset table entry '
          f'{name!r} (label_divisor {info.label_divisor}); leave it unset')
  if use_json:
    info = dataset_info_lib.from_categories_json(
        panoptic_json, name=CUSTOM,
        label_divisor=label_divisor or CUSTOM_LABEL_DIVISOR)
  largest = (info.num_semantic_channels * info.label_divisor - 1,
             info.void_label)
  if max(largest) > record.MAX_LABEL:
    raise ValueError(
        f'dataset {info.name!r}: labels up to {max(largest)} do not fit the '
        f'24-bit label PNG (max {record.MAX_LABEL}); use a smaller '
        'label_divisor')
  return info, warnings


def _convert_one(job):
  """Worker: (index, task or error, spec) -> (index, example, absent, error)."""
  index, task, spec = job
  if isinstance(task, panoptic_format.InvalidImageError):
    return index, None, (), task
  try:
    example, absent = panoptic_format.convert_image(task, spec)
  except panoptic_format.InvalidImageError as e:
    return index, None, (), e
  return index, example, tuple(absent), None


def _outcomes(jobs, num_workers):
  """Results of `_convert_one` over `jobs`, in order."""
  if num_workers <= 1:
    yield from map(_convert_one, jobs)
    return
  with multiprocessing.get_context().Pool(num_workers) as pool:
    yield from pool.imap(_convert_one, jobs, chunksize=4)


def convert(format_name, images_dir, panoptic_json, panoptic_dir, output,
            num_shards, dataset=None, label_divisor=None, skip_invalid=False,
            num_workers=1, overwrite=False, progress=True):
  """Writes `{output}-{i:05d}-of-{num_shards:05d}.tfrecord`; see module doc.

  Args:
    format_name: a key of FORMATS ('coco_panoptic', 'cityscapes_panoptic',
      'ade20k_panoptic').
    images_dir: folder that `images[].file_name` is relative to (for
      Cityscapes: leftImg8bit/{split}, holding the city folders).
    panoptic_json: the annotation JSON.
    panoptic_dir: folder of the segment-id PNGs (`annotations[].file_name`).
    output: shard path prefix, e.g. 'records/train'.
    num_shards: number of shards.
    dataset: dataset table entry; None for the format's default; 'custom'
      for classes from the JSON's categories.
    label_divisor: for 'custom' (default 1000); must match the table
      otherwise.
    skip_invalid: leave invalid images out (listed in the report) instead of
      raising.
    num_workers: processes that read and encode images.
    overwrite: replace existing shards of `output`.
    progress: show a progress bar on stderr.

  Returns:
    ConversionReport.

  Raises:
    panoptic_format.InvalidImageError: an invalid image, unless
      `skip_invalid`; nothing is written then.
    ValueError, FileExistsError: bad arguments or annotation file.
  """
  if format_name not in FORMATS:
    raise ValueError(f'unknown format {format_name!r}; expected one of '
                     f'{sorted(FORMATS)}')
  source_format = FORMATS[format_name]
  data = panoptic_format.load_json(panoptic_json)
  info, warnings = resolve_dataset(source_format, dataset, panoptic_json,
                                   data['categories'], label_divisor)
  spec = panoptic_format.LabelSpec.from_dataset_info(
      info, allow_absent_segments=source_format.allow_absent_segments)
  tasks = panoptic_format.make_tasks(data, images_dir, panoptic_dir,
                                     source_format)
  if not tasks:
    raise ValueError(f'{panoptic_json}: "images" is empty')
  jobs = ((index, task, spec) for index, task in enumerate(tasks))
  skipped, absent = [], []
  with sharded_writer.ShardedWriter(output, num_shards,
                                    overwrite=overwrite) as writer:
    outcomes = _outcomes(jobs, num_workers)
    try:
      for index, example, absent_ids, error in tqdm.tqdm(
          outcomes, total=len(tasks), desc=f'{format_name} -> {output}',
          unit='image', file=sys.stderr, disable=not progress):
        if error is not None:
          if not skip_invalid:
            raise error
          skipped.append(error)
          continue
        if absent_ids:
          absent.append((tasks[index], absent_ids))
        writer.write(sharded_writer.shard_of(index, len(tasks), num_shards),
                     example)
    finally:
      outcomes.close()  # Stops the worker pool at once on errors.
    paths = writer.commit()
  if absent:
    task, ids = absent[0]
    warnings.append(
        f'{sum(len(ids) for _, ids in absent)} JSON segments in '
        f'{len(absent)} images have no pixel in their PNG (first: image '
        f'{task.file_name!r}, segment {ids[0]}); later segments covered them')
  return ConversionReport(
      format=format_name, dataset=info.name, label_divisor=info.label_divisor,
      shards=tuple(paths), images_per_shard=tuple(writer.counts),
      skipped=tuple(skipped), warnings=tuple(warnings))
