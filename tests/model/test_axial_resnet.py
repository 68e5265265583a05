"""Tests of the MaX-S pixel encoder (DeepLab2's `axial_resnet50`).

Shapes at several k*32+1 sizes with the same weights, and the parameter
count and key map against DeepLab2's checkpoint listing. The features equal
DeepLab2's in tests/checkpoints/test_deeplab2_parity.py (stage1..5 of the
whole model with the shared fixture's weights).
"""

import numpy as np
import pytest
import tensorflow as tf

from deeplab2_kmax.checkpoints import deeplab2_import
from deeplab2_kmax.model.layers import residual_blocks
from deeplab2_kmax.model.pixel_encoder import resnet
from tests import conftest

_FIXTURE = 'deeplab2_kmax_axial_r50'
_CHANNELS = {2: 128, 4: 256, 8: 512, 16: 1024, 32: 2048}


def _encoder():
  return resnet.ResNetEncoder('axial_resnet50', drop_path_keep_prob=0.8,
                              name='pixel_encoder')


@pytest.fixture(scope='module')
def built_encoder():
  encoder = _encoder()
  encoder(tf.zeros([1, 65, 65, 3]), training=False)
  return encoder


def test_block_layout_follows_deeplab2():
  """Axial blocks where the block's input stride is >= 16."""
  encoder = _encoder()
  kinds = [['axial' if isinstance(b, residual_blocks.AxialBlock)
            else 'bottleneck' for b in blocks] for blocks in encoder.stages]
  assert kinds == [['bottleneck'] * 3, ['bottleneck'] * 4,
                   ['bottleneck'] + ['axial'] * 5, ['axial'] * 3]
  assert encoder.stages[3][0].attention.strides == 2
  assert encoder.activation == 'gelu'
  assert encoder.output_channels == _CHANNELS
  # Linear drop-path schedule by the input stride (DeepLab2's rule).
  keep = [[b.drop_path_keep_prob for b in blocks] for blocks in encoder.stages]
  assert keep[1] == [1.0] * 4
  assert keep[2] == [1.0] + [pytest.approx(0.85)] * 5
  assert keep[3] == [pytest.approx(0.85), pytest.approx(0.8),
                     pytest.approx(0.8)]


@pytest.mark.slow
def test_endpoints_at_several_sizes_with_the_same_weights(built_encoder):
  """Not tied to a build size: 321, 385 and 129 with the weights built at
  65."""
  for size in (321, 385, 129):
    features = built_encoder(tf.zeros([1, size, size, 3]), training=False)
    assert sorted(features) == [2, 4, 8, 16, 32]
    for stride, feature in features.items():
      side = (size - 1) // stride + 1
      assert feature.shape == (1, side, side, _CHANNELS[stride]), (size,
                                                                   stride)


def test_resnet50_keeps_its_stem_and_relu():
  encoder = resnet.ResNetEncoder('resnet50')
  assert encoder.activation == 'relu'
  assert encoder.stem.kernel_size == 7 and encoder.stem.strides == 2
  assert not any(isinstance(b, residual_blocks.AxialBlock)
                 for blocks in encoder.stages for b in blocks)


def test_key_map_and_parameter_count_equal_deeplab2s(built_encoder):
  listing = conftest.parity_encoder_shapes(_FIXTURE)
  entries = deeplab2_import._encoder(built_encoder)  # pylint: disable=protected-access
  assert len(listing) == 491
  assert sorted(e.key for e in entries) == sorted(listing)
  assert {id(e.variable) for e in entries} == {
      id(v) for v in built_encoder.weights}
  for entry in entries:
    assert deeplab2_import.compatible_shapes(  # pylint: disable=protected-access
        listing[entry.key], entry.variable.shape), entry.key

  def size(shape):
    return int(np.prod(shape))
  moving = ('/moving_mean', '/moving_variance')
  theirs_trainable = sum(size(s) for k, s in listing.items()
                         if not k.endswith(moving))
  theirs_statistics = sum(size(s) for k, s in listing.items()
                          if k.endswith(moving))
  assert sum(size(v.shape) for v in built_encoder.trainable_weights) == (
      theirs_trainable)
  assert sum(size(v.shape) for v in built_encoder.non_trainable_weights) == (
      theirs_statistics)
  assert theirs_trainable + theirs_statistics == 41_487_808
