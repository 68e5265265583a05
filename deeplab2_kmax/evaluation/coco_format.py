"""COCO panoptic folders: reading them into PQ, writing them from labels.

The format (cocodataset.org/#format-data, #format-results): one JSON with
`annotations`, one per image (`image_id`, `file_name` of a PNG in the
folder, `segments_info`: a list of {`id`, `category_id`, and for ground
truth `iscrowd`, `area`, `bbox`}), and in ground truth `categories`
({`id`, `name`, `isthing`, `color`}). A PNG is RGB with segment id
`R + 256 G + 256^2 B`; id 0 is void (unlabeled).

`evaluate_folders` follows panopticapi's `pq_compute` (categories from the
GT JSON, GT areas from the GT JSON, predicted areas from the PNGs) and feeds
`panoptic_quality.image_stats`, the code the array API uses. It makes the
official checks with messages naming the JSON, the image and the segment:
a prediction for every GT image, a readable PNG for every annotation, every
non-zero id of a predicted PNG listed in its `segments_info`, every listed
segment present in the PNG, known category ids, and equal GT / prediction
sizes; besides malformed JSON, duplicate ids and segment id 0 in a list.
Decoding the PNGs is most of its time: it uses the package's own reader
(`png_ids`: libdeflate and a C loop), or else libspng (pyspng) or OpenCV
where installed (the same pixels as Pillow, faster; see `PNG_DECODERS`),
and evaluates images in a pool of threads.

`PanopticFolderWriter` writes labels `semantic_id * label_divisor +
instance_id` as such a folder: segment id = label + 1 (0 = void), category
id = the class's source id, crowd = a thing label with instance id 0 (ground
truth only). Files are written to a temporary name, then renamed.
"""
import concurrent.futures
import io
import json
import os

import numpy as np
from PIL import Image

from deeplab2_kmax import io_utils
from deeplab2_kmax.evaluation import panoptic_quality
from deeplab2_kmax.evaluation import png_ids

MAX_ID = (1 << 24) - 1  # ids fit 24 bits of RGB


class CocoFormatError(ValueError):
  """A COCO panoptic JSON or PNG that cannot be evaluated."""


# PNG ids -------------------------------------------------------------------
# Decoders of 8-bit RGB(A) PNGs, all giving Pillow's pixels, fastest first.
# Decoding is most of the time of an evaluation. 'builtin' is the package's
# own reader (`png_ids`: libdeflate and a C loop, both without the GIL, so
# threads decode side by side); it is there when the package's C extension
# was built. Of the others, libspng (pyspng) is fastest in one thread but
# holds the GIL; OpenCV and Pillow release it. Timings in docs/benchmarks.md.
try:
  import pyspng
except ImportError:  # optional: OpenCV or Pillow decode instead (slower)
  pyspng = None
try:
  import cv2
except ImportError:
  cv2 = None

PNG_DECODERS = ('builtin', 'pyspng', 'opencv', 'pillow')
_PNG_SIGNATURE = b'\x89PNG\r\n\x1a\n'


def available_png_decoders():
  """The names of PNG_DECODERS whose package is installed, fastest first."""
  installed = (png_ids.available(), pyspng, cv2, True)
  return tuple(name for name, module in zip(PNG_DECODERS, installed)
               if module)


def _checked_png_decoder(decoder):
  """`decoder`, default the fastest installed one; ValueError if missing."""
  available = available_png_decoders()
  decoder = decoder or available[0]
  if decoder not in available:
    raise ValueError(f'PNG decoder {decoder!r} is not installed; available: '
                     f'{available}')
  return decoder


def _is_8bit_rgb_png(data):
  """Whether the IHDR of PNG bytes says 8-bit RGB or RGBA (color type 2, 6).

  Other PNGs (grey, palette, 16-bit) and non-PNGs go to Pillow, whose modes
  give the messages of `image_to_ids`.
  """
  return (len(data) >= 26 and data.startswith(_PNG_SIGNATURE) and
          data[12:16] == b'IHDR' and data[24] == 8 and data[25] in (2, 6))


