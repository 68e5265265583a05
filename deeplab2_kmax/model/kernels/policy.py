"""The kernel policy: which implementation computes the model's kernels.

REFERENCE is plain TensorFlow/Keras: TensorFlow's own ops and gradients,
no custom gradients, no nested `jit_compile`, no private TensorFlow or
Keras API. It is what GPUs (cuDNN), TPUs and whole-step XLA compilation
run best, and what TF Serving and the LiteRT converter accept.

CPU_OPTIMIZED replaces some kernels with CPU paths (`cpu.py`) that compute
the same values faster on oneDNN: written-out gradients, XLA-compiled
elementwise kernels. AUTO resolves to CPU_OPTIMIZED when every replica
device is a CPU and to REFERENCE otherwise.

The policy is process-wide and is read when a function is traced: the
runner resolves it once where it chooses the strategy (`set_policy`), and
`policy_scope` traces something under another one (the export traces
REFERENCE; tests compare both). Before anything sets it, the policy is
AUTO resolved against this process's visible devices.
"""
import contextlib
import enum
import os

import tensorflow as tf

# The CPU paths by name (the files of this folder say what each does). To
# measure one, run a benchmark with it switched off:
#   DEEPLAB2_KMAX_DISABLE_CPU_PATHS=gelu,axial_attention python scripts/...
CPU_PATHS = ('batch_norm_activation', 'gelu', 'conv', 'depthwise_conv',
             'dilated_conv', 'axial_attention', 'gram_logsumexp')
DISABLE_ENV = 'DEEPLAB2_KMAX_DISABLE_CPU_PATHS'


class KernelPolicy(enum.Enum):
  AUTO = 'AUTO'
  REFERENCE = 'REFERENCE'
  CPU_OPTIMIZED = 'CPU_OPTIMIZED'


def parse(value):
  """A KernelPolicy from an enum member, its name (any case) or the proto
  enum's number (`model_options.kernel_policy`; 0 = unspecified = AUTO)."""
  if isinstance(value, KernelPolicy):
    return value
  if isinstance(value, int):
    from deeplab2_kmax.protos import config_pb2  # pylint: disable=import-outside-toplevel
    if value == config_pb2.KERNEL_POLICY_UNSPECIFIED:
      return KernelPolicy.AUTO
    value = config_pb2.KernelPolicy.Name(value)
  try:
    return KernelPolicy[str(value).upper()]
  except KeyError:
    raise ValueError(
        f'kernel policy {value!r}: expected one of '
        f'{", ".join(p.name for p in KernelPolicy)}') from None


def _device_type(device):
  """'CPU', 'GPU', 'TPU', ... of a device name or a LogicalDevice."""
  if hasattr(device, 'device_type'):
    return device.device_type.upper()
  return tf.DeviceSpec.from_string(str(device)).device_type.upper()


def resolve(policy, devices):
  """REFERENCE or CPU_OPTIMIZED for `policy` on the replica `devices`.

  Args:
    policy: anything `parse` accepts.
    devices: the replica devices (names such as '/job:worker/device:GPU:0',
      or tf.config.LogicalDevice objects), e.g. a strategy's
      `extended.worker_devices`.
  """
  policy = parse(policy)
  if policy is not KernelPolicy.AUTO:
    return policy
  devices = list(devices)
  if devices and all(_device_type(d) == 'CPU' for d in devices):
    return KernelPolicy.CPU_OPTIMIZED
  return KernelPolicy.REFERENCE


def local_replica_devices():
  """The devices a default (no strategy) run would use: the GPUs and TPUs
  if there are any, else the CPU."""
  accelerators = [d for kind in ('TPU', 'GPU')
                  for d in tf.config.list_logical_devices(kind)]
  return accelerators or tf.config.list_logical_devices('CPU')


def is_tpu_strategy(strategy=None):
  """Whether `strategy` (default: the current one) replicates on TPUs, which
  compile every step: no host callbacks, cross-replica sums by all_reduce."""
  if strategy is None:
    strategy = tf.distribute.get_strategy()
  return isinstance(strategy, (tf.distribute.TPUStrategy,
                               tf.distribute.experimental.TPUStrategy))


_active = None  # KernelPolicy.REFERENCE / CPU_OPTIMIZED once resolved


def set_policy(policy, devices=None):
  """Makes `policy`, resolved on `devices` (default: the local devices),
  the process's policy; returns the resolved policy."""
  global _active
  _active = resolve(policy, local_replica_devices() if devices is None
                    else devices)
  return _active


def active_policy():
  """The resolved policy functions traced now use."""
  if _active is None:
    set_policy(KernelPolicy.AUTO)
  return _active


def disabled_cpu_paths():
  """The CPU paths named in $DEEPLAB2_KMAX_DISABLE_CPU_PATHS (for
  measuring them); raises on an unknown name."""
  names = {n.strip() for n in os.environ.get(DISABLE_ENV, '').split(',')
           if n.strip()}
  unknown = sorted(names - set(CPU_PATHS))
  if unknown:
    raise ValueError(f'{DISABLE_ENV}: unknown CPU path(s) {unknown}; '
                     f'expected names from {", ".join(CPU_PATHS)}')
  return names


def cpu_optimized(path):
  """Whether the CPU path named `path` (one of CPU_PATHS) runs now."""
  if path not in CPU_PATHS:
    raise ValueError(f'unknown CPU path {path!r}')
  return (active_policy() is KernelPolicy.CPU_OPTIMIZED and
          path not in disabled_cpu_paths())


@contextlib.contextmanager
def policy_scope(policy, devices=None):
  """Runs the block (and whatever it traces) under `policy`."""
  global _active
  previous = _active
  set_policy(policy, devices)
  try:
    yield _active
  finally:
    _active = previous
