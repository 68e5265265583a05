"""The build_tfrecords command line."""
import subprocess
import sys

import numpy as np
import pytest

from deeplab2_kmax.data import build_tfrecords
from tests import conftest
from tests.data import fixtures


def test_main_writes_shards_and_prints_summary(tmp_path, capsys):
  coco = fixtures.write_coco_panoptic(tmp_path / 'coco')
  # --panoptic_dir defaults to the JSON path without .json.
  status = build_tfrecords.main([
      '--format=coco_panoptic', f'--images_dir={coco.images_dir}',
      f'--panoptic_json={coco.panoptic_json}', f'--output={tmp_path}/val',
      '--num_shards=3', '--dataset=custom', '--no_progress'])
  assert status == 0
  assert sorted(p.name for p in tmp_path.glob('val-*')) == [
      f'val-0000{i}-of-00003.tfrecord' for i in range(3)]
  out = capsys.readouterr().out
  assert "wrote 3 images of dataset 'custom' (label_divisor 1000)" in out


def test_main_fills_paths_from_root_and_split(tmp_path, capsys):
  fixture = fixtures.write_cityscapes_panoptic(tmp_path / 'cityscapes')
  status = build_tfrecords.main([
      '--format=cityscapes_panoptic', f'--root={fixture.root}',
      '--split=val', f'--output={tmp_path}/out/val', '--no_progress'])
  assert status == 0, capsys.readouterr().err
  examples = fixtures.read_shards(
      [tmp_path / 'out' / 'val-00000-of-00001.tfrecord'])
  np.testing.assert_array_equal(
      examples[1]['panoptic'], fixture.images[1].label(
          {'b': 2000, 'C': 13001}))


def test_main_reports_invalid_images(tmp_path, capsys):
  coco = fixtures.write_coco_panoptic(tmp_path / 'coco')
  coco.image_path(1).unlink()
  args = ['--format=coco_panoptic', f'--images_dir={coco.images_dir}',
          f'--panoptic_json={coco.panoptic_json}',
          f'--panoptic_dir={coco.panoptic_dir}', f'--output={tmp_path}/val',
          '--num_shards=2', '--no_progress']
  assert build_tfrecords.main(args) == 1
  err = capsys.readouterr().err
  assert "image '000000000285.png' (id 285): cannot read the image" in err
  assert '--skip_invalid' in err
  assert not list(tmp_path.glob('val-*'))

  assert build_tfrecords.main(args + ['--skip_invalid']) == 0
  out = capsys.readouterr().out
  assert 'skipped 1 invalid images:' in out
  assert "image '000000000285.png' (id 285)" in out
  assert len(fixtures.read_shards(sorted(tmp_path.glob('val-*')))) == 2


def test_main_rejects_incomplete_flags(tmp_path, capsys):
  with pytest.raises(SystemExit) as info:
    build_tfrecords.main(['--format=coco_panoptic', f'--output={tmp_path}/x'])
  assert info.value.code == 2
  assert '--images_dir' in capsys.readouterr().err
  assert build_tfrecords.main([
      '--format=coco_panoptic', f'--images_dir={tmp_path}',
      f'--panoptic_json={tmp_path}/none.json', f'--output={tmp_path}/x']) == 1
  assert 'none.json: cannot read the panoptic JSON' in capsys.readouterr().err


@pytest.mark.slow
def test_module_runs_as_a_program_with_progress_bar(tmp_path):
  ade = fixtures.write_ade20k_panoptic(tmp_path / 'ade')
  result = subprocess.run(
      [sys.executable, '-m', 'deeplab2_kmax.data.build_tfrecords',
       '--format=ade20k_panoptic', f'--root={ade.root}', '--split=validation',
       f'--output={tmp_path}/out/val', '--num_shards=2'],
      capture_output=True, text=True, check=False, cwd=conftest.REPO_ROOT)
  assert result.returncode == 0, result.stderr
  assert '2/2' in result.stderr  # tqdm's bar
  assert "dataset 'ade20k_panoptic'" in result.stdout
  assert len(list((tmp_path / 'out').glob('val-*-of-00002.tfrecord'))) == 2
