"""Building models from every config: shapes, parameter counts, variants."""
import numpy as np
import pytest
import tensorflow as tf

import deeplab2_kmax
from deeplab2_kmax.model import outputs
from tests import conftest


def _count(variables):
  return int(sum(np.prod(v.shape) for v in variables))


@pytest.mark.slow
def test_coco_r50_parameter_counts_equal_deeplab2():
  config = deeplab2_kmax.load_config(conftest.COCO_CONFIG)
  model = deeplab2_kmax.build_model(config)
  model(tf.zeros([1, 65, 65, 3]), training=False)
  assert _count(model.trainable_weights) == 72_436_862
  assert _count(model.non_trainable_weights) == 213_934
  assert _count(model.pixel_encoder.trainable_weights) == 23_508_032
  assert _count(model.pixel_decoder.trainable_weights) == 21_151_040
  assert _count(model.transformer_decoder.trainable_weights) == 11_747_472


@pytest.mark.slow
@pytest.mark.parametrize('dataset, size, classes, centers, stride', [
    ('coco', (65, 65), 134, 128, 4),
    ('ade20k', (65, 97), 151, 128, 4),
    ('cityscapes', (65, 129), 20, 256, 2),
])
def test_reference_configs_build_with_documented_shapes(dataset, size,
                                                        classes, centers,
                                                        stride):
  config = deeplab2_kmax.load_config(
      conftest.CONFIGS / dataset / 'kmax_deeplab' / 'kmax_r50_os32.textproto')
  model = deeplab2_kmax.build_model(config)
  h, w = size
  result = model(tf.zeros([1, h, w, 3]), training=False)
  mh, mw = (h - 1) // stride + 1, (w - 1) // stride + 1
  assert result[outputs.CLASS_LOGITS].shape == (1, centers, classes)
  assert result[outputs.MASK_LOGITS].shape == (1, mh, mw, centers)
  assert result[outputs.PIXEL_FEATURE].shape == (1, mh, mw, 128)
  semantic = result[outputs.SEMANTIC_LOGITS]
  assert semantic.shape[0] == 1 and semantic.shape[-1] in (classes - 1,
                                                           classes)
  strides = [32, 32, 16, 16, 8, 8]
  auxiliary = result[outputs.AUXILIARY_PREDICTIONS]
  assert len(auxiliary) == 6
  for prediction, s in zip(auxiliary, strides):
    assert prediction[outputs.MASK_LOGITS].shape == (
        1, (h - 1) // s + 1, (w - 1) // s + 1, centers)
    assert prediction[outputs.CLASS_LOGITS].shape == (1, centers, classes)


def test_tiny_model_outputs(tiny_config):
  model = deeplab2_kmax.build_model(tiny_config)
  result = model(tf.random.uniform([2, 129, 129, 3], 0, 255), training=False)
  assert result[outputs.CLASS_LOGITS].shape == (2, 16, 7)
  assert result[outputs.MASK_LOGITS].shape == (2, 33, 33, 16)
  assert result[outputs.PIXEL_FEATURE].shape == (2, 33, 33, 32)
  assert result[outputs.SEMANTIC_LOGITS].shape == (2, 33, 33, 7)
  norms = np.linalg.norm(result[outputs.PIXEL_FEATURE], axis=-1)
  np.testing.assert_allclose(norms, 1.0, rtol=1e-4)
  # The void logit carries the constant prior log((K) * 0.9 / 0.1).
  assert len(result[outputs.AUXILIARY_PREDICTIONS]) == 3


def test_cross_attention_activation_switch_changes_the_model(tiny_config):
  images = tf.random.uniform([1, 65, 65, 3], 0, 255, seed=4)
  results = {}
  for name in ('CLUSTER_ARGMAX', 'CLUSTER_SOFTMAX', 'SPATIAL_SOFTMAX'):
    text = conftest.TINY_CONFIG.read_text().replace(
        'cross_attention_activation: CLUSTER_ARGMAX',
        f'cross_attention_activation: {name}')
    config = deeplab2_kmax.config.parse_config(text)
    model = deeplab2_kmax.build_model(config)
    model(tf.zeros([1, 65, 65, 3]))
    for i, variable in enumerate(model.weights):  # identical weights
      variable.assign(np.random.RandomState(i).uniform(
          0.5, 1.0, variable.shape).astype(np.float32))
    results[name] = model(images)[outputs.CLASS_LOGITS].numpy()
  assert not np.allclose(results['CLUSTER_ARGMAX'],
                         results['CLUSTER_SOFTMAX'])
  assert not np.allclose(results['CLUSTER_SOFTMAX'],
                         results['SPATIAL_SOFTMAX'])


def test_cmt_meta_architecture_builds_cmt_layers(tiny_config):
  text = conftest.TINY_CONFIG.read_text().replace('kmax_deeplab {',
                                                  'cmt_deeplab {')
  config = deeplab2_kmax.config.parse_config(text)
  model = deeplab2_kmax.build_model(config)
  result = model(tf.zeros([1, 65, 65, 3]), training=False)
  layers = model.transformer_decoder.kmax_layers
  assert [type(layer).__name__ for layer in layers] == ['CMTLayer'] * 3
  assert result[outputs.MASK_LOGITS].shape == (1, 17, 17, 16)
  for prediction in result[outputs.AUXILIARY_PREDICTIONS]:
    assert (prediction[outputs.REFERENCE_MASKS].shape ==
            prediction[outputs.MASK_LOGITS].shape)


def test_config_without_dataset_is_a_clear_error(tiny_config):
  tiny_config.ClearField('train_dataset_options')
  tiny_config.ClearField('eval_dataset_options')
  with pytest.raises(deeplab2_kmax.ConfigError, match='number of classes'):
    deeplab2_kmax.build_model(tiny_config)