def _decode_rgba(data, decoder):
  """uint8 [H, W, 4] RGBA pixels of 8-bit RGB(A) PNG bytes (OSError if bad)."""
  if decoder == 'pyspng':
    try:
      return pyspng.load(data, 'RGBA')
    except RuntimeError as e:
      raise OSError(str(e)) from None
  bgr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
  if bgr is None:
    raise OSError('OpenCV cannot decode it')
  return cv2.cvtColor(bgr, cv2.COLOR_BGRA2RGBA if bgr.shape[2] == 4 else
                      cv2.COLOR_BGR2RGBA)


def read_id_png(path, where, decoder=None):
  """int32 [H, W] segment ids of an RGB(A) PNG; `where` prefixes errors.

  `decoder`: one of `available_png_decoders()`, default the first.
  """
  decoder = _checked_png_decoder(decoder)
  if not os.path.isfile(path):
    raise CocoFormatError(f'{where}: PNG {path} does not exist')
  try:
    with open(path, 'rb') as f:
      data = f.read()
    if decoder == 'builtin':
      ids = png_ids.decode_ids(data)
      if ids is not None:
        return ids
    if decoder in ('builtin', 'pillow') or not _is_8bit_rgb_png(data):
      with Image.open(io.BytesIO(data)) as image:
        return image_to_ids(image, f'{where}: PNG {path}')
    rgba = _decode_rgba(data, decoder)
  except OSError as e:
    raise CocoFormatError(f'{where}: cannot read PNG {path}: {e}') from None
  ids = rgba.view('<u4')[..., 0]  # [H, W] R + 256 G + 65536 B + 2^24 A
  ids &= np.uint32(MAX_ID)
  return ids.view(np.int32)


def image_to_ids(image, where):
  """int32 [H, W] ids R + 256 G + 65536 B of an RGB(A) PIL image."""
  if image.mode not in ('RGB', 'RGBA'):
    raise CocoFormatError(f'{where} has mode {image.mode}; expected RGB '
                          '(id = R + 256 G + 65536 B)')
  # Pillow stores a pixel in 4 bytes; packing them as 'RGBX' is a plain
  # copy (no per-channel work), and the 4th byte is masked off.
  raw = image.tobytes('raw', 'RGBX' if image.mode == 'RGB' else 'RGBA')
  ids = np.frombuffer(raw, '<u4') & np.uint32(MAX_ID)  # [H * W]
  return ids.view(np.int32).reshape(image.height, image.width)


def id_to_rgb(ids):
  """[...] ids -> [..., 3] uint8 colors."""
  ids = np.asarray(ids, np.int64)
  return np.stack([ids & 255, (ids >> 8) & 255, (ids >> 16) & 255],
                  axis=-1).astype(np.uint8)


def write_id_png(path, ids):
  """Writes int [H, W] ids as an RGB PNG (temporary file, then rename)."""
  ids = np.asarray(ids)
  if ids.ndim != 2 or (ids.size and (ids.min() < 0 or ids.max() > MAX_ID)):
    raise ValueError(f'{path}: ids must be [H, W] in [0, {MAX_ID}]; found '
                     f'shape {ids.shape}')
  height, width = ids.shape
  raw = np.ascontiguousarray(ids, '<u4').tobytes()  # bytes R, G, B, 0
  with io_utils.replacing(path, 'wb') as f:
    Image.frombytes('RGB', (width, height), raw, 'raw',
                    'RGBX').save(f, format='PNG')


def write_json(path, data):
  """Writes `data` as JSON (temporary file, then rename)."""
  io_utils.write_json(path, data)


