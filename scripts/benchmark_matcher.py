"""Benchmarks the Hungarian matcher paths on kMaX-shaped cost matrices.

For every (cost pattern, batch size, path) it prints one JSON line with the
median / min / max wall time of one batched call (after --warmup calls),
the number of iterations of the vectorised TF loop for that batch, and the
largest gap between the total cost found and scipy's optimum (0 = exact).

Cost patterns ([B, R, C]):
  kmax     the kMaX matching cost: R = max_thing_id + num_stuff GT rows
           (things first, one row per stuff class), C = --num_slots.
           Per image a random number of things in [1, --max_things] and of
           stuff classes in [1, --max_stuff] are present; their rows cost
           -dice * prob with dice, prob ~ U(0, 1); the other rows are
           padding at +999 when R > C, else -999 (spec section 5.2).
  uniform  U(0, 1) costs of shape [B, C, C]: every row needs a real search.

Paths:
  tf_graph / tf_xla                 hungarian_matching, vectorised over B,
                                    in tf.function without / with XLA
  tf_graph_map_fn / tf_xla_map_fn   the same on one matrix at a time
                                    (tf.map_fn over B)
  host                              host_hungarian_matching (scipy through
                                    tf.numpy_function) in tf.function

Example:
  python scripts/benchmark_matcher.py --batch_sizes=8,64
"""
import argparse
import json
import os
import platform
import statistics
import sys
import time

import numpy as np
import scipy.optimize
import tensorflow as tf

from deeplab2_kmax.data import dataset_info
from deeplab2_kmax.model.loss import matcher

_PATHS = ('tf_graph', 'tf_xla', 'tf_graph_map_fn', 'tf_xla_map_fn', 'host')
_PATTERNS = ('kmax', 'uniform')


def _parse_args(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--dataset', default='coco_panoptic',
                      help='dataset_info name (gives num_stuff)')
  parser.add_argument('--max_thing_id', type=int, default=128)
  parser.add_argument('--num_slots', type=int, default=128)
  parser.add_argument('--max_things', type=int, default=30)
  parser.add_argument('--max_stuff', type=int, default=15)
  parser.add_argument('--batch_sizes', default='8,64')
  parser.add_argument('--patterns', default=','.join(_PATTERNS))
  parser.add_argument('--paths', default=','.join(_PATHS))
  parser.add_argument('--runs', type=int, default=5)
  parser.add_argument('--warmup', type=int, default=1)
  parser.add_argument('--threads', type=int, default=0,
                      help='intra- and inter-op threads (0 = TF default)')
  parser.add_argument('--seed', type=int, default=0)
  return parser.parse_args(argv)


def _split(flag, value, allowed):
  items = [item for item in value.split(',') if item]
  unknown = [item for item in items if item not in allowed]
  if unknown:
    raise SystemExit(f'--{flag}: unknown {unknown}; expected some of '
                     f'{list(allowed)}')
  return items


def kmax_cost(rng, batch, num_things, num_stuff, num_slots, max_things,
              max_stuff):
  """A [B, num_things + num_stuff, num_slots] float32 kMaX matching cost."""
  rows = num_things + num_stuff
  padding = 999.0 if rows > num_slots else -999.0
  cost = np.full([batch, rows, num_slots], padding, np.float32)
  for image in range(batch):
    things = rng.integers(1, min(max_things, num_things) + 1)
    stuff = rng.choice(num_stuff, rng.integers(1, min(max_stuff, num_stuff)
                                               + 1), replace=False)
    valid = np.concatenate([np.arange(things), num_things + stuff])
    dice = rng.random([valid.size, num_slots])
    prob = rng.random([valid.size, num_slots])
    cost[image, valid] = -(dice * prob)
  return cost


def _functions():
  """Name -> tf.function of [B, R, C] float32 cost -> [B, R, C] bool."""

  def one_by_one(cost):
    return tf.map_fn(lambda c: matcher.hungarian_matching(c[None])[0], cost,
                     fn_output_signature=tf.bool)

  return {
      'tf_graph': tf.function(matcher.hungarian_matching),
      'tf_xla': tf.function(matcher.hungarian_matching, jit_compile=True),
      'tf_graph_map_fn': tf.function(one_by_one),
      'tf_xla_map_fn': tf.function(one_by_one, jit_compile=True),
      'host': tf.function(matcher.host_hungarian_matching),
  }


def _cost_gap(cost, assignment):
  """Largest |found - optimal| total cost over the batch (float64)."""
  gap = 0.0
  for matrix, chosen in zip(cost.astype(np.float64), assignment):
    rows, cols = scipy.optimize.linear_sum_assignment(matrix)
    gap = max(gap, abs(matrix[chosen].sum() - matrix[rows, cols].sum()))
  return gap


def run_case(function, cost, runs, warmup):
  """Wall times (s) of `runs` calls after `warmup`, and the last result."""
  cost = tf.constant(cost)
  for _ in range(warmup):
    function(cost).numpy()
  times = []
  for _ in range(runs):
    start = time.perf_counter()
    result = function(cost).numpy()
    times.append(time.perf_counter() - start)
  return times, result


def main(argv=None):
  args = _parse_args(argv)
  if args.threads:
    tf.config.threading.set_intra_op_parallelism_threads(args.threads)
    tf.config.threading.set_inter_op_parallelism_threads(args.threads)
  paths = _split('paths', args.paths, _PATHS)
  patterns = _split('patterns', args.patterns, _PATTERNS)
  info = dataset_info.get_dataset_info(args.dataset)
  functions = _functions()
  # The private helper also returns the loop's iteration count.
  with_steps = matcher._match_with_steps  # pylint: disable=protected-access
  count_steps = tf.function(with_steps)
  rng = np.random.default_rng(args.seed)
  for pattern in patterns:
    for batch in [int(b) for b in args.batch_sizes.split(',')]:
      if pattern == 'kmax':
        cost = kmax_cost(rng, batch, args.max_thing_id, info.num_stuff,
                         args.num_slots, args.max_things, args.max_stuff)
      else:
        cost = rng.random([batch, args.num_slots, args.num_slots], np.float32)
      steps = int(count_steps(tf.constant(cost))[1])
      for path in paths:
        times, result = run_case(functions[path], cost, args.runs,
                                 args.warmup)
        print(json.dumps({
            'path': path,
            'pattern': pattern,
            'batch': batch,
            'rows': cost.shape[1],
            'cols': cost.shape[2],
            'time_ms': {'median': round(1e3 * statistics.median(times), 2),
                        'min': round(1e3 * min(times), 2),
                        'max': round(1e3 * max(times), 2),
                        'runs': args.runs},
            'tf_loop_iterations': (steps if path in ('tf_graph', 'tf_xla')
                                   else None),
            'max_cost_gap': _cost_gap(cost, result),
            'threads': args.threads or 'default',
            'cpu_count': os.cpu_count(),
            'machine': platform.processor() or platform.machine(),
            'devices': [d.device_type
                        for d in tf.config.list_physical_devices()],
            'tensorflow': tf.__version__,
        }), flush=True)
  return 0


if __name__ == '__main__':
  sys.exit(main())
