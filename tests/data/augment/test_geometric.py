"""Tests of augment/geometric.py on tiny hand-made images and labels.

Every op is run eagerly and inside tf.data (with unknown spatial sizes, as in
the input pipeline) and both results must be equal.
"""
import numpy as np
import pytest
import tensorflow as tf

from deeplab2_kmax.data.augment import geometric

VOID = 255000  # e.g. ignore_label 255 with label_divisor 1000


def _seed(value):
  return tf.constant([value, 11], tf.int64)


def _in_tf_data(fn, *arrays):
  """Runs fn(*arrays) inside Dataset.map with dynamic [H, W]; numpy out."""
  specs = tuple(
      tf.TensorSpec([None, None] + list(np.shape(a)[2:]),
                    tf.as_dtype(np.asarray(a).dtype)) for a in arrays)
  dataset = tf.data.Dataset.from_generator(
      lambda: iter([tuple(arrays)]), output_signature=specs)
  return tf.nest.map_structure(np.asarray, next(iter(dataset.map(fn))))


def _eager_and_tf_data(fn, *arrays):
  """Returns fn's eager result after checking tf.data gives the same."""
  eager = tf.nest.map_structure(np.asarray, fn(*arrays))
  graph = _in_tf_data(fn, *arrays)
  tf.nest.map_structure(np.testing.assert_array_equal, eager, graph)
  return eager


def _position_sample(height, width):
  """Image and label whose values encode the pixel position."""
  label = np.arange(height * width, dtype=np.int32).reshape(height, width)
  image = np.stack([label, label + 1000, label + 2000], -1).astype(np.float32)
  return image, label


# ---------------------------------------------------------------- resizing --


@pytest.mark.parametrize('size, kwargs, expected', [
    ((4, 6), dict(longer_side=9), (6, 9)),
    ((6, 4), dict(longer_side=9), (9, 6)),
    ((3, 7), dict(longer_side=10), (4, 10)),  # floor(30 / 7) = 4
    ((480, 640), dict(longer_side=1281), (960, 1281)),
    ((640, 640), dict(longer_side=1281), (1281, 1281)),
    # float32 arithmetic (DeepLab2) would give 1280 for the longer side.
    ((302, 200), dict(longer_side=1281), (1281, 848)),
    ((200, 302), dict(min_size=1281, max_size=1281), (848, 1281)),
    ((4, 6), dict(min_size=8), (8, 12)),
    ((4, 6), dict(min_size=8, max_size=10), (6, 10)),  # longer side capped
    ((4, 6), dict(min_size=8, max_size=12), (8, 12)),
    ((4, 6), dict(max_size=5), (3, 5)),  # only shrinks
    ((4, 6), dict(max_size=10), (4, 6)),
    ((4, 6), dict(longer_side=0, min_size=None), (4, 6)),
])
def test_resized_size(size, kwargs, expected):
  np.testing.assert_array_equal(geometric.resized_size(*size, **kwargs),
                                expected)


def test_resize_to_range_values_sizes_and_tf_data():
  image = np.array([[0, 10], [20, 30]], np.float32)[..., None].repeat(3, -1)
  label = np.array([[1, 2], [3, 4]], np.int32)
  resize = lambda i, l: geometric.resize_to_range(i, l, longer_side=3)
  out_image, out_label = _eager_and_tf_data(resize, image, label)
  # Corners aligned: bilinear means in between, labels nearest (ties up).
  np.testing.assert_allclose(out_image[..., 1], [[0, 5, 10], [10, 15, 20],
                                                 [20, 25, 30]])
  np.testing.assert_array_equal(out_label, [[1, 2, 2], [3, 4, 4], [3, 4, 4]])
  assert out_image.dtype == np.float32 and out_label.dtype == np.int32

  image, label = _position_sample(4, 6)
  resize = lambda i, l: geometric.resize_to_range(i, l, min_size=8,
                                                  max_size=10)
  out_image, out_label = _eager_and_tf_data(resize, image, label)
  assert out_image.shape == (6, 10, 3) and out_label.shape == (6, 10)
  assert set(np.unique(out_label)) <= set(label.ravel())


def test_resize_to_range_noop_and_errors():
  image, label = _position_sample(4, 6)
  out_image, out_label = geometric.resize_to_range(image, label)
  assert out_image is image and out_label is label
  out_image, out_label = geometric.resize_to_range(image, None, longer_side=3)
  assert out_label is None and out_image.shape == (2, 3, 3)
  with pytest.raises(ValueError, match='longer_side'):
    geometric.resize_to_range(image, label, longer_side=9, min_size=4)