# JSON ----------------------------------------------------------------------
def _is_int(value):
  return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def load_panoptic_json(path, what):
  """Reads and checks a COCO panoptic JSON; `what` = 'ground-truth' or
  'prediction' (ground truth also needs `categories`)."""
  try:
    with open(path, encoding='utf-8') as f:
      data = json.load(f)
  except (OSError, ValueError) as e:
    raise CocoFormatError(f'{path}: cannot read the {what} JSON: {e}') from None
  if not isinstance(data, dict) or not isinstance(data.get('annotations'),
                                                  list):
    raise CocoFormatError(f'{path}: expected an object with an "annotations" '
                          f'list ({what} JSON)')
  if what == 'ground-truth':
    _check_categories(path, data.get('categories'))
  seen = set()
  for i, ann in enumerate(data['annotations']):
    where = f'{path}: annotations[{i}]'
    if not isinstance(ann, dict):
      raise CocoFormatError(f'{where}: expected an object, found {ann!r}')
    missing = [k for k in ('image_id', 'file_name', 'segments_info')
               if k not in ann]
    if missing:
      raise CocoFormatError(f'{where}: lacks {missing}')
    where = f'{path}: image {ann["image_id"]!r}'
    if ann['image_id'] in seen:
      raise CocoFormatError(f'{where}: more than one annotation')
    seen.add(ann['image_id'])
    if not isinstance(ann['segments_info'], list):
      raise CocoFormatError(f'{where}: "segments_info" must be a list')
    _check_segments(where, ann['segments_info'], what == 'ground-truth')
  return data


def _check_categories(path, categories):
  if not isinstance(categories, list) or not categories:
    raise CocoFormatError(f'{path}: the ground-truth JSON needs a non-empty '
                          '"categories" list')
  ids = set()
  for i, c in enumerate(categories):
    if (not isinstance(c, dict) or not _is_int(c.get('id')) or
        c.get('isthing') not in (0, 1) or c['id'] in ids):
      raise CocoFormatError(f'{path}: categories[{i}] = {c!r}; expected an '
                            'object with a unique integer "id" and "isthing" '
                            '0 or 1')
    ids.add(c['id'])


def _check_segments(where, segments, groundtruth):
  ids = set()
  for j, s in enumerate(segments):
    if not isinstance(s, dict) or not _is_int(s.get('id')) or not _is_int(
        s.get('category_id')):
      raise CocoFormatError(f'{where}: segments_info[{j}] = {s!r}; expected '
                            'integer "id" and "category_id"')
    if not 0 < s['id'] <= MAX_ID:
      raise CocoFormatError(f'{where}: segment id {s["id"]} is outside '
                            f'[1, {MAX_ID}] (0 is void)')
    if s['id'] in ids:
      raise CocoFormatError(f'{where}: segment id {s["id"]} is listed twice')
    ids.add(s['id'])
    if not groundtruth:
      continue
    if s.get('iscrowd', 0) not in (0, 1):
      raise CocoFormatError(f'{where}: segment {s["id"]}: "iscrowd" must be 0 '
                            f'or 1; found {s["iscrowd"]!r}')
    area = s.get('area', 0)
    if isinstance(area, bool) or not isinstance(area, (int, float)) or (
        area < 0):
      raise CocoFormatError(f'{where}: segment {s["id"]}: "area" must be a '
                            f'non-negative number; found {area!r}')


def categories_from_json(data):
  """panoptic_quality.Category list of a (checked) ground-truth JSON."""
  return [panoptic_quality.Category(c['id'], str(c.get('name', c['id'])),
                                    c['isthing'] == 1)
          for c in data['categories']]


# Evaluation ----------------------------------------------------------------
def _describe(ids, pair_ids, count):
  """'123 (RGB (123, 0, 0), 40 pixels), ...' for the first few of `ids`."""
  parts = []
  for i in ids[:5]:
    rgb = tuple(int(v) for v in id_to_rgb(i))
    parts.append(f'{i} (RGB {rgb}, {int(count[pair_ids == i].sum())} pixels)')
  return ', '.join(parts) + (f' and {len(ids) - 5} more' if len(ids) > 5
                             else '')


