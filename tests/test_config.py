"""Tests of config.py: parsing, ${VAR} substitution and validation."""
import json
import re

import pytest

from deeplab2_kmax import config as config_lib
from tests.conftest import CONFIGS
from tests.conftest import COCO_CONFIG
from tests.conftest import TINY_CONFIG

ConfigError = config_lib.ConfigError

ALL_CONFIGS = sorted(CONFIGS.rglob('*.textproto'))


def _tiny_text():
  return TINY_CONFIG.read_text(encoding='utf-8')


def _replace_once(text, old, new):
  """`text` with its single occurrence of `old` replaced by `new`."""
  assert text.count(old) >= 1, f'{old!r} not found in the tiny config'
  return text.replace(old, new, 1)


def _line_of(text, fragment):
  """1-based number of the first line of `text` that contains `fragment`."""
  for number, line in enumerate(text.splitlines(), start=1):
    if fragment in line:
      return number
  raise AssertionError(f'{fragment!r} not in text')


def test_configs_are_found():
  names = {p.relative_to(CONFIGS).as_posix() for p in ALL_CONFIGS}
  assert 'synthetic/kmax_tiny.textproto' in names
  assert 'coco/kmax_deeplab/kmax_r50_os32.textproto' in names
  assert len(ALL_CONFIGS) >= 4


@pytest.mark.parametrize(
    'path', ALL_CONFIGS, ids=lambda p: p.relative_to(CONFIGS).as_posix())
def test_every_config_loads_with_valid_crop_sizes(path):
  config = config_lib.load_config(path)
  assert config.model_options.WhichOneof('meta_architecture') is not None
  crops = []
  for name in ('train_dataset_options', 'eval_dataset_options'):
    if config.HasField(name):
      crop = list(getattr(config, name).crop_size)
      assert len(crop) == 2, (name, crop)
      crops.extend(crop)
  assert crops, 'a config under configs/ names no data set'
  for size in crops:
    assert size > 1 and (size - 1) % 32 == 0, size


def test_parse_config_returns_the_written_values():
  config = config_lib.parse_config(_tiny_text())
  assert config.experiment_name == 'kmax_tiny_synthetic'
  assert config.model_options.backbone.name == 'resnet_tiny'
  decoder = config_lib.transformer_decoder_options(config.model_options)
  assert [s.stride for s in decoder.stages] == [32, 16, 8]
  assert decoder.cross_attention_activation == (
      config_lib.config_pb2.CLUSTER_ARGMAX)


def test_missing_file_names_the_path(tmp_path):
  path = tmp_path / 'nope.textproto'
  with pytest.raises(ConfigError, match=re.escape(str(path))):
    config_lib.load_config(path)


def test_syntax_error_names_file_line_and_column(tmp_path):
  text = _replace_once(_tiny_text(), 'num_cluster_centers: 16',
                       'num_cluster_centers 16')
  path = tmp_path / 'bad.textproto'
  path.write_text(text, encoding='utf-8')
  line = _line_of(text, 'num_cluster_centers 16')
  # The parser stops at the token after the field name ("16"), 1-based.
  column = text.splitlines()[line - 1].index('16') + 1
  with pytest.raises(ConfigError) as info:
    config_lib.load_config(path)
  message = str(info.value)
  assert message.startswith(f'{path}:{line}:{column}:'), message
  assert 'syntax error' in message


def test_unquoted_variable_gets_a_hint():
  text = _replace_once(_tiny_text(), '"kmax_tiny_synthetic"', '${NAME}')
  with pytest.raises(ConfigError, match='quoted string'):
    config_lib.parse_config(text, source='s.textproto')


def test_unknown_field_names_it_and_lists_valid_fields():
  text = _replace_once(_tiny_text(), 'name: "resnet_tiny"',
                       'nmae: "resnet_tiny"')
  line = _line_of(text, 'nmae:')
  with pytest.raises(ConfigError) as info:
    config_lib.parse_config(text, source='typo.textproto')
  message = str(info.value)
  assert message.startswith(f'typo.textproto:{line}:')
  assert '"nmae"' in message
  assert 'BackboneOptions' in message
  valid = message.split('valid fields are:')[1]
  assert [f.strip() for f in valid.split(',')] == [
      'name', 'drop_path_keep_prob', 'pretrained_weights']


