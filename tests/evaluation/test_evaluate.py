"""Round trip of the standalone CLI `python -m ...evaluation.evaluate`."""
import json
import os
import subprocess
import sys

import numpy as np

from deeplab2_kmax.data import dataset_info
from deeplab2_kmax.evaluation import coco_format
from deeplab2_kmax.evaluation import evaluate

INFO = dataset_info.get_dataset_info('synthetic_panoptic')
REPO = os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))


def _write(tmp_path):
  rng = np.random.default_rng(0)
  for side in ('gt', 'pred'):
    with coco_format.PanopticFolderWriter(
        str(tmp_path / f'{side}.json'), str(tmp_path / side), INFO,
        groundtruth=side == 'gt') as writer:
      for image_id in range(3):
        sem = rng.integers(0, 7, [3, 4]).repeat(3, 0).repeat(3, 1)
        inst = rng.integers(1, 3, sem.shape) * ((sem >= 1) & (sem <= 3))
        writer.add(image_id, sem * 256 + inst)


def _run(*args):
  return subprocess.run(
      [sys.executable, '-m', 'deeplab2_kmax.evaluation.evaluate', *args],
      capture_output=True, text=True, cwd=REPO, check=False, timeout=120)


def test_cli_round_trip(tmp_path):
  _write(tmp_path)
  output = tmp_path / 'out' / 'pq.json'
  output.parent.mkdir()
  # --gt_dir is left out: it defaults to --gt_json without '.json'.
  run = _run(f'--gt_json={tmp_path}/gt.json',
             f'--pred_json={tmp_path}/pred.json',
             f'--pred_dir={tmp_path}/pred', f'--output_json={output}',
             '--num_threads=2')
  assert run.returncode == 0, run.stderr
  expected, metric = evaluate.evaluate(
      str(tmp_path / 'gt.json'), str(tmp_path / 'gt'),
      str(tmp_path / 'pred.json'), str(tmp_path / 'pred'))
  written = json.loads(output.read_text())
  assert written == json.loads(json.dumps(expected))
  assert set(written) == {'All', 'Things', 'Stuff', 'per_class'}
  assert set(written['All']) == {'pq', 'sq', 'rq', 'n'}
  assert metric.table() in run.stdout
  assert os.listdir(output.parent) == ['pq.json']


def test_cli_reports_bad_input(tmp_path):
  _write(tmp_path)
  os.remove(tmp_path / 'pred' / '1.png')
  run = _run(f'--gt_json={tmp_path}/gt.json', f'--gt_dir={tmp_path}/gt',
             f'--pred_json={tmp_path}/pred.json', f'--pred_dir={tmp_path}/pred')
  assert run.returncode == 1
  assert run.stderr.strip() == (
      f'error: {tmp_path}/pred.json: image 1: PNG {tmp_path}/pred/1.png does '
      'not exist')
