"""Orbit trainer: one optimisation step per batch, losses averaged per loop.

Each replica computes the loss of its share of the global batch; the
gradient of `total / num_replicas` is summed across replicas by the
optimizer, so the update is that of the mean loss over the global batch.
Random sampling in the loss is seeded by (task seed, step, replica), so a
resumed run draws the same samples as an uninterrupted one.

A non-finite loss term stops training: the step records the first step and
term at fault, and `train_loop_end` raises `NonFiniteLossError` before Orbit
writes the loop's checkpoint, so the last good checkpoint stays the latest.

The last step of each loop also keeps the first example of its batch
(first replica) with the model's per-pixel answer, for the TensorBoard
picture of the loop (image_summaries.py). The picture's variables have the
static shapes of the training crop, so the step can be compiled.

With `jit_compile` each replica's step (forward, loss, gradient, update and
the bookkeeping) is one XLA computation, `tf.function(jit_compile=True)`
inside `strategy.run`; TPUStrategy compiles the step anyway. A compiled step
needs the loss's Hungarian matching on its TensorFlow path
(`KMaXLoss(use_host_matching=False)`, see model/loss/matcher.py).
"""
import time

import orbit
import tensorflow as tf
from absl import logging

from deeplab2_kmax.model.kernels import policy
from deeplab2_kmax.model.layers import sync_batch_norm
from deeplab2_kmax.model.loss import kmax_loss
from deeplab2_kmax.trainer import image_summaries


# String keys of the input batches (data/input_pipeline.py).
_STRING_KEYS = ('image_id', 'filename')


class NonFiniteLossError(FloatingPointError):
  """A loss term became NaN or Inf."""


class KMaXTrainer(orbit.StandardTrainer):
  """Trains a model on a distributed dataset with the task's loss."""

  def __init__(self, *, task, strategy, model, loss, optimizer, schedule,
               train_dataset, num_steps, mixed_precision=None,
               jit_compile=False):
    compiled = bool(jit_compile) or is_tpu_strategy(strategy)
    if compiled and loss.use_host_matching is not False:
      raise ValueError(
          'KMaXTrainer: a compiled training step (trainer_options.jit_compile '
          'or a TPU) needs the loss built with use_host_matching=False (the '
          'TensorFlow Hungarian matching); found use_host_matching='
          f'{loss.use_host_matching!r}')
    check_jit_compile_support(strategy, jit_compile)
    self.task = task
    self.strategy = strategy
    self.model = model
    self.loss = loss
    self.optimizer = optimizer
    self.schedule = schedule
    self.num_steps = int(num_steps)
    self._loss_scale = mixed_precision == 'float16'
    # The weighted terms, then the total (kmax_loss.TERMS).
    self.term_names = tuple(kmax_loss.TERMS) + (kmax_loss.TOTAL,)
    with strategy.scope():
      def counter(name, dtype=tf.float32):
        return tf.Variable(
            tf.zeros([], dtype), trainable=False, name=name,
            synchronization=tf.VariableSynchronization.ON_READ,
            aggregation=tf.VariableAggregation.SUM)
      self._sums = {n: counter(f'sum_{n}') for n in self.term_names}
      self._count = counter('count')
      # First step (and term index) with a non-finite loss; -1 while none.
      self._bad_step = tf.Variable(-1, dtype=tf.int64, trainable=False,
                                   aggregation=tf.VariableAggregation
                                   .ONLY_FIRST_REPLICA)
      self._bad_term = tf.Variable(-1, dtype=tf.int64, trainable=False,
                                   aggregation=tf.VariableAggregation
                                   .ONLY_FIRST_REPLICA)
      # The step of the loop whose picture is kept (set by `train`).
      self._picture_step = tf.Variable(
          -1, dtype=tf.int64, trainable=False, name='picture_step',
          aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA)
      self._picture = _picture_variables(task.training_picture_shapes())
    # TPUStrategy compiles `strategy.run` itself; elsewhere XLA compiles
    # each replica's step only when asked.
    self._replica_step = self._step_fn
    if jit_compile and not is_tpu_strategy(strategy):
      self._replica_step = tf.function(self._step_fn, jit_compile=True)
    # Compiled replicas sum the norms' statistics with all_reduce.
    sync_batch_norm.set_compiled_replica_steps(compiled)
    super().__init__(train_dataset, options=orbit.StandardTrainerOptions(
        use_tf_while_loop=True, use_tf_function=True))
    self._loop_start = None
    self._loop_start_step = None

  @property
  def global_step(self):
    return self.optimizer.iterations

  def train(self, num_steps):
    """Runs a loop of `num_steps` steps; keeps the picture of its last."""
    self._picture_step.assign(
        tf.cast(self.global_step, tf.int64) + tf.cast(num_steps, tf.int64)
        - 1)
    return super().train(num_steps)

  def train_loop_begin(self):
    for v in list(self._sums.values()) + [self._count]:
      v.assign(tf.zeros_like(v))
    self._loop_start = time.perf_counter()
    self._loop_start_step = int(self.global_step.numpy())

  def train_step(self, iterator):
    batch = next(iterator)
    # The step reads no strings (nor could XLA compile them).
    batch = {k: v for k, v in batch.items() if k not in _STRING_KEYS}
    self.strategy.run(self._replica_step, args=(batch,))

  def _step_fn(self, batch):
    context = tf.distribute.get_replica_context()
    replicas = context.num_replicas_in_sync
    step = tf.cast(self.global_step, tf.int64)
    seed = tf.stack([
        tf.constant(self.task.seed, tf.int64),
        step * 1024 + tf.cast(context.replica_id_in_sync_group, tf.int64)])
    variables = self.model.trainable_variables
    with tf.GradientTape() as tape:
      outputs = self.model(batch['image'], training=True)
      losses = self.loss(outputs, batch, seed)
      objective = losses['total'] / replicas
      if self._loss_scale:
        objective = self.optimizer.scale_loss(objective)
    grads = tape.gradient(objective, variables)
    self.optimizer.apply_gradients(zip(grads, variables))

    # The loss counts non-finite per-image values of each term (and zeroes
    # them); the total itself must be finite too.
    finite = tf.stack(
        [tf.equal(losses[kmax_loss.NON_FINITE_PREFIX + n], 0.0)
         for n in kmax_loss.TERMS] +
        [tf.reduce_all(tf.math.is_finite(losses[kmax_loss.TOTAL]))])
    first_bad = tf.cast(tf.argmin(tf.cast(finite, tf.int32)), tf.int64)
    record = tf.logical_and(tf.logical_not(tf.reduce_all(finite)),
                            self._bad_step < 0)
    self._bad_step.assign(tf.where(record, step, self._bad_step))
    self._bad_term.assign(tf.where(record, first_bad, self._bad_term))
    for name in self.term_names:
      self._sums[name].assign_add(tf.cast(losses[name], tf.float32))
    self._count.assign_add(1.0)

    def keep_picture():
      self._picture['image'].assign(
          tf.cast(batch['image'][0], tf.float32))  # [H, W, 3]
      self._picture['panoptic'].assign(batch['panoptic'][0])  # [H, W]
      self._picture['clusters'].assign(tf.argmax(
          outputs['mask_logits'][0], axis=-1, output_type=tf.int32))  # [h, w]
      self._picture['classes'].assign(tf.argmax(
          outputs['class_logits'][0], axis=-1, output_type=tf.int32))  # [N]
      return tf.constant(True)

    tf.cond(tf.equal(step, self._picture_step), keep_picture,
            lambda: tf.constant(False))

  def train_loop_end(self):
    step = int(self.global_step.numpy())
    bad_step = int(self._bad_step.numpy())
    if bad_step >= 0:
      term = self.term_names[int(self._bad_term.numpy())]
      raise NonFiniteLossError(
          f'the loss term {term!r} was not finite (NaN or Inf) at step '
          f'{bad_step}; training stopped; the latest checkpoint in the '
          'model directory is the last good one')
    count = max(float(self._count.numpy()), 1.0)
    result = {name: float(v.numpy()) / count
              for name, v in self._sums.items()}
    if tf.summary.should_record_summaries():
      info = self.task.dataset_info
      picture = {k: v.numpy()[None] for k, v in self._picture.items()}
      image_summaries.write(
          'train/input_groundtruth_prediction', picture['image'],
          picture['panoptic'], image_summaries.per_pixel_panoptic(
              picture['classes'], picture['clusters'], info),
          info, step=self.global_step)
    # The rate of the loop's last update.
    result['learning_rate'] = float(self.schedule(max(step - 1, 0)))
    elapsed = time.perf_counter() - self._loop_start
    steps = step - self._loop_start_step
    rate = steps / elapsed if elapsed > 0 else 0.0
    result['steps_per_second'] = rate
    remaining = (self.num_steps - step) / rate if rate > 0 else float('nan')
    logging.info('step %d/%d | loss %.4f | %.2f steps/s | %s left', step,
                 self.num_steps, result['total'], rate,
                 _format_duration(remaining))
    return result