def folder_image_stats(metric, gt_ann, gt_dir, pred_ann, pred_dir, *,
                       gt_json='ground truth', pred_json='prediction',
                       png_decoder=None):
  """PQStats of one image of COCO panoptic folders (checks its files)."""
  image_id = gt_ann['image_id']
  gt_where = f'{gt_json}: image {image_id!r}'
  pred_where = f'{pred_json}: image {image_id!r}'
  gt_map = read_id_png(os.path.join(gt_dir, gt_ann['file_name']), gt_where,
                       png_decoder)
  pred_path = os.path.join(pred_dir, pred_ann['file_name'])
  pred_map = read_id_png(pred_path, pred_where, png_decoder)
  if gt_map.shape != pred_map.shape:
    raise CocoFormatError(f'{pred_where}: PNG {pred_path} is '
                          f'{pred_map.shape[1]}x{pred_map.shape[0]} (WxH), '
                          f'the ground truth {gt_map.shape[1]}x'
                          f'{gt_map.shape[0]}')
  gt_segments, pred_segments = gt_ann['segments_info'], pred_ann[
      'segments_info']
  gt_ids = np.array([s['id'] for s in gt_segments], np.int64)  # [G]
  pred_ids = np.array([s['id'] for s in pred_segments], np.int64)  # [P]
  pred_category = metric.category_index(
      [s['category_id'] for s in pred_segments])  # [P]
  if np.any(pred_category < 0):
    j = int(np.flatnonzero(pred_category < 0)[0])
    raise CocoFormatError(
        f'{pred_where}: segment {pred_ids[j]} has category_id '
        f'{pred_segments[j]["category_id"]}, which is not a category of '
        f'the ground truth ({gt_json})')

  # Segment ids -> rows / columns of the intersection matrix, per run of
  # equal (GT, predicted) pixels rather than per pixel.
  run_gt, run_pred, length = panoptic_quality.pixel_runs(gt_map, pred_map)
  col = panoptic_quality.segment_index(run_pred, pred_ids, 0)  # [R]
  unlisted = col > len(pred_ids)  # [R]
  if np.any(unlisted):
    raise CocoFormatError(
        f'{pred_where}: PNG {pred_path} has segment ids not listed in '
        f'segments_info: '
        f'{_describe(np.unique(run_pred[unlisted]), run_pred, length)}')
  row = panoptic_quality.segment_index(run_gt, gt_ids, 0)  # [R]
  matrix = panoptic_quality.count_pairs(
      row, col, length, (len(gt_ids) + 2, len(pred_ids) + 1))
  absent = pred_ids[matrix[:, 1:].sum(axis=0) == 0]
  if absent.size:
    raise CocoFormatError(
        f'{pred_where}: segments_info lists segment ids {absent.tolist()} '
        f'that do not occur in PNG {pred_path}')

  area = matrix[1:len(gt_ids) + 1].sum(axis=1)  # [G]
  gt_area = np.array([s.get('area', a) for s, a in zip(gt_segments, area)])
  return panoptic_quality.image_stats(
      matrix,
      gt_category=metric.category_index([s['category_id']
                                         for s in gt_segments]),
      gt_crowd=np.array([s.get('iscrowd', 0) == 1 for s in gt_segments],
                        bool),
      pred_category=pred_category, num_categories=metric.num_categories,
      gt_area=gt_area if gt_area.size else None)


def evaluate_folders(gt_json, gt_dir, pred_json, pred_dir, *,
                     num_threads=None, png_decoder=None):
  """PanopticQuality of COCO panoptic prediction vs ground-truth folders.

  Categories come from the GT JSON; predictions for images that are not in
  the ground truth are ignored (as officially). `num_threads` images are
  read and evaluated at a time (default os.cpu_count()). `png_decoder`: one
  of `available_png_decoders()`, default the first (see PNG_DECODERS).
  """
  num_threads = num_threads or os.cpu_count() or 1
  png_decoder = _checked_png_decoder(png_decoder)
  for folder, what in ((gt_dir, 'ground-truth'), (pred_dir, 'prediction')):
    if not os.path.isdir(folder):
      raise CocoFormatError(f'{folder}: the {what} PNG folder does not exist')
  gt = load_panoptic_json(gt_json, 'ground-truth')
  pred = load_panoptic_json(pred_json, 'prediction')
  metric = panoptic_quality.PanopticQuality(categories_from_json(gt))
  by_image = {ann['image_id']: ann for ann in pred['annotations']}
  pairs = []
  for gt_ann in gt['annotations']:
    if gt_ann['image_id'] not in by_image:
      raise CocoFormatError(f'{pred_json}: no prediction for image '
                            f'{gt_ann["image_id"]!r} of {gt_json}')
    pairs.append((gt_ann, by_image[gt_ann['image_id']]))

  def one(pair):
    return folder_image_stats(metric, pair[0], gt_dir, pair[1], pred_dir,
                              gt_json=gt_json, pred_json=pred_json,
                              png_decoder=png_decoder)

  if num_threads > 1:
    with concurrent.futures.ThreadPoolExecutor(num_threads) as pool:
      for stats in pool.map(one, pairs):
        metric.add(stats)
  else:
    for pair in pairs:
      metric.add(one(pair))
  return metric