# ------------------------------------------------------------ random scale --


def test_scale_grid():
  assert geometric.scale_grid(0.5, 1.5, 0.25) == (0.5, 0.75, 1.0, 1.25, 1.5)
  assert geometric.scale_grid(1.0, 1.0, 0.1) == (1.0,)
  assert geometric.scale_grid(0.5, 2.0, 0.0) == (0.5, 2.0)
  # Config values arrive as float32; the grid still has every 0.1 step.
  for low, high, count in ((0.3, 1.7, 15), (0.5, 2.0, 16)):
    grid = geometric.scale_grid(*(float(np.float32(v))
                                  for v in (low, high, 0.1)))
    assert len(grid) == count
    np.testing.assert_allclose(grid, np.arange(count) * 0.1 + low, atol=1e-6)
  with pytest.raises(ValueError, match='whole number of steps'):
    geometric.scale_grid(0.5, 1.0, 0.3)
  with pytest.raises(ValueError, match='min_scale'):
    geometric.scale_grid(1.5, 1.0, 0.1)


def test_random_scale_draws_grid_sizes():
  image, label = _position_sample(8, 12)
  sizes = set()
  for seed in range(40):
    scale = lambda i, l, s=seed: geometric.random_scale(
        i, l, _seed(s), min_scale=0.5, max_scale=1.5, step=0.25)
    out_image, out_label = (_eager_and_tf_data(scale, image, label)
                            if seed < 3 else scale(image, label))
    assert out_image.shape[:2] == out_label.shape
    assert set(np.unique(out_label)) <= set(label.ravel())
    sizes.add(tuple(out_label.shape))
  # Every grid point and nothing else: (8, 12) times 0.5, 0.75, ..., 1.5.
  assert sizes == {(4, 6), (6, 9), (8, 12), (10, 15), (12, 18)}


def test_random_scale_rounding_fixed_and_continuous():
  image, label = _position_sample(7, 9)
  # Truncation like DeepLab2: int(3.5) = 3, int(4.5) = 4.
  out_image, out_label = geometric.random_scale(
      image, label, _seed(0), min_scale=0.5, max_scale=0.5, step=0.1)
  assert out_image.shape == (3, 4, 3) and out_label.shape == (3, 4)
  # Scale 1 is a no-op.
  out_image, out_label = geometric.random_scale(
      image, label, _seed(0), min_scale=1.0, max_scale=1.0, step=0.1)
  assert out_image is image and out_label is label
  # Step 0: continuous factors in [0.5, 1.5).
  image = np.zeros([100, 100, 3], np.float32)
  heights = set()
  for seed in range(12):
    out_image, _ = geometric.random_scale(image, None, _seed(seed),
                                          min_scale=0.5, max_scale=1.5, step=0)
    assert 50 <= out_image.shape[0] < 150
    assert out_image.shape[0] == out_image.shape[1]
    heights.add(out_image.shape[0])
  assert len(heights) > 6


def test_random_scale_is_deterministic():
  image, label = _position_sample(8, 12)
  first = geometric.random_scale(image, label, _seed(5), min_scale=0.5,
                                 max_scale=1.5, step=0.25)
  second = geometric.random_scale(image, label, _seed(5), min_scale=0.5,
                                  max_scale=1.5, step=0.25)
  tf.nest.map_structure(np.testing.assert_array_equal, first, second)


# ------------------------------------------------------- padding, cropping --


def test_pad_to_size_values():
  image = np.full([2, 3, 3], 7.0, np.float32)
  label = np.full([2, 3], 1002, np.int32)
  pad = lambda i, l: geometric.pad_to_size(i, l, 4, 5, label_pad_value=VOID)
  out_image, out_label = _eager_and_tf_data(pad, image, label)
  expected_label = np.full([4, 5], VOID, np.int32)
  expected_label[:2, :3] = 1002
  np.testing.assert_array_equal(out_label, expected_label)
  expected_image = np.full([4, 5, 3], 127.5, np.float32)
  expected_image[:2, :3] = 7.0
  np.testing.assert_array_equal(out_image, expected_image)

  # Axes already larger stay as they are; the pad value follows the dtype.
  image = np.full([5, 2, 3], 7, np.uint8)
  out_image, out_label = geometric.pad_to_size(
      image, None, 3, 4, image_pad_value=127.5, label_pad_value=VOID)
  assert out_label is None and out_image.shape == (5, 4, 3)
  np.testing.assert_array_equal(out_image[:, 2:], 127)
  np.testing.assert_array_equal(out_image[:, :2], 7)


