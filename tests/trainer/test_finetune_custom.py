"""Train on your own data: a model of the built-in classes fine-tuned to a
data set with other categories, then evaluated, exported and run."""
import json

import numpy as np
import pytest
from PIL import Image
import tensorflow as tf

from deeplab2_kmax import export
from deeplab2_kmax import predict
from deeplab2_kmax.data import build_tfrecords
from deeplab2_kmax.data import dataset_info
from deeplab2_kmax.data import synthetic
from deeplab2_kmax.trainer import runner
from tests.conftest import TINY_CONFIG

# Other ids, other names, four classes instead of six.
CATEGORIES = [{'id': 11, 'name': 'disk', 'isthing': 1},
              {'id': 13, 'name': 'square', 'isthing': 1},
              {'id': 21, 'name': 'stripes', 'isthing': 0},
              {'id': 23, 'name': 'noise', 'isthing': 0}]
SHORT = ['trainer_options.steps_per_loop=10',
         'trainer_options.save_checkpoints_steps=40',
         'trainer_options.solver_options.warmup_steps=5']


def _own_data(root):
  """Synthetic images of CATEGORIES in COCO panoptic format -> TFRecords
  through the command line (--dataset=custom)."""
  root.mkdir(parents=True, exist_ok=True)
  categories = root / 'categories.json'
  categories.write_text(json.dumps(CATEGORIES))
  raw = root / 'raw'
  synthetic.generate(raw, num_train=24, num_val=4, seed=5,
                     info=dataset_info.from_categories_json(categories))
  for split in ('train', 'val'):
    assert build_tfrecords.main([
        '--format=coco_panoptic', '--dataset=custom', '--no_progress',
        f'--images_dir={raw / "images" / split}',
        f'--panoptic_json={raw / "annotations" / f"panoptic_{split}.json"}',
        f'--panoptic_dir={raw / "annotations" / f"panoptic_{split}"}',
        f'--output={root / split}']) == 0
  return raw


def _own_config(root, raw, source):
  """The tiny config pointed at the own data, fine-tuning from `source`."""
  text = TINY_CONFIG.read_text()
  text = text.replace(
      'dataset: "synthetic_panoptic"',
      'dataset: "custom"\n  categories_json: '
      f'"{raw / "annotations" / "panoptic_train.json"}"')
  text = text.replace('${SYNTHETIC_DATA}', str(root))
  text = text.replace('model_options {', (
      f'model_options {{\n  initial_checkpoint: "{source}"\n'
      '  initial_checkpoint_scope: ALL_BUT_CLASS_LAYERS'), 1)
  path = root / 'own.textproto'
  path.write_text(text)
  return path


@pytest.mark.slow
def test_fine_tune_to_own_classes_then_evaluate_export_predict(
    synthetic_env, tmp_path):
  # A model of the built-in six classes.
  source = tmp_path / 'source'
  runner.run_experiment(config_file=TINY_CONFIG, model_dir=source,
                        overrides=SHORT + ['trainer_options.num_steps=10'],
                        strategy='one_device')
  root = tmp_path / 'own'
  raw = _own_data(root)
  config_file = _own_config(root, raw, source)

  # Fine-tune: every weight but the class layers comes from the source.
  model_dir = tmp_path / 'finetuned'
  config = runner.load_experiment_config(
      config_file, SHORT + ['trainer_options.num_steps=40'])
  experiment = runner.Experiment(config, model_dir,
                                 tf.distribute.OneDeviceStrategy('/cpu:0'))
  report = json.loads(
      (model_dir / 'initial_checkpoint_report.json').read_text())
  loaded = report['initial_checkpoint']
  assert loaded['scope'] == 'ALL_BUT_CLASS_LAYERS'
  assert loaded['fresh'] and set(loaded['fresh'].values()) == {
      'class layer (scope ALL_BUT_CLASS_LAYERS)'}
  assert all('class_head' in path or 'semantic_last_layer' in path
             for path in loaded['fresh'])
  losses = [float(experiment.trainer.train(tf.constant(10))['total'])
            for _ in range(4)]
  assert losses[-1] < 0.97 * losses[0], losses
  experiment.manager.save(checkpoint_number=40)

  result = runner.run_experiment(config_file=config_file, model_dir=model_dir,
                                 mode='eval', overrides=SHORT,
                                 strategy='one_device')
  assert np.isfinite(result['panoptic/pq'])
  assert np.isfinite(result['semantic/miou'])

  saved_model = tmp_path / 'export' / '1'
  assert export.main([f'--config_file={config_file}',
                      f'--checkpoint={model_dir}',
                      f'--output_dir={saved_model}']) == 0
  assert [c['id'] for c in export.read_dataset_info(
      saved_model).categories_json()] == [11, 13, 21, 23]
  images = sorted((raw / 'images' / 'val').glob('*.jpg'))[:2]
  output = tmp_path / 'predictions'
  assert predict.main([f'--saved_model={saved_model}',
                       f'--input={images[0].parent}/*.jpg',
                       f'--output_dir={output}']) == 0
  predictions = json.loads((output / 'predictions.json').read_text())
  ids = {s['category_id'] for p in predictions['annotations']
         for s in p['segments_info']}
  assert ids <= {11, 13, 21, 23}
  with Image.open(output / f'{images[0].stem}_overlay.png') as overlay:
    assert overlay.size == (144, 144)


@pytest.mark.slow
def test_finetune_benchmark_script_runs_both_starts(tmp_path, monkeypatch):
  import importlib.util  # pylint: disable=import-outside-toplevel
  path = TINY_CONFIG.parents[2] / 'scripts' / 'benchmark_finetune.py'
  spec = importlib.util.spec_from_file_location('benchmark_finetune', path)
  script = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(script)
  monkeypatch.delenv('SYNTHETIC_DATA', raising=False)
  assert script.main([f'--output_dir={tmp_path}',
                      f'--source_config={TINY_CONFIG}', '--source_steps=2',
                      '--steps=2', '--num_train=8', '--num_val=2']) == 0
  table = (tmp_path / 'finetune.md').read_text()
  assert '| fine-tuned from the source (ALL_BUT_CLASS_LAYERS) |' in table
  assert '| from scratch |' in table
  report = json.loads((tmp_path / 'finetuned' / 'model' /
                       'initial_checkpoint_report.json').read_text())
  assert report['initial_checkpoint']['scope'] == 'ALL_BUT_CLASS_LAYERS'
  assert not (tmp_path / 'scratch' / 'model' /
              'initial_checkpoint_report.json').exists()