# Writing -------------------------------------------------------------------
def _bboxes(index, count):
  """int [count, 4] (x, y, w, h) boxes of the values 0..count-1 of [H, W]."""
  height, width = index.shape
  rows = np.zeros([count, height], bool)
  rows[index, np.arange(height)[:, None]] = True  # [count, H]
  cols = np.zeros([count, width], bool)
  cols[index, np.arange(width)[None, :]] = True  # [count, W]
  y0, x0 = rows.argmax(axis=1), cols.argmax(axis=1)
  y1 = height - rows[:, ::-1].argmax(axis=1)
  x1 = width - cols[:, ::-1].argmax(axis=1)
  return np.stack([x0, y0, x1 - x0, y1 - y0], axis=1)


def segments_from_panoptic(label, dataset_info, *, groundtruth):
  """(ids [H, W], segments_info) of a panoptic label (ids = label + 1)."""
  label = np.asarray(label, np.int64)
  divisor = dataset_info.label_divisor
  void = dataset_info.void_label
  if label.ndim != 2 or (label.size and (label.min() < 0 or
                                         label.max() >= MAX_ID)):
    raise ValueError(f'panoptic label must be [H, W] in [0, {MAX_ID}); '
                     f'found shape {label.shape}')
  labels, index = np.unique(label, return_inverse=True)
  index = index.reshape(label.shape)
  areas = np.bincount(index.ravel(), minlength=labels.size)
  boxes = _bboxes(index, labels.size)
  by_semantic = dataset_info.by_semantic_id()
  segments = []
  for i, value in enumerate(labels.tolist()):
    if value == void:
      continue
    cls = by_semantic.get(value // divisor)
    if cls is None:
      raise ValueError(f'label {value} has semantic id {value // divisor}, '
                       f'not a class of {dataset_info.name} nor void')
    segment = {'id': value + 1, 'category_id': cls.source_id}
    if groundtruth:
      segment.update(iscrowd=int(cls.is_thing and value % divisor == 0),
                     area=int(areas[i]), bbox=[int(v) for v in boxes[i]])
    segments.append(segment)
  ids = np.where(label == void, 0, label + 1)
  return ids, segments


class PanopticFolderWriter:
  """Writes panoptic labels as a COCO panoptic folder + JSON (see module)."""

  def __init__(self, json_path, png_dir, dataset_info, *, groundtruth):
    self.json_path, self.png_dir = json_path, png_dir
    self.dataset_info = dataset_info
    self.groundtruth = groundtruth
    self.images, self.annotations = [], []
    os.makedirs(png_dir, exist_ok=True)

  def add(self, image_id, label, *, file_name=None, scores=None):
    """Writes one image's PNG; `scores` maps labels to segment scores."""
    file_name = file_name or f'{image_id}.png'
    ids, segments = segments_from_panoptic(label, self.dataset_info,
                                           groundtruth=self.groundtruth)
    for segment in segments:
      if scores is not None:
        segment_label = segment['id'] - 1
        if segment_label not in scores:
          raise ValueError(f'image {image_id!r}: no score for segment label '
                           f'{segment_label}')
        segment['score'] = float(scores[segment_label])
    write_id_png(os.path.join(self.png_dir, file_name), ids)
    height, width = ids.shape
    self.images.append({'id': image_id, 'height': height, 'width': width})
    self.annotations.append({'image_id': image_id, 'file_name': file_name,
                             'segments_info': segments})
    return segments

  def close(self):
    write_json(self.json_path, {
        'images': self.images, 'annotations': self.annotations,
        'categories': self.dataset_info.categories_json()})

  def __enter__(self):
    return self

  def __exit__(self, exc_type, *unused):
    if exc_type is None:
      self.close()
