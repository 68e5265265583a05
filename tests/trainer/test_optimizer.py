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