is_tpu_strategy = policy.is_tpu_strategy


def check_jit_compile_support(strategy, jit_compile):
  """Raises ValueError if `strategy` cannot run an XLA-compiled step.

  One replica, GPUs and TPUs can. Several CPU replicas cannot: there
  `strategy.run` of a `jit_compile` function compiles all replicas as one
  computation placed on the first device, which cannot read the other
  replicas' variables (TensorFlow 2.20: "Trying to access resource ...
  located in device CPU:1 from device CPU:0").
  """
  replicas = strategy.num_replicas_in_sync
  devices = strategy.extended.worker_devices
  on_cpus = all(tf.DeviceSpec.from_string(d).device_type == 'CPU'
                for d in devices)
  if jit_compile and replicas > 1 and on_cpus:
    raise ValueError(
        'trainer_options.jit_compile: TensorFlow cannot XLA-compile the '
        f'step of {type(strategy).__name__} with {replicas} CPU replicas; '
        'train with jit_compile=false, on one device, on GPUs or with '
        'TPUStrategy')


def _picture_variables(shapes):
  """Variables holding one training example and the model's answer.

  Args:
    shapes: {'image': [H, W, 3], 'panoptic': [H, W], 'clusters': [h, w],
      'classes': [N]}, static (KMaXTask.training_picture_shapes).

  Each replica writes its own copy (no synchronisation inside the step);
  reading outside the step gives the first replica's.
  """
  dtypes = {'image': tf.float32, 'panoptic': tf.int32, 'clusters': tf.int32,
            'classes': tf.int32}
  return {key: tf.Variable(
      tf.zeros(shapes[key], dtype), trainable=False, name=f'picture_{key}',
      synchronization=tf.VariableSynchronization.ON_READ,
      aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA)
          for key, dtype in dtypes.items()}


def _format_duration(seconds):
  if seconds != seconds or seconds == float('inf'):  # NaN / inf
    return '?'
  seconds = int(round(seconds))
  hours, rest = divmod(seconds, 3600)
  minutes, secs = divmod(rest, 60)
  return f'{hours}h{minutes:02d}m' if hours else f'{minutes}m{secs:02d}s'
