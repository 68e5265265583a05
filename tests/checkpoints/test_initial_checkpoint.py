"""Loading model_options.initial_checkpoint in each layout and scope."""
import json

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
  report = initial_checkpoint.load_initial_checkpoint(target, config)
  assert report.checkpoint == str(tmp_path / 'ours')
  assert report.layout == 'deeplab2_kmax' and report.scope == 'ALL'
  assert len(report.loaded) == len(target.weights) and not report.fresh
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


# Scopes ---------------------------------------------------------------------
_SUFFIX = '/.ATTRIBUTES/VARIABLE_VALUE'


def _values(weights):
  return {w.path: w.numpy().copy() for w in weights}


def _custom_config(tmp_path, num_things, num_stuff):
  """The tiny config on a data set of its own classes."""
  categories = [{'id': i + 1, 'name': f'class{i + 1}',
                 'isthing': int(i < num_things), 'color': [i, 2 * i, 3 * i]}
                for i in range(num_things + num_stuff)]
  path = tmp_path / f'categories_{num_things}_{num_stuff}.json'
  path.write_text(json.dumps(categories))
  text = conftest.TINY_CONFIG.read_text().replace(
      'dataset: "synthetic_panoptic"',
      f'dataset: "custom"\n  categories_json: "{path}"')
  return deeplab2_kmax.config.parse_config(text)


def test_pixel_encoder_scope_loads_only_the_backbone(source, tiny_config,
                                                    tmp_path):
  tf.train.Checkpoint(model=source).write(str(tmp_path / 'ours'))
  target = _fresh(tiny_config)
  before = _values(target.weights)
  report = initial_checkpoint.restore(target, str(tmp_path / 'ours'),
                                      scope='PIXEL_ENCODER', where='test')
  encoder = {w.path for w in target.pixel_encoder.weights}
  assert set(report.loaded) == encoder
  assert set(report.fresh) == {w.path for w in target.weights} - encoder
  assert set(report.fresh.values()) == {
      'not in the pixel encoder (scope PIXEL_ENCODER)'}
  assert len(report.unused) == len(target.weights) - len(encoder)
  for ours, theirs in zip(target.weights, source.weights):
    expected = theirs.numpy() if ours.path in encoder else before[ours.path]
    np.testing.assert_array_equal(ours.numpy(), expected)


def test_all_but_class_layers_fine_tunes_to_another_class_set(
    source, tmp_path):
  tf.train.Checkpoint(model=source).write(str(tmp_path / 'ours'))
  config = _custom_config(tmp_path, num_things=2, num_stuff=1)
  config.model_options.initial_checkpoint = str(tmp_path / 'ours')
  target = _fresh(config)
  before = _values(target.weights)
  # Scope ALL: the class layers' shapes differ; an error that says what to
  # set, and no weight changed.
  with pytest.raises(deeplab2_import.CheckpointMismatchError) as error:
    initial_checkpoint.load_initial_checkpoint(target, config)
  message = str(error.value)
  assert 'ALL_BUT_CLASS_LAYERS' in message
  assert 'transformer_class_head' in message and 'semantic_last_layer' in (
      message)
  for w in target.weights:
    np.testing.assert_array_equal(w.numpy(), before[w.path])

  config.model_options.initial_checkpoint_scope = (
      deeplab2_kmax.config.config_pb2.ALL_BUT_CLASS_LAYERS)
  report = initial_checkpoint.load_initial_checkpoint(target, config)
  classes = {w.path for w in initial_checkpoint.class_layer_weights(target)}
  # The final class head, one per transformer layer, the semantic head's.
  num_layers = len(target.transformer_decoder.kmax_layers)
  assert len(classes) == 2 * (num_layers + 2)
  assert set(report.fresh) == classes
  source_values = {w.path: w.numpy() for w in source.weights}
  for w in target.weights:
    expected = before[w.path] if w.path in classes else source_values[w.path]
    np.testing.assert_array_equal(w.numpy(), expected)
  assert len(report.unused) == len(classes)  # the source's class layers


