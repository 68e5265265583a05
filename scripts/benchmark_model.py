"""Benchmarks a model config: parameters, latency, FLOPs, throughput, memory.

For each (input size, XLA on/off) case it prints one JSON line with:
  params          trainable and non-trainable parameter counts
  latency_s       median (and min/max) of --runs timed calls, batch 1,
                  inference mode, inside tf.function, after --warmup calls
  gflops          floating-point operations of one forward pass, counted by
                  TensorFlow's profiler on the frozen graph of the plain
                  (training-mode) forward pass: the inference fast paths run
                  parts inside XLA kernels the profiler cannot see into, and
                  compute the same function
  flops_uncounted_ops  ops the profiler could not count (unknown shapes)
  gflops_per_s    achieved rate = gflops / median latency
  matmul_gflops_per_s  the machine's float32 matmul rate measured in the same
                  process (a 2048^3 matmul), for scale
  peak_rss_mib    peak resident memory of the process running that case

Each case runs in its own subprocess so peak memory is per case; FLOPs are
counted in another subprocess (freezing the graph costs memory). Example:
  python scripts/benchmark_model.py \
      --config_file=configs/coco/kmax_deeplab/kmax_r50_os32.textproto \
      --sizes=641,1281 --xla=off,on
"""
import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time


def _parse_args(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--config_file', required=True)
  parser.add_argument('--sizes', default='641,1281',
                      help='comma-separated input sizes (k*32+1): 641 '
                      '(square), 1025x2049 (height x width), or eval (the '
                      "config's evaluation crop size)")
  parser.add_argument('--xla', default='off,on',
                      help='comma-separated: off, on')
  parser.add_argument('--runs', type=int, default=5)
  parser.add_argument('--warmup', type=int, default=2)
  parser.add_argument('--threads', type=int, default=0,
                      help='intra-op threads (0 = TensorFlow default)')
  parser.add_argument('--no_flops', action='store_true',
                      help='skip the profiler FLOP count')
  parser.add_argument(
      '--kernel_policy', default='AUTO',
      choices=['AUTO', 'REFERENCE', 'CPU_OPTIMIZED'],
      help='model_options.kernel_policy for the run (AUTO: CPU_OPTIMIZED on '
      'a CPU)')
  parser.add_argument('--case', default=None, help=argparse.SUPPRESS)
  return parser.parse_args(argv)


def _peak_rss_mib():
  # ru_maxrss is in KiB on Linux.
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _matmul_rate(tf, n=2048, runs=10):
  a = tf.random.uniform([n, n])
  b = tf.random.uniform([n, n])
  matmul = tf.function(lambda x, y: tf.linalg.matmul(x, y))
  matmul(a, b).numpy()
  times = []
  for _ in range(runs):
    start = time.perf_counter()
    matmul(a, b).numpy()
    times.append(time.perf_counter() - start)
  return 2.0 * n**3 / statistics.median(times) / 1e9


def _count_flops(tf, concrete):
  """(FLOPs, uncounted ops) of a concrete function, by the TF profiler."""
  options = tf.compat.v1.profiler.ProfileOptionBuilder.float_operation()
  options['output'] = 'none'
  stats = tf.compat.v1.profiler.profile(graph=concrete.graph,
                                        options=options)
  uncounted = 0
  for op in concrete.graph.get_operations():
    if any(not t.shape.is_fully_defined() for t in op.outputs):
      uncounted += 1
  return stats.total_float_ops, uncounted


def _input_size(text, config_file):
  """(height, width) of a --sizes entry."""
  if text == 'eval':
    import deeplab2_kmax  # pylint: disable=import-outside-toplevel
    crop = deeplab2_kmax.load_config(config_file).eval_dataset_options.crop_size
    return int(crop[0]), int(crop[-1])
  try:
    parts = [int(p) for p in text.split('x')]
  except ValueError:
    parts = []
  if len(parts) not in (1, 2):
    raise SystemExit(f'--sizes: expected 641, 1025x2049 or eval; got {text!r}')
  return parts[0], parts[-1]


def _size_label(height, width):
  return height if height == width else f'{height}x{width}'


def count_flops(args, size):
  """Profiler FLOPs of one forward pass at `size` (its own process)."""
  height, width = size
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  import deeplab2_kmax  # pylint: disable=import-outside-toplevel
  from deeplab2_kmax.model import outputs  # pylint: disable=import-outside-toplevel

  model = deeplab2_kmax.build_model(deeplab2_kmax.load_config(
      args.config_file))
  model(tf.zeros([1, 65, 65, 3]), training=False)

  def forward(x):
    result = model(x, training=True)
    return {k: v for k, v in result.items()
            if k != outputs.AUXILIARY_PREDICTIONS}

  concrete = tf.function(forward).get_concrete_function(
      tf.TensorSpec([1, height, width, 3], tf.float32))
  flops, uncounted = _count_flops(tf, concrete)
  return {'gflops': round(flops / 1e9, 2), 'flops_uncounted_ops': uncounted}


def run_case(args, size, xla):
  """Measures one case in this process and returns its JSON record."""
  height, width = size
  import numpy as np  # pylint: disable=import-outside-toplevel
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  import deeplab2_kmax  # pylint: disable=import-outside-toplevel
  from deeplab2_kmax.model import outputs  # pylint: disable=import-outside-toplevel

  if args.threads:
    tf.config.threading.set_intra_op_parallelism_threads(args.threads)
  from deeplab2_kmax.model import kernels  # pylint: disable=import-outside-toplevel
  config = deeplab2_kmax.load_config(args.config_file)
  policy = kernels.set_policy(args.kernel_policy)
  model = deeplab2_kmax.build_model(config)
  images = tf.random.uniform([1, height, width, 3], 0.0, 255.0, seed=0)

  def forward(x):
    result = model(x, training=False)
    return {k: v for k, v in result.items()
            if k != outputs.AUXILIARY_PREDICTIONS}

  function = tf.function(forward, jit_compile=xla)
  # Tracing builds the variables without running anything at another size.
  function.get_concrete_function(tf.TensorSpec([1, height, width, 3],
                                               tf.float32))
  trainable = int(sum(np.prod(v.shape) for v in model.trainable_weights))
  frozen = int(sum(np.prod(v.shape) for v in model.non_trainable_weights))
  for _ in range(args.warmup):
    tf.nest.map_structure(lambda t: t.numpy(), function(images))
  times = []
  for _ in range(args.runs):
    start = time.perf_counter()
    tf.nest.map_structure(lambda t: t.numpy(), function(images))
    times.append(time.perf_counter() - start)
  median = statistics.median(times)
  matmul = _matmul_rate(tf)
  return {
      'config': args.config_file,
      'input_size': _size_label(height, width),
      'xla': xla,
      'batch': 1,
      'params': {'trainable': trainable, 'non_trainable': frozen},
      'latency_s': {'median': round(median, 4), 'min': round(min(times), 4),
                    'max': round(max(times), 4), 'runs': args.runs},
      'matmul_gflops_per_s': round(matmul, 2),
      'peak_rss_mib': round(_peak_rss_mib(), 1),
      'threads': args.threads or 'default',
      'kernel_policy': policy.name,
      'cpu_count': os.cpu_count(),
      'machine': platform.processor() or platform.machine(),
      'tensorflow': tf.__version__,
      'devices': [d.device_type for d in tf.config.list_physical_devices()],
  }


def main(argv=None):
  args = _parse_args(argv)
  if args.case:
    kind, size = args.case.split(':', 1)
    size = _input_size(size, args.config_file)
    if kind == 'flops':
      record = count_flops(args, size)
    else:
      record = run_case(args, size, kind == 'xla')
    print(json.dumps(record), flush=True)
    return 0
  modes = args.xla.split(',')
  if any(m not in ('on', 'off') for m in modes):
    raise SystemExit(f'--xla: expected on and/or off, got {args.xla!r}')
  status = 0
  for text in args.sizes.split(','):
    size = '{}x{}'.format(*_input_size(text, args.config_file))
    flops = None if args.no_flops else _subprocess(args, f'flops:{size}')
    for xla in modes:
      record = _subprocess(args, f'{"xla" if xla == "on" else "plain"}:{size}')
      if record is None or (not args.no_flops and flops is None):
        record = {'config': args.config_file,
                  'input_size': _size_label(*_input_size(size, None)),
                  'xla': xla == 'on', 'error': 'the case failed (see stderr)'}
        status = 1
      elif flops is not None:
        record.update(flops)
        record['gflops_per_s'] = round(
            flops['gflops'] / record['latency_s']['median'], 2)
      print(json.dumps(record), flush=True)
  return status


def _subprocess(args, case):
  """Runs one case in a fresh interpreter; returns its JSON record or None."""
  command = [sys.executable, os.path.abspath(__file__),
             f'--config_file={args.config_file}', f'--runs={args.runs}',
             f'--warmup={args.warmup}', f'--threads={args.threads}',
             f'--kernel_policy={args.kernel_policy}', f'--case={case}']
  result = subprocess.run(command, stdout=subprocess.PIPE, text=True,
                          check=False)
  lines = [l for l in result.stdout.splitlines() if l.startswith('{')]
  if result.returncode != 0 or not lines:
    return None
  return json.loads(lines[-1])


if __name__ == '__main__':
  sys.exit(main())
