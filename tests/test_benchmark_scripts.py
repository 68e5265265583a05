"""The benchmark scripts' shared pieces and their set-up errors (no timing)."""
import importlib.util

import numpy as np
import pytest

from tests.conftest import REPO_ROOT

SCRIPTS = REPO_ROOT / 'scripts'


def _load(name):
  spec = importlib.util.spec_from_file_location(name, SCRIPTS / f'{name}.py')
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def test_draw_label_has_bands_discs_and_a_void_corner():
  benchmark_train = _load('benchmark_train')
  crop, divisor = 160, 256
  label = benchmark_train.draw_label(
      np.random.default_rng(0), crop, stuff=[90, 91, 92], things=[1, 2, 3],
      label_divisor=divisor, void_label=0)
  assert label.shape == (crop, crop) and label.dtype == np.int32
  corner = crop // 12
  assert (label[-corner:, -corner:] == 0).all()
  classes, instances = label // divisor, label % divisor
  assert set(np.unique(classes)) <= {0, 1, 2, 3, 90, 91, 92}
  assert (instances[np.isin(classes, [90, 91, 92])] == 0).all()  # stuff
  assert set(np.unique(instances[np.isin(classes, [1, 2, 3])])) <= set(
      range(1, 16))
  assert len(np.unique(instances)) > 5  # the discs are there
  again = benchmark_train.draw_label(
      np.random.default_rng(0), crop, stuff=[90, 91, 92], things=[1, 2, 3],
      label_divisor=divisor, void_label=0)
  np.testing.assert_array_equal(label, again)  # the same label every run


def _checkout(tmp_path, compiled):
  package = tmp_path / 'deeplab2'
  (package / 'trainer').mkdir(parents=True)
  (package / 'trainer' / 'trainer.py').write_text('')
  if compiled:
    (package / 'config_pb2.py').write_text('')
  config = tmp_path / 'kmax.textproto'
  config.write_text('')
  return config


@pytest.mark.parametrize('case, expected', [
    ('no_checkout', 'no DeepLab2 checkout at'),
    ('not_compiled', 'its protos are not compiled'),
    ('no_config', '--config_file='),
])
def test_deeplab2_benchmark_names_what_is_missing(tmp_path, case, expected):
  script = _load('benchmark_deeplab2_train')
  if case == 'no_checkout':
    config = tmp_path / 'kmax.textproto'
    config.write_text('')
  else:
    config = _checkout(tmp_path, compiled=case != 'not_compiled')
  if case == 'no_config':
    config = tmp_path / 'missing.textproto'
  args = script._parse_args([  # pylint: disable=protected-access
      f'--deeplab2_parent={tmp_path}', f'--config_file={config}'])
  with pytest.raises(SystemExit, match=expected):
    script._check_setup(args)  # pylint: disable=protected-access


def test_deeplab2_benchmark_asks_for_tf_keras(tmp_path, monkeypatch):
  script = _load('benchmark_deeplab2_train')
  config = _checkout(tmp_path, compiled=True)
  find_spec = importlib.util.find_spec
  monkeypatch.setattr(
      script.importlib.util, 'find_spec',
      lambda name, *a: None if name == 'tf_keras' else find_spec(name, *a))
  args = script._parse_args([  # pylint: disable=protected-access
      f'--deeplab2_parent={tmp_path}', f'--config_file={config}'])
  with pytest.raises(SystemExit, match='tf_keras is not installed'):
    script._check_setup(args)  # pylint: disable=protected-access


def test_model_benchmark_sizes_square_rectangular_and_eval():
  benchmark_model = _load('benchmark_model')
  cityscapes = str(REPO_ROOT / 'configs' / 'cityscapes' / 'kmax_deeplab' /
                   'kmax_r50_os32.textproto')
  assert benchmark_model._input_size('641', None) == (641, 641)  # pylint: disable=protected-access
  assert benchmark_model._input_size('1025x2049', None) == (1025, 2049)  # pylint: disable=protected-access
  assert benchmark_model._input_size('eval', cityscapes) == (1025, 2049)  # pylint: disable=protected-access
  with pytest.raises(SystemExit, match='--sizes'):
    benchmark_model._input_size('big', None)  # pylint: disable=protected-access
