"""Wires task, strategy, checkpoints and Orbit for one experiment.

Order of work, so that bad input fails before any training:
config + overrides -> model_dir writable -> strategy -> data files exist
and the batch divides across replicas -> model, loss, optimizer (built in
the strategy scope) -> restore the latest checkpoint (or warm-start from
`initial_checkpoint`) -> Orbit controller runs the mode.
"""
import pathlib
import shutil
import tempfile

import keras
import orbit
import tensorflow as tf
from absl import logging
from google.protobuf import text_format

from deeplab2_kmax import config as config_lib
from deeplab2_kmax import io_utils
from deeplab2_kmax import overrides as overrides_lib
from deeplab2_kmax.checkpoints import initial_checkpoint
from deeplab2_kmax.model import kernels
from deeplab2_kmax.trainer import distribution
from deeplab2_kmax.trainer import evaluator as evaluator_lib
from deeplab2_kmax.trainer import task as task_lib
from deeplab2_kmax.trainer import trainer as trainer_lib

MODES = ('train', 'eval', 'train_and_eval', 'continuous_eval')
_PRECISION_POLICIES = {'': None, 'float32': None,
                       'bfloat16': 'mixed_bfloat16',
                       'float16': 'mixed_float16'}


def precision_policy(precision):
  """Keras's dtype policy for `trainer_options.mixed_precision`.

  None for float32 ('' or 'float32'); raises ConfigError naming the field
  for an unknown value.
  """
  if precision not in _PRECISION_POLICIES:
    raise config_lib.ConfigError(
        f'trainer_options.mixed_precision: expected one of '
        f'{sorted(_PRECISION_POLICIES)}, got {precision!r}')
  return _PRECISION_POLICIES[precision]


def check_model_dir(model_dir):
  """Creates `model_dir` and checks that it is writable, or raises."""
  path = pathlib.Path(model_dir)
  try:
    path.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=path, prefix='.write_test'):
      pass
  except OSError as e:
    raise OSError(f'--model_dir={model_dir}: not a writable directory '
                  f'({e.strerror or e})') from None
  return path


def write_json(path, value):
  """Writes a readable JSON file (temporary file, then rename)."""
  io_utils.write_json(path, value, indent=2, sort_keys=True)


def load_experiment_config(config_file, overrides=()):
  config = config_lib.load_config(config_file)
  if overrides:
    overrides_lib.apply_overrides(config, overrides, source=str(config_file))
  return config


