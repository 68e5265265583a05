"""The DeepLab2 checkpoint importer on the tiny model: round trip, reshapes
of Conv1D kernels and per-head norms, and every kind of mismatch."""
import numpy as np
import pytest
import tensorflow as tf

import deeplab2_kmax
from deeplab2_kmax.checkpoints import deeplab2_import
from deeplab2_kmax.model import outputs

_SUFFIX = '/.ATTRIBUTES/VARIABLE_VALUE'


def _deeplab2_shape(key, value):
  """The shape DeepLab2 stores: Conv1D kernels [1, I, O], head norms [h]."""
  if key.endswith('/_conv/kernel') and value.ndim == 2:
    return value[None]
  if '_memory_attention/_batch_norm_similarity' in key:
    return value.reshape(-1)
  return value


def _write_deeplab2_checkpoint(model, prefix, drop=(), extra=None,
                               reshape=None):
  entries = {}
  for key, variable in deeplab2_import.deeplab2_variable_map(model):
    if key in drop:
      continue
    value = _deeplab2_shape(key, variable.numpy())
    if reshape and key in reshape:
      value = np.zeros(reshape[key], value.dtype)
    entries[key + _SUFFIX] = value
  entries['global_step' + _SUFFIX] = np.array(7, np.int64)
  entries['optimizer/iter' + _SUFFIX] = np.array(7, np.int64)
  for key, value in (extra or {}).items():
    entries[key + _SUFFIX] = value
  names = sorted(entries)
  tf.raw_ops.SaveV2(prefix=str(prefix), tensor_names=names,
                    shape_and_slices=[''] * len(names),
                    tensors=[tf.constant(entries[n]) for n in names])


def _randomize(model, seed):
  rng = np.random.default_rng(seed)
  for variable in model.weights:
    value = rng.uniform(0.5, 1.5, variable.shape).astype(np.float32)
    variable.assign(value)


@pytest.fixture
def tiny_pair(tiny_config):
  source = deeplab2_kmax.build_model(tiny_config)
  target = deeplab2_kmax.build_model(tiny_config)
  deeplab2_import.ensure_built(source)
  deeplab2_import.ensure_built(target)
  _randomize(source, 0)
  return source, target


def test_map_covers_every_weight_once(tiny_config):
  model = deeplab2_kmax.build_model(tiny_config)
  deeplab2_import.ensure_built(model)
  variable_map = deeplab2_import.deeplab2_variable_map(model)
  keys = [k for k, _ in variable_map]
  assert len(keys) == len(set(keys)) == len(model.weights)


def test_round_trip_reproduces_outputs(tiny_pair, tmp_path):
  source, target = tiny_pair
  _write_deeplab2_checkpoint(source, tmp_path / 'ckpt')
  count = deeplab2_kmax.load_deeplab2_checkpoint(target, str(tmp_path / 'ckpt'))
  assert count == len(source.weights)
  images = tf.random.uniform([1, 65, 65, 3], 0, 255, seed=1)
  expected = source(images, training=False)
  actual = target(images, training=False)
  for key in outputs.PREDICTION_KEYS + (outputs.SEMANTIC_LOGITS,):
    np.testing.assert_array_equal(actual[key], expected[key])


def test_missing_unused_and_mismatched_keys_are_all_listed(tiny_pair,
                                                           tmp_path):
  source, target = tiny_pair
  keys = [k for k, _ in deeplab2_import.deeplab2_variable_map(source)]
  missing = keys[3]
  mismatched = 'transformer_decoder/cluster_centers'
  _write_deeplab2_checkpoint(
      source, tmp_path / 'ckpt', drop=[missing],
      extra={'encoder/_stage9/_block1/_conv/kernel': np.zeros([1], np.float32)},
      reshape={mismatched: [1, 3, 3]})
  before = [v.numpy() for v in target.weights]
  with pytest.raises(deeplab2_import.CheckpointMismatchError) as error:
    deeplab2_kmax.load_deeplab2_checkpoint(target, str(tmp_path / 'ckpt'))
  message = str(error.value)
  assert '1 missing, 1 unused, 1 shape mismatches' in message
  assert missing in message
  assert 'encoder/_stage9/_block1/_conv/kernel' in message
  assert mismatched in message and '[1, 3, 3]' in message
  assert 'global_step' not in message and 'optimizer' not in message
  # Nothing was assigned.
  for old, variable in zip(before, target.weights):
    np.testing.assert_array_equal(old, variable.numpy())


def test_unreadable_checkpoint_is_a_clear_error(tiny_config, tmp_path):
  model = deeplab2_kmax.build_model(tiny_config)
  with pytest.raises(deeplab2_import.CheckpointMismatchError,
                     match='cannot read'):
    deeplab2_kmax.load_deeplab2_checkpoint(model, str(tmp_path / 'nothing'))
