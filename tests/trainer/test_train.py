"""The trainer on the tiny config and synthetic data: modes, resume, errors."""
import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

import deeplab2_kmax
from deeplab2_kmax import config as config_lib
from deeplab2_kmax.checkpoints import deeplab2_import
from deeplab2_kmax.trainer import runner
from deeplab2_kmax.trainer import trainer as trainer_lib
from tests.checkpoints import test_deeplab2_import as import_test
from tests.conftest import REPO_ROOT
from tests.conftest import TINY_CONFIG

# Short runs: a loop of 2 steps, a checkpoint every 2 steps.
SHORT = ['trainer_options.steps_per_loop=2',
         'trainer_options.save_checkpoints_steps=2',
         'trainer_options.save_summaries_steps=2',
         'trainer_options.solver_options.warmup_steps=2',
         'evaluator_options.eval_interval_steps=2']


def _run(model_dir, mode, steps, extra=(), progress=None):
  return runner.run_experiment(
      config_file=TINY_CONFIG, model_dir=model_dir, mode=mode,
      overrides=SHORT + [f'trainer_options.num_steps={steps}'] + list(extra),
      strategy='one_device', progress=progress)


def _checkpoint_steps(model_dir):
  state = tf.train.get_checkpoint_state(str(model_dir))
  return sorted(int(p.rsplit('-', 1)[1])
                for p in state.all_model_checkpoint_paths)


def _summary_tags(folder):
  """{tag: shape of its last value} of the TensorBoard events in `folder`."""
  tags = {}
  for path in sorted(folder.glob('events.out.tfevents.*')):
    for event in tf.compat.v1.train.summary_iterator(str(path)):
      for value in event.summary.value:
        tags[value.tag] = tuple(d.size for d in value.tensor.tensor_shape.dim)
  return tags


@pytest.mark.slow
def test_train_then_eval_then_train_and_eval(synthetic_env, tmp_path):
  model_dir = tmp_path / 'run'
  progress = []
  _run(model_dir, 'train', 4, progress=progress.append)
  assert progress == [2, 4]  # after each loop of 2 steps
  assert _checkpoint_steps(model_dir) == [2, 4]
  assert 'train/input_groundtruth_prediction' in _summary_tags(
      model_dir / 'train')
  result = _run(model_dir, 'eval', 4)
  for term in ('pq_class', 'pq_dice', 'mask_id', 'instance_discrimination',
               'semantic', 'total'):
    assert np.isfinite(result[f'loss/{term}'])
  for metric in ('panoptic/pq', 'panoptic/pq_thing', 'panoptic/pq_stuff',
                 'semantic/miou', 'instance/AP'):
    assert metric in result
  assert 'eval/input_groundtruth_prediction' in _summary_tags(
      model_dir / 'eval')
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


def _cmt_tiny_config(tmp_path):
  """kmax_tiny with CMT layers, two per stride (the pixel update is read)."""
  text = TINY_CONFIG.read_text().replace('kmax_deeplab {', 'cmt_deeplab {')
  for stride in (32, 16, 8):
    text = text.replace(f'stages {{ stride: {stride} num_layers: 1 }}',
                        f'stages {{ stride: {stride} num_layers: 2 }}')
  path = tmp_path / 'cmt_tiny.textproto'
  path.write_text(text)
  return path


