"""Every model-zoo config builds DeepLab2's model for that checkpoint.

The parameter counts are DeepLab2's own, measured by running DeepLab2 on its
configs (scripts/deeplab2_parameter_counts.py wrote
tests/data/deeplab2_parameter_counts.json).
"""
import json

import numpy as np
import pytest
import tensorflow as tf

import deeplab2_kmax
from deeplab2_kmax import zoo_registry
from deeplab2_kmax.model import outputs
from deeplab2_kmax.model.pixel_encoder import variants
from tests import conftest

_COUNTS = conftest.REPO_ROOT / 'tests' / 'data' / 'deeplab2_parameter_counts.json'

# (dataset, our backbone tag, resolution suffix) of DeepLab2's 16 entries.
ZOO = ([(d, b, '') for d in ('coco', 'cityscapes')
        for b in ('r50', 'axial_r50', 'convnext_tiny', 'convnext_small',
                  'convnext_base', 'convnext_large')] +
       [('ade20k', b, r) for b in ('r50', 'convnext_large')
        for r in ('', '_res1281')])

_BACKBONES = {'r50': 'resnet50', 'axial_r50': 'axial_resnet50'}
# DeepLab2's backbone drop_path_keep_prob per data set and backbone; the
# transformer decoder's is 0.8 on COCO and Cityscapes, 1.0 on ADE20K.
_BACKBONE_KEEP = {
    'coco': {'r50': 1.0, 'axial_r50': 0.8, 'convnext_tiny': 0.7,
             'convnext_small': 0.6, 'convnext_base': 0.5,
             'convnext_large': 0.4},
    'cityscapes': {'r50': 1.0, 'axial_r50': 0.8, 'convnext_tiny': 0.8,
                   'convnext_small': 0.7, 'convnext_base': 0.6,
                   'convnext_large': 0.4},
    'ade20k': {'r50': 1.0, 'convnext_large': 0.3},
}


def _config_path(dataset, tag, resolution):
  return (conftest.CONFIGS / dataset / 'kmax_deeplab' /
          f'kmax_{tag}_os32{resolution}.textproto')


def _count(variables):
  return int(sum(np.prod(v.shape) for v in variables))


def test_sixteen_configs_parse_and_name_their_backbone():
  assert len(ZOO) == 16
  for dataset, tag, resolution in ZOO:
    config = deeplab2_kmax.load_config(_config_path(dataset, tag, resolution))
    assert config.model_options.backbone.name == _BACKBONES.get(tag, tag)
    assert config.train_dataset_options.dataset == f'{dataset}_panoptic'
    size = 1281 if resolution or dataset == 'coco' else 641
    expected = [1025, 2049] if dataset == 'cityscapes' else [size, size]
    assert list(config.eval_dataset_options.crop_size) == expected
    assert list(config.train_dataset_options.crop_size) == expected
    assert config.model_options.backbone.drop_path_keep_prob == (
        pytest.approx(_BACKBONE_KEEP[dataset][tag]))
    decoder = config.model_options.kmax_deeplab.transformer_decoder
    assert decoder.drop_path_keep_prob == pytest.approx(
        1.0 if dataset == 'ade20k' else 0.8)
    assert decoder.num_cluster_centers == (256 if dataset == 'cityscapes'
                                           else 128)
    strides = [s.stride for s in config.model_options.pixel_decoder.stages]
    assert strides[-1] == (2 if dataset == 'cityscapes' else 4)
    solver = config.trainer_options.solver_options
    assert solver.base_learning_rate == pytest.approx(
        3e-4 if dataset == 'cityscapes' else 5e-4)
    assert solver.backbone_learning_rate_multiplier == pytest.approx(0.1)
    assert config.trainer_options.num_steps == {
        'coco': 150000, 'cityscapes': 60000, 'ade20k': 100000}[dataset]
    assert config.train_dataset_options.batch_size == (
        32 if dataset == 'cityscapes' else 64)
    _assert_imagenet_start(config)


def _assert_imagenet_start(config):
  """The recipe starts from DeepLab2's ImageNet backbone, by zoo name."""
  model = config.model_options
  backbone = model.backbone.name
  if backbone.startswith('convnext'):
    assert not model.initial_checkpoint
    name = model.backbone.pretrained_weights
  else:
    assert not model.backbone.pretrained_weights
    assert model.initial_checkpoint_scope == (
        deeplab2_kmax.config.config_pb2.PIXEL_ENCODER)
    name = model.initial_checkpoint
  assert name.startswith('zoo:')
  entry = zoo_registry.REGISTRY[name[len('zoo:'):]]
  assert entry.kind == zoo_registry.IMAGENET and entry.backbone == backbone


def test_cmt_configs_start_from_imagenet_backbones_too():
  for path in sorted(conftest.CONFIGS.glob('*/cmt_deeplab/*.textproto')):
    _assert_imagenet_start(deeplab2_kmax.load_config(path))


@pytest.mark.slow
@pytest.mark.parametrize('dataset, tag, resolution', ZOO)
def test_parameter_count_equals_deeplab2(dataset, tag, resolution):
  counts = json.loads(_COUNTS.read_text())['configs']
  reference = counts[f'{dataset}/kmax_meta_{tag}_os32{resolution}']
  config = deeplab2_kmax.load_config(_config_path(dataset, tag, resolution))
  model = deeplab2_kmax.build_model(config)
  model(tf.zeros([1, 65, 65, 3]), training=False)
  assert _count(model.trainable_weights) == reference['trainable']
  assert _count(model.non_trainable_weights) == reference['non_trainable']
  assert _count(model.pixel_encoder.weights) == (
      reference['items']['encoder']['trainable'] +
      reference['items']['encoder']['non_trainable'])


@pytest.mark.slow
def test_convnext_cityscapes_masks_come_out_at_stride_4():
  """DeepLab2's Cityscapes decoder stage 'stride 2' fuses stage1, which on a
  ConvNeXt is the stride-4 stem output: the masks are at stride 4."""
  config = deeplab2_kmax.load_config(
      _config_path('cityscapes', 'convnext_tiny', ''))
  stride = variants.output_stride(
      config.model_options.backbone.name,
      [s.stride for s in config.model_options.pixel_decoder.stages])
  assert stride == 4
  model = deeplab2_kmax.build_model(config)
  result = model(tf.zeros([1, 65, 129, 3]), training=False)
  assert result[outputs.MASK_LOGITS].shape == (1, 17, 33, 256)
  assert result[outputs.SEMANTIC_LOGITS].shape == (1, 3, 5, 19)
