"""Pictures of panoptic predictions and of kMaX clustering (NumPy + PIL).

* `panoptic_to_rgb` (NumPy) / `panoptic_to_rgb_tf` (TensorFlow, usable in a
  tf.function, e.g. for TensorBoard image summaries): every pixel gets the
  color of its class from the DatasetInfo; thing instances are told apart by
  a brightness offset that depends on the instance id only (instance 0,
  i.e. stuff and crowd regions, keeps the class color); void and labels of
  no class are black. Both give identical colors.
* `overlay`: the colored segmentation blended over the image, white segment
  boundaries, and the class name written at the point of each segment
  farthest from its boundary (one Euclidean distance transform for all).
* `cluster_figure`: the picture of how k-means cross-attention clusters the
  pixels (kMaX-DeepLab, Yu et al. ECCV 2022, figure of the cluster
  assignments): panels "input", then per kMaX layer the pixel-to-center
  assignment (argmax over the N centers) with one color per center index
  (the same in every layer), then "panoptic"; each panel titled.
* `save_png`: writes an RGB array to a temporary name, then renames it.
"""
import colorsys

import numpy as np
from PIL import Image
from PIL import ImageDraw
from PIL import ImageFont
from scipy import ndimage
import tensorflow as tf

from deeplab2_kmax import io_utils

# Thing instance k is brightened by ((k * _JITTER_MULTIPLIER) % _JITTER_LEVELS
# - _JITTER_LEVELS // 2) * _JITTER_STEP on each channel: neighbouring ids get
# clearly different offsets, in [-60, 60].
_JITTER_MULTIPLIER = 37
_JITTER_LEVELS = 11
_JITTER_STEP = 12


# Panoptic colors -------------------------------------------------------------
def color_table(dataset_info):
  """int32 [num_semantic_channels, 3]: class color by semantic id, else 0."""
  table = np.zeros([dataset_info.num_semantic_channels, 3], np.int32)
  for c in dataset_info.classes:
    table[c.semantic_id] = c.color
  return table


