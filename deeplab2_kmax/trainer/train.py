r"""Trains and evaluates kMaX-DeepLab: the package's main job.

  python -m deeplab2_kmax.trainer.train \
      --config_file=configs/coco/kmax_deeplab/kmax_r50_os32.textproto \
      --model_dir=/tmp/kmax --mode=train \
      [--override=trainer_options.num_steps=20 ...] [--strategy=auto]

Modes: `train`, `eval` (the latest checkpoint, once), `train_and_eval`
(evaluates every `evaluator_options.eval_interval_steps`), `continuous_eval`
(evaluates each new checkpoint until the final one). Checkpoints are
`model_dir/ckpt-<step>`; TensorBoard summaries go to `model_dir/train` and
`model_dir/eval`; evaluation results also to `model_dir/eval/metrics-<step>.json`.
"""
import sys

from absl import app
from absl import flags
from absl import logging

from deeplab2_kmax import config as config_lib
from deeplab2_kmax.trainer import runner
from deeplab2_kmax.trainer import trainer as trainer_lib

# What a user can fix (a config field, an override, a flag, a path, the
# data, a diverging run): reported in one line, without a traceback.
USER_ERRORS = (config_lib.ConfigError, ValueError, OSError,
               trainer_lib.NonFiniteLossError)

FLAGS = flags.FLAGS
flags.DEFINE_string('config_file', None, 'Experiment config (textproto).')
flags.DEFINE_string('model_dir', None, 'Checkpoints, summaries, results.')
flags.DEFINE_enum('mode', 'train', runner.MODES, 'What to run.')
flags.DEFINE_multi_string(
    'override', [], 'field.path=value; sets a config field (repeatable).')
flags.DEFINE_enum('strategy', 'auto',
                  ['auto', 'one_device', 'mirrored', 'multi_worker', 'tpu'],
                  'tf.distribute strategy (auto: from the devices, TF_CONFIG '
                  'and --tpu).')
flags.DEFINE_string('tpu', None, 'TPU name or address (TPUStrategy).')
flags.DEFINE_integer('num_cpu_devices', 0,
                     'Split the CPU into this many logical devices (to run '
                     'MirroredStrategy without GPUs).')
flags.DEFINE_integer('seed', 0, 'Seed of data order, augmentation, sampling.')
flags.DEFINE_integer('continuous_eval_timeout', 3600,
                     'continuous_eval: seconds to wait for a new checkpoint.')


def main(argv):
  del argv
  if not FLAGS.config_file or not FLAGS.model_dir:
    raise app.UsageError('--config_file and --model_dir are required')
  logging.set_verbosity(logging.INFO)
  try:
    runner.run_experiment(
        config_file=FLAGS.config_file, model_dir=FLAGS.model_dir,
        mode=FLAGS.mode, overrides=FLAGS.override, strategy=FLAGS.strategy,
        tpu=FLAGS.tpu, num_cpu_devices=FLAGS.num_cpu_devices,
        seed=FLAGS.seed,
        continuous_eval_timeout=FLAGS.continuous_eval_timeout)
  except USER_ERRORS as e:
    print(f'error: {e}', file=sys.stderr)
    return 1
  return 0


if __name__ == '__main__':
  app.run(main)