def test_unknown_enum_value_names_it_and_lists_valid_values():
  text = _replace_once(_tiny_text(), 'cross_attention_activation: '
                       'CLUSTER_ARGMAX', 'cross_attention_activation: SOFTMAX')
  with pytest.raises(ConfigError) as info:
    config_lib.parse_config(text, source='enum.textproto')
  message = str(info.value)
  assert 'SOFTMAX' in message
  assert 'CrossAttentionActivation' in message
  valid = message.split('valid values are:')[1]
  assert [v.strip() for v in valid.split(',')] == [
      'SPATIAL_SOFTMAX', 'CLUSTER_SOFTMAX', 'CLUSTER_ARGMAX']


@pytest.mark.parametrize('crop', ['[128, 129]', '[129, 130]', '[129]'])
def test_bad_crop_size_names_the_field(crop):
  text = _replace_once(_tiny_text(), 'crop_size: [129, 129]',
                       f'crop_size: {crop}')
  with pytest.raises(ConfigError,
                     match=r'^c\.textproto: train_dataset_options\.crop_size'):
    config_lib.parse_config(text, source='c.textproto')


def test_bad_eval_crop_size_names_the_eval_field():
  text = _tiny_text()
  second = text.index('crop_size: [161, 161]')  # the eval crop
  text = text[:second] + 'crop_size: [65, 100]' + text[second + 21:]
  with pytest.raises(ConfigError, match=r'eval_dataset_options\.crop_size'):
    config_lib.parse_config(text)


def test_unknown_backbone_names_field_and_valid_names():
  text = _replace_once(_tiny_text(), '"resnet_tiny"', '"resnet_huge"')
  with pytest.raises(ConfigError) as info:
    config_lib.parse_config(text)
  message = str(info.value)
  assert 'model_options.backbone.name' in message
  assert 'resnet_huge' in message
  assert 'resnet50' in message and 'resnet_tiny' in message


def test_unknown_dataset_is_rejected():
  text = _replace_once(_tiny_text(), 'dataset: "synthetic_panoptic"',
                       'dataset: "mnist"')
  with pytest.raises(ConfigError, match=r'train_dataset_options\.dataset'):
    config_lib.parse_config(text)


def test_variable_substitution_in_repeated_string_field(monkeypatch):
  monkeypatch.setenv('SYNTHETIC_DATA', '/data/synthetic')
  config = config_lib.load_config(TINY_CONFIG)
  assert list(config.train_dataset_options.file_pattern) == [
      '/data/synthetic/train-*.tfrecord']
  assert list(config.eval_dataset_options.file_pattern) == [
      '/data/synthetic/val-*.tfrecord']
  pattern = config.train_dataset_options.file_pattern[0]
  assert config_lib.resolved(pattern, 'f') == pattern


def _with_initial_checkpoint(value):
  return config_lib.parse_config(_replace_once(
      _tiny_text(), 'model_options {',
      f'model_options {{\n  initial_checkpoint: "{value}"'))


def test_variable_substitution_in_singular_string_field(monkeypatch):
  monkeypatch.setenv('INIT_CHECKPOINT', '/ckpt/model-100')
  monkeypatch.setenv('COCO_TFRECORD_DIR', '/coco')
  config = _with_initial_checkpoint('${INIT_CHECKPOINT}')
  assert config.model_options.initial_checkpoint == '/ckpt/model-100'
  config = config_lib.load_config(COCO_CONFIG)
  assert config.train_dataset_options.file_pattern[0] == (
      '/coco/train-*.tfrecord')


def test_several_variables_in_one_value(monkeypatch):
  monkeypatch.setenv('ROOT_A', 'a')
  monkeypatch.delenv('ROOT_B', raising=False)
  text = _replace_once(_tiny_text(), '"kmax_tiny_synthetic"',
                       '"${ROOT_A}-${ROOT_B}-$ROOT_A"')
  config = config_lib.parse_config(text)
  # Only the braced form is substituted; unset variables stay as written.
  assert config.experiment_name == 'a-${ROOT_B}-$ROOT_A'


def test_unset_variable_loads_but_resolved_raises(monkeypatch):
  monkeypatch.delenv('INIT_CHECKPOINT', raising=False)
  config = _with_initial_checkpoint('${INIT_CHECKPOINT}')
  value = config.model_options.initial_checkpoint
  assert value == '${INIT_CHECKPOINT}'
  with pytest.raises(ConfigError) as info:
    config_lib.resolved(value, 'model_options.initial_checkpoint')
  message = str(info.value)
  assert 'INIT_CHECKPOINT' in message
  assert 'model_options.initial_checkpoint' in message


