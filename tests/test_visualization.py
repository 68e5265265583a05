"""Colors of panoptic maps, overlays, the cluster figure and PNG writing."""
import os

import numpy as np
from PIL import Image
import pytest
import tensorflow as tf

from deeplab2_kmax import visualization
from deeplab2_kmax.data import dataset_info as dataset_info_lib

INFO = dataset_info_lib.get_dataset_info('synthetic_panoptic')
DIVISOR = INFO.label_divisor  # 256; void = 0
DISK, STRIPES = 1, 4  # a thing class and a stuff class


def _label(semantic, instance=0):
  return semantic * DIVISOR + instance


def test_panoptic_to_rgb_colors_classes_instances_and_void():
  disk = np.array(INFO.by_semantic_id()[DISK].color)  # (220, 20, 60)
  stripes = np.array(INFO.by_semantic_id()[STRIPES].color)
  panoptic = np.array([[_label(STRIPES), _label(DISK, 1), _label(DISK, 2)],
                       [_label(DISK), 0, _label(9)]])  # crowd, void, no class
  rgb = visualization.panoptic_to_rgb(panoptic, INFO)
  assert rgb.shape == (2, 3, 3) and rgb.dtype == np.uint8
  np.testing.assert_array_equal(rgb[0, 0], stripes)
  # Instances 1 and 2 get offsets -12 and +36 (clipped at 255).
  np.testing.assert_array_equal(rgb[0, 1], disk - 12)
  np.testing.assert_array_equal(rgb[0, 2], np.minimum(disk + 36, 255))
  np.testing.assert_array_equal(rgb[1, 0], disk)  # instance 0 keeps it
  np.testing.assert_array_equal(rgb[1, 1], [0, 0, 0])
  np.testing.assert_array_equal(rgb[1, 2], [0, 0, 0])


def test_instances_of_one_class_get_different_colors():
  panoptic = _label(DISK, np.arange(1, 12))[None]  # [1, 11]
  rgb = visualization.panoptic_to_rgb(panoptic, INFO)[0]
  assert len({tuple(c) for c in rgb}) == 11


def _random_panoptic(shape, seed=0):
  rng = np.random.default_rng(seed)
  semantic = rng.integers(0, 9, shape)  # 0 = void, 7, 8 = no class
  instance = rng.integers(0, 40, shape)
  return (semantic * DIVISOR + instance).astype(np.int32)


def test_tf_version_matches_numpy_eagerly_in_function_and_in_tf_data():
  panoptic = _random_panoptic([2, 9, 11])
  expected = visualization.panoptic_to_rgb(panoptic, INFO)
  eager = visualization.panoptic_to_rgb_tf(tf.constant(panoptic), INFO)
  assert eager.dtype == tf.uint8
  np.testing.assert_array_equal(eager, expected)

  @tf.function(input_signature=[tf.TensorSpec([None, None], tf.int32)])
  def colored(label):
    return visualization.panoptic_to_rgb_tf(label, INFO)

  np.testing.assert_array_equal(colored(panoptic[1]), expected[1])
  dataset = tf.data.Dataset.from_tensor_slices(panoptic).map(
      lambda label: visualization.panoptic_to_rgb_tf(label, INFO))
  for got, want in zip(dataset, expected):
    np.testing.assert_array_equal(got, want)


def test_boundaries_mark_both_sides_of_a_label_change():
  label = np.zeros([4, 5], np.int32)
  label[:, 3:] = 1
  edge = visualization.boundaries(label)
  np.testing.assert_array_equal(np.flatnonzero(edge.any(axis=0)), [2, 3])
  assert edge[:, 2:4].all()


def test_label_positions_are_inner_most_points():
  label = np.zeros([21, 31], np.int32)
  label[5:16, 10:21] = 7  # an 11x11 square centered at (10, 15)
  positions = visualization.label_positions(label, skip=(0,))
  assert positions == {7: (10, 15)}


def _square_scene(top, left, size=(48, 64)):
  panoptic = np.zeros(size, np.int32)
  panoptic[top:top + 16, left:left + 20] = _label(DISK, 1)
  image = np.full(size + (3,), 100, np.uint8)
  return image, panoptic