def _write_encoder_checkpoint(model, prefix, key_prefix, extra=()):
  """A backbone-only checkpoint in DeepLab2's keys: ImageNet-pretrained
  ResNets (`encoder/`), Model Garden ones (`backbone/_encoder/`) and
  ConvNeXt `pretrained_weights` (no prefix), plus a classifier."""
  entries = {}
  for key, variable in deeplab2_import.deeplab2_variable_map(model):
    if key.startswith('encoder/'):
      value = import_test._deeplab2_shape(key, variable.numpy())  # pylint: disable=protected-access
      entries[key_prefix + key[len('encoder/'):] + _SUFFIX] = value
  for key in ('classifier/kernel',) + tuple(extra):
    entries[key + _SUFFIX] = np.ones([4, 3], np.float32)
  names = sorted(entries)
  tf.raw_ops.SaveV2(prefix=str(prefix), tensor_names=names,
                    shape_and_slices=[''] * len(names),
                    tensors=[tf.constant(entries[n]) for n in names])


@pytest.mark.parametrize('key_prefix, layout', [
    ('encoder/', 'deeplab2'), ('backbone/_encoder/', 'deeplab2_garden'),
    ('', 'deeplab2_backbone')])
def test_imagenet_backbone_checkpoints_load_into_the_encoder(
    source, tiny_config, tmp_path, key_prefix, layout):
  _write_encoder_checkpoint(source, tmp_path / 'imagenet', key_prefix)
  target = _fresh(tiny_config)
  before = _values(target.weights)
  where = 'test'
  if layout == 'deeplab2':
    # Scope ALL asks for the whole model: the error says what to set.
    with pytest.raises(deeplab2_import.CheckpointMismatchError,
                       match='scope: PIXEL_ENCODER'):
      initial_checkpoint.restore(target, str(tmp_path / 'imagenet'),
                                 scope='ALL', where=where)
  report = initial_checkpoint.restore(target, str(tmp_path / 'imagenet'),
                                      scope='PIXEL_ENCODER', where=where)
  assert report.layout == layout and report.scope == 'PIXEL_ENCODER'
  assert report.unused == ['classifier/kernel']
  encoder = {w.path for w in target.pixel_encoder.weights}
  source_values = {w.path: w.numpy() for w in source.weights}
  for w in target.weights:
    expected = (source_values[w.path] if w.path in encoder
                else before[w.path])
    np.testing.assert_array_equal(w.numpy(), expected)


def test_missing_encoder_weights_are_an_error_naming_them(source, tiny_config,
                                                          tmp_path):
  entries = deeplab2_import.deeplab2_variable_map(source)
  dropped = next(k for k, _ in entries if k.startswith('encoder/_stage3'))
  import_test._write_deeplab2_checkpoint(  # pylint: disable=protected-access
      source, tmp_path / 'dl2', drop=(dropped,))
  target = _fresh(tiny_config)
  with pytest.raises(deeplab2_import.CheckpointMismatchError) as error:
    initial_checkpoint.restore(target, str(tmp_path / 'dl2'),
                               scope='PIXEL_ENCODER', where='flag')
  assert dropped in str(error.value) and '1 missing' in str(error.value)


def test_unknown_layout_is_a_clear_error(tiny_config, tmp_path):
  tf.raw_ops.SaveV2(prefix=str(tmp_path / 'other'),
                    tensor_names=['dense/kernel' + _SUFFIX],
                    shape_and_slices=[''], tensors=[tf.zeros([2, 2])])
  target = _fresh(tiny_config)
  with pytest.raises(deeplab2_import.CheckpointMismatchError,
                     match='neither a deeplab2_kmax checkpoint'):
    initial_checkpoint.restore(target, str(tmp_path / 'other'),
                               where='flag')


def test_a_folder_without_a_checkpoint_file_uses_its_only_index(
    source, tiny_config, tmp_path):
  """DeepLab2's archives hold ckpt-<step>.index and data, maybe no
  `checkpoint` file."""
  folder = tmp_path / 'archive'
  folder.mkdir()
  import_test._write_deeplab2_checkpoint(source, folder / 'ckpt-150000')  # pylint: disable=protected-access
  target = _fresh(tiny_config)
  report = initial_checkpoint.restore(target, str(folder), where='flag')
  assert report.checkpoint == str(folder / 'ckpt-150000')
  _assert_same_weights(source, target)
