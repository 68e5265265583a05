"""Draws the images of the synthetic panoptic data set (see synthetic.py).

A small data set that a tiny kMaX-DeepLab learns on a CPU in minutes, yet
only by learning shapes, textures and instances (not colours). The classes
come from `dataset_info.get_dataset_info('synthetic_panoptic')`: the thing
classes are shapes (disk, triangle, square) and the stuff classes textures
(stripes, checker, noise). Each image is drawn in layers:

1. Stuff: 2-3 stuff classes split the image along the argmax of as many
   smooth random fields (a 4x4 lattice upsampled to 12x12 plus 12x12 noise,
   then bilinearly upsampled to the image), which gives irregular, wavy
   boundaries. Each region is filled with its class texture in two random
   colours, so stuff is told apart by texture statistics, never by colour.
2. Void: sometimes 1-2 irregular blobs of coloured noise (segment id 0).
3. Crowd: sometimes a cluster of small shapes of one thing class, labelled
   as one segment with `iscrowd = 1`.
4. Things: 2-6 shapes of 16-50 px, each with a random colour (independent
   of the class), a linear shading gradient, pixel noise, sometimes an
   outline, random rotation and anti-aliased edges (a pixel belongs to the
   shape where it is at least half covered). Later shapes occlude earlier
   ones; some are placed to overlap an instance of the same class so that
   same-class instances touch. A placement that would leave an earlier thing
   less than `min_visible` of its own area is redrawn.
5. Segments left with fewer than `min_area` pixels become void.

Segment ids are distinct random values in [1, 2^24) (0 = void); areas and
boxes of `segments_info` are counted on the returned id map. Everything
random comes from the one np.random.Generator passed to `render`.
"""
import dataclasses
import math

import numpy as np

from deeplab2_kmax.data import dataset_info

DATASET = 'synthetic_panoptic'
MAX_SEGMENTS = 12


@dataclasses.dataclass(frozen=True)
class SyntheticOptions:
  """How the synthetic images are drawn (sizes in pixels)."""
  height: int = 144
  width: int = 144
  min_stuff: int = 2  # stuff regions per image
  max_stuff: int = 3
  min_things: int = 2  # thing instances tried per image
  max_things: int = 6
  min_thing_size: float = 16.0  # disk diameter / square side
  max_thing_size: float = 50.0
  touch_prob: float = 0.35  # a thing overlaps one of the same class
  min_visible: float = 0.4  # of a thing's area left after occlusion
  crowd_prob: float = 0.25  # an image has a crowd segment
  void_prob: float = 0.35  # an image has void blobs
  min_area: int = 16  # smaller segments become void

  def __post_init__(self):
    if min(self.height, self.width) < 32:
      raise ValueError(f'SyntheticOptions: image size {self.height}x'
                       f'{self.width} is too small; expected >= 32x32')
    if not 1 <= self.min_stuff <= self.max_stuff:
      raise ValueError(f'SyntheticOptions: expected 1 <= min_stuff <= '
                       f'max_stuff, got {self.min_stuff}, {self.max_stuff}')
    if not 0 <= self.min_things <= self.max_things:
      raise ValueError(f'SyntheticOptions: expected 0 <= min_things <= '
                       f'max_things, got {self.min_things}, {self.max_things}')
    if self.max_stuff + 1 + self.max_things > MAX_SEGMENTS:
      raise ValueError(
          f'SyntheticOptions: max_stuff + 1 crowd + max_things = '
          f'{self.max_stuff + 1 + self.max_things} segments; expected at '
          f'most {MAX_SEGMENTS}')
    if not 0 < self.min_thing_size <= self.max_thing_size:
      raise ValueError('SyntheticOptions: expected 0 < min_thing_size <= '
                       f'max_thing_size, got {self.min_thing_size}, '
                       f'{self.max_thing_size}')


