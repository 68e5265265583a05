"""Synchronized batch norm: values and gradients equal one big batch."""
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from deeplab2_kmax.model.layers import sync_batch_norm
from tests.conftest import REPO_ROOT


def test_moments_without_replicas_equal_tf_moments():
  x = tf.random.stateless_normal([4, 5, 5, 3], seed=[1, 2])
  mean, variance = sync_batch_norm.sync_moments(x, [0, 1, 2])
  ref_mean, ref_variance = tf.nn.moments(x, [0, 1, 2])
  np.testing.assert_allclose(mean, ref_mean, atol=1e-6)
  np.testing.assert_allclose(variance, ref_variance, atol=1e-5)


_TWO_REPLICAS = """
import numpy as np
import pytest
import tensorflow as tf
cpu = tf.config.list_physical_devices('CPU')[0]
tf.config.set_logical_device_configuration(
    cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
import sys
from deeplab2_kmax.model.layers import sync_batch_norm
sync_batch_norm.set_compiled_replica_steps(sys.argv[1] == 'all_reduce')
strategy = tf.distribute.MirroredStrategy(
    ['/cpu:0', '/cpu:1'],
    cross_device_ops=tf.distribute.ReductionToOneDevice())
xs = tf.constant([[1.0, 2.0], [2.0, 4.0]])

@tf.function
def step():
  def replica_fn():
    ctx = tf.distribute.get_replica_context()
    x = tf.gather(xs, ctx.replica_id_in_sync_group)
    with tf.GradientTape() as tape:
      tape.watch(x)
      total = sync_batch_norm.cross_replica_sum(x)
      loss = tf.reduce_sum(total * [1.0, 3.0])
    return total, tape.gradient(loss, x)
  return strategy.run(replica_fn)

totals, grads = step()
for total, grad in zip(strategy.experimental_local_results(totals),
                       strategy.experimental_local_results(grads)):
  np.testing.assert_allclose(total, [3.0, 6.0])
  # d/dx_r of the sum over replicas of loss_r: 2 * [1, 3].
  np.testing.assert_allclose(grad, [2.0, 6.0])
print('ok')
"""


@pytest.mark.parametrize('route', ['merge_call', 'all_reduce'])
def test_cross_replica_sum_values_and_gradients_on_two_replicas(route):
  # Logical CPU devices must be set before TensorFlow starts: own process.
  # all_reduce is the route of compiled replica steps (and TPUs).
  result = subprocess.run(
      [sys.executable, '-c', _TWO_REPLICAS, route], cwd=REPO_ROOT,
      env={**os.environ, 'TF_CPP_MIN_LOG_LEVEL': '2'}, capture_output=True,
      text=True, timeout=300, check=False)
  assert result.returncode == 0 and 'ok' in result.stdout, result.stderr[-3000:]


def _keras_formula(layer, x, training):
  """The layer's values through Keras's own (unfused) BatchNormalization
  code path, the one used with several replicas."""
  return super(sync_batch_norm.SyncBatchNormalization, layer).call(
      x, training=training)


@pytest.mark.parametrize('shape', [[2, 7, 5, 6], [3, 7, 6]])
def test_fused_single_replica_training_equals_the_keras_formula(shape):
  # One replica, 4-D or 3-D input (as the axial attention's [N, L, C]):
  # FusedBatchNormV3. Outputs, gradients and moving statistics must equal
  # the Keras formula (sync_moments) it replaces.
  x = tf.random.stateless_normal(shape, seed=[3, 4]) * 3.0 + 1.5
  upstream = tf.random.stateless_normal(shape, seed=[5, 6])
  results = []
  for fused in (True, False):
    layer = sync_batch_norm.SyncBatchNormalization(momentum=0.9,
                                                   epsilon=1e-3)
    layer.build(x.shape)
    layer.gamma.assign(tf.linspace(0.5, 2.0, 6))
    layer.beta.assign(tf.linspace(-1.0, 1.0, 6))
    with tf.GradientTape() as tape:
      tape.watch(x)
      y = layer(x, training=True) if fused else _keras_formula(
          layer, x, True)
    grads = tape.gradient(y, [x, layer.gamma, layer.beta],
                          output_gradients=upstream)
    results.append([y] + grads + [layer.moving_mean.numpy(),
                                  layer.moving_variance.numpy()])
  for got, want in zip(*results):
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
  # The moving variance moved towards the biased batch variance.
  _, variance = tf.nn.moments(x, list(range(len(shape) - 1)))
  np.testing.assert_allclose(results[0][-1], 0.9 + 0.1 * variance.numpy(),
                             rtol=1e-5)


@pytest.mark.parametrize('shape', [[1, 3, 3, 2], [1, 3, 2]])
def test_fused_path_is_used_only_in_training_on_one_replica(shape):
  layer = sync_batch_norm.SyncBatchNormalization()
  x = tf.ones(shape)
  graph = tf.function(lambda x: layer(x, training=True)).get_concrete_function(
      x).graph
  assert any(op.type.startswith('FusedBatchNorm')
             for op in graph.get_operations())
  inference = tf.function(
      lambda x: layer(x, training=False)).get_concrete_function(x).graph
  assert not any(op.type.startswith('FusedBatchNorm')
                 for op in inference.get_operations())


@pytest.mark.parametrize('dtype', ['bfloat16', 'float16'])
def test_fused_training_takes_low_precision_maps_as_they_are(dtype):
  # Under a mixed policy the map stays in its dtype (no casts around the
  # kernel); the result, its gradients and the float32 moving statistics
  # agree with the float32 norm of the same (rounded) map.
  shape = [2, 9, 7, 8]
  x = tf.cast(tf.random.stateless_normal(shape, seed=[1, 2]) * 2.0 + 0.5,
              dtype)
  upstream = tf.cast(tf.random.stateless_normal(shape, seed=[7, 8]), dtype)
  results = []
  for policy in (f'mixed_{dtype}', 'float32'):
    layer = sync_batch_norm.SyncBatchNormalization(
        momentum=0.9, epsilon=1e-3, dtype=policy)
    layer.build(x.shape)
    inputs = x if policy != 'float32' else tf.cast(x, tf.float32)
    with tf.GradientTape() as tape:
      tape.watch(inputs)
      y = layer(inputs, training=True)
    grads = tape.gradient(
        y, [inputs, layer.gamma, layer.beta],
        output_gradients=tf.cast(upstream, y.dtype))
    if policy != 'float32':
      assert y.dtype == dtype and grads[0].dtype == dtype
      graph = tf.function(
          lambda t, layer=layer: layer(t, training=True)
      ).get_concrete_function(x).graph
      assert not [op for op in graph.get_operations() if op.type == 'Cast'
                  and op.inputs[0].shape.rank == 4]
    assert layer.moving_variance.dtype == 'float32'
    results.append([tf.cast(t, tf.float32).numpy() for t in [y] + grads] +
                   [layer.moving_mean.numpy(), layer.moving_variance.numpy()])
  for got, want in zip(*results):
    np.testing.assert_allclose(got, want, rtol=2e-2, atol=3e-2)