def test_overlay_blends_colors_keeps_void_and_draws_names():
  image, panoptic = _square_scene(16, 22)
  plain = visualization.overlay(image, panoptic, INFO, alpha=0.5,
                                draw_names=False)
  color = np.array(INFO.by_semantic_id()[DISK].color) - 12  # instance 1
  np.testing.assert_array_equal(plain[20, 30], np.round(
      0.5 * 100 + 0.5 * color))
  np.testing.assert_array_equal(plain[2, 2], [100, 100, 100])  # void
  np.testing.assert_array_equal(plain[16, 30], [255, 255, 255])  # boundary
  named = visualization.overlay(image, panoptic, INFO, font_size=10)
  changed = np.argwhere(np.any(named != plain, axis=-1))
  assert len(changed) > 20  # the word "disk"
  # The text is centred on the square's inner-most point (23, 31 or 32).
  center = changed.mean(axis=0)
  assert abs(center[0] - 23.5) < 4 and abs(center[1] - 31.5) < 6


def test_overlay_names_near_the_border_are_moved_inside():
  counts = []
  for top, left in ((16, 22), (0, 0)):
    image, panoptic = _square_scene(top, left)
    plain = visualization.overlay(image, panoptic, INFO, draw_names=False)
    named = visualization.overlay(image, panoptic, INFO, font_size=14)
    counts.append(np.count_nonzero(np.any(named != plain, axis=-1)))
  # A clipped word would lose about half of its pixels.
  assert counts[1] > 0.8 * counts[0]


def test_overlay_names_no_segment_smaller_than_the_text():
  image, panoptic = _square_scene(16, 22)
  panoptic[2:6, 2:6] = _label(STRIPES)  # 16 pixels < 10 * 10 / 2
  plain = visualization.overlay(image, panoptic, INFO, draw_names=False)
  named = visualization.overlay(image, panoptic, INFO, font_size=10)
  changed = np.argwhere(np.any(named != plain, axis=-1))
  assert len(changed) > 20 and changed[:, 0].min() > 8  # only "disk"


def test_overlay_rejects_sizes_that_differ():
  with pytest.raises(ValueError, match='differ in size'):
    visualization.overlay(np.zeros([4, 4, 3], np.uint8),
                          np.zeros([4, 5], np.int32), INFO)


def test_center_colors_are_distinct_and_deterministic():
  colors = visualization.center_colors(128)
  assert colors.shape == (128, 3) and colors.dtype == np.uint8
  assert len({tuple(c) for c in colors}) == 128
  np.testing.assert_array_equal(colors[:16], visualization.center_colors(16))


def test_cluster_figure_colors_each_center_alike_in_every_layer():
  image = np.zeros([30, 40, 3], np.uint8)
  panoptic = np.zeros([30, 40], np.int32)
  assignments = np.stack([np.full([8, 10], 5), np.full([8, 10], 9),
                          np.full([8, 10], 5)])  # [L, h, w]
  figure = visualization.cluster_figure(
      image, assignments, panoptic, INFO, layer_strides=(32, 16, 8),
      num_centers=16, panel_size=40, columns=3, cluster_alpha=1.0)
  assert figure.dtype == np.uint8 and figure.ndim == 3
  colors = visualization.center_colors(16)
  panel_area = 30 * 40  # the image already has the panel size

  def count(color):
    return np.count_nonzero(np.all(figure == color, axis=-1))

  assert count(colors[5]) == 2 * panel_area  # layers 1 and 3
  assert count(colors[9]) == panel_area
  # 5 panels in rows of 3: the figure is wider than tall, two panel rows.
  assert 3 * 40 < figure.shape[1] < 3 * 40 + 40
  assert 2 * 30 < figure.shape[0] < 2 * (30 + 40)


def test_cluster_figure_checks_the_number_of_layers():
  with pytest.raises(ValueError, match='3 layers'):
    visualization.cluster_figure(
        np.zeros([8, 8, 3], np.uint8), np.zeros([2, 2, 2], np.int32),
        np.zeros([8, 8], np.int32), INFO, layer_strides=(32, 16, 8))


def test_save_png_round_trips_and_leaves_no_temporary_file(tmp_path):
  array = np.random.default_rng(0).integers(0, 256, [7, 9, 3], np.uint8)
  path = tmp_path / 'sub' / 'picture.png'
  visualization.save_png(str(path), np.zeros_like(array))
  visualization.save_png(str(path), array)  # replaces the first one
  with Image.open(path) as image:
    np.testing.assert_array_equal(np.asarray(image), array)
  assert os.listdir(tmp_path / 'sub') == ['picture.png']