class Experiment:
  """Model, optimizer, checkpoint manager and Orbit parts of one run."""

  def __init__(self, config, model_dir, strategy, *, seed=0, mode='train'):
    self.config = config
    self.model_dir = check_model_dir(model_dir)
    self.strategy = strategy
    self.task = task_lib.KMaXTask(config, seed=seed)
    trainer_options = config.trainer_options
    precision = trainer_options.mixed_precision
    policy = precision_policy(precision)
    self.precision = precision or 'float32'
    training = mode in ('train', 'train_and_eval')
    evaluating = mode != 'train'
    # Fail early on missing data and bad batch sizes (names the field).
    if training:
      self.task.check_inputs(strategy, is_training=True)
    if evaluating:
      self.task.check_inputs(strategy, is_training=False)
    if training:
      trainer_lib.check_jit_compile_support(strategy,
                                            trainer_options.jit_compile)

    # The kernels everything below traces: REFERENCE on GPUs and TPUs,
    # the CPU paths when every replica is a CPU (AUTO).
    self.kernel_policy = kernels.set_policy(
        config.model_options.kernel_policy, strategy.extended.worker_devices)
    logging.info('kernel policy: %s', self.kernel_policy.name)

    # Same initial weights for the same seed.
    keras.utils.set_random_seed(seed)
    previous_policy = keras.config.dtype_policy()
    if policy:
      keras.config.set_dtype_policy(policy)
    try:
      with strategy.scope():
        self.model = self.task.build_model()
        self.loss = self.task.build_loss()
        # A compiled training step matches in TensorFlow; the evaluator
        # keeps the loss whose matcher chooses.
        self.train_loss = self.loss
        if self.task.compiles_training_step(strategy):
          self.train_loss = self.task.build_loss(compiled=True)
        self.optimizer, self.schedule = self.task.build_optimizer(
            self.model.trainable_variables,
            loss_scale=self.precision == 'float16')
    finally:
      keras.config.set_dtype_policy(previous_policy)

    # The random states (dropout, drop path) too: a resumed run continues
    # their streams, as it continues the input stream.
    self.checkpoint = tf.train.Checkpoint(
        model=self.model, optimizer=self.optimizer,
        random_states=random_states(self.model))
    # Multi-worker: every worker takes part in saving, but only the chief
    # writes to model_dir; the others write to a scratch folder that
    # `close()` removes.
    self.is_chief, worker_id = _chief_and_id(strategy)
    checkpoint_dir = self.model_dir if self.is_chief else (
        self.model_dir / f'worker-{worker_id}-tmp')
    self.manager = tf.train.CheckpointManager(
        self.checkpoint, directory=str(checkpoint_dir),
        max_to_keep=trainer_options.max_checkpoints_to_keep,
        step_counter=self.global_step,
        checkpoint_interval=trainer_options.save_checkpoints_steps,
        init_fn=self.warm_start if training else None)
    latest = tf.train.latest_checkpoint(str(self.model_dir))
    if self.is_chief or latest is None:
      restored = self.manager.restore_or_initialize()
    else:
      restored = latest
      self.checkpoint.restore(latest)
    if restored:
      logging.info('restored %s (step %d)', restored,
                   int(self.global_step.numpy()))

    self.trainer = None
    self.evaluator = None
    if training:
      self.trainer = trainer_lib.KMaXTrainer(
          task=self.task, strategy=strategy, model=self.model,
          loss=self.train_loss, optimizer=self.optimizer,
          schedule=self.schedule,
          train_dataset=self.task.build_inputs(
              strategy, is_training=True,
              skip_batches=int(self.global_step.numpy())),
          num_steps=trainer_options.num_steps,
          mixed_precision=self.precision,
          jit_compile=trainer_options.jit_compile)
    if evaluating:
      save = config.evaluator_options.save_predictions
      metrics, prediction_fn = self.task.build_metrics(
          prediction_dir_fn=(self._prediction_dir if save else None))
      self.evaluator = evaluator_lib.KMaXEvaluator(
          task=self.task, strategy=strategy, model=self.model,
          loss=self.loss, eval_dataset=self.task.build_inputs(
              strategy, is_training=False),
          metrics=metrics, prediction_fn=prediction_fn,
          global_step=self.global_step)

  @property
  def global_step(self):
    # Keras 3 keeps the tf.Variable behind `.value`.
    iterations = self.optimizer.iterations
    return getattr(iterations, 'value', iterations)

  def warm_start(self, evaluation=False):
    """The backbone's pretrained weights and the initial checkpoint, if
    set (for an evaluation: the whole initial checkpoint); what was loaded
    goes to the log and, on the chief, to
    model_dir/initial_checkpoint_report.json."""
    reports = initial_checkpoint.warm_start(self.model, self.config,
                                            evaluation=evaluation)
    if not any(reports.values()):
      return
    for field, report in reports.items():
      if report is not None:
        logging.info('warm start, %s: %s', field, report.summary())
    if self.is_chief:
      write_json(self.model_dir / initial_checkpoint.REPORT_FILE,
                 {field: report.as_dict() if report else None
                  for field, report in reports.items()})

  def controller(self, progress=None):
    """orbit.Controller of this run; `progress(step)`, if given, is called
    with the global step after every training loop."""
    trainer_options = self.config.trainer_options
    loop = trainer_options.steps_per_loop
    # Orbit writes summaries at loop ends: round up to a whole loop.
    summary_interval = -(-trainer_options.save_summaries_steps // loop) * loop
    return orbit.Controller(
        strategy=self.strategy, trainer=self.trainer,
        evaluator=self.evaluator, global_step=self.global_step,
        steps_per_loop=trainer_options.steps_per_loop,
        checkpoint_manager=self.manager,
        summary_interval=summary_interval,
        summary_dir=str(self.model_dir / 'train') if self.is_chief else None,
        eval_summary_dir=(str(self.model_dir / 'eval') if self.is_chief
                          else None),
        train_actions=(
            [lambda _: progress(int(self.global_step.numpy()))]
            if progress else None),
        eval_actions=([self._write_eval_json]
                      if self.evaluator and self.is_chief else None))

  def close(self):
    """Removes a non-chief worker's scratch checkpoints."""
    if not self.is_chief:
      shutil.rmtree(self.manager.directory, ignore_errors=True)

  def _prediction_dir(self):
    step = int(self.global_step.numpy())
    return self.model_dir / 'eval' / f'predictions-{step}'

  def _write_eval_json(self, result):
    step = int(self.global_step.numpy())
    write_json(self.model_dir / 'eval' / f'metrics-{step}.json',
                     {'step': step, **_plain(result)})


def random_states(model):
  """The Keras `SeedGenerator` states of `model`, in the model's order.

  They are in `model.variables` but not in `model.weights`, and Keras does
  not give them to `tf.train.Checkpoint`. A list, not a dict by path: the
  paths carry process-wide name counters (`seed_generator_17`), the order is
  fixed by the model's structure.
  """
  weights = {id(v) for v in model.weights}
  return [v for v in model.variables if id(v) not in weights]


def _chief_and_id(strategy):
  """(is this worker the chief?, its task id) from the cluster resolver."""
  resolver = getattr(strategy, 'cluster_resolver', None)
  task_type = getattr(resolver, 'task_type', None)
  task_id = getattr(resolver, 'task_id', None) or 0
  if task_type in (None, 'chief'):
    return True, task_id
  has_chief = 'chief' in resolver.cluster_spec().as_dict()
  return task_type == 'worker' and task_id == 0 and not has_chief, task_id


def _plain(result):
  out = {}
  for key, value in result.items():
    if hasattr(value, 'numpy'):
      value = value.numpy()
    try:
      out[key] = float(value)
    except (TypeError, ValueError):
      out[key] = value
  return out


def run_experiment(*, config_file, model_dir, mode='train', overrides=(),
                   strategy='auto', tpu=None, num_cpu_devices=0, seed=0,
                   continuous_eval_timeout=3600, progress=None):
  """Runs one mode of an experiment; returns the last evaluation result.

  `progress(step)`, if given, is called after every training loop.
  """
  if mode not in MODES:
    raise ValueError(f'mode {mode!r}: expected one of {MODES}')
  config = load_experiment_config(config_file, overrides)
  strategy = distribution.build_strategy(strategy, tpu=tpu,
                                         num_cpu_devices=num_cpu_devices)
  experiment = Experiment(config, model_dir, strategy, seed=seed, mode=mode)
  if experiment.is_chief:
    # What ran: the command's config and overrides, and the resolved config.
    write_json(experiment.model_dir / 'config.json',
               {'config_file': str(config_file), 'overrides': list(overrides),
                'mode': mode, 'num_replicas': strategy.num_replicas_in_sync})
    io_utils.write_text(experiment.model_dir / 'config.textproto',
                text_format.MessageToString(config))
  try:
    return _run_mode(experiment, mode, continuous_eval_timeout, progress)
  finally:
    experiment.close()


def _run_mode(experiment, mode, continuous_eval_timeout, progress):
  config = experiment.config
  model_dir = experiment.model_dir
  controller = experiment.controller(progress)
  trainer_options = config.trainer_options
  eval_steps = config.evaluator_options.num_eval_steps
  if mode == 'train':
    controller.train(steps=trainer_options.num_steps)
    return None
  if mode == 'eval':
    if experiment.manager.latest_checkpoint is None:
      if not config.model_options.HasField('initial_checkpoint'):
        raise FileNotFoundError(
            f'--model_dir={model_dir}: no checkpoint to evaluate (and no '
            'model_options.initial_checkpoint)')
      # A model_dir without checkpoints evaluates the initial checkpoint
      # (e.g. a DeepLab2 zoo checkpoint), as DeepLab2's evaluator does.
      experiment.warm_start(evaluation=True)
    return controller.evaluate(steps=eval_steps)
  if mode == 'train_and_eval':
    controller.train_and_evaluate(
        train_steps=trainer_options.num_steps, eval_steps=eval_steps,
        eval_interval=config.evaluator_options.eval_interval_steps)
    return None
  # continuous_eval: every new checkpoint, until the final step's (or no new
  # checkpoint for `continuous_eval_timeout` seconds).
  result = None
  for path in tf.train.checkpoints_iterator(
      str(experiment.model_dir), timeout=continuous_eval_timeout):
    controller.restore_checkpoint(path)
    result = controller.evaluate(steps=eval_steps)
    if int(experiment.global_step.numpy()) >= trainer_options.num_steps:
      break
  return result
