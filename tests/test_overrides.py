"""--override=field.path=value on experiment configs."""
import pytest

from deeplab2_kmax import config as config_lib
from deeplab2_kmax import overrides
from deeplab2_kmax.protos import config_pb2
from tests.conftest import TINY_CONFIG


@pytest.fixture
def config():
  return config_lib.load_config(TINY_CONFIG)


def test_scalar_repeated_enum_bool_and_string(config):
  overrides.apply_overrides(config, [
      'trainer_options.num_steps=20',
      'trainer_options.solver_options.base_learning_rate=0.002',
      'train_dataset_options.crop_size=65,97',
      'train_dataset_options.shuffle=false',
      'train_dataset_options.file_pattern=[a/*.tfrecord, "b/*.tfrecord"]',
      'model_options.kmax_deeplab.transformer_decoder.'
      'cross_attention_activation=CLUSTER_SOFTMAX',
  ])
  assert config.trainer_options.num_steps == 20
  assert config.trainer_options.solver_options.base_learning_rate == (
      pytest.approx(0.002))
  assert list(config.train_dataset_options.crop_size) == [65, 97]
  assert not config.train_dataset_options.shuffle
  assert list(config.train_dataset_options.file_pattern) == [
      'a/*.tfrecord', 'b/*.tfrecord']
  decoder = config.model_options.kmax_deeplab.transformer_decoder
  assert decoder.cross_attention_activation == (
      config_pb2.CLUSTER_SOFTMAX)


@pytest.mark.parametrize('override, message', [
    ('trainer_options.num_stepz=3', "has no field 'num_stepz'.*num_steps"),
    ('trainer_options.num_steps=three', 'expects an integer'),
    ('trainer_options.solver_options=3', 'is a message'),
    ('trainer_options.num_steps.x=3', 'is a scalar'),
    ('train_dataset_options.shuffle=maybe', 'true or false'),
    ('model_options.kmax_deeplab.transformer_decoder.'
     'cross_attention_activation=SOFT', 'CLUSTER_ARGMAX'),
    ('trainer_options.num_steps', 'expected field.path=value'),
])
def test_errors_name_the_override(config, override, message):
  with pytest.raises(config_lib.ConfigError, match=message) as info:
    overrides.apply_overrides(config, [override])
  assert override.split('=')[0] in str(info.value)


def test_result_is_validated(config):
  with pytest.raises(config_lib.ConfigError, match='crop'):
    overrides.apply_overrides(config, ['train_dataset_options.crop_size=100,100'])
