"""The CMT layer and decoder: switches, state across layers, gradients, and
the reference-mask loss on a hand case."""
import dataclasses
import itertools

import keras
import numpy as np
import pytest
import tensorflow as tf

from deeplab2_kmax.model import outputs
from deeplab2_kmax.model.loss import reference_mask_loss
from deeplab2_kmax.model.transformer_decoder import cmt_layer
from deeplab2_kmax.model.transformer_decoder import cmt_transformer_decoder
from deeplab2_kmax.model.transformer_decoder import kmax_transformer_decoder

_SWITCHES = [f.name for f in dataclasses.fields(cmt_layer.CMTComponents)]


def _layer(**components):
  return cmt_layer.CMTLayer(
      7, components=cmt_layer.CMTComponents(**components), center_width=32,
      num_heads=4, ffn_width=64, embedding_dim=16, head_width=32)


def _inputs(h=9, w=13, channels=24, n=6, seed=0):
  pixels = tf.random.stateless_normal([2, h, w, channels], [seed, 1])
  centers = tf.random.stateless_normal([2, n, 32], [seed, 2])
  return pixels, centers


@pytest.mark.parametrize('off', [None] + _SWITCHES)
def test_each_switch_gives_the_documented_shapes(off):
  layer = _layer(**({off: False} if off else {}))
  pixels, centers = _inputs()
  _, _, _, state = layer(pixels, centers, training=False)
  new_centers, new_pixels, prediction, state = layer(pixels, centers, state,
                                                     training=True)
  assert new_centers.shape == (2, 6, 32)
  assert new_pixels.shape == pixels.shape
  assert prediction[outputs.MASK_LOGITS].shape == (2, 9, 13, 6)
  assert state['logits'].shape == (2, 9, 13, 6)
  has_reference = off != 'reference_masks'
  assert (outputs.REFERENCE_MASKS in prediction) == has_reference
  assert ('reference' in state) == has_reference
  if off == 'pixel_update':
    np.testing.assert_array_equal(new_pixels, pixels)


def test_all_switch_combinations_build_and_run():
  pixels, centers = _inputs(h=5, w=5, n=3)
  for values in itertools.product([False, True], repeat=len(_SWITCHES)):
    layer = _layer(**dict(zip(_SWITCHES, values)))
    _, _, _, state = layer(pixels, centers)
    result = layer(pixels, centers, state)
    assert all(np.all(np.isfinite(t)) for t in tf.nest.flatten(result))


def _open_residual_branches(layer):
  """Non-zero residual gammas (they start at 0), so every branch acts."""
  for variable in layer.weights:
    if variable.path.endswith('gamma'):
      variable.assign(tf.ones_like(variable))


@pytest.mark.parametrize('switch', ['assignment_residual', 'reference_masks'])
def test_previous_state_enters_the_assignment(switch):
  """The previous layer's logits (at another stride: resized) and its
  reference masks change this layer's assignment, each only when on."""
  pixels, centers = _inputs()
  coarse = {'logits': 3 * tf.random.stateless_normal([2, 5, 7, 6], [3, 3]),
            'reference': tf.random.stateless_normal([2, 6, 4], [4, 4])}
  results = {}
  for on in (True, False):
    others = {s: False for s in ('assignment_residual', 'reference_masks')
              if s != switch}
    keras.utils.set_random_seed(1)  # the same weights
    layer = _layer(**{switch: on}, **others)
    layer(pixels, centers)
    _open_residual_branches(layer)
    without = layer(pixels, centers, None)
    with_state = layer(pixels, centers, coarse)
    results[on] = [np.allclose(a, b) for a, b in zip(without[:2],
                                                     with_state[:2])]
  assert results[True] == [False, False]  # centers and pixels both move
  assert results[False] == [True, True]


def test_gradients_reach_pixels_through_the_soft_assignment():
  layer = _layer()
  pixels, centers = _inputs()
  layer(pixels, centers)
  _open_residual_branches(layer)
  with tf.GradientTape(persistent=True) as tape:
    tape.watch(pixels)
    new_centers, new_pixels, _, _ = layer(pixels, centers, training=True)
    center_loss = tf.reduce_sum(tf.square(new_centers))
    pixel_loss = tf.reduce_sum(tf.square(new_pixels - pixels))
  assert np.abs(tape.gradient(center_loss, pixels)).max() > 0
  gradient = tape.gradient(pixel_loss, pixels)
  assert np.abs(gradient).max() > 0
  # The pixel update's kernels learn.
  kernel = layer.pixel_update_conv.dense.kernel
  assert np.abs(tape.gradient(pixel_loss, kernel)).max() > 0