@dataclasses.dataclass(frozen=True)
class Sample:
  """One drawn image and its COCO panoptic annotation."""
  image: np.ndarray  # uint8 [H, W, 3]
  segment_ids: np.ndarray  # int32 [H, W], 0 = void
  segments_info: list  # dicts: id, category_id, iscrowd, area, bbox


# Shapes ---------------------------------------------------------------------
# Each returns a distance-like field over pixel offsets (dx, dy) from the
# centre: <= 0 inside, and the distance to the nearest edge near the edges.
# `size` is the disk diameter or square side; triangles are drawn 1.2x larger
# so that the three shapes cover similar areas. All fit in a 0.7 * size
# radius; 0.55 * size is their mean radius, used to make shapes touch.
_OUTER_RADIUS = 0.7
_MEAN_RADIUS = 0.55


def _disk(dx, dy, size, angle):
  del angle  # a disk looks the same at any rotation
  return np.sqrt(dx * dx + dy * dy) - size / 2


def _square(dx, dy, size, angle):
  cos, sin = math.cos(angle), math.sin(angle)
  u, v = dx * cos + dy * sin, dy * cos - dx * sin
  return np.maximum(np.abs(u), np.abs(v)) - size / 2


def _triangle(dx, dy, size, angle):
  inradius = 1.2 * size / (2 * math.sqrt(3))  # equilateral, side 1.2 * size
  normals = [angle + 2 * math.pi / 3 * k for k in range(3)]
  return np.max([dx * math.cos(a) + dy * math.sin(a) for a in normals],
                axis=0) - inradius


_SHAPES = {'disk': _disk, 'triangle': _triangle, 'square': _square}


# Textures -------------------------------------------------------------------
# Each maps the pixel coordinates of a region (ys, xs: float32 [P]) to blend
# weights w in [0, 1] between two colours ([P]) and the std of the pixel
# noise added on top.


def _stripes(rng, ys, xs):
  angle, period = rng.uniform(0, math.pi), rng.uniform(6, 12)
  phase = (xs * math.cos(angle) + ys * math.sin(angle)) * (2 * math.pi / period)
  wave = np.sin(phase + rng.uniform(0, 2 * math.pi))
  return 0.5 + 0.5 * np.tanh(3 * wave), 6.0


def _checker(rng, ys, xs):
  angle, cell = rng.uniform(0, math.pi / 2), rng.uniform(4, 9)
  u = (xs * math.cos(angle) + ys * math.sin(angle)) / cell
  v = (ys * math.cos(angle) - xs * math.sin(angle)) / cell
  return (np.floor(u) + np.floor(v)) % 2, 6.0


