"""The checkpoint conversion command line."""
import subprocess
import sys

import numpy as np
import tensorflow as tf

import deeplab2_kmax
from deeplab2_kmax.checkpoints import deeplab2_import
from tests import conftest
from tests.checkpoints import test_deeplab2_import as import_test


def _run(*args):
  return subprocess.run(
      [sys.executable, '-m', 'deeplab2_kmax.tools.convert_deeplab2_checkpoint',
       *args], capture_output=True, text=True, check=False,
      cwd=conftest.REPO_ROOT)


def test_converts_and_output_restores_same_weights(tiny_config, tmp_path):
  source = deeplab2_kmax.build_model(tiny_config)
  deeplab2_import.ensure_built(source)
  import_test._randomize(source, 3)  # pylint: disable=protected-access
  import_test._write_deeplab2_checkpoint(source, tmp_path / 'in')  # pylint: disable=protected-access
  result = _run(f'--config_file={conftest.TINY_CONFIG}',
                f'--input={tmp_path / "in"}', f'--output={tmp_path / "out"}')
  assert result.returncode == 0, result.stderr
  assert 'imported' in result.stdout

  restored = deeplab2_kmax.build_model(tiny_config)
  deeplab2_import.ensure_built(restored)
  tf.train.Checkpoint(model=restored).read(
      str(tmp_path / 'out')).assert_existing_objects_matched()
  for a, b in zip(source.weights, restored.weights):
    np.testing.assert_array_equal(a.numpy(), b.numpy())
  # No staging files are left behind.
  assert not list(tmp_path.glob('.convert-*'))

  again = _run(f'--config_file={conftest.TINY_CONFIG}',
               f'--input={tmp_path / "in"}', f'--output={tmp_path / "out"}')
  assert again.returncode == 1 and 'already exists' in again.stderr


def test_mismatch_exits_with_listing_and_writes_nothing(tmp_path):
  coco = deeplab2_kmax.load_config(conftest.TINY_CONFIG)
  source = deeplab2_kmax.build_model(coco)
  deeplab2_import.ensure_built(source)
  key = deeplab2_import.deeplab2_variable_map(source)[0][0]
  import_test._write_deeplab2_checkpoint(source, tmp_path / 'in', drop=[key])  # pylint: disable=protected-access
  result = _run(f'--config_file={conftest.TINY_CONFIG}',
                f'--input={tmp_path / "in"}', f'--output={tmp_path / "out"}')
  assert result.returncode == 1
  assert key in result.stderr and 'missing' in result.stderr
  assert not list(tmp_path.glob('out*'))