def test_resolved_passes_plain_values_through():
  assert config_lib.resolved('/a/b', 'field') == '/a/b'
  assert config_lib.resolved('$HOME/x', 'field') == '$HOME/x'


def test_decoder_strides_must_halve_from_32():
  text = _replace_once(
      _tiny_text(),
      'stages { stride: 16 block_type: AXIAL num_blocks: 1 filters: 16 }', '')
  with pytest.raises(ConfigError) as info:
    config_lib.parse_config(text)
  message = str(info.value)
  assert 'model_options.pixel_decoder.stages' in message
  assert '[32, 8, 4]' in message


def test_decoder_must_start_at_stride_32():
  text = _replace_once(
      _tiny_text(),
      'stages { stride: 32 block_type: AXIAL num_blocks: 1 filters: 32 }', '')
  text = _replace_once(text, 'stages { stride: 32 num_layers: 1 }', '')
  with pytest.raises(ConfigError, match=r'pixel_decoder\.stages.*\[16, 8, 4\]'):
    config_lib.parse_config(text)


def test_transformer_stage_stride_must_be_a_decoder_stride():
  text = _replace_once(_tiny_text(), 'stages { stride: 8 num_layers: 1 }',
                       'stages { stride: 4 num_layers: 1 }')
  with pytest.raises(ConfigError) as info:
    config_lib.parse_config(text)
  message = str(info.value)
  assert ('model_options.kmax_deeplab.transformer_decoder.stages[2].stride'
          in message)
  assert '[32, 16, 8]' in message


def test_missing_block_type_names_the_stage():
  text = _replace_once(_tiny_text(), 'stride: 8 block_type: BOTTLENECK',
                       'stride: 8')
  with pytest.raises(ConfigError,
                     match=r'pixel_decoder\.stages\[2\]\.block_type'):
    config_lib.parse_config(text)


def test_center_width_must_divide_by_twice_the_heads():
  text = _replace_once(_tiny_text(), 'center_width: 64', 'center_width: 60')
  with pytest.raises(ConfigError,
                     match=r'transformer_decoder\.center_width'):
    config_lib.parse_config(text)


def test_keep_prob_out_of_range():
  text = _replace_once(_tiny_text(), 'drop_path_keep_prob: 1.0\n  }',
                       'drop_path_keep_prob: 0.0\n  }')
  with pytest.raises(ConfigError,
                     match=r'model_options\.backbone\.drop_path_keep_prob'):
    config_lib.parse_config(text)


def test_no_meta_architecture(tiny_config):
  config_lib.validate(tiny_config, 'tiny')  # Valid as loaded.
  tiny_config.model_options.ClearField('kmax_deeplab')
  assert tiny_config.model_options.WhichOneof('meta_architecture') is None
  with pytest.raises(ConfigError) as info:
    config_lib.validate(tiny_config, 'tiny')
  message = str(info.value)
  assert message.startswith('tiny: model_options:')
  assert 'kmax_deeplab' in message and 'cmt_deeplab' in message


def test_cmt_meta_architecture_is_validated_under_its_own_prefix(tiny_config):
  decoder = tiny_config.model_options.kmax_deeplab.transformer_decoder
  tiny_config.model_options.cmt_deeplab.transformer_decoder.CopyFrom(decoder)
  assert tiny_config.model_options.WhichOneof('meta_architecture') == (
      'cmt_deeplab')
  config_lib.validate(tiny_config)
  tiny_config.model_options.cmt_deeplab.transformer_decoder.stages[0].stride = 2
  with pytest.raises(ConfigError,
                     match=r'model_options\.cmt_deeplab\.transformer_decoder'
                     r'\.stages\[0\]\.stride'):
    config_lib.validate(tiny_config)


# Data sets ------------------------------------------------------------------
def _write_categories(path, categories, wrap=False):
  data = {'images': [], 'categories': categories} if wrap else categories
  path.write_text(json.dumps(data), encoding='utf-8')
  return path


_CELLS = [{'id': 1, 'name': 'cell', 'isthing': 1},
          {'id': 2, 'name': 'background', 'isthing': 0},
          {'id': 5, 'name': 'debris', 'isthing': 0}]


def _custom_text(train_json, eval_json=None):
  """The tiny config with both data sets "custom" (eval_json: train's)."""
  text = _tiny_text()
  for path in (train_json, eval_json or train_json):
    text = _replace_once(
        text, 'dataset: "synthetic_panoptic"',
        f'dataset: "custom"\n  categories_json: "{path}"')
  return text