def _noise(rng, ys, xs):
  rows, cols = ys.astype(np.int64), xs.astype(np.int64)
  height, width = int(rows.max()) + 1, int(cols.max()) + 1
  blotches = _smooth_field(rng, (), max(height, width) // 3 + 2, height, width)
  return np.clip(0.5 + 0.5 * blotches[rows, cols], 0, 1), 18.0


_TEXTURES = {'stripes': _stripes, 'checker': _checker, 'noise': _noise}


# Drawing --------------------------------------------------------------------


def _interp_weights(n_out, n_in):
  """Neighbours `low`, `low + 1` and weight `frac` of linear interpolation.

  Corners are aligned: output 0 and n_out - 1 sit on input 0 and n_in - 1.
  """
  pos = np.linspace(0, n_in - 1, n_out)
  low = np.minimum(np.floor(pos).astype(np.int64), n_in - 2)
  return low, (pos - low).astype(np.float32)


def _upsample(grid, height, width):
  """Bilinear upsampling (corners aligned) of [..., h, w] to [..., H, W]."""
  low, frac = _interp_weights(height, grid.shape[-2])
  rows = (grid[..., low, :] * (1 - frac)[:, None] +
          grid[..., low + 1, :] * frac[:, None])  # [..., H, w]
  low, frac = _interp_weights(width, grid.shape[-1])
  return rows[..., low] * (1 - frac) + rows[..., low + 1] * frac


def _smooth_field(rng, shape, grid, height, width):
  """[*shape, H, W]: N(0, 1) on a grid x grid lattice, bilinearly upsampled."""
  coarse = rng.standard_normal(tuple(shape) + (grid, grid)).astype(np.float32)
  return _upsample(coarse, height, width)


def _pixel_noise(rng, shape, std):
  """Zero-mean uniform noise with standard deviation `std` (fast to draw)."""
  return (rng.random(shape, np.float32) - 0.5) * np.float32(std * np.sqrt(12))


def _two_colours(rng):
  """A random colour and a darker, shifted partner: [2, 3] float."""
  light = rng.uniform(60, 255, 3)
  dark = light * rng.uniform(0.25, 0.6) + rng.uniform(-20, 20, 3)
  return np.stack([light, dark])[rng.permutation(2)]


def _window(cy, cx, radius, height, width):
  """Slices of the pixels within `radius` of (cy, cx), clipped to the image."""
  return (slice(max(int(cy - radius), 0), max(int(cy + radius) + 2, 0)),
          slice(max(int(cx - radius), 0), max(int(cx + radius) + 2, 0)))


@dataclasses.dataclass
class _Segment:
  category_id: int  # source id
  iscrowd: int
  full_area: int = 0  # pixels when drawn, before later occlusion; 0 = stuff


class _Canvas:
  """The image being drawn and the segment index of every pixel."""

  def __init__(self, height, width):
    self.ys, self.xs = np.mgrid[0:height, 0:width].astype(np.float32)
    self.image = np.zeros([height, width, 3], np.float32)  # [H, W, 3]
    self.index = np.zeros([height, width], np.int32)  # [H, W], 0 = void
    self.segments = [_Segment(0, 0)]  # per index; index 0 is void

  def add_segment(self, category_id, iscrowd):
    self.segments.append(_Segment(category_id, iscrowd))
    return len(self.segments) - 1

  def areas(self):
    """[num segments + 1]: visible pixels of each index (0 = void)."""
    return np.bincount(self.index.ravel(), minlength=len(self.segments))

  def shape_field(self, shape, cy, cx, size, angle):
    """(window, distance field [h, w]) of a shape centred at (cy, cx)."""
    window = _window(cy, cx, _OUTER_RADIUS * 1.2 * size + 1, *self.index.shape)
    dx, dy = self.xs[window] - float(cx), self.ys[window] - float(cy)
    return window, _SHAPES[shape](dx, dy, size, angle)

  def paint_thing(self, rng, window, distance, index):
    """Draws a shaded, noisy, anti-aliased shape and labels it `index`."""
    if not distance.size:
      return
    dx, dy = self.xs[window], self.ys[window]
    extent = max(float(distance.shape[0]), 1.0)
    slope = rng.uniform(-40, 40) / extent
    angle = rng.uniform(0, 2 * math.pi)
    shade = slope * (dx * math.cos(angle) + dy * math.sin(angle))  # [h, w]
    shade = shade - shade.mean()
    fill = (rng.uniform(0, 255, 3) + shade[..., None] +
            _pixel_noise(rng, distance.shape + (3,), 5))  # [h, w, 3]
    if rng.random() < 0.5:  # outline, darker or lighter than the fill
      edge = (distance > -1.5)[..., None]
      fill = np.where(edge, fill * rng.choice([0.5, 1.5]), fill)
    alpha = np.clip(0.5 - distance, 0, 1)[..., None]  # [h, w, 1]
    self.image[window] = self.image[window] * (1 - alpha) + fill * alpha
    self.index[window][distance <= 0] = index


def _draw_stuff(rng, canvas, stuff, options):
  """Splits the image between 2-3 stuff classes and fills their textures."""
  height, width = canvas.index.shape
  count = rng.integers(options.min_stuff, options.max_stuff + 1)
  count = min(count, len(stuff))
  classes = [stuff[i] for i in rng.choice(len(stuff), count, replace=False)]
  for _ in range(10):  # redraw layouts that leave a region under 10 %
    coarse = _smooth_field(rng, (count,), 4, 12, 12)  # [k, 12, 12]
    fine = rng.standard_normal(coarse.shape).astype(np.float32)
    fields = _upsample(coarse + 0.25 * fine, height, width)  # [k, H, W]
    region = np.argmax(fields, axis=0)  # [H, W]
    if np.bincount(region.ravel(), minlength=count).min() >= 0.1 * region.size:
      break
  for k, cls in enumerate(classes):
    mask = region == k  # [H, W]
    weight, std = _TEXTURES[cls.name](rng, canvas.ys[mask], canvas.xs[mask])
    weight = weight[:, None]  # [P, 1]
    colours = _two_colours(rng)
    canvas.image[mask] = (weight * colours[0] + (1 - weight) * colours[1] +
                          _pixel_noise(rng, weight.shape[:1] + (3,), std))
    canvas.index[mask] = canvas.add_segment(cls.source_id, 0)


def _draw_void(rng, canvas):
  """Paints 1-2 irregular blobs of coloured noise and marks them void."""
  height, width = canvas.index.shape
  for _ in range(rng.integers(1, 3)):
    cy, cx = rng.uniform(0, height), rng.uniform(0, width)
    radius = rng.uniform(5, 14)
    window = _window(cy, cx, 1.5 * radius, height, width)
    dist = np.hypot(canvas.xs[window] - cx, canvas.ys[window] - cy) / radius
    wobble = _smooth_field(rng, (), 4, *dist.shape)
    mask = dist - 1 + 0.35 * wobble <= 0  # [h, w]
    noise = rng.uniform(0, 255, 3) + _pixel_noise(rng, dist.shape + (3,), 30)
    canvas.image[window][mask] = noise[mask]
    canvas.index[window][mask] = 0


def _draw_crowd(rng, canvas, things):
  """A cluster of 5-9 small shapes of one class: one iscrowd segment."""
  height, width = canvas.index.shape
  cls = things[rng.integers(len(things))]
  cy, cx = rng.uniform(15, height - 15), rng.uniform(15, width - 15)
  index = canvas.add_segment(cls.source_id, 1)
  for _ in range(rng.integers(5, 10)):
    y = np.clip(cy + rng.normal(0, 7), 0, height - 1)
    x = np.clip(cx + rng.normal(0, 7), 0, width - 1)
    window, distance = canvas.shape_field(
        cls.name, y, x, rng.uniform(8, 13), rng.uniform(0, 2 * math.pi))
    canvas.paint_thing(rng, window, distance, index)
  canvas.segments[index].full_area = int(canvas.areas()[index])


def _draw_things(rng, canvas, things, options):
  """Draws 2-6 occluding instances; some touch one of the same class."""
  height, width = canvas.index.shape
  placed = []  # (class, cy, cx, size) of drawn instances
  for _ in range(rng.integers(options.min_things, options.max_things + 1)):
    for _ in range(10):  # tries to place this instance
      size = rng.uniform(options.min_thing_size, options.max_thing_size)
      if placed and rng.random() < options.touch_prob:
        cls, py, px, psize = placed[rng.integers(len(placed))]
        gap = _MEAN_RADIUS * (size + psize) * rng.uniform(0.8, 0.95)
        direction = rng.uniform(0, 2 * math.pi)
        cy = py + gap * math.sin(direction)
        cx = px + gap * math.cos(direction)
        if not (0 <= cy < height and 0 <= cx < width):
          continue
      else:
        cls = things[rng.integers(len(things))]
        cy = rng.uniform(size / 4, height - size / 4)
        cx = rng.uniform(size / 4, width - size / 4)
      window, distance = canvas.shape_field(
          cls.name, cy, cx, size, rng.uniform(0, 2 * math.pi))
      mask = distance <= 0  # [h, w]
      if mask.sum() < options.min_area:
        continue
      covered = np.bincount(canvas.index[window][mask],
                            minlength=len(canvas.segments))
      left = canvas.areas() - covered
      if any(left[i] < options.min_visible * segment.full_area
             for i, segment in enumerate(canvas.segments)):
        continue  # would hide too much of an earlier thing
      index = canvas.add_segment(cls.source_id, 0)
      canvas.paint_thing(rng, window, distance, index)
      canvas.segments[index].full_area = int(mask.sum())
      placed.append((cls, cy, cx, size))
      break


def _segments_info(segment_ids, segments):
  """COCO segments_info counted on the id map, for {segment id: _Segment}."""
  info = []
  for segment_id, segment in segments.items():
    mask = segment_ids == segment_id  # [H, W]
    rows = np.flatnonzero(np.any(mask, axis=1))
    cols = np.flatnonzero(np.any(mask, axis=0))
    info.append({
        'id': int(segment_id), 'category_id': int(segment.category_id),
        'iscrowd': int(segment.iscrowd), 'area': int(np.count_nonzero(mask)),
        'bbox': [int(cols[0]), int(rows[0]), int(cols[-1] - cols[0] + 1),
                 int(rows[-1] - rows[0] + 1)]})
  return info


SHAPE_NAMES = tuple(sorted(_SHAPES))  # thing classes that can be drawn
TEXTURE_NAMES = tuple(sorted(_TEXTURES))  # stuff classes


def check_classes(info=None):
  """Thing and stuff ClassInfo of `info` (default: the built-in data set's
  classes), checked against the drawers: a thing is drawn by its name's
  shape, a stuff class by its name's texture."""
  info = info or dataset_info.get_dataset_info(DATASET)
  things = [c for c in info.classes if c.is_thing]
  stuff = [c for c in info.classes if not c.is_thing]
  for group, drawers in ((things, _SHAPES), (stuff, _TEXTURES)):
    unknown = [c.name for c in group if c.name not in drawers]
    if unknown or not group:
      raise ValueError(
          f'dataset_info {info.name!r}: classes {unknown} have no drawer in '
          f'synthetic_render.py; expected thing names from '
          f'{sorted(_SHAPES)} and stuff names from {sorted(_TEXTURES)}, at '
          'least one of each')
  return things, stuff


def render(rng, options=None, info=None):
  """Draws one image with `rng` (a np.random.Generator); returns a Sample.
  `info`: the classes to draw (default: the built-in data set's), see
  check_classes; segments carry their source (category) ids."""
  options = options or SyntheticOptions()
  things, stuff = check_classes(info)
  canvas = _Canvas(options.height, options.width)
  _draw_stuff(rng, canvas, stuff, options)
  if rng.random() < options.void_prob:
    _draw_void(rng, canvas)
  if rng.random() < options.crowd_prob:
    _draw_crowd(rng, canvas, things)
  _draw_things(rng, canvas, things, options)

  areas = canvas.areas()  # [num segments + 1]
  small = areas < options.min_area
  small[0] = False
  canvas.index[small[canvas.index]] = 0  # too small or hidden: void
  kept = np.flatnonzero(~small)[1:]
  ids = rng.choice((1 << 24) - 1, size=len(canvas.segments),
                   replace=False).astype(np.int32) + 1
  ids[0] = 0
  segment_ids = ids[canvas.index]  # [H, W]
  kept_segments = {ids[i]: canvas.segments[i] for i in kept}
  image = np.clip(np.rint(canvas.image), 0, 255).astype(np.uint8)
  return Sample(image=image, segment_ids=segment_ids,
                segments_info=_segments_info(segment_ids, kept_segments))
