"""The kernel policy: resolution, and REFERENCE == CPU_OPTIMIZED on a model."""
import numpy as np
import pytest
import tensorflow as tf

import deeplab2_kmax
from deeplab2_kmax.model import kernels
from deeplab2_kmax.model import outputs
from deeplab2_kmax.model.kernels import policy as policy_lib
from deeplab2_kmax.protos import config_pb2

CPU = kernels.KernelPolicy.CPU_OPTIMIZED
REFERENCE = kernels.KernelPolicy.REFERENCE


@pytest.mark.parametrize('devices, expected', [
    (['/job:localhost/replica:0/task:0/device:CPU:0'], CPU),
    (['/cpu:0', '/cpu:1'], CPU),
    (['/job:localhost/replica:0/task:0/device:GPU:0'], REFERENCE),
    (['/gpu:0', '/gpu:1'], REFERENCE),
    (['/job:worker/replica:0/task:0/device:TPU:0',
      '/job:worker/replica:0/task:0/device:TPU:1'], REFERENCE),
    (['/cpu:0', '/gpu:0'], REFERENCE),
])
def test_auto_resolves_on_the_replica_devices(devices, expected):
  assert kernels.resolve('AUTO', devices) is expected
  assert kernels.resolve(config_pb2.AUTO, devices) is expected
  assert kernels.resolve(config_pb2.KERNEL_POLICY_UNSPECIFIED,
                         devices) is expected


def test_auto_resolves_on_logical_device_objects():
  gpu = tf.config.LogicalDevice('/device:GPU:0', 'GPU')
  tpu = tf.config.LogicalDevice('/device:TPU:0', 'TPU')
  cpu = tf.config.LogicalDevice('/device:CPU:0', 'CPU')
  assert kernels.resolve('auto', [gpu]) is REFERENCE
  assert kernels.resolve('auto', [tpu, tpu]) is REFERENCE
  assert kernels.resolve('auto', [cpu]) is CPU


@pytest.mark.parametrize('policy', ['REFERENCE', config_pb2.REFERENCE])
def test_explicit_policy_is_kept_on_any_device(policy):
  assert kernels.resolve(policy, ['/cpu:0']) is REFERENCE
  assert kernels.resolve('cpu_optimized', ['/gpu:0']) is CPU


def test_unknown_policy_names_the_choices():
  with pytest.raises(ValueError, match='AUTO, REFERENCE, CPU_OPTIMIZED'):
    kernels.resolve('fast', ['/cpu:0'])


def test_policy_scope_restores_the_previous_policy():
  before = kernels.active_policy()
  with kernels.policy_scope('REFERENCE'):
    assert kernels.active_policy() is REFERENCE
    assert not kernels.cpu_optimized('gelu')
    with kernels.policy_scope('CPU_OPTIMIZED'):
      assert kernels.cpu_optimized('gelu')
    assert kernels.active_policy() is REFERENCE
  assert kernels.active_policy() is before


def test_a_cpu_path_can_be_switched_off_for_measuring(monkeypatch):
  monkeypatch.setenv(policy_lib.DISABLE_ENV, 'gelu, axial_attention')
  with kernels.policy_scope('CPU_OPTIMIZED'):
    assert not kernels.cpu_optimized('gelu')
    assert not kernels.cpu_optimized('axial_attention')
    assert kernels.cpu_optimized('conv')
  monkeypatch.setenv(policy_lib.DISABLE_ENV, 'gelu,fast_softmax')
  with kernels.policy_scope('CPU_OPTIMIZED'):
    with pytest.raises(ValueError, match=r"DEEPLAB2_KMAX_DISABLE_CPU_PATHS: "
                       r"unknown CPU path\(s\) \['fast_softmax'\]"):
      kernels.cpu_optimized('conv')


def test_every_cpu_path_name_is_used_by_a_kernel():
  # A name nobody asks for would switch nothing off.
  import pathlib  # pylint: disable=import-outside-toplevel
  package = pathlib.Path(kernels.__file__).parents[1]
  source = '\n'.join(p.read_text() for p in package.rglob('*.py')
                     if p.name != 'policy.py')
  for name in policy_lib.CPU_PATHS:
    assert f"'{name}'" in source, name


def _run(model, images, policy, training):
  """Outputs and gradients of a surrogate loss, traced under `policy`."""
  with kernels.policy_scope(policy):
    @tf.function
    def step():
      with tf.GradientTape() as tape:
        result = model(images, training=training)
        terms = [tf.reduce_mean(tf.square(result[k]))
                 for k in outputs.PREDICTION_KEYS + (outputs.SEMANTIC_LOGITS,)]
        for prediction in result[outputs.AUXILIARY_PREDICTIONS]:
          terms.append(tf.reduce_mean(tf.square(
              prediction[outputs.MASK_LOGITS])))
        loss = tf.add_n(terms)
      return ({k: result[k] for k in outputs.PREDICTION_KEYS},
              tape.gradient(loss, model.trainable_weights))
    return step()


@pytest.mark.slow
@pytest.mark.parametrize('training', [False, True])
def test_reference_and_cpu_optimized_agree_on_the_model(tiny_config,
                                                        training):
  # 129 x 129, batch 2: maps large enough for the CPU paths' XLA kernels.
  # No dropout: both runs must draw nothing at random.
  tiny_config.model_options.semantic_head.aspp_dropout = 0.0
  model = deeplab2_kmax.build_model(tiny_config)
  images = tf.random.uniform([2, 129, 129, 3], 0, 255, seed=3)
  model(images, training=False)
  # Non-trivial norms: training-mode statistics from one step first.
  model(images, training=True)
  weights = [v.numpy() for v in model.weights]
  results = {}
  for policy in ('REFERENCE', 'CPU_OPTIMIZED'):
    for v, w in zip(model.weights, weights):
      v.assign(w)  # the same moving statistics before each run
    results[policy] = _run(model, images, policy, training)
  (ref_out, ref_grads), (cpu_out, cpu_grads) = (results['REFERENCE'],
                                                results['CPU_OPTIMIZED'])
  for key in ref_out:
    np.testing.assert_allclose(cpu_out[key].numpy(), ref_out[key].numpy(),
                               rtol=1e-3, atol=1e-3, err_msg=key)
  compared = 0
  for v, ref, cpu in zip(model.trainable_weights, ref_grads, cpu_grads):
    if ref is None:
      assert cpu is None, v.path
      continue
    ref, cpu = tf.convert_to_tensor(ref).numpy(), tf.convert_to_tensor(
        cpu).numpy()
    # Gradients that are 0 up to cancellation (a norm's beta feeding a
    # mean-free output: about 1e-9 here) get an absolute floor.
    np.testing.assert_allclose(cpu, ref, rtol=0,
                               atol=2e-3 * np.abs(ref).max() + 1e-7,
                               err_msg=v.path)
    compared += 1
  assert compared > 0.9 * len(model.trainable_weights)


def test_is_tpu_strategy_is_false_off_tpus():
  assert not policy_lib.is_tpu_strategy()  # the default strategy
  assert not policy_lib.is_tpu_strategy(tf.distribute.OneDeviceStrategy('/cpu:0'))
