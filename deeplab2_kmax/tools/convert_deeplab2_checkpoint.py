r"""Converts a DeepLab2 kMaX-DeepLab checkpoint into a deeplab2_kmax one.

  python -m deeplab2_kmax.tools.convert_deeplab2_checkpoint \
      --config_file=configs/coco/kmax_deeplab/kmax_r50_os32.textproto \
      --input=/path/to/deeplab2/ckpt-150000 --output=/path/to/kmax_r50_coco

The DeepLab2 checkpoint is read by key; every model weight must be found
with the right shape and every model key used, or the tool exits with an
error listing the differences. The output is a tf.train.Checkpoint with the
model under `model` (readable by deeplab2_kmax's trainer and exporter); it is
written under a temporary prefix and renamed into place when complete, so an
interrupted run never leaves a partial checkpoint at --output.
"""
import glob
import os
import sys
import tempfile

from absl import app
from absl import flags

_CONFIG = flags.DEFINE_string('config_file', None,
                              'Experiment textproto describing the model.')
_INPUT = flags.DEFINE_string('input', None,
                             'Prefix of the DeepLab2 checkpoint to read.')
_OUTPUT = flags.DEFINE_string('output', None,
                              'Prefix of the checkpoint to write.')
_OVERWRITE = flags.DEFINE_bool('overwrite', False,
                               'Replace an existing checkpoint at --output.')


def convert(config_file, input_prefix, output_prefix, overwrite=False):
  """Builds the model, imports `input_prefix`, writes `output_prefix`.

  Returns the number of tensors imported.
  """
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  import deeplab2_kmax  # pylint: disable=import-outside-toplevel

  existing = glob.glob(glob.escape(output_prefix) + '.*')
  if existing and not overwrite:
    raise FileExistsError(f'{output_prefix}: a checkpoint already exists '
                          '(pass --overwrite to replace it)')
  config = deeplab2_kmax.load_config(config_file)
  model = deeplab2_kmax.build_model(config)
  count = deeplab2_kmax.load_deeplab2_checkpoint(model, input_prefix)
  out_dir = os.path.dirname(os.path.abspath(output_prefix))
  os.makedirs(out_dir, exist_ok=True)
  with tempfile.TemporaryDirectory(dir=out_dir,
                                   prefix='.convert-') as staging:
    staged = os.path.join(staging, 'ckpt')
    tf.train.Checkpoint(model=model).write(staged)
    for path in existing:
      os.remove(path)
    for path in sorted(glob.glob(staged + '.*')):
      os.replace(path, output_prefix + path[len(staged):])
  return count


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  for flag in (_CONFIG, _INPUT, _OUTPUT):
    if not flag.value:
      raise app.UsageError(f'--{flag.name} is required')
  import deeplab2_kmax  # pylint: disable=import-outside-toplevel
  from deeplab2_kmax.checkpoints import deeplab2_import  # pylint: disable=import-outside-toplevel
  try:
    count = convert(_CONFIG.value, _INPUT.value, _OUTPUT.value,
                    _OVERWRITE.value)
  except (deeplab2_kmax.ConfigError, deeplab2_import.CheckpointMismatchError,
          FileExistsError) as e:
    print(f'error: {e}', file=sys.stderr)
    return 1
  print(f'imported {count} tensors from {_INPUT.value}; wrote '
        f'{_OUTPUT.value}')
  return 0


if __name__ == '__main__':
  app.run(main)
