"""Optimizers and learning-rate schedule of the kMaX-DeepLab recipe (spec §8).

- Learning rate: linear warm-up from 0 to the base rate over `warmup_steps`,
  then polynomial decay (power 0.9) to 0 at `num_steps`.
- AdamW with *decoupled* weight decay `w <- w - lr * wd * w`, applied only to
  convolution / dense kernels (variables whose name ends in `kernel`); biases,
  norms, relative-position tables and cluster centers are not decayed.
- The pixel encoder trains at `backbone_learning_rate_multiplier` x the base
  rate (its decay uses that rate too). Keras 3 optimizers have one learning
  rate, so `DecoupledAdamW` applies per-variable factors in `update_step`.
"""
import keras
import tensorflow as tf

BACKBONE_PREFIX = 'kmax_deeplab/pixel_encoder/'


@keras.saving.register_keras_serializable('deeplab2_kmax')
class WarmupPolynomialDecay(keras.optimizers.schedules.LearningRateSchedule):
  """Linear warm-up to `base_learning_rate`, then polynomial decay to 0.

  A warm-up longer than the schedule (short test runs) stays linear.
  """

  def __init__(self, base_learning_rate, num_steps, warmup_steps=0,
               power=0.9):
    if num_steps <= 0:
      raise ValueError(f'num_steps must be positive, got {num_steps}')
    if warmup_steps < 0:
      raise ValueError(f'warmup_steps must be >= 0, got {warmup_steps}')
    self.base_learning_rate = float(base_learning_rate)
    self.num_steps = int(num_steps)
    self.warmup_steps = int(warmup_steps)
    self.power = float(power)

  def __call__(self, step):
    step = tf.cast(step, tf.float32)
    base = tf.constant(self.base_learning_rate, tf.float32)
    # The step counter counts updates already applied: step 0 uses the rate
    # of the first update.
    warmup = base * tf.minimum(step + 1.0, float(max(self.warmup_steps, 1))) / (
        float(max(self.warmup_steps, 1)))
    progress = tf.clip_by_value(step / float(self.num_steps), 0.0, 1.0)
    decayed = base * tf.pow(1.0 - progress, self.power)
    if self.warmup_steps == 0:
      return decayed
    return tf.where(step < self.warmup_steps, warmup, decayed)

  def get_config(self):
    return {'base_learning_rate': self.base_learning_rate,
            'num_steps': self.num_steps, 'warmup_steps': self.warmup_steps,
            'power': self.power}


def is_backbone_variable(variable):
  return variable.path.startswith(BACKBONE_PREFIX)


def is_decayed_variable(variable):
  return variable.name.endswith('kernel')


@keras.saving.register_keras_serializable('deeplab2_kmax')
class DecoupledAdamW(keras.optimizers.Adam):
  """Adam with decoupled weight decay and per-variable learning-rate factors.

  Each update of a variable `w` with learning rate `lr * factor(w)` first
  decays it, `w <- w - lr * factor(w) * weight_decay * w` (only variables in
  `decay_variables`), then takes the Adam step. One optimizer (one step
  counter, one loss scale) serves the whole model.
  """

  def __init__(self, learning_rate, decoupled_weight_decay=0.0,
               name='adamw', **kwargs):
    super().__init__(learning_rate=learning_rate, name=name, **kwargs)
    self.decoupled_weight_decay = float(decoupled_weight_decay)
    self._lr_factors = {}
    self._decayed = set()

  def set_variable_options(self, variables, lr_factor=None, decay=None):
    """Learning-rate factor and decay flag of `variables` (before build)."""
    for v in variables:
      key = self._var_key(v)
      if lr_factor is not None:
        self._lr_factors[key] = float(lr_factor)
      if decay is not None:
        (self._decayed.add if decay else self._decayed.discard)(key)

  def update_step(self, gradient, variable, learning_rate):
    key = self._var_key(variable)
    factor = self._lr_factors.get(key, 1.0)
    dtype = variable.dtype
    lr = tf.cast(learning_rate, dtype)
    if factor != 1.0:
      lr = lr * factor
    # Keras's Adam runs a dozen elementwise ops per variable, each a pass
    # over the variable's size (72M weights: about 0.25 s of a CPU step).
    # TensorFlow's fused kernels (CPU, GPU and TPU) take one pass each for
    # the same formulas: w <- w - lr * wd * w, then Adam with
    # alpha = lr * sqrt(1 - b2^t) / (1 - b1^t).
    if self.decoupled_weight_decay and key in self._decayed:
      tf.raw_ops.ResourceApplyGradientDescent(
          var=variable.handle, alpha=lr * self.decoupled_weight_decay,
          delta=tf.convert_to_tensor(variable))
    if self.amsgrad:  # not in the recipe: Keras's own step
      super().update_step(gradient, variable, lr)
      return
    step = tf.cast(self.iterations + 1, dtype)
    beta_1 = tf.constant(self.beta_1, dtype)
    beta_2 = tf.constant(self.beta_2, dtype)
    index = self._get_variable_index(variable)
    tf.raw_ops.ResourceApplyAdam(
        var=variable.handle, m=self._momentums[index].handle,
        v=self._velocities[index].handle,
        beta1_power=tf.pow(beta_1, step), beta2_power=tf.pow(beta_2, step),
        lr=lr, beta1=beta_1, beta2=beta_2,
        epsilon=tf.constant(self.epsilon, dtype),
        grad=tf.cast(tf.convert_to_tensor(gradient), dtype))

  def get_config(self):
    return {**super().get_config(),
            'decoupled_weight_decay': self.decoupled_weight_decay}


def build_optimizer(solver_options, num_steps, variables,
                  loss_scale=False):
  """The recipe's optimizer for `variables`, built (call in strategy scope).

  Returns (optimizer, schedule). With `loss_scale` (float16) the optimizer
  is wrapped in a dynamic LossScaleOptimizer.
  """
  schedule = WarmupPolynomialDecay(
      solver_options.base_learning_rate, num_steps,
      solver_options.warmup_steps, solver_options.poly_learning_power)
  kind = solver_options.Optimizer.Name(solver_options.optimizer)
  common = dict(beta_1=solver_options.adam_beta1,
                beta_2=solver_options.adam_beta2,
                epsilon=solver_options.adam_epsilon)
  if kind in ('ADAMW', 'OPTIMIZER_UNSPECIFIED'):
    optimizer = DecoupledAdamW(
        schedule, decoupled_weight_decay=solver_options.weight_decay,
        **common)
  elif kind == 'ADAM':
    optimizer = DecoupledAdamW(schedule, name='adam', **common)
  else:
    raise ValueError(f'trainer_options.solver_options.optimizer: {kind} is '
                     'not supported (ADAMW or ADAM)')
  optimizer.set_variable_options(
      [v for v in variables if is_decayed_variable(v)], decay=True)
  optimizer.set_variable_options(
      [v for v in variables if is_backbone_variable(v)],
      lr_factor=solver_options.backbone_learning_rate_multiplier)
  if loss_scale:
    optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
  # Built before the first step, inside the caller's strategy scope: a
  # distributed step cannot create optimizer slots.
  optimizer.build(variables)
  return optimizer, schedule
