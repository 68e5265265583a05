"""Parity with DeepLab2 itself on the shared reference fixtures.

Each fixture (../shared/parity/<name>) holds the keys of a DeepLab2 kMaX
checkpoint (a script writes deterministic weights for them) and the outputs,
post-processed maps and intermediates DeepLab2 computed with those weights.
We import the checkpoint into the model of the matching zoo config and
compare with ../shared/parity/README.md's criteria; on failure the
intermediates say which stage first disagrees.
"""
import dataclasses
import json
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

import deeplab2_kmax
from deeplab2_kmax import config as config_lib
from deeplab2_kmax.model import kernels
from deeplab2_kmax.model import outputs
from deeplab2_kmax.model.post_processor import mask_wise_merging
from tests import conftest

pytestmark = pytest.mark.slow

# (ours, DeepLab2's name) of the final outputs.
_OUTPUTS = [
    (outputs.CLASS_LOGITS, 'transformer_class_logits'),
    (outputs.MASK_LOGITS, 'pixel_space_mask_logits'),
    (outputs.PIXEL_FEATURE, 'pixel_space_normalized_feature'),
    (outputs.SEMANTIC_LOGITS, 'semantic_logits'),
]


@dataclasses.dataclass(frozen=True)
class _Fixture:
  folder: str
  config: str  # under configs/
  size: str  # the fixture files' suffix
  entries: int  # checkpoint entries but global_step
  # DeepLab2's post-processing of the fixture: the config's evaluator
  # options with area limits and class thresholds 0 (its summary says so).
  overlap: float
  reorder_mask_weight: float
  intermediates: bool = True  # the fixture stores DeepLab2's intermediates


_FIXTURES = {
    'r50': _Fixture('deeplab2_kmax_r50', 'coco/kmax_deeplab/kmax_r50_os32',
                    '321', 1184, 0.8, 1.0),
    'convnext_tiny': _Fixture(
        'deeplab2_kmax_convnext_tiny',
        'coco/kmax_deeplab/kmax_convnext_tiny_os32', '321', 1102, 0.8, 1.0),
    'axial_r50': _Fixture(
        'deeplab2_kmax_axial_r50', 'coco/kmax_deeplab/kmax_axial_r50_os32',
        '321', 1410, 0.8, 1.0),
    'r50_cityscapes': _Fixture(
        'deeplab2_kmax_r50_cityscapes',
        'cityscapes/kmax_deeplab/kmax_r50_os32', '129x257', 1156, 0.9, 0.0,
        intermediates=False),
}


def _close_fraction(ours, reference):
  return np.isclose(np.asarray(ours), reference, rtol=1e-3, atol=1e-3).mean()


@pytest.fixture(scope='module', params=sorted(_FIXTURES))
def case(request, tmp_path_factory):
  """(fixture, config, model with the imported weights, reference arrays)."""
  parity = conftest.require_parity_fixture()
  fixture = _FIXTURES[request.param]
  folder = parity / fixture.folder
  prefix = tmp_path_factory.mktemp(request.param) / 'model'
  subprocess.run(
      [sys.executable, str(parity / 'make_reference_checkpoint.py'),
       str(folder / 'variables.tsv'), str(prefix)],
      check=True, capture_output=True)
  config = deeplab2_kmax.load_config(
      conftest.CONFIGS / f'{fixture.config}.textproto')
  model = deeplab2_kmax.build_model(config)
  loaded = deeplab2_kmax.load_deeplab2_checkpoint(model, str(prefix))
  assert loaded == fixture.entries  # every entry but global_step
  reference = {
      'outputs': np.load(folder / f'reference_outputs_{fixture.size}.npz'),
      'intermediates': (np.load(folder / 'reference_intermediates_'
                                f'{fixture.size}.npz')
                        if fixture.intermediates else None),
      'summary': json.loads(
          (folder / f'reference_summary_{fixture.size}.json').read_text()),
  }
  return fixture, config, model, reference


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
  if intermediates is None:
    return 'the fixture has no intermediates'
  ours = _intermediates(model, images)
  # Fixtures drop their largest intermediates; every one kept is ours too.
  assert set(intermediates.files) <= set(ours), set(intermediates.files) - set(
      ours)
  for name in intermediates.files:  # in data-flow order
    fraction = _close_fraction(ours[name], intermediates[name])
    if fraction < 0.999:
      return f'{name}: {fraction:.4%} of elements close'
  return 'no intermediate mismatch'


def _post_process(fixture, config, result, size):
  info = config_lib.dataset_info_for(config)
  options = mask_wise_merging.MergingOptions(
      pixel_confidence_threshold=0.4, thing_class_threshold=0.0,
      stuff_class_threshold=0.0, overlap_threshold=fixture.overlap,
      reorder_class_weight=1.0,
      reorder_mask_weight=fixture.reorder_mask_weight,
      thing_area_limit=0, stuff_area_limit=0)
  return mask_wise_merging.merge(
      result[outputs.CLASS_LOGITS], result[outputs.MASK_LOGITS], size,
      channel_to_semantic=info.channel_to_semantic(),
      num_things=info.num_things, label_divisor=info.label_divisor,
      ignore_label=info.ignore_label, options=options)


@pytest.mark.parametrize('policy', ['REFERENCE', 'CPU_OPTIMIZED'])
def test_outputs_match_deeplab2(case, policy):
  fixture, config, model, reference = case
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
  merged = _post_process(fixture, config, result, images.shape[1:3])
  panoptic = conftest.panoptic_agreement(merged['panoptic'].numpy()[0],
                                 ref['panoptic_pred'][0])
  if panoptic < 0.99:
    failures.append(f'panoptic map agrees on {panoptic:.4%} of pixels')
  if failures:
    with kernels.policy_scope(policy):
      stage = _first_mismatch(model, images, reference['intermediates'])
    pytest.fail('; '.join(failures) + f' (first stage off: {stage})')


@pytest.mark.parametrize('policy', ['REFERENCE', 'CPU_OPTIMIZED'])
@pytest.mark.parametrize(
    'case', [name for name, f in sorted(_FIXTURES.items()) if f.intermediates],
    indirect=True)
def test_intermediates_match_deeplab2(case, policy):
  _, _, model, reference = case
  images = tf.constant(reference['outputs']['input_image'])
  with kernels.policy_scope(policy):
    mismatch = _first_mismatch(model, images, reference['intermediates'])
  assert mismatch == 'no intermediate mismatch'
