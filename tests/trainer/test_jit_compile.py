"""The XLA-compiled training step (trainer_options.jit_compile)."""
import numpy as np
import pytest
import tensorflow as tf

from deeplab2_kmax.model import kernels
from deeplab2_kmax.model.loss import kmax_loss
from deeplab2_kmax.trainer import runner
from deeplab2_kmax.trainer import task as task_lib
from deeplab2_kmax.trainer import trainer as trainer_lib
from tests.conftest import TINY_CONFIG
from tests.trainer import test_train

# Plain TensorFlow kernels; every pixel sampled (sample_k >= 33 * 33) and no
# dropout: XLA's stateless random streams differ from TensorFlow's kernels',
# so only draws that do not depend on the stream give the same losses
# compiled and not.
_OVERRIDES = [
    'model_options.kernel_policy=REFERENCE',
    'model_options.semantic_head.aspp_dropout=0',
    'trainer_options.loss_options.instance_discrimination_sample_k=2048',
    'trainer_options.loss_options.semantic_sample_k=2048']


class _Replicas:
  """A strategy's replica count and devices (CPUs by default)."""

  def __init__(self, num_replicas_in_sync, device='CPU'):
    self.num_replicas_in_sync = num_replicas_in_sync
    self.extended = type('Extended', (), {'worker_devices': [
        f'/job:localhost/replica:0/task:0/device:{device}:{i}'
        for i in range(num_replicas_in_sync)]})()


def test_several_cpu_replicas_cannot_compile():
  trainer_lib.check_jit_compile_support(_Replicas(1), jit_compile=True)
  trainer_lib.check_jit_compile_support(_Replicas(2), jit_compile=False)
  trainer_lib.check_jit_compile_support(_Replicas(2, 'GPU'), jit_compile=True)
  with pytest.raises(ValueError,
                     match=r'trainer_options\.jit_compile: .* 2 CPU replicas'):
    trainer_lib.check_jit_compile_support(_Replicas(2), jit_compile=True)


def test_compiled_step_needs_the_tensorflow_matching():
  loss = kmax_loss.KMaXLoss(num_classes=3, ignore_label=0)
  with pytest.raises(ValueError, match='use_host_matching=False'):
    trainer_lib.KMaXTrainer(
        task=None, strategy=_Replicas(1), model=None, loss=loss,
        optimizer=None, schedule=None, train_dataset=None, num_steps=1,
        jit_compile=True)


def test_task_builds_the_compiled_loss_and_the_picture_shapes():
  config = runner.load_experiment_config(TINY_CONFIG)
  task = task_lib.KMaXTask(config)
  one_device = tf.distribute.OneDeviceStrategy('/cpu:0')
  assert not task.compiles_training_step(one_device)
  assert task.build_loss().use_host_matching is None
  assert task.build_loss(compiled=True).use_host_matching is False
  config.trainer_options.jit_compile = True
  assert task.compiles_training_step(one_device)
  # The tiny config: crop 129, output stride 4, 16 cluster centers.
  assert task.training_picture_shapes() == {
      'image': [129, 129, 3], 'panoptic': [129, 129], 'clusters': [33, 33],
      'classes': [16]}


def _train_loops(model_dir, jit_compile):
  """Loop results of 2 then 1 steps, the trainer and its strategy."""
  config = runner.load_experiment_config(
      TINY_CONFIG, test_train.SHORT + _OVERRIDES)
  strategy = tf.distribute.OneDeviceStrategy('/cpu:0')
  experiment = runner.Experiment(config, model_dir, strategy, seed=0)
  task = experiment.task
  # Both runs match in TensorFlow, so that ties resolve alike.
  assert experiment.kernel_policy is kernels.KernelPolicy.REFERENCE
  trainer = trainer_lib.KMaXTrainer(
      task=task, strategy=strategy, model=experiment.model,
      loss=task.build_loss(compiled=True), optimizer=experiment.optimizer,
      schedule=experiment.schedule,
      train_dataset=task.build_inputs(strategy, is_training=True),
      num_steps=3, jit_compile=jit_compile)
  first = trainer.train(tf.constant(2))
  picture = {k: v.numpy() for k, v in trainer._picture.items()}  # pylint: disable=protected-access
  second = trainer.train(tf.constant(1))
  return [first, second], picture, task, strategy


@pytest.mark.slow
def test_compiled_step_gives_the_losses_of_the_plain_step(synthetic_env,
                                                          tmp_path):
  # The runner sets the process's kernel policy from the config; the scope
  # restores the previous one afterwards.
  with kernels.policy_scope('AUTO'):
    plain, _, _, _ = _train_loops(tmp_path / 'plain', jit_compile=False)
    compiled, picture, task, strategy = _train_loops(tmp_path / 'compiled',
                                                     jit_compile=True)
  for plain_loop, compiled_loop in zip(plain, compiled):
    for term in tuple(kmax_loss.TERMS) + (kmax_loss.TOTAL, 'learning_rate'):
      np.testing.assert_allclose(compiled_loop[term], plain_loop[term],
                                 rtol=1e-3, err_msg=term)
  # The picture of the first loop is the first example of its last batch.
  second_batch = next(iter(task.build_inputs(strategy, is_training=True,
                                             skip_batches=1)))
  np.testing.assert_array_equal(picture['image'],
                                second_batch['image'][0].numpy())
  np.testing.assert_array_equal(picture['panoptic'],
                                second_batch['panoptic'][0].numpy())
  assert picture['clusters'].shape == (33, 33)
  assert 0 <= picture['clusters'].min() and picture['clusters'].max() < 16


_MIRRORED_SCRIPT = """
import sys
from deeplab2_kmax.trainer import runner
from tests.trainer.test_train import SHORT, TINY_CONFIG
try:
  runner.run_experiment(
      config_file=TINY_CONFIG, model_dir=sys.argv[1], strategy='mirrored',
      num_cpu_devices=2, overrides=SHORT + ['trainer_options.num_steps=2',
                                            'trainer_options.jit_compile=true'])
except ValueError as e:
  print('ValueError:', e)
"""


@pytest.mark.slow
def test_mirrored_on_two_cpus_refuses_jit_compile_in_one_line(synthetic_env,
                                                              tmp_path):
  # TensorFlow compiles both replicas as one computation on CPU:0, which
  # cannot read CPU:1's variables: a clear error before any model is built.
  result = test_train._python(_MIRRORED_SCRIPT, tmp_path / 'run')  # pylint: disable=protected-access
  lines = result.stdout.strip().splitlines()
  assert len(lines) == 1, result.stdout
  assert lines[0].startswith(
      'ValueError: trainer_options.jit_compile: TensorFlow cannot '
      'XLA-compile the step of MirroredStrategy with 2 CPU replicas'), lines