@pytest.mark.slow
@pytest.mark.parametrize('meta', ['kmax', 'cmt'])
def test_loss_falls_over_50_steps(synthetic_env, tmp_path, meta):
  config_file = TINY_CONFIG if meta == 'kmax' else _cmt_tiny_config(tmp_path)
  config = runner.load_experiment_config(config_file, [
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
  # CMT's six layers add twice kMaX's auxiliary terms, which fall slower.
  assert losses[-1] < (0.97 if meta == 'kmax' else 0.98) * losses[0], losses
  assert all(later < losses[0] for later in losses[1:]), losses
  if meta == 'cmt':
    assert all(b < a for a, b in zip(losses, losses[1:])), losses
    # The mask-approximation loss is trained too.
    terms = trainer.train(tf.constant(1))
    assert terms['reference_mask'] > 0


@pytest.mark.slow
@pytest.mark.parametrize('meta', ['kmax', 'cmt'])
@pytest.mark.parametrize('precision', ['bfloat16', 'float16'])
def test_mixed_precision_trains_with_float32_predictions(synthetic_env,
                                                          tmp_path,
                                                          precision, meta):
  config_file = TINY_CONFIG if meta == 'kmax' else _cmt_tiny_config(tmp_path)
  config = runner.load_experiment_config(config_file, SHORT + [
      'trainer_options.num_steps=2',
      f'trainer_options.mixed_precision={precision}'])
  experiment = runner.Experiment(config, tmp_path / 'run',
                                 tf.distribute.OneDeviceStrategy('/cpu:0'))
  model = experiment.model
  assert model.compute_dtype == precision
  assert {v.dtype for v in model.weights} == {'float32'}
  result = experiment.trainer.train(tf.constant(2))
  assert all(np.isfinite(v) for v in result.values()), result
  assert int(experiment.global_step.numpy()) == 2
  # What the matching, the softmaxes and the losses read is float32.
  outputs = model(tf.zeros([1, 129, 129, 3]), training=True)
  for key in ('class_logits', 'mask_logits', 'pixel_feature',
              'semantic_logits'):
    assert outputs[key].dtype == tf.float32, key


@pytest.mark.slow
def test_cmt_trains_alike_under_each_kernel_policy(synthetic_env, tmp_path):
  """Same seed, data and steps: the CPU kernels change no loss."""
  config_file = _cmt_tiny_config(tmp_path)
  losses = {}
  for policy in ('REFERENCE', 'CPU_OPTIMIZED'):
    config = runner.load_experiment_config(config_file, SHORT + [
        'trainer_options.num_steps=3', f'model_options.kernel_policy={policy}'])
    experiment = runner.Experiment(config, tmp_path / policy,
                                   tf.distribute.OneDeviceStrategy('/cpu:0'))
    assert experiment.kernel_policy.name == policy
    losses[policy] = [float(experiment.trainer.train(tf.constant(1))['total'])
                      for _ in range(3)]
    assert all(np.isfinite(losses[policy])), losses
  np.testing.assert_allclose(losses['CPU_OPTIMIZED'], losses['REFERENCE'],
                             rtol=1e-3)


def test_warm_start_from_initial_checkpoint_unless_resuming(synthetic_env,
                                                           tmp_path):
  config = runner.load_experiment_config(TINY_CONFIG, SHORT)
  source = deeplab2_kmax.build_model(config)
  deeplab2_import.ensure_built(source)
  import_test._randomize(source, 11)  # pylint: disable=protected-access
  config.model_options.initial_checkpoint = tf.train.Checkpoint(
      model=source).write(str(tmp_path / 'init' / 'ckpt'))
  strategy = tf.distribute.OneDeviceStrategy('/cpu:0')
  first = runner.Experiment(config, tmp_path / 'run', strategy)
  assert int(first.global_step.numpy()) == 0  # weights only, fresh optimizer
  for mine, theirs in zip(first.model.weights, source.weights):
    np.testing.assert_array_equal(mine.numpy(), theirs.numpy())
  report = json.loads(
      (tmp_path / 'run' / 'initial_checkpoint_report.json').read_text())
  assert report['pretrained_weights'] is None
  loaded = report['initial_checkpoint']
  assert loaded['scope'] == 'ALL' and loaded['layout'] == 'deeplab2_kmax'
  assert len(loaded['loaded']) == len(source.weights)
  assert loaded['fresh'] == {} and 'loaded' in loaded['summary']
  # Once the run has a checkpoint of its own, a restart resumes from it and
  # ignores initial_checkpoint.
  kernel = first.model.trainable_variables[0]
  kernel.assign(tf.zeros_like(kernel))
  first.manager.save(checkpoint_number=0)
  second = runner.Experiment(config, tmp_path / 'run', strategy)
  assert not np.any(second.model.trainable_variables[0].numpy())


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
# seeds cannot make the two runs differ; no dropout (its masks are drawn per
# replica).
overrides = SHORT + [
    'model_options.semantic_head.aspp_dropout=0',
    'trainer_options.num_steps=2',
    'trainer_options.loss_options.instance_discrimination_sample_k=2048',
    'trainer_options.loss_options.semantic_sample_k=2048']
config = runner.load_experiment_config(TINY_CONFIG, overrides)


def global_gradients(experiment, batch):
  # The gradient of the global batch's mean loss, as the trainer forms it:
  # each replica's total / replicas, summed across replicas.
  strategy, model = experiment.strategy, experiment.model

  def replica_fn(batch):
    replicas = tf.distribute.get_replica_context().num_replicas_in_sync
    with tf.GradientTape() as tape:
      losses = experiment.loss(model(batch['image'], training=True), batch,
                               tf.constant([0, 0], tf.int64))
      objective = losses['total'] / replicas
    return [tf.convert_to_tensor(g)  # IndexedSlices of gathers: dense
            for g in tape.gradient(objective, model.trainable_variables)]

  per_replica = tf.function(lambda b: strategy.run(replica_fn, args=(b,)))(
      batch)
  return [strategy.reduce('SUM', g, axis=None).numpy() for g in per_replica]


results = []
for name, strategy in (
    ('one', tf.distribute.OneDeviceStrategy('/cpu:0')),
    ('two', distribution.build_strategy('mirrored', num_cpu_devices=2))):
  experiment = runner.Experiment(config, root + '/' + name, strategy, seed=0)
  assert strategy.num_replicas_in_sync == (1 if name == 'one' else 2)
  batch = next(iter(experiment.task.build_inputs(strategy, is_training=True)))
  gradients = global_gradients(experiment, batch)
  loop = experiment.trainer.train(tf.constant(2))  # two training steps
  results.append((gradients, loop))

(grads_one, loop_one), (grads_two, loop_two) = results
# Same gradients of the first global batch (the sum over two replicas
# reduces in another order: float tolerance, relative to each variable's
# gradient and, for gradients that are zero but for rounding, such as the
# bias of a conv before a batch norm, to the largest gradient of all).
largest = max(float(np.max(np.abs(g))) for g in grads_one)
errors = []
for g1, g2, v in zip(grads_one, grads_two,
                     experiment.model.trainable_variables):
  worst = float(np.max(np.abs(g1 - g2)))
  allowed = 1e-4 * float(np.max(np.abs(g1))) + 1e-5 * largest
  errors.append((worst / allowed, worst, v.path))
errors.sort(reverse=True)
print('largest gradient', largest, 'worst errors', errors[:5])
assert errors[0][0] <= 1.0, errors[:5]
# ... and the same mean losses over two training steps.
for term, value in loop_one.items():
  if term != 'steps_per_second':
    np.testing.assert_allclose(loop_two[term], value, rtol=1e-5,
                               err_msg=term)
print('gradients and losses agree')
"""


@pytest.mark.slow
def test_mirrored_on_two_cpus_matches_one_device(synthetic_env, tmp_path):
  _python(_MIRRORED_SCRIPT, tmp_path)


@pytest.mark.slow
def test_multi_worker_trains_and_writes_one_checkpoint(synthetic_env,
                                                       tmp_path):
  ports = [_free_port(), _free_port()]
  workers = [f'localhost:{p}' for p in ports]
  processes, logs = [], []
  for index in range(2):
    tf_config = json.dumps({'cluster': {'worker': workers},
                            'task': {'type': 'worker', 'index': index}})
    # Output to files, not pipes: a worker blocked on a full pipe that is
    # not being read would stall the other in its collectives.
    logs.append(tmp_path / f'worker{index}.log')
    with open(logs[-1], 'w') as log:
      processes.append(subprocess.Popen(
          [sys.executable, '-m', 'deeplab2_kmax.trainer.train',
           f'--config_file={TINY_CONFIG}', f'--model_dir={tmp_path / "run"}',
           '--mode=train'] + [f'--override={o}' for o in SHORT + [
               'trainer_options.num_steps=2']],
          cwd=REPO_ROOT, env={**os.environ, 'TF_CONFIG': tf_config,
                              'TF_CPP_MIN_LOG_LEVEL': '2'},
          stdout=log, stderr=subprocess.STDOUT, text=True))
  try:
    for p in processes:
      p.wait(timeout=900)
  finally:
    for p in processes:
      p.kill()
  for p, log in zip(processes, logs):
    assert p.returncode == 0, log.read_text()[-4000:]
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


def test_unknown_mixed_precision_is_an_error_naming_the_field(
    synthetic_env, tmp_path):
  assert runner.precision_policy('') is None
  assert runner.precision_policy('bfloat16') == 'mixed_bfloat16'
  config = runner.load_experiment_config(
      TINY_CONFIG, ['trainer_options.mixed_precision=float64'])
  with pytest.raises(config_lib.ConfigError,
                     match=r"trainer_options\.mixed_precision.*'float64'"):
    runner.Experiment(config, tmp_path / 'run',
                      tf.distribute.OneDeviceStrategy('/cpu:0'))


@pytest.mark.parametrize('override, expected', [
    ([], 'CPU_OPTIMIZED'),  # AUTO on a CPU
    (['model_options.kernel_policy=REFERENCE'], 'REFERENCE'),
    (['model_options.kernel_policy=CPU_OPTIMIZED'], 'CPU_OPTIMIZED')])
def test_experiment_resolves_the_kernel_policy_on_its_devices(
    synthetic_env, tmp_path, override, expected):
  from deeplab2_kmax.model import kernels  # pylint: disable=import-outside-toplevel
  config = runner.load_experiment_config(TINY_CONFIG, override)
  strategy = tf.distribute.OneDeviceStrategy('/cpu:0')
  experiment = runner.Experiment(config, tmp_path / 'run', strategy)
  assert experiment.kernel_policy.name == expected
  assert kernels.active_policy().name == expected


@pytest.mark.parametrize('flags, expected', [
    (['--config_file=no/such/config.textproto'],
     'error: no/such/config.textproto: cannot read config file'),
    ([f'--config_file={TINY_CONFIG}', '--override=trainer_options.nope=1'],
     "error: --override='trainer_options.nope=1': trainer_options has no "
     "field 'nope'"),
])
def test_train_command_reports_user_errors_in_one_line(tmp_path, flags,
                                                       expected):
  result = subprocess.run(
      [sys.executable, '-m', 'deeplab2_kmax.trainer.train', *flags,
       f'--model_dir={tmp_path / "run"}'], cwd=REPO_ROOT,
      env={**os.environ, 'TF_CPP_MIN_LOG_LEVEL': '2'}, capture_output=True,
      text=True, timeout=300, check=False)
  assert result.returncode == 1, result.stderr[-3000:]
  assert 'Traceback' not in result.stderr, result.stderr[-3000:]
  errors = [line for line in result.stderr.splitlines()
            if line.startswith('error: ')]
  assert len(errors) == 1 and errors[0].startswith(expected), errors


@pytest.mark.slow
def test_convnext_with_a_stage1_decoder_stage_trains_and_evaluates(
    synthetic_env, tmp_path):
  """Cityscapes' layout on a ConvNeXt: the 'stride 2' decoder stage fuses
  the stride-4 stem output, so targets and predictions are at stride 4."""
  text = TINY_CONFIG.read_text().replace(
      'name: "resnet_tiny"', 'name: "convnext_tiny"').replace(
          '    stages { stride: 4 block_type: BOTTLENECK num_blocks: 1 '
          'filters: 8 }\n',
          '    stages { stride: 4 block_type: BOTTLENECK num_blocks: 1 '
          'filters: 8 }\n    stages { stride: 2 block_type: BOTTLENECK '
          'num_blocks: 1 filters: 8 }\n')
  assert 'convnext_tiny' in text and 'stride: 2 block_type' in text
  config_file = tmp_path / 'convnext.textproto'
  config_file.write_text(text)
  model_dir = tmp_path / 'run'
  overrides = SHORT + ['trainer_options.num_steps=2',
                       'evaluator_options.num_eval_steps=1']
  runner.run_experiment(config_file=config_file, model_dir=model_dir,
                        mode='train', overrides=overrides,
                        strategy='one_device')
  result = runner.run_experiment(config_file=config_file, model_dir=model_dir,
                                 mode='eval', overrides=overrides,
                                 strategy='one_device')
  assert np.isfinite(result['loss/total'])
  assert 'panoptic/pq' in result


@pytest.mark.slow
def test_eval_without_checkpoints_evaluates_the_initial_checkpoint(
    synthetic_env, tmp_path):
  """A zoo checkpoint evaluates straight from initial_checkpoint (at step
  0); with neither a checkpoint nor initial_checkpoint, eval is an error."""
  config = runner.load_experiment_config(TINY_CONFIG, SHORT)
  source = deeplab2_kmax.build_model(config)
  deeplab2_import.ensure_built(source)
  import_test._randomize(source, 3)  # pylint: disable=protected-access
  prefix = tmp_path / 'zoo'
  import_test._write_deeplab2_checkpoint(source, prefix)  # pylint: disable=protected-access
  # The scope is about starting a training (here: an ImageNet backbone);
  # the evaluated checkpoint is loaded whole.
  overrides = SHORT + ['evaluator_options.num_eval_steps=1',
                       f'model_options.initial_checkpoint={prefix}',
                       'model_options.initial_checkpoint_scope=PIXEL_ENCODER']
  result = runner.run_experiment(
      config_file=TINY_CONFIG, model_dir=tmp_path / 'run', mode='eval',
      overrides=overrides, strategy='one_device')
  assert np.isfinite(result['loss/total'])
  assert (tmp_path / 'run' / 'eval' / 'metrics-0.json').exists()
  report = json.loads(
      (tmp_path / 'run' / 'initial_checkpoint_report.json').read_text())
  assert report['initial_checkpoint']['scope'] == 'ALL'
  assert len(report['initial_checkpoint']['loaded']) == len(source.weights)
  with pytest.raises(FileNotFoundError, match='initial_checkpoint'):
    runner.run_experiment(config_file=TINY_CONFIG, model_dir=tmp_path / 'b',
                          mode='eval', overrides=SHORT,
                          strategy='one_device')