def test_random_crop_content_and_offsets():
  image, label = _position_sample(6, 8)
  offsets = set()
  for seed in range(80):
    crop = lambda i, l, s=seed: geometric.random_crop(i, l, 3, 4, _seed(s))
    out_image, out_label = (_eager_and_tf_data(crop, image, label)
                            if seed < 3 else crop(image, label))
    y, x = divmod(int(out_label[0, 0]), 8)
    np.testing.assert_array_equal(out_label, label[y:y + 3, x:x + 4])
    np.testing.assert_array_equal(out_image, image[y:y + 3, x:x + 4])
    offsets.add((y, x))
  # (6 - 3 + 1) * (8 - 4 + 1) = 20 possible offsets, all reachable.
  assert offsets == {(y, x) for y in range(4) for x in range(5)}


def test_random_crop_static_shape_and_errors():
  image, label = _position_sample(6, 8)
  specs = (tf.TensorSpec([None, None, 3]), tf.TensorSpec([None, None],
                                                         tf.int32))
  crop = tf.function(lambda i, l: geometric.random_crop(i, l, 3, 4, _seed(0)),
                     input_signature=specs)
  out_image, out_label = crop.get_concrete_function().structured_outputs
  assert out_image.shape.as_list() == [3, 4, 3]
  assert out_label.shape.as_list() == [3, 4]
  with pytest.raises(tf.errors.InvalidArgumentError, match='pad_to_size'):
    geometric.random_crop(image, label, 7, 4, _seed(0))
  with pytest.raises(tf.errors.InvalidArgumentError, match='label'):
    geometric.random_crop(image, label[:5], 3, 4, _seed(0))


# ----------------------------------------------------------------- flipping --


def test_random_flip():
  image, label = _position_sample(3, 4)
  flipped = 0
  for seed in range(200):
    flip = lambda i, l, s=seed: geometric.random_flip(i, l, _seed(s))
    out_image, out_label = (_eager_and_tf_data(flip, image, label)
                            if seed < 3 else flip(image, label))
    if out_label[0, 0] == label[0, 0]:
      np.testing.assert_array_equal(out_label, label)
      np.testing.assert_array_equal(out_image, image)
    else:
      np.testing.assert_array_equal(out_label, label[:, ::-1])
      np.testing.assert_array_equal(out_image, image[:, ::-1])
      flipped += 1
  assert 70 <= flipped <= 130  # p = 0.5 over 200 draws
  never = geometric.random_flip(image, label, _seed(1), prob=0.0)
  always = geometric.random_flip(image, None, _seed(1), prob=1.0)
  np.testing.assert_array_equal(never[1], label)
  np.testing.assert_array_equal(always[0], image[:, ::-1])
  assert always[1] is None


# --------------------------------------------------------------- evaluation --


def test_resize_and_pad_for_eval():
  image, label = _position_sample(4, 6)
  prepare = lambda i, l: geometric.resize_and_pad_for_eval(
      i, l, 9, 10, longer_side=9, label_pad_value=VOID)
  out_image, out_label, size = _eager_and_tf_data(prepare, image, label)
  np.testing.assert_array_equal(size, [6, 9])
  assert out_image.shape == (9, 10, 3) and out_label.shape == (9, 10)
  np.testing.assert_array_equal(out_label[6:], VOID)
  np.testing.assert_array_equal(out_label[:, 9:], VOID)
  np.testing.assert_array_equal(out_image[6:], 127.5)
  resized, resized_label = geometric.resize_to_range(image, label,
                                                     longer_side=9)
  np.testing.assert_array_equal(out_image[:6, :9], resized)
  np.testing.assert_array_equal(out_label[:6, :9], resized_label)

  # Without resizing, only padding; no label.
  out_image, out_label, size = geometric.resize_and_pad_for_eval(
      image, None, 5, 6, label_pad_value=VOID)
  assert out_label is None and out_image.shape == (5, 6, 3)
  np.testing.assert_array_equal(size, [4, 6])
  np.testing.assert_array_equal(out_image[:4], image)


def test_resize_and_pad_for_eval_rejects_large_images():
  image, label = _position_sample(4, 6)
  with pytest.raises(tf.errors.InvalidArgumentError, match='larger than'):
    geometric.resize_and_pad_for_eval(image, label, 5, 5, label_pad_value=VOID)
  with pytest.raises(tf.errors.InvalidArgumentError, match='larger than'):
    _in_tf_data(lambda i, l: geometric.resize_and_pad_for_eval(
        i, l, 9, 8, longer_side=9, label_pad_value=VOID), image, label)
