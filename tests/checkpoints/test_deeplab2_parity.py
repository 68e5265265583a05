"""Parity with DeepLab2 itself on the shared reference fixture.

The fixture (../shared/parity) holds a script that writes a DeepLab2-layout
kMaX R50 COCO checkpoint with deterministic weights, and the outputs and
intermediates that DeepLab2 computed with it. We import the checkpoint and
compare; on failure the intermediates say which stage first disagrees.
"""
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

import deeplab2_kmax
from deeplab2_kmax.model import kernels
from deeplab2_kmax.model import outputs
from tests import conftest

pytestmark = pytest.mark.slow

# (ours, DeepLab2's name) of the final outputs.
_OUTPUTS = [
    (outputs.CLASS_LOGITS, 'transformer_class_logits'),
    (outputs.MASK_LOGITS, 'pixel_space_mask_logits'),
    (outputs.PIXEL_FEATURE, 'pixel_space_normalized_feature'),
    (outputs.SEMANTIC_LOGITS, 'semantic_logits'),
]


def _close_fraction(ours, reference):
  return np.isclose(np.asarray(ours), reference, rtol=1e-3, atol=1e-3).mean()


@pytest.fixture(scope='module')
def reference():
  parity = conftest.require_parity_fixture()
  return {
      'outputs': np.load(parity / 'deeplab2_kmax_r50' /
                         'reference_outputs_321.npz'),
      'intermediates': np.load(parity / 'deeplab2_kmax_r50' /
                               'reference_intermediates_321.npz'),
  }


@pytest.fixture(scope='module')
def model(tmp_path_factory):
  parity = conftest.require_parity_fixture()
  prefix = tmp_path_factory.mktemp('reference') / 'model'
  subprocess.run(
      [sys.executable, str(parity / 'make_reference_checkpoint.py'),
       str(parity / 'deeplab2_kmax_r50' / 'variables.tsv'), str(prefix)],
      check=True, capture_output=True)
  config = deeplab2_kmax.load_config(conftest.COCO_CONFIG)
  kmax = deeplab2_kmax.build_model(config)
  loaded = deeplab2_kmax.load_deeplab2_checkpoint(kmax, str(prefix))
  assert loaded == 1184  # every entry but global_step
  return kmax


def _intermediates(model, images):
  """Our tensors under DeepLab2's intermediate names."""
  x = images / 127.5 - 1.0
  backbone = model.pixel_encoder(x, training=False)
  pixels = model.pixel_decoder(backbone, training=False)
  class_emb, mask_emb, auxiliary = model.transformer_decoder(
      pixels, training=False)
  result = {f'pixel_encoder/stage{i + 1}': backbone[2 ** (i + 1)]
            for i in range(5)}
  for i, stride in enumerate(sorted(pixels, reverse=True)):
    name = ('decoder_output' if stride == min(pixels)
            else f'decoder_stage{i + 1}')
    result[f'pixel_decoder/{name}'] = pixels[stride]
  result['transformer_decoder/transformer_class_feature'] = class_emb
  result['transformer_decoder/transformer_mask_feature'] = mask_emb
  for i, prediction in enumerate(auxiliary):
    for ours, theirs in _OUTPUTS[:3]:
      result[f'transformer_decoder/auxiliary_outputs_pred/{i}/{theirs}'] = (
          prediction[ours])
  return result


def _first_mismatch(model, images, intermediates):
  ours = _intermediates(model, images)
  assert set(ours) == set(intermediates.files)
  for name in intermediates.files:  # in data-flow order
    fraction = _close_fraction(ours[name], intermediates[name])
    if fraction < 0.999:
      return f'{name}: {fraction:.4%} of elements close'
  return 'no intermediate mismatch'


@pytest.mark.parametrize('policy', ['REFERENCE', 'CPU_OPTIMIZED'])
def test_outputs_match_deeplab2(model, reference, policy):
  ref = reference['outputs']
  images = tf.constant(ref['input_image'])
  with kernels.policy_scope(policy):
    result = model(images, training=False)
  failures = []
  for ours, theirs in _OUTPUTS:
    assert result[ours].shape == ref[theirs].shape, ours
    fraction = _close_fraction(result[ours], ref[theirs])
    if fraction < 0.999:
      failures.append(f'{ours}: {fraction:.4%} close')
  agreement = (np.argmax(result[outputs.MASK_LOGITS], -1) ==
               np.argmax(ref['pixel_space_mask_logits'], -1)).mean()
  if agreement < 0.995:
    failures.append(f'mask argmax agrees on {agreement:.4%} of pixels')
  if failures:
    with kernels.policy_scope(policy):
      stage = _first_mismatch(model, images, reference['intermediates'])
    pytest.fail('; '.join(failures) + f' (first stage off: {stage})')


@pytest.mark.parametrize('policy', ['REFERENCE', 'CPU_OPTIMIZED'])
def test_intermediates_match_deeplab2(model, reference, policy):
  images = tf.constant(reference['outputs']['input_image'])
  with kernels.policy_scope(policy):
    mismatch = _first_mismatch(model, images, reference['intermediates'])
  assert mismatch == 'no intermediate mismatch'

