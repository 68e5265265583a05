"""A CMT-DeepLab checkpoint goes through export (SavedModel and LiteRT),
serving and predict like a kMaX one: no special case in the callers."""
import os

import numpy as np
import pytest
import tensorflow as tf
from google.protobuf import text_format

import deeplab2_kmax
from deeplab2_kmax import config as config_lib
from deeplab2_kmax import export
from deeplab2_kmax import predict
from deeplab2_kmax import serving
from deeplab2_kmax import visualization
from deeplab2_kmax import visualize_clusters
from deeplab2_kmax.model import outputs
from deeplab2_kmax.model.post_processor import mask_wise_merging
from tests import test_export

pytestmark = pytest.mark.slow


def _cmt_test_config(folder):
  """The export tests' tiny config with CMT layers, two per stride."""
  text = open(test_export.write_test_config(folder), encoding='utf-8').read()
  text = text.replace('kmax_deeplab {', 'cmt_deeplab {')
  config = deeplab2_kmax.config.parse_config(text)
  for stage in config.model_options.cmt_deeplab.transformer_decoder.stages:
    stage.num_layers = 2
  path = os.path.join(folder, 'cmt_test.textproto')
  with open(path, 'w', encoding='utf-8') as f:
    f.write(text_format.MessageToString(config))
  return path


@pytest.fixture(scope='module')
def cmt_export(tmp_path_factory):
  folder = tmp_path_factory.mktemp('cmt_export')
  config_file = _cmt_test_config(str(folder))
  config = deeplab2_kmax.load_config(config_file)
  model, _ = test_export.write_test_checkpoint(config,
                                               str(folder / 'model_dir'))
  output = folder / 'export' / '1'
  code = export.main([f'--config_file={config_file}',
                      f'--checkpoint={folder / "model_dir"}',
                      f'--output_dir={output}', '--format=all',
                      '--tflite_image_size=161,161'])
  assert code == 0
  return config, model, output


def test_saved_model_equals_the_in_process_cmt_model(cmt_export):
  config, model, output = cmt_export
  image = test_export.make_image(161, 161, seed=3)
  served = tf.saved_model.load(str(output)).signatures[
      serving.SERVING_DEFAULT](image=tf.constant(image))
  result = model(tf.constant(image[None], tf.float32), training=False)
  info = config_lib.dataset_info_for(config)
  merged = mask_wise_merging.merge(
      result[outputs.CLASS_LOGITS], result[outputs.MASK_LOGITS], (161, 161),
      channel_to_semantic=info.channel_to_semantic(),
      num_things=info.num_things, label_divisor=info.label_divisor,
      ignore_label=info.ignore_label,
      options=mask_wise_merging.MergingOptions.from_config(
          config.evaluator_options))
  assert int(served['num_segments']) >= 1
  agreement = np.mean(served['panoptic'].numpy() ==
                      merged['panoptic'][0].numpy())
  assert agreement >= 0.99


@pytest.mark.filterwarnings('ignore:.*tf.lite.Interpreter is deprecated')
def test_litert_model_equals_the_saved_model(cmt_export):
  _, _, output = cmt_export
  interpreter = tf.lite.Interpreter(
      model_path=str(output / export.TFLITE_FILE))
  run = interpreter.get_signature_runner(serving.SERVING_DEFAULT)
  served = tf.saved_model.load(str(output)).signatures[
      serving.SERVING_DEFAULT]
  image = test_export.make_image(161, 161, seed=4)
  lite = run(image=image)
  expected = served(image=tf.constant(image))
  assert np.mean(lite['panoptic'] == expected['panoptic'].numpy()) >= 0.99


def test_predict_writes_results_for_a_cmt_model(cmt_export, tmp_path):
  _, _, output = cmt_export
  folder = tmp_path / 'images'
  folder.mkdir()
  from PIL import Image  # pylint: disable=import-outside-toplevel
  Image.fromarray(test_export.make_image(seed=5)).save(folder / '1.png')
  code = predict.main([f'--saved_model={output}', f'--input={folder}',
                       f'--output_dir={tmp_path / "out"}'])
  assert code == 0
  assert (tmp_path / 'out' / 'predictions.json').exists()
  assert (tmp_path / 'out' / '1_overlay.png').exists()


