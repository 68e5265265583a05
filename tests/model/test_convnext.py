"""The ConvNeXt pixel encoder: shapes, parameter counts, the DeepLab2 key
map and drop path. Its features equal DeepLab2's in
tests/checkpoints/test_deeplab2_parity.py (stage1..5 of the whole model).
"""
# pylint: disable=protected-access

import keras
import numpy as np
import pytest
import tensorflow as tf

from deeplab2_kmax.checkpoints import deeplab2_import
from deeplab2_kmax.model.pixel_encoder import convnext
from tests import conftest

_FIXTURE = 'deeplab2_kmax_convnext_tiny'

# (depths, dims) of DeepLab2's `convnext.get_model`, written out again here.
_ARCHITECTURES = {
    'convnext_tiny': ((3, 3, 9, 3), (96, 192, 384, 768)),
    'convnext_small': ((3, 3, 27, 3), (96, 192, 384, 768)),
    'convnext_base': ((3, 3, 27, 3), (128, 256, 512, 1024)),
    'convnext_large': ((3, 3, 27, 3), (192, 384, 768, 1536)),
}
# Encoder parameters; also what keras.applications.ConvNeXt* (include_top=
# False) has minus its final LayerNorm (2 * dims[-1]).
_PARAMS = {
    'convnext_tiny': 27_818_592,
    'convnext_small': 49_453_152,
    'convnext_base': 87_564_416,
    'convnext_large': 196_227_264,
}


def _deeplab2_params(depths, dims):
  """Parameter count of DeepLab2's ConvNeXt from its layer list."""
  stem = 4 * 4 * 3 * dims[0] + dims[0] + 2 * dims[0]  # conv + LN
  downsampling = sum(2 * dims[i - 1] + 2 * 2 * dims[i - 1] * dims[i] + dims[i]
                     for i in range(1, 4))  # LN + conv
  def block(c):  # depthwise conv, LN, pointwise 1 and 2, layer scale
    return (7 * 7 * c + c) + 2 * c + (c * 4 * c + 4 * c) + (4 * c * c + c) + c
  return stem + downsampling + sum(d * block(c) for d, c in zip(depths, dims))


def _built(variant='convnext_tiny', size=33, **kwargs):
  encoder = convnext.ConvNeXtEncoder(variant, **kwargs)
  encoder(tf.zeros([1, size, size, 3]))
  return encoder


@pytest.mark.parametrize('height,width,sizes', [
    (321, 321, [(81, 81), (81, 81), (41, 41), (21, 21), (11, 11)]),
    (75, 100, [(19, 25), (19, 25), (10, 13), (5, 7), (3, 4)]),
])
def test_endpoint_shapes(height, width, sizes):
  encoder = convnext.ConvNeXtEncoder('convnext_tiny')
  features = encoder(tf.zeros([2, height, width, 3]))
  assert sorted(features) == [2, 4, 8, 16, 32]
  assert encoder.output_channels == {2: 96, 4: 96, 8: 192, 16: 384, 32: 768}
  for (stride, feature), (h, w) in zip(sorted(features.items()), sizes):
    assert feature.shape == (2, h, w, encoder.output_channels[stride])
  assert encoder.activation == 'gelu'


@pytest.mark.parametrize('variant', [
    'convnext_tiny', 'convnext_small', 'convnext_base',
    pytest.param('convnext_large', marks=pytest.mark.slow)])
def test_parameter_count_matches_deeplab2(variant):
  expected = _deeplab2_params(*_ARCHITECTURES[variant])
  assert expected == _PARAMS[variant]
  assert _built(variant).count_params() == expected


def test_tiny_parameter_count_matches_fixture():
  entries = conftest.parity_encoder_shapes(_FIXTURE)
  assert sum(int(np.prod(s)) for s in entries.values()) == (
      _PARAMS['convnext_tiny'])


def test_key_map_covers_fixture_keys_exactly():
  expected = conftest.parity_encoder_shapes(_FIXTURE)
  assert len(expected) == 178
  encoder = _built()
  entries = deeplab2_import._encoder(encoder)
  assert sorted(e.key for e in entries) == sorted(expected)
  assert ({id(e.variable) for e in entries} ==
          {id(v) for v in encoder.weights})
  assert len(entries) == len(encoder.weights)
  for entry in entries:
    ours = list(entry.variable.shape)
    theirs = expected[entry.key]
    assert int(np.prod(ours)) == int(np.prod(theirs)), entry.key
    assert deeplab2_import.compatible_shapes(theirs, ours), entry.key


def test_drop_path_keep_rates():
  encoder = convnext.ConvNeXtEncoder('convnext_tiny', drop_path_keep_prob=0.7)
  rates = [b.drop_path.keep_prob for blocks in encoder.stages for b in blocks]
  np.testing.assert_allclose(rates, np.linspace(1.0, 0.7, 18), atol=1e-7)
  assert rates[0] == 1.0


def test_drop_path_training_only():
  x = tf.random.stateless_normal([32, 5, 5, 8], seed=[1, 2])
  keep_all = convnext.ConvNeXtBlock(8, drop_path_keep_prob=1.0)
  dropping = convnext.ConvNeXtBlock(8, drop_path_keep_prob=0.5)
  for block in (keep_all, dropping):
    block(x)
    block.layer_scale.assign(tf.ones([8]))  # make the branch visible
  np.testing.assert_array_equal(keep_all(x, training=True), keep_all(x))
  inference = dropping(x)
  np.testing.assert_array_equal(dropping(x), inference)
  trained = dropping(x, training=True)
  # Per sample: either the input (dropped branch) or x + 2 * branch.
  dropped = np.all(np.asarray(trained) == np.asarray(x), axis=(1, 2, 3))
  assert 0 < dropped.sum() < 32
  np.testing.assert_allclose(
      np.asarray(trained)[~dropped],
      np.asarray(x + 2 * (inference - x))[~dropped], rtol=1e-5, atol=1e-5)
  assert not np.array_equal(dropping(x, training=True), trained)


def test_encoder_stochastic_in_training_deterministic_in_inference():
  encoder = _built(drop_path_keep_prob=0.5)
  for blocks in encoder.stages:
    for block in blocks:
      block.layer_scale.assign(tf.ones_like(block.layer_scale))
  images = tf.random.stateless_uniform([4, 33, 33, 3], seed=[3, 4])
  first, second = encoder(images), encoder(images)
  a, b = encoder(images, training=True), encoder(images, training=True)
  for stride in first:
    np.testing.assert_array_equal(first[stride], second[stride])
  np.testing.assert_array_equal(a[2], b[2])  # the stem has no drop path
  assert not np.array_equal(a[32], b[32])


def test_config_round_trip():
  encoder = convnext.ConvNeXtEncoder('convnext_small', drop_path_keep_prob=0.6,
                                     name='encoder')
  clone = keras.layers.deserialize(keras.layers.serialize(encoder))
  assert isinstance(clone, convnext.ConvNeXtEncoder)
  assert clone.get_config() == encoder.get_config()
  assert [len(s) for s in clone.stages] == [3, 3, 27, 3]


def test_unknown_variant_names_the_choices():
  with pytest.raises(ValueError, match='convnext_tiny'):
    convnext.ConvNeXtEncoder('convnext_huge')
