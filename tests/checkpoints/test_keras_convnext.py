"""Keras's ConvNeXt weights in our encoder: the same network, our paddings."""
import numpy as np
import pytest
import tensorflow as tf

import deeplab2_kmax
from deeplab2_kmax.checkpoints import deeplab2_import
from deeplab2_kmax.checkpoints import initial_checkpoint
from deeplab2_kmax.checkpoints import keras_convnext
from deeplab2_kmax.model import builder
from deeplab2_kmax.model.pixel_encoder import variants
from tests import conftest


def _randomized_keras(variant):
  model = keras_convnext.keras_convnext(variant, weights=None)
  rng = np.random.default_rng(0)
  for w in model.weights:  # every weight differs, layer scales included
    w.assign(rng.normal(0.0, 0.1, w.shape).astype(np.float32))
  return model


def _keras_features(model, variant, images):
  """Keras's own layers, composed with DeepLab2's paddings (ours)."""
  name, layer = variant, model.get_layer

  def block(x, prefix):
    y = layer(f'{prefix}_depthwise_conv')(x)
    y = layer(f'{prefix}_layernorm')(y)
    y = layer(f'{prefix}_gelu')(layer(f'{prefix}_pointwise_conv_1')(y))
    y = layer(f'{prefix}_layer_scale')(layer(f'{prefix}_pointwise_conv_2')(y))
    return x + y

  x = layer(f'{name}_stem')(tf.pad(images, [[0, 0], [1, 2], [1, 2], [0, 0]]))
  features = {2: x}
  for i, depth in enumerate(variants.CONVNEXT_VARIANTS[variant].depths):
    if i:
      x = layer(f'{name}_downsampling_block_{i - 1}')(
          tf.pad(x, [[0, 0], [0, 1], [0, 1], [0, 0]]))
    for j in range(depth):
      x = block(x, f'{name}_stage_{i}_block_{j}')
    features[2 ** (i + 2)] = x
  return features


def test_keras_weights_give_the_keras_networks_features():
  variant = 'convnext_tiny'
  source = _randomized_keras(variant)
  encoder = builder.build_pixel_encoder(variant)
  images = tf.random.stateless_uniform([1, 65, 65, 3], [1, 2]) * 2 - 1
  encoder(images)
  loaded, unused = keras_convnext.copy_weights(encoder, source)
  assert len(loaded) == len(encoder.weights)
  # Keras's final LayerNorm is the only weight we have no place for.
  assert sorted(unused) == ['layer_normalization/beta',
                            'layer_normalization/gamma']
  ours = encoder(images)
  theirs = _keras_features(source, variant, images)
  for stride, feature in ours.items():
    np.testing.assert_allclose(feature.numpy(), theirs[stride].numpy(),
                               atol=1e-5, rtol=1e-5, err_msg=str(stride))


@pytest.mark.slow
@pytest.mark.parametrize('variant', ['convnext_small', 'convnext_base',
                                     'convnext_large'])
def test_the_map_covers_every_size(variant):
  source = keras_convnext.keras_convnext(variant, weights=None)
  encoder = builder.build_pixel_encoder(variant)
  encoder(tf.zeros([1, 65, 65, 3]))
  pairs = keras_convnext.weight_pairs(encoder, source)
  assert len({id(ours) for ours, _ in pairs}) == len(encoder.weights)
  for ours, theirs in pairs:
    assert int(np.prod(ours.shape)) == int(np.prod(theirs.shape)), ours.path


def _convnext_config():
  text = conftest.TINY_CONFIG.read_text().replace(
      'name: "resnet_tiny"', 'name: "convnext_tiny"\n    pretrained_weights: "keras"')
  return deeplab2_kmax.config.parse_config(text)


def test_pretrained_weights_keras_loads_the_encoder_only(monkeypatch):
  config = _convnext_config()
  source = _randomized_keras('convnext_tiny')
  monkeypatch.setattr(keras_convnext, 'keras_convnext',
                      lambda variant, weights: source)
  model = deeplab2_kmax.build_model(config)
  deeplab2_import.ensure_built(model)
  report = initial_checkpoint.load_pretrained_weights(model, config)
  assert report.layout == 'keras' and report.scope == 'PIXEL_ENCODER'
  assert len(report.loaded) == len(model.pixel_encoder.weights)
  assert len(report.fresh) == len(model.weights) - len(report.loaded)
  stem = source.get_layer('convnext_tiny_stem').get_layer(
      'convnext_tiny_stem_conv')
  np.testing.assert_array_equal(model.pixel_encoder.stem_conv.kernel.numpy(),
                                stem.kernel.numpy())


def test_failed_download_is_a_one_line_error(monkeypatch):
  def unreachable(*args, **kwargs):
    raise OSError('URL fetch failure: no network')
  monkeypatch.setattr('keras.utils.get_file', unreachable)
  monkeypatch.setattr('keras.src.applications.convnext.file_utils.get_file',
                      unreachable, raising=False)
  config = _convnext_config()
  model = deeplab2_kmax.build_model(config)
  with pytest.raises(deeplab2_import.CheckpointMismatchError) as error:
    initial_checkpoint.load_pretrained_weights(model, config)
  message = str(error.value)
  assert 'pretrained_weights = "keras"' in message
  assert 'ConvNeXtTiny' in message and 'no network' in message
  assert '\n' not in message


def test_keras_weights_for_a_resnet_are_a_config_error():
  text = conftest.TINY_CONFIG.read_text().replace(
      'name: "resnet_tiny"', 'name: "resnet_tiny"\n    pretrained_weights: "keras"')
  with pytest.raises(deeplab2_kmax.ConfigError,
                     match='pretrained_weights.*only for the ConvNeXt'):
    deeplab2_kmax.config.parse_config(text)