def test_serving_returns_each_layers_reference_masks(cmt_export):
  config, model, output = cmt_export
  image = test_export.make_image(161, 161, seed=6)
  served = tf.saved_model.load(str(output)).signatures[
      serving.SERVING_DEFAULT](image=tf.constant(image))
  centers = served['reference_mask_centers'].numpy()
  values = served['reference_mask_values'].numpy()
  layers = model(tf.constant(image[None], tf.float32), training=False)[
      outputs.AUXILIARY_PREDICTIONS]
  assert centers.shape == values.shape == (len(layers), 41, 41)
  assert centers.dtype == np.int32 and values.dtype == np.float32
  num_centers = config.model_options.cmt_deeplab.transformer_decoder
  assert 0 <= centers.min() and centers.max() < (
      num_centers.num_cluster_centers)
  for layer, prediction in enumerate(layers):
    # Nearest resizing of the layer's [h, w] maps: every served value is
    # the highest reference mask at some pixel of that layer.
    masks = prediction[outputs.REFERENCE_MASKS][0].numpy()  # [h, w, N]
    highest = masks.max(axis=-1)
    assert np.isin(np.round(values[layer], 5), np.round(highest, 5)).all()
    assert np.isin(centers[layer], masks.argmax(axis=-1)).all()


@pytest.mark.filterwarnings('ignore:.*tf.lite.Interpreter is deprecated')
def test_litert_model_returns_the_reference_masks(cmt_export):
  _, _, output = cmt_export
  interpreter = tf.lite.Interpreter(
      model_path=str(output / export.TFLITE_FILE))
  lite = interpreter.get_signature_runner(serving.SERVING_DEFAULT)(
      image=test_export.make_image(161, 161, seed=7))
  expected = tf.saved_model.load(str(output)).signatures[
      serving.SERVING_DEFAULT](
          image=tf.constant(test_export.make_image(161, 161, seed=7)))
  np.testing.assert_allclose(lite['reference_mask_values'],
                             expected['reference_mask_values'].numpy(),
                             atol=1e-3)


def test_clustering_view_adds_a_reference_mask_panel_per_layer(
    cmt_export, tmp_path):
  config, _, output = cmt_export
  path = tmp_path / 'photo.png'
  image = test_export.make_image(seed=8)
  from PIL import Image  # pylint: disable=import-outside-toplevel
  Image.fromarray(image).save(path)
  figure_path = tmp_path / 'clusters.png'
  assert visualize_clusters.main([
      f'--saved_model={output}', f'--image={path}',
      f'--output={figure_path}', '--panel_size=64', '--columns=8']) == 0
  with Image.open(figure_path) as figure:
    figure = np.asarray(figure)
  predictor = predict.Predictor.from_saved_model(str(output))
  served = predictor(image)
  strides = predictor.layer_strides
  expected = visualization.cluster_figure(
      image, served['cluster_assignments'], served['panoptic'],
      predictor.dataset_info, layer_strides=strides,
      num_centers=predictor.num_centers, panel_size=64, columns=8,
      cluster_confidence=served['cluster_confidence'],
      reference_masks=(served['reference_mask_centers'],
                       served['reference_mask_values']))
  np.testing.assert_array_equal(figure, expected)
  without = visualization.cluster_figure(
      image, served['cluster_assignments'], served['panoptic'],
      predictor.dataset_info, layer_strides=strides,
      num_centers=predictor.num_centers, panel_size=64, columns=8)
  # input, 6 layers, panoptic (one row of 8), then 6 reference-mask panels.
  assert len(strides) == 6
  assert figure.shape[1] == without.shape[1]
  assert figure.shape[0] > 1.9 * without.shape[0]
