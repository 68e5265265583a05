"""Loading model_options.initial_checkpoint in either checkpoint layout."""
import numpy as np
import pytest
import tensorflow as tf

import deeplab2_kmax
from deeplab2_kmax.checkpoints import deeplab2_import
from deeplab2_kmax.checkpoints import initial_checkpoint
from tests import conftest
from tests.checkpoints import test_deeplab2_import as import_test


def _config_with_initial_checkpoint(path):
  text = conftest.TINY_CONFIG.read_text().replace(
      'model_options {', f'model_options {{\n  initial_checkpoint: "{path}"',
      1)
  return deeplab2_kmax.config.parse_config(text)


@pytest.fixture
def source(tiny_config):
  model = deeplab2_kmax.build_model(tiny_config)
  deeplab2_import.ensure_built(model)
  import_test._randomize(model, 11)  # pylint: disable=protected-access
  return model


def _fresh(config):
  model = deeplab2_kmax.build_model(config)
  deeplab2_import.ensure_built(model)
  return model


def _assert_same_weights(a, b):
  for x, y in zip(a.weights, b.weights):
    np.testing.assert_array_equal(x.numpy(), y.numpy())


def test_loads_our_checkpoint_through_an_environment_variable(
    source, tmp_path, monkeypatch):
  tf.train.Checkpoint(model=source).write(str(tmp_path / 'ours'))
  monkeypatch.setenv('KMAX_TEST_CKPT', str(tmp_path))
  config = _config_with_initial_checkpoint('${KMAX_TEST_CKPT}/ours')
  target = _fresh(config)
  assert initial_checkpoint.load_initial_checkpoint(target, config) == str(
      tmp_path / 'ours')
  _assert_same_weights(source, target)


def test_loads_a_deeplab2_checkpoint(tiny_config, source, tmp_path):
  import_test._write_deeplab2_checkpoint(source, tmp_path / 'dl2')  # pylint: disable=protected-access
  tiny_config.model_options.initial_checkpoint = str(tmp_path / 'dl2')
  target = _fresh(tiny_config)
  initial_checkpoint.load_initial_checkpoint(target, tiny_config)
  _assert_same_weights(source, target)


def test_unset_variable_is_an_error_naming_it_only_when_used():
  # Loading the config is fine.
  config = _config_with_initial_checkpoint(
      '${KMAX_SURELY_UNSET_VARIABLE}/ckpt')
  model = deeplab2_kmax.build_model(config)  # so is building
  with pytest.raises(deeplab2_kmax.ConfigError) as error:
    initial_checkpoint.load_initial_checkpoint(model, config)
  assert 'KMAX_SURELY_UNSET_VARIABLE' in str(error.value)
  assert 'model_options.initial_checkpoint' in str(error.value)


def test_empty_field_loads_nothing(tiny_config):
  model = deeplab2_kmax.build_model(tiny_config)
  assert initial_checkpoint.load_initial_checkpoint(model,
                                                    tiny_config) is None


def test_unreadable_path_is_a_clear_error(tiny_config, tmp_path):
  tiny_config.model_options.initial_checkpoint = str(tmp_path / 'missing')
  model = deeplab2_kmax.build_model(tiny_config)
  with pytest.raises(deeplab2_import.CheckpointMismatchError,
                     match='initial_checkpoint'):
    initial_checkpoint.load_initial_checkpoint(model, tiny_config)


@pytest.mark.slow
def test_loads_a_deeplab2_convnext_checkpoint(tmp_path):
  """ConvNeXt checkpoints have no encoder/_stem: found by their
  encoder/downsample_layers keys."""
  text = conftest.TINY_CONFIG.read_text().replace(
      'name: "resnet_tiny"', 'name: "convnext_tiny"')
  assert 'convnext_tiny' in text
  config = deeplab2_kmax.config.parse_config(text)
  source = _fresh(config)
  import_test._randomize(source, 5)  # pylint: disable=protected-access
  import_test._write_deeplab2_checkpoint(source, tmp_path / 'dl2')  # pylint: disable=protected-access
  assert initial_checkpoint.is_deeplab2_checkpoint(str(tmp_path / 'dl2'))
  config.model_options.initial_checkpoint = str(tmp_path / 'dl2')
  target = _fresh(config)
  initial_checkpoint.load_initial_checkpoint(target, config)
  _assert_same_weights(source, target)