def _jitter_np(instance):
  offset = ((instance * _JITTER_MULTIPLIER) % _JITTER_LEVELS -
            _JITTER_LEVELS // 2) * _JITTER_STEP
  return np.where(instance > 0, offset, 0)


def panoptic_to_rgb(panoptic, dataset_info):
  """uint8 [..., H, W, 3] colors of int panoptic labels [..., H, W]."""
  panoptic = np.asarray(panoptic).astype(np.int64)
  table = color_table(dataset_info)
  semantic = panoptic // dataset_info.label_divisor
  instance = panoptic % dataset_info.label_divisor
  known = ((semantic >= 0) & (semantic < len(table)) &
           (panoptic != dataset_info.void_label))
  color = table[np.clip(semantic, 0, len(table) - 1)]  # [..., H, W, 3]
  color = np.clip(color + _jitter_np(instance)[..., None], 0, 255)
  return np.where(known[..., None], color, 0).astype(np.uint8)


def panoptic_to_rgb_tf(panoptic, dataset_info):
  """TensorFlow `panoptic_to_rgb`: int [..., H, W] -> uint8 [..., H, W, 3]."""
  panoptic = tf.cast(panoptic, tf.int64)
  table = tf.constant(color_table(dataset_info), tf.int64)
  size = table.shape[0]
  semantic = tf.math.floordiv(panoptic, dataset_info.label_divisor)
  instance = tf.math.floormod(panoptic, dataset_info.label_divisor)
  known = ((semantic >= 0) & (semantic < size) &
           tf.not_equal(panoptic, dataset_info.void_label))
  color = tf.gather(table, tf.clip_by_value(semantic, 0, size - 1))
  offset = ((instance * _JITTER_MULTIPLIER) % _JITTER_LEVELS -
            _JITTER_LEVELS // 2) * _JITTER_STEP
  offset = tf.where(instance > 0, offset, 0)
  color = tf.clip_by_value(color + offset[..., tf.newaxis], 0, 255)
  return tf.cast(tf.where(known[..., tf.newaxis], color, 0), tf.uint8)


# Overlay ---------------------------------------------------------------------
def boundaries(label):
  """bool [H, W]: pixels with a 4-neighbour of a different label."""
  label = np.asarray(label)
  edge = np.zeros(label.shape, bool)
  vertical = label[1:] != label[:-1]  # [H-1, W]
  horizontal = label[:, 1:] != label[:, :-1]  # [H, W-1]
  edge[1:] |= vertical
  edge[:-1] |= vertical
  edge[:, 1:] |= horizontal
  edge[:, :-1] |= horizontal
  return edge


def label_positions(label, *, skip=()):
  """{label: (y, x)}: per label, its pixel farthest from its boundary.

  The image border counts as boundary; labels in `skip` are left out.
  """
  label = np.asarray(label)
  if label.size == 0:
    return {}
  inside = np.pad(~boundaries(label), 1)  # border pixels outside = boundary
  distance = ndimage.distance_transform_edt(inside)[1:-1, 1:-1]  # [H, W]
  values, index = np.unique(label, return_inverse=True)
  index = index.reshape(label.shape)
  positions = ndimage.maximum_position(distance, index,
                                       np.arange(len(values)))
  return {int(v): (int(p[0]), int(p[1]))
          for v, p in zip(values, positions) if int(v) not in skip}


def font(size):
  """A scalable font of `size` pixels (PIL's bundled default)."""
  try:
    return ImageFont.load_default(size=size)
  except (TypeError, OSError, ImportError):  # Pillow without FreeType
    return ImageFont.load_default()


def overlay(image, panoptic, dataset_info, *, alpha=0.5, draw_names=True,
            font_size=None):
  """uint8 [H, W, 3]: colored segments over `image`, with class names.

  Args:
    image: uint8 [H, W, 3] (or [H, W] gray).
    panoptic: int [H, W] panoptic labels of `image`.
    dataset_info: DatasetInfo of the labels (colors, names).
    alpha: weight of the segment colors (void pixels show the image).
    draw_names: write each segment's class name at its inner-most point
      (segments smaller than half a square of the text height get none).
    font_size: text height in pixels (default: from the image size).
  """
  image = np.asarray(image)
  if image.ndim == 2:
    image = np.repeat(image[..., None], 3, axis=-1)
  panoptic = np.asarray(panoptic)
  if image.shape[:2] != panoptic.shape:
    raise ValueError(f'overlay: image {image.shape[:2]} and panoptic '
                     f'{panoptic.shape} differ in size')
  void = panoptic == dataset_info.void_label
  colors = panoptic_to_rgb(panoptic, dataset_info).astype(np.float32)
  blended = image.astype(np.float32) * (1.0 - alpha) + colors * alpha
  out = np.where(void[..., None], image, np.round(blended)).astype(np.uint8)
  out[boundaries(panoptic)] = 255
  if not draw_names:
    return out
  by_semantic = dataset_info.by_semantic_id()
  size = font_size or max(10, min(panoptic.shape) // 25)
  text_font = font(size)
  picture = Image.fromarray(out)
  draw = ImageDraw.Draw(picture)
  stroke = max(1, size // 8)
  height, width = panoptic.shape
  values, areas = np.unique(panoptic, return_counts=True)
  # Segments smaller than half a text-height square get no name.
  too_small = values[areas < size * size // 2].tolist()
  positions = label_positions(
      panoptic, skip=(dataset_info.void_label, *too_small))
  for value, (y, x) in positions.items():
    cls = by_semantic.get(value // dataset_info.label_divisor)
    if cls is None:
      continue
    # Shift the text inside the picture when its box crosses the border.
    left, top, right, bottom = draw.textbbox(
        (x, y), cls.name, font=text_font, anchor='mm', stroke_width=stroke)
    x += max(0, -left) - max(0, right - width)
    y += max(0, -top) - max(0, bottom - height)
    draw.text((x, y), cls.name, fill=(255, 255, 255), font=text_font,
              anchor='mm', stroke_width=stroke, stroke_fill=(0, 0, 0))
  return np.asarray(picture)


# Cluster figure --------------------------------------------------------------
def center_colors(num_centers):
  """uint8 [num_centers, 3]: well-spread colors, one per center index."""
  colors = []
  for i in range(num_centers):
    hue = (i * 0.618033988749895) % 1.0  # golden-ratio steps around the wheel
    saturation = (0.95, 0.6)[i % 2]
    value = (0.95, 0.75, 0.55)[(i // 2) % 3]
    colors.append(colorsys.hsv_to_rgb(hue, saturation, value))
  return np.round(np.array(colors, np.float64).reshape(-1, 3) *
                  255).astype(np.uint8)


def assignment_to_rgb(assignment, colors):
  """uint8 [h, w, 3]: the color of each pixel's center index."""
  return colors[np.asarray(assignment) % len(colors)]


def fit(height, width, panel_size):
  """(h, w) of a panel whose longer side is `panel_size`, aspect kept."""
  scale = panel_size / max(height, width)
  return max(1, round(height * scale)), max(1, round(width * scale))


def resize_panel(array, size, resample=Image.BILINEAR):
  """uint8 array resized to size = (h, w)."""
  return np.asarray(Image.fromarray(np.asarray(array)).resize(
      (size[1], size[0]), resample))


def assignment_overlay(shown, assignment, colors, *, confidence=None,
                       alpha=0.75):
  """uint8 [h, w, 3]: each pixel's center color over the image `shown`.

  `assignment` int [h', w'] (any size; nearest-resized to `shown`), `colors`
  from `center_colors`; with `confidence` (float [h', w'] in [0, 1]) a color
  is as bright as the pixel's confidence, dark where it is unsure.
  """
  rgb = assignment_to_rgb(assignment, colors)
  if confidence is not None:
    confidence = np.clip(np.asarray(confidence, np.float32), 0, 1)
    rgb = np.round(rgb * confidence[..., None]).astype(np.uint8)
  rgb = resize_panel(rgb, shown.shape[:2], Image.NEAREST)
  return np.round(alpha * rgb + (1.0 - alpha) * shown).astype(np.uint8)


def cluster_figure(image, cluster_assignments, panoptic, dataset_info, *,
                   layer_strides, num_centers=None, panel_size=256,
                   columns=4, cluster_alpha=0.75, cluster_confidence=None,
                   reference_masks=None):
  """uint8 [H', W', 3]: titled grid of input, per-layer clusters, panoptic.

  Args:
    image: uint8 [H, W, 3] input image.
    cluster_assignments: int [L, h, w] center index per pixel and kMaX layer
      (any h, w covering the image, e.g. stride 4).
    panoptic: int [H, W] final panoptic prediction of `image`.
    dataset_info: DatasetInfo of the panoptic labels.
    layer_strides: L ints, the stride each kMaX layer works at (titles).
    num_centers: size of the center palette (default: max index + 1).
    panel_size: longer side of each panel in pixels.
    columns: panels per row.
    cluster_alpha: weight of the center colors over the image.
    cluster_confidence: optional float [L, h, w] in [0, 1], the assignment's
      probability (a soft assignment drawn as its argmax): a center's color
      is as bright as the pixel's confidence, dark where it is unsure.
    reference_masks: optional pair (int [L, h, w] center of the strongest
      reference mask at each pixel, float [L, h, w] its value in (0, 1]):
      CMT-DeepLab's reference masks, one more panel per layer after the
      panoptic one, each center's Gaussian in its color.
  """
  image = np.asarray(image, np.uint8)
  assignments = np.asarray(cluster_assignments)
  if assignments.ndim != 3 or len(assignments) != len(layer_strides):
    raise ValueError(f'cluster_figure: expected [L, h, w] assignments with L '
                     f'= {len(layer_strides)} layers; found shape '
                     f'{assignments.shape}')
  size = fit(image.shape[0], image.shape[1], panel_size)
  colors = center_colors(num_centers or int(assignments.max()) + 1)
  shown = resize_panel(image, size)
  panels = [('input', shown)]
  for i, (layer, stride) in enumerate(zip(assignments, layer_strides)):
    confidence = (None if cluster_confidence is None
                  else cluster_confidence[i])
    panels.append((f'layer {i + 1} (stride {stride})', assignment_overlay(
        shown, layer, colors, confidence=confidence, alpha=cluster_alpha)))
  panoptic = np.asarray(panoptic)
  if panoptic.shape != image.shape[:2]:
    raise ValueError(f'cluster_figure: panoptic {panoptic.shape} and image '
                     f'{image.shape[:2]} differ in size')
  # The panel is drawn at its own size so the names are legible.
  panels.append(('panoptic', overlay(
      shown, resize_panel(panoptic.astype(np.int32), size, Image.NEAREST),
      dataset_info)))
  if reference_masks is not None:
    centers, values = (np.asarray(a) for a in reference_masks)
    if centers.shape != values.shape or len(centers) != len(layer_strides):
      raise ValueError(
          f'cluster_figure: expected reference masks as two [L, h, w] arrays '
          f'with L = {len(layer_strides)}; found shapes {centers.shape} and '
          f'{values.shape}')
    for i in range(len(layer_strides)):
      panels.append((f'layer {i + 1} reference masks', assignment_overlay(
          shown, centers[i], colors, confidence=values[i],
          alpha=cluster_alpha)))
  return grid(panels, columns=columns)


def grid(panels, *, columns, margin=6):
  """Lays out (title, uint8 [h, w, 3]) panels of one size on white."""
  height, width = panels[0][1].shape[:2]
  title_size = max(12, min(24, width // 14))
  title_font = font(title_size)
  title_height = title_size + 8
  columns = max(1, min(columns, len(panels)))
  rows = -(-len(panels) // columns)
  cell_w, cell_h = width + margin, height + title_height + margin
  canvas = Image.new('RGB', (columns * cell_w + margin,
                             rows * cell_h + margin), (255, 255, 255))
  draw = ImageDraw.Draw(canvas)
  for i, (title, array) in enumerate(panels):
    x = margin + (i % columns) * cell_w
    y = margin + (i // columns) * cell_h
    draw.text((x + width // 2, y + title_height // 2), title, fill=(0, 0, 0),
              font=title_font, anchor='mm')
    canvas.paste(Image.fromarray(array), (x, y + title_height))
  return np.asarray(canvas)


# Files -----------------------------------------------------------------------
def save_png(path, array):
  """Writes uint8 [H, W, 3] (or [H, W]) as PNG: temporary name, then rename."""
  with io_utils.replacing(path, 'wb') as f:
    Image.fromarray(np.asarray(array, np.uint8)).save(f, format='PNG')
