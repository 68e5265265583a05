"""The cluster-visualization command line."""
import numpy as np
from PIL import Image
import pytest

from deeplab2_kmax import export
from deeplab2_kmax.data import dataset_info
from deeplab2_kmax import visualization
from deeplab2_kmax import visualize_clusters
from tests import test_export


@pytest.fixture(scope='module')
def exported(tmp_path_factory):
  return test_export.shared_export(tmp_path_factory)


@pytest.fixture
def image_path(tmp_path):
  path = tmp_path / 'photo.png'
  Image.fromarray(test_export.make_image(seed=3)).save(path)
  return path


def _read(path):
  with Image.open(path) as image:
    return np.asarray(image)


@pytest.mark.slow
def test_figure_shows_each_layer_assignment_and_the_panoptic_result(
    exported, image_path, tmp_path):
  output = tmp_path / 'figures' / 'clusters.png'
  assert visualize_clusters.main([
      f'--saved_model={exported.saved_model}', f'--image={image_path}',
      f'--output={output}', '--panel_size=128']) == 0
  figure = _read(output)
  image = test_export.make_image(seed=3)
  served = exported.serve(image)
  expected = visualization.cluster_figure(
      image, served['cluster_assignments'], served['panoptic'],
      export.read_dataset_info(exported.saved_model),
      layer_strides=(32, 16, 8), num_centers=16, panel_size=128,
      cluster_confidence=served['cluster_confidence'])
  np.testing.assert_array_equal(figure, expected)
  # Five panels (input, three layers, panoptic), four per row: two rows.
  assert figure.shape[1] > 4 * 128 and figure.shape[0] > 2 * 107


def test_unreadable_image_is_reported_by_name(tmp_path, capsys):
  (tmp_path / 'bad.jpg').write_bytes(b'\xff\xd8\xff truncated')
  assert visualize_clusters.main([
      f'--saved_model={tmp_path}', f'--image={tmp_path / "bad.jpg"}',
      f'--output={tmp_path / "out.png"}']) == 1
  assert f'{tmp_path / "bad.jpg"}: cannot read the image' in (
      capsys.readouterr().err)
  assert not (tmp_path / 'out.png').exists()


def test_confidence_darkens_the_center_colors():
  image = np.full([8, 8, 3], 100, np.uint8)
  assignments = np.zeros([1, 8, 8], np.int32)
  confidence = np.ones([1, 8, 8], np.float32)
  confidence[0, :, 4:] = 0.0  # unsure on the right half
  panoptic = np.zeros([8, 8], np.int32)
  info = dataset_info.get_dataset_info('synthetic_panoptic')
  sure = visualization.cluster_figure(
      image, assignments, panoptic, info, layer_strides=(8,), panel_size=8,
      columns=3, cluster_alpha=1.0)
  unsure = visualization.cluster_figure(
      image, assignments, panoptic, info, layer_strides=(8,), panel_size=8,
      columns=3, cluster_alpha=1.0, cluster_confidence=confidence)
  assert sure.shape == unsure.shape
  difference = np.abs(sure.astype(int) - unsure.astype(int)).sum(axis=-1)
  assert difference.max() > 0  # the right half went dark
  assert unsure.astype(int).sum() < sure.astype(int).sum()


def test_reference_masks_add_one_panel_per_layer_in_the_centers_colors():
  image = np.full([8, 8, 3], 100, np.uint8)
  assignments = np.zeros([2, 8, 8], np.int32)
  panoptic = np.zeros([8, 8], np.int32)
  info = dataset_info.get_dataset_info('synthetic_panoptic')
  centers = np.zeros([2, 8, 8], np.int32)
  centers[1] = 1
  values = np.ones([2, 8, 8], np.float32)
  values[:, :, 4:] = 0.0
  plain = visualization.cluster_figure(
      image, assignments, panoptic, info, layer_strides=(16, 8),
      panel_size=8, columns=4, cluster_alpha=1.0)
  figure = visualization.cluster_figure(
      image, assignments, panoptic, info, layer_strides=(16, 8),
      panel_size=8, columns=4, cluster_alpha=1.0,
      reference_masks=(centers, values))
  # input, two layers, panoptic: one row; the two reference panels: another.
  assert figure.shape[1] == plain.shape[1]
  assert figure.shape[0] > plain.shape[0]
  np.testing.assert_array_equal(figure[:plain.shape[0]], plain)
  colors = visualization.center_colors(2)
  shown = np.full([8, 8, 3], 100, np.uint8)
  for layer in (0, 1):
    panel = visualization.assignment_overlay(
        shown, centers[layer], colors, confidence=values[layer], alpha=1.0)
    np.testing.assert_array_equal(panel[:, :4], np.broadcast_to(
        colors[layer], [8, 4, 3]))
    assert panel[:, 4:].max() == 0  # value 0: dark


def test_reference_masks_of_the_wrong_shape_are_an_error():
  info = dataset_info.get_dataset_info('synthetic_panoptic')
  with pytest.raises(ValueError, match='reference masks as two'):
    visualization.cluster_figure(
        np.zeros([8, 8, 3], np.uint8), np.zeros([2, 8, 8], np.int32),
        np.zeros([8, 8], np.int32), info, layer_strides=(16, 8),
        reference_masks=(np.zeros([1, 8, 8]), np.zeros([1, 8, 8])))