def test_dataset_info_for_a_named_data_set(tiny_config):
  info = config_lib.dataset_info_for(tiny_config)
  assert info.name == 'synthetic_panoptic'
  tiny_config.ClearField('train_dataset_options')
  assert config_lib.dataset_info_for(tiny_config) is info  # From eval.
  tiny_config.ClearField('eval_dataset_options')
  with pytest.raises(ConfigError, match='names no data set'):
    config_lib.dataset_info_for(tiny_config)


def test_custom_dataset_reads_categories_json(tmp_path):
  path = _write_categories(tmp_path / 'cells.json', _CELLS)
  config = config_lib.parse_config(_custom_text(path))
  info = config_lib.dataset_info_for(config)
  assert (info.name, info.num_classes, info.num_things) == ('custom', 3, 1)
  assert info.num_semantic_channels == 4
  assert [c.source_id for c in info.channel_classes] == [1, 2, 5]


def test_custom_dataset_needs_categories_json():
  text = _replace_once(_tiny_text(), 'dataset: "synthetic_panoptic"',
                       'dataset: "custom"')
  with pytest.raises(ConfigError) as info:
    config_lib.parse_config(text)
  message = str(info.value)
  assert 'train_dataset_options.categories_json' in message
  assert 'custom' in message


def test_dataset_info_for_unvalidated_custom_without_json(tiny_config):
  tiny_config.train_dataset_options.dataset = 'custom'
  with pytest.raises(ConfigError,
                     match=r'^train_dataset_options\.categories_json: .*'
                     r'it is not set'):
    config_lib.dataset_info_for(tiny_config)


def test_custom_categories_json_with_unset_variable(monkeypatch, tmp_path):
  monkeypatch.delenv('CELLS_DIR', raising=False)
  config = config_lib.parse_config(_custom_text('${CELLS_DIR}/cells.json'))
  with pytest.raises(ConfigError) as info:
    config_lib.dataset_info_for(config)
  message = str(info.value)
  assert 'train_dataset_options.categories_json' in message
  assert 'CELLS_DIR' in message
  _write_categories(tmp_path / 'cells.json', _CELLS)
  monkeypatch.setenv('CELLS_DIR', str(tmp_path))
  config = config_lib.parse_config(_custom_text('${CELLS_DIR}/cells.json'))
  assert config_lib.dataset_info_for(config).num_classes == 3


def test_custom_categories_json_errors_name_field_and_file(tmp_path):
  path = tmp_path / 'broken.json'
  path.write_text('[{"id": 1}]', encoding='utf-8')
  config = config_lib.parse_config(_custom_text(path))
  with pytest.raises(ConfigError) as info:
    config_lib.dataset_info_for(config)
  message = str(info.value)
  assert message.startswith('train_dataset_options.categories_json: ')
  assert str(path) in message and '"name"' not in message
  assert "lacks ['name']" in message


def test_categories_json_is_only_for_custom(tmp_path):
  text = _replace_once(
      _tiny_text(), 'dataset: "synthetic_panoptic"',
      f'dataset: "synthetic_panoptic"\n  categories_json: "{tmp_path}/x"')
  with pytest.raises(ConfigError,
                     match=r'train_dataset_options\.categories_json: is read '
                     r'only for dataset "custom"'):
    config_lib.parse_config(text)


def test_train_and_eval_data_sets_must_agree():
  text = _tiny_text()
  at = text.rindex('dataset: "synthetic_panoptic"')
  text = text[:at] + text[at:].replace('synthetic_panoptic', 'coco_panoptic',
                                       1)
  with pytest.raises(ConfigError) as info:
    config_lib.parse_config(text)
  message = str(info.value)
  assert 'eval_dataset_options.dataset' in message
  assert 'coco_panoptic' in message and 'synthetic_panoptic' in message


def test_custom_train_and_eval_files_must_have_the_same_classes(tmp_path):
  train = _write_categories(tmp_path / 'train.json', _CELLS, wrap=True)
  same = _write_categories(tmp_path / 'val.json', _CELLS[::-1], wrap=True)
  config = config_lib.parse_config(_custom_text(train, same))
  assert config_lib.dataset_info_for(config).num_classes == 3
  other = _write_categories(tmp_path / 'other.json', _CELLS[:2])
  config = config_lib.parse_config(_custom_text(train, other))
  with pytest.raises(ConfigError) as info:
    config_lib.dataset_info_for(config)
  message = str(info.value)
  assert message.startswith('eval_dataset_options: ')
  assert str(other) in message and str(train) in message