def test_reference_masks_are_gaussians_on_the_grid():
  grid = cmt_layer.coordinates(3, 5).numpy()[0]
  np.testing.assert_allclose(grid[0, 0], [-1, -1])
  np.testing.assert_allclose(grid[2, 4], [1, 1])
  np.testing.assert_allclose(grid[1, 2], [0, 0])
  # Center (0.5, 0), scales e^0 = 1 in x and e^-1 in y.
  log_mask = cmt_layer.log_reference_masks(
      tf.constant([[[0.5, 0.0, 0.0, -1.0]]]), 3, 5).numpy()[0, :, :, 0]
  x, y = grid[..., 0], grid[..., 1]
  expected = -0.5 * ((x - 0.5) ** 2 + (y / np.exp(-1.0)) ** 2)
  np.testing.assert_allclose(log_mask, expected, rtol=1e-6)


def test_reference_mask_loss_equals_numpy_on_a_hand_case():
  # 4 pixels, 2 GT masks, 3 centers; GT 0 <-> center 2, GT 1 <-> center 0.
  gt = np.array([[[1, 0], [1, 0], [0, 1], [0, 0]]], np.float32)  # [1, 4, 2]
  reference = np.array([[[0.1, 0.5, 0.9], [0.2, 0.5, 0.8], [0.9, 0.5, 0.1],
                         [0.3, 0.5, 0.4]]], np.float32)  # [1, 4, 3]
  assignment = np.zeros([1, 2, 3], np.float32)
  assignment[0, 0, 2] = assignment[0, 1, 0] = 1
  non_void = np.array([[1, 1, 1, 0]], np.float32)  # pixel 3 is void
  ref = reference * non_void[:, :, None]
  dice0 = 2 * (0.9 + 0.8) / (2 + (0.9 + 0.8 + 0.1))
  dice1 = 2 * 0.9 / (1 + (0.1 + 0.2 + 0.9))
  assert ref[0, 3].sum() == 0
  expected = ((1 - dice0) + (1 - dice1)) / 2
  loss = reference_mask_loss.reference_mask_dice_loss(
      tf.constant(reference), tf.constant(gt), tf.constant(assignment),
      tf.constant(non_void))
  np.testing.assert_allclose(loss.numpy(), [expected], rtol=1e-4)
  # No matched masks: 0, not NaN.
  empty = reference_mask_loss.reference_mask_dice_loss(
      tf.constant(reference), tf.constant(gt), tf.zeros([1, 2, 3]),
      tf.constant(non_void))
  np.testing.assert_array_equal(empty.numpy(), [0.0])


def test_decoder_updates_pixels_only_where_the_next_layer_reads_them():
  layout = [kmax_transformer_decoder.DecoderLayout(32, 2),
            kmax_transformer_decoder.DecoderLayout(16, 1)]
  decoder = cmt_transformer_decoder.CMTTransformerDecoder(
      layout, 7, num_centers=4, center_width=32, num_heads=4, ffn_width=64,
      embedding_dim=16, head_width=32)
  assert [layer.update_pixels for layer in decoder.kmax_layers] == [
      True, False, False]
  features = {32: tf.random.normal([1, 3, 3, 24]),
              16: tf.random.normal([1, 5, 5, 12])}
  class_embedding, mask_embedding, auxiliary = decoder(features)
  assert class_embedding.shape == mask_embedding.shape == (1, 4, 32)
  assert [p[outputs.MASK_LOGITS].shape[1] for p in auxiliary] == [3, 3, 5]
  config = decoder.get_config()
  clone = cmt_transformer_decoder.CMTTransformerDecoder.from_config(config)
  assert clone.components == decoder.components


def test_runs_under_mixed_precision_with_float32_state():
  """Keras casts layer inputs to bfloat16; the assignment stays float32."""
  keras.mixed_precision.set_global_policy('mixed_bfloat16')
  try:
    layer = _layer()
    pixels, centers = _inputs()
    _, _, _, state = layer(pixels, centers, training=True)
    new_centers, new_pixels, prediction, state = layer(
        pixels, centers, state, training=True)
  finally:
    keras.mixed_precision.set_global_policy('float32')
  assert state['logits'].dtype == tf.float32
  assert new_centers.dtype == tf.bfloat16
  assert new_pixels.shape == pixels.shape
  assert np.all(np.isfinite(
      tf.cast(prediction[outputs.REFERENCE_MASKS], tf.float32)))
