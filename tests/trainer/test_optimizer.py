"""Learning-rate schedule and the decoupled AdamW of the recipe."""
import keras
import numpy as np
import pytest
import tensorflow as tf

from deeplab2_kmax.protos import config_pb2
from deeplab2_kmax.trainer import optimizer as optimizer_lib


def test_schedule_warmup_then_poly_decay():
  schedule = optimizer_lib.WarmupPolynomialDecay(1.0, 100, 10, 0.9)
  assert float(schedule(0)) == pytest.approx(0.1)
  assert float(schedule(9)) == pytest.approx(1.0)
  assert float(schedule(10)) == pytest.approx((1 - 0.1) ** 0.9)
  assert float(schedule(50)) == pytest.approx(0.5 ** 0.9)
  assert float(schedule(100)) == 0.0
  assert float(schedule(1000)) == 0.0


def test_schedule_rejects_bad_steps():
  with pytest.raises(ValueError, match='warmup_steps'):
    optimizer_lib.WarmupPolynomialDecay(1.0, 10, -1)
  with pytest.raises(ValueError, match='num_steps'):
    optimizer_lib.WarmupPolynomialDecay(1.0, 0)


def _toy_variables():
  """Variables named like the model's: an encoder kernel, a decoder kernel
  and a decoder norm parameter."""
  ones = np.ones([2], np.float32)
  with keras.name_scope('kmax_deeplab'):
    with keras.name_scope('pixel_encoder'):
      enc = keras.Variable(ones, name='kernel')
    dec = keras.Variable(ones, name='kernel')
    gamma = keras.Variable(ones, name='gamma')
  return enc, dec, gamma


def test_decoupled_decay_on_kernels_and_backbone_factor():
  enc, dec, gamma = _toy_variables()
  assert optimizer_lib.is_backbone_variable(enc), enc.path
  assert not optimizer_lib.is_backbone_variable(dec)
  solver = config_pb2.SolverOptions(
      base_learning_rate=0.1, backbone_learning_rate_multiplier=0.5,
      weight_decay=0.2, warmup_steps=0)
  variables = [enc, dec, gamma]
  opt, _ = optimizer_lib.build_optimizer(solver, 1000, variables)
  grads = [tf.constant([1.0, -1.0])] * 3
  opt.apply_gradients(zip(grads, variables))
  lr = 0.1  # step 0 of the poly decay
  # Adam's first step moves each weight by lr * sign(g) (up to epsilon).
  adam = lr * np.array([1.0, -1.0])
  np.testing.assert_allclose(dec.numpy(), 1 - lr * 0.2 - adam, rtol=1e-5)
  np.testing.assert_allclose(gamma.numpy(), 1 - adam, rtol=1e-5)
  np.testing.assert_allclose(enc.numpy(),
                             1 - 0.05 * 0.2 - 0.5 * adam, rtol=1e-5)
  assert int(opt.iterations) == 1


def _reference_adamw(weights, grads_per_step, lrs, factor, decay, beta_1,
                     beta_2, epsilon):
  """NumPy AdamW: decoupled decay, then Adam (epsilon outside the root)."""
  w = weights.astype(np.float64)
  m = np.zeros_like(w)
  v = np.zeros_like(w)
  for t, (g, lr) in enumerate(zip(grads_per_step, lrs), start=1):
    lr = lr * factor
    w = w - lr * decay * w
    m = m + (g - m) * (1 - beta_1)
    v = v + (g * g - v) * (1 - beta_2)
    alpha = lr * np.sqrt(1 - beta_2**t) / (1 - beta_1**t)
    w = w - alpha * m / (np.sqrt(v) + epsilon)
  return w


@pytest.mark.parametrize('traced', [False, True])
def test_fused_update_equals_adamw_formula_over_steps(traced):
  rng = np.random.default_rng(3)
  with keras.name_scope('kmax_deeplab'):
    with keras.name_scope('pixel_encoder'):
      enc = keras.Variable(rng.normal(size=[3, 4]).astype(np.float32),
                           name='kernel')
    dec = keras.Variable(rng.normal(size=[5]).astype(np.float32),
                         name='kernel')
    beta = keras.Variable(rng.normal(size=[5]).astype(np.float32),
                          name='beta')
  variables = [enc, dec, beta]
  initial = [v.numpy() for v in variables]
  solver = config_pb2.SolverOptions(
      base_learning_rate=0.01, backbone_learning_rate_multiplier=0.1,
      weight_decay=0.05, warmup_steps=2, adam_beta1=0.9, adam_beta2=0.999,
      adam_epsilon=1e-6)
  opt, schedule = optimizer_lib.build_optimizer(solver, 10, variables)
  grads = [[rng.normal(size=v.shape).astype(np.float32) for v in variables]
           for _ in range(4)]

  def apply(step_grads):
    opt.apply_gradients(zip(step_grads, variables))
  if traced:
    apply = tf.function(apply)
  for step_grads in grads:
    apply([tf.constant(g) for g in step_grads])
  lrs = [float(schedule(step)) for step in range(4)]
  for i, (variable, factor, decay) in enumerate(
      [(enc, 0.1, 0.05), (dec, 1.0, 0.05), (beta, 1.0, 0.0)]):
    expected = _reference_adamw(
        initial[i], [g[i] for g in grads], lrs, factor, decay, 0.9, 0.999,
        1e-6)
    np.testing.assert_allclose(variable.numpy(), expected, rtol=1e-5,
                               atol=1e-6, err_msg=variable.path)
  assert int(opt.iterations) == 4


def test_fused_update_takes_sparse_gradients():
  table = keras.Variable(np.ones([4, 2], np.float32), name='embeddings')
  opt = optimizer_lib.DecoupledAdamW(0.1, decoupled_weight_decay=0.0)
  opt.build([table])
  with tf.GradientTape() as tape:
    loss = tf.reduce_sum(tf.gather(table, [1, 3]))
  grad = tape.gradient(loss, table.value)
  assert isinstance(grad, tf.IndexedSlices)
  opt.apply_gradients([(grad, table)])
  np.testing.assert_allclose(table.numpy()[[0, 2]], 1.0)
  np.testing.assert_allclose(table.numpy()[[1, 3]], 0.9, rtol=1e-5)
