"""Benchmarks training steps: seconds per step and peak memory.

One full training step of the trainer (`KMaXTrainer`: forward in training
mode, the complete kMaX loss with matching and deep supervision over the six
auxiliary outputs, backward, AdamW with decoupled decay and the backbone
learning-rate multiplier) on a fixed batch, so the input pipeline is not
measured (see benchmark_input.py). The batch is a synthetic image with a
panoptic label of the config's data set (stuff bands, thing discs, a crowd
region, void) turned into loss targets by the pipeline's `make_targets`.

Each case runs in a fresh process and prints one JSON line:
  config, crop, batch, median / min / max seconds per step over --steps
  steps after --warmup steps, peak_rss_mib (ru_maxrss of that process:
  model, optimizer slots, tracing, steps), machine, TF version, threads.

--mixed_precision=bfloat16 (or float16) builds the model under Keras's
mixed policy and runs the trainer's mixed-precision step, as
trainer_options.mixed_precision does in training.

Example:
  python scripts/benchmark_train.py \\
      --config_file=configs/coco/kmax_deeplab/kmax_r50_os32.textproto \\
      --crop=641 --batch_sizes=1,2
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
  parser.add_argument('--crop', type=int, default=641)
  parser.add_argument('--batch_sizes', default='1,2')
  parser.add_argument('--steps', type=int, default=5)
  parser.add_argument('--warmup', type=int, default=2)
  parser.add_argument(
      '--mixed_precision', default='float32',
      choices=['float32', 'bfloat16', 'float16'],
      help='trainer_options.mixed_precision for the run (float16 adds '
      'dynamic loss scaling)')
  parser.add_argument(
      '--kernel_policy', default='AUTO',
      choices=['AUTO', 'REFERENCE', 'CPU_OPTIMIZED'],
      help='model_options.kernel_policy for the run (AUTO: CPU_OPTIMIZED on '
      'a CPU)')
  parser.add_argument('--case', default=None, help=argparse.SUPPRESS)
  return parser.parse_args(argv)


def draw_label(rng, crop, stuff, things, label_divisor, void_label):
  """A crop x crop int32 panoptic label (class * label_divisor + instance).

  Four stuff bands, 15 thing discs of radius crop/40 .. crop/8 with instance
  ids 1..15, and a void corner (bottom right, crop/12 wide). The same
  recipe feeds benchmark_deeplab2_train.py.
  """
  import numpy as np  # pylint: disable=import-outside-toplevel

  label = np.zeros([crop, crop], np.int32)
  for band in np.array_split(np.arange(crop), 4):
    label[band] = rng.choice(stuff) * label_divisor
  yy, xx = np.mgrid[:crop, :crop]
  for instance in range(1, 16):
    cy, cx, r = rng.integers(0, crop, 2).tolist() + [int(
        rng.integers(crop // 40, crop // 8))]
    label[(yy - cy) ** 2 + (xx - cx) ** 2 < r * r] = (
        rng.choice(things) * label_divisor + instance)
  label[-crop // 12:, -crop // 12:] = void_label
  return label


def _fake_batch(info, crop, batch_size, output_stride, max_thing_id):
  """A batch dict like the training pipeline's, from a drawn label."""
  import numpy as np  # pylint: disable=import-outside-toplevel
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  from deeplab2_kmax.data import targets  # pylint: disable=import-outside-toplevel

  rng = np.random.default_rng(0)
  things = info.thing_semantic_ids
  div = info.label_divisor
  samples = []
  for _ in range(batch_size):
    label = draw_label(rng, crop, info.stuff_semantic_ids, things, div,
                       info.void_label)
    label[:crop // 10, :crop // 10] = things[0] * div  # crowd
    sample = targets.make_targets(
        tf.constant(label), dataset_info=info, output_stride=output_stride,
        max_thing_id=max_thing_id)
    sample['image'] = tf.constant(
        rng.uniform(0, 255, [crop, crop, 3]).astype(np.float32))
    sample['panoptic'] = tf.constant(label)
    samples.append(sample)
  return {k: tf.stack([s[k] for s in samples]) for k in samples[0]}


def time_steps(step, warmup, steps):
  """Calls `step` (one training step, back once it is done) `warmup`
  times, then `steps` times timed; returns the timed seconds."""
  for _ in range(warmup):
    step()
  times = []
  for _ in range(steps):
    start = time.perf_counter()
    step()
    times.append(time.perf_counter() - start)
  return times


def step_record(times):
  """The JSON fields of the timed steps and of this process's peak RSS."""
  return {
      'seconds_per_step': {'median': round(statistics.median(times), 3),
                           'min': round(min(times), 3),
                           'max': round(max(times), 3), 'steps': len(times)},
      'peak_rss_mib': round(
          resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0, 1),
  }


def run_case(args, batch_size):
  """Times the steps in this process; returns the JSON record."""
  import keras  # pylint: disable=import-outside-toplevel
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  from deeplab2_kmax.trainer import runner  # pylint: disable=import-outside-toplevel
  from deeplab2_kmax.trainer import task as task_lib  # pylint: disable=import-outside-toplevel
  from deeplab2_kmax.trainer import trainer as trainer_lib  # pylint: disable=import-outside-toplevel

  from deeplab2_kmax.model import kernels  # pylint: disable=import-outside-toplevel
  config = runner.load_experiment_config(args.config_file)
  # The trainer sizes its TensorBoard picture by the training crop.
  config.train_dataset_options.crop_size[:] = [args.crop, args.crop]
  task = task_lib.KMaXTask(config)
  options = config.train_dataset_options
  strategy = tf.distribute.OneDeviceStrategy('/cpu:0')
  kernel_policy = kernels.set_policy(args.kernel_policy,
                                     strategy.extended.worker_devices)
  precision = args.mixed_precision
  policy = runner.precision_policy(precision)
  if policy:  # as the runner builds it
    keras.config.set_dtype_policy(policy)
  with strategy.scope():
    model = task.build_model()
    loss = task.build_loss()
    optimizer, schedule = task.build_optimizer(
        model.trainable_variables, loss_scale=precision == 'float16')
  batch = _fake_batch(task.dataset_info, args.crop, batch_size,
                      task.output_stride, options.max_thing_id)
  dataset = strategy.experimental_distribute_dataset(
      tf.data.Dataset.from_tensors(batch).repeat())
  trainer = trainer_lib.KMaXTrainer(
      task=task, strategy=strategy, model=model, loss=loss,
      optimizer=optimizer, schedule=schedule, train_dataset=dataset,
      num_steps=config.trainer_options.num_steps, mixed_precision=precision)
  one = tf.constant(1)

  def step():
    trainer.train(one)
    float(optimizer.iterations.numpy())  # waits for the step

  times = time_steps(step, args.warmup, args.steps)
  return {
      'config': args.config_file, 'crop': args.crop, 'batch': batch_size,
      'mixed_precision': precision, 'kernel_policy': kernel_policy.name,
      **step_record(times),
      'machine': platform.processor() or platform.machine(),
      'cpu_count': os.cpu_count(), 'tensorflow': tf.__version__,
      'threads': 'default',
  }


def main(argv=None):
  args = _parse_args(argv)
  if args.case:
    print(json.dumps(run_case(args, int(args.case))), flush=True)
    return 0
  status = 0
  for batch_size in args.batch_sizes.split(','):
    command = [sys.executable, __file__, f'--config_file={args.config_file}',
               f'--crop={args.crop}', f'--steps={args.steps}',
               f'--warmup={args.warmup}',
               f'--mixed_precision={args.mixed_precision}',
               f'--kernel_policy={args.kernel_policy}',
               f'--case={batch_size}']
    result = subprocess.run(command, stdout=subprocess.PIPE, text=True,
                            check=False)
    if result.returncode:
      status = 1
      print(json.dumps({'batch': int(batch_size), 'error': 'the case failed '
                        '(see stderr)'}), flush=True)
    else:
      print(result.stdout.strip().splitlines()[-1], flush=True)
  return status


if __name__ == '__main__':
  sys.exit(main())
