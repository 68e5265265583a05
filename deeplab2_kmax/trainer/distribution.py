"""Choosing the `tf.distribute` strategy the trainer runs under.

| `--strategy` | strategy |
|---|---|
| `auto` (default) | `tpu` if `--tpu` is set, `multi_worker` if `TF_CONFIG` names several workers, `mirrored` with two or more GPUs, else `one_device` |
| `one_device` | `OneDeviceStrategy` on GPU:0, else CPU:0 |
| `mirrored` | `MirroredStrategy` over all GPUs, or over `num_cpu_devices` logical CPUs (for testing distribution without GPUs) |
| `multi_worker` | `MultiWorkerMirroredStrategy`; cluster from `TF_CONFIG` |
| `tpu` | `TPUStrategy` on the TPU named by `--tpu` |
"""
import json
import os

import tensorflow as tf

STRATEGIES = ('auto', 'one_device', 'mirrored', 'multi_worker', 'tpu')


def configure_cpu_devices(num_cpu_devices):
  """Splits the CPU into `num_cpu_devices` logical devices (before any op)."""
  if num_cpu_devices <= 1:
    return
  cpus = tf.config.list_physical_devices('CPU')
  existing = tf.config.get_logical_device_configuration(cpus[0])
  if existing and len(existing) == num_cpu_devices:
    return
  try:
    tf.config.set_logical_device_configuration(
        cpus[0], [tf.config.LogicalDeviceConfiguration()] * num_cpu_devices)
  except RuntimeError as e:
    raise RuntimeError(
        f'cannot split the CPU into {num_cpu_devices} devices: TensorFlow is '
        f'already initialised ({e})') from None


def _num_workers():
  try:
    cluster = json.loads(os.environ.get('TF_CONFIG', '{}')).get('cluster', {})
  except ValueError as e:
    raise ValueError(f'TF_CONFIG is not valid JSON: {e}') from None
  return sum(len(v) for k, v in cluster.items() if k in ('chief', 'worker'))


def build_strategy(kind='auto', *, tpu=None, num_cpu_devices=0):
  """Returns the tf.distribute.Strategy for `kind` (see the module table)."""
  if kind not in STRATEGIES:
    raise ValueError(f'--strategy={kind!r}: expected one of {STRATEGIES}')
  configure_cpu_devices(num_cpu_devices)
  if kind == 'auto':
    if tpu:
      kind = 'tpu'
    elif _num_workers() > 1:
      kind = 'multi_worker'
    elif len(tf.config.list_physical_devices('GPU')) > 1 or (
        num_cpu_devices > 1):
      kind = 'mirrored'
    else:
      kind = 'one_device'
  if kind == 'tpu':
    resolver = tf.distribute.cluster_resolver.TPUClusterResolver(tpu=tpu or '')
    tf.config.experimental_connect_to_cluster(resolver)
    tf.tpu.experimental.initialize_tpu_system(resolver)
    return tf.distribute.TPUStrategy(resolver)
  if kind == 'multi_worker':
    return tf.distribute.MultiWorkerMirroredStrategy()
  if kind == 'mirrored':
    gpus = tf.config.list_logical_devices('GPU')
    if gpus:
      return tf.distribute.MirroredStrategy([d.name for d in gpus])
    cpus = [d.name for d in tf.config.list_logical_devices('CPU')]
    # Several logical CPUs need a cross-device op that runs on the host.
    return tf.distribute.MirroredStrategy(
        cpus, cross_device_ops=tf.distribute.ReductionToOneDevice())
  gpus = tf.config.list_logical_devices('GPU')
  return tf.distribute.OneDeviceStrategy(gpus[0].name if gpus else '/cpu:0')
