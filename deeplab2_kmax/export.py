r"""Exports a trained kMaX-DeepLab as a SavedModel and / or a LiteRT model.

  python -m deeplab2_kmax.export \
      --config_file=configs/coco/kmax_deeplab/kmax_r50_os32.textproto \
      --checkpoint=/path/to/model_dir --output_dir=/path/to/export/1 \
      [--format=saved_model|tflite|all]

--checkpoint is a checkpoint prefix (`.../ckpt-300`), a model_dir (its latest
checkpoint) or a DeepLab2 kMaX checkpoint (imported by key).

--format=saved_model (the default) writes a SavedModel holding a plain
tf.Module (serving.py) whose signatures take a uint8 image of any size
(serving_default), a batch of one size (serving_batch) or encoded image
bytes (serving_bytes), preprocess it as the config's evaluation does and
return panoptic / semantic / instance maps at the input size with a table
of segments. It loads with `tf.saved_model.load` alone. TensorFlow Serving
wants `<model_base_path>/<version>/saved_model.pb`, hence the `/1`. The
functions are traced under --kernel_policy (default REFERENCE: plain
TensorFlow ops, no nested XLA kernels or custom gradients, so stock
TensorFlow Serving, which runs without XLA JIT, serves it).

--format=tflite writes `model.tflite`: serving_default's function for one
uint8 RGB image of the fixed size --tflite_image_size (default: the crop),
same input name and outputs, LiteRT builtin ops only (traced under
REFERENCE whatever --kernel_policy says). --format=all writes both in
the same folder.

Beside them the exporter writes `assets.extra/dataset_info.json` (class
names, colors, ids) and `assets.extra/export_info.json` (crop size, kMaX
layer strides, formats, ...), read by predict.py and visualize_clusters.py.

Everything is written to a hidden temporary folder next to --output_dir and
renamed into place when complete; a non-empty --output_dir is refused unless
--overwrite is given.
"""
import argparse
import dataclasses
import json
import os
import re
import shutil
import sys
import tempfile
import time

import tensorflow as tf

import deeplab2_kmax
from deeplab2_kmax import config as config_lib
from deeplab2_kmax import io_utils
from deeplab2_kmax import serving
from deeplab2_kmax.checkpoints import deeplab2_import
from deeplab2_kmax.checkpoints import initial_checkpoint
from deeplab2_kmax.data import dataset_info as dataset_info_lib
from deeplab2_kmax.evaluation import coco_format
from deeplab2_kmax.model import kernels
from deeplab2_kmax.model.kernels import policy as policy_lib

DATASET_INFO_FILE = os.path.join('assets.extra', 'dataset_info.json')
EXPORT_INFO_FILE = os.path.join('assets.extra', 'export_info.json')
TFLITE_FILE = 'model.tflite'

SAVED_MODEL = 'saved_model'
TFLITE = 'tflite'
FORMATS = {SAVED_MODEL: (SAVED_MODEL,), TFLITE: (TFLITE,),
           'all': (SAVED_MODEL, TFLITE)}  # --format -> what is written
DEFAULT_KERNEL_POLICY = 'REFERENCE'

# Errors a command line reports in one line (no traceback).
USER_ERRORS = (config_lib.ConfigError, deeplab2_import.CheckpointMismatchError,
               FileExistsError, ValueError)


def restore_checkpoint(model, checkpoint):
  """Loads `checkpoint` (a prefix, a trainer's model_dir or a DeepLab2
  checkpoint) into `model`; returns the prefix read. See
  `initial_checkpoint.restore_model`."""
  return initial_checkpoint.restore_model(model, checkpoint,
                                          where=f'--checkpoint={checkpoint}')


def build_serving_module(config_file, checkpoint, *,
                         max_image_size=serving.DEFAULT_MAX_IMAGE_SIZE):
  """(ServingModule, checkpoint prefix) of a config and a checkpoint."""
  config = deeplab2_kmax.load_config(config_file)
  options = serving.ServingOptions.from_config(config, max_image_size)
  info = config_lib.dataset_info_for(config)
  model = deeplab2_kmax.build_model(config)
  prefix = restore_checkpoint(model, checkpoint)
  return serving.ServingModule(model, info, options), prefix


def check_output_dir(output_dir, overwrite):
  """Raises FileExistsError for a file or a non-empty folder (no overwrite)."""
  if os.path.exists(output_dir) and not os.path.isdir(output_dir):
    raise FileExistsError(f'--output_dir={output_dir} is a file; expected a '
                          'folder (or a path that does not exist)')
  if os.path.isdir(output_dir) and os.listdir(output_dir) and not overwrite:
    raise FileExistsError(f'--output_dir={output_dir} exists and is not '
                          'empty; pass --overwrite to replace it')


def publish_dir(staging, output_dir, *, overwrite=False):
  """Renames the complete folder `staging` to `output_dir`.

  An existing `output_dir` is moved aside first (and deleted at the end) when
  it is empty or `overwrite` is set, so a reader never sees a partial
  folder; if the final rename fails the previous folder is put back.
  """
  check_output_dir(output_dir, overwrite)
  if not os.path.exists(output_dir):
    os.rename(staging, output_dir)
    return
  parent, base = os.path.split(os.path.abspath(output_dir))
  trash = tempfile.mkdtemp(dir=parent, prefix=f'.{base}.old-')
  previous = os.path.join(trash, base)
  os.rename(output_dir, previous)
  try:
    os.rename(staging, output_dir)
  except OSError:
    os.rename(previous, output_dir)
    raise
  finally:
    shutil.rmtree(trash, ignore_errors=True)


@dataclasses.dataclass(frozen=True)
class TfliteOptions:
  """How --format=tflite converts."""
  image_size: tuple = None  # (height, width) of the input; None: the crop
  float16: bool = False  # weights stored as float16
  select_tf_ops: bool = False  # allow TensorFlow (Flex) ops beside builtins


def convert_to_tflite(module, options=TfliteOptions()):
  """Bytes of the LiteRT model of `module`'s fixed-size function.

  Raises ValueError naming the ops LiteRT has no builtin for (unless
  `options.select_tf_ops`, which keeps them as TensorFlow ops).
  """
  height, width = options.image_size or module.options.crop_size
  with kernels.policy_scope(kernels.KernelPolicy.REFERENCE):
    function = module.fixed_size_function(height, width)
    converter = tf.lite.TFLiteConverter.from_concrete_functions(
        [function], module)
  converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
  if options.select_tf_ops:
    converter.target_spec.supported_ops.append(
        tf.lite.OpsSet.SELECT_TF_OPS)
  if options.float16:
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.target_spec.supported_types = [tf.float16]
  try:
    return converter.convert()
  except Exception as e:  # the converter's error class is not public API
    ops = sorted(set(re.findall(
        r"'(tf\.\w+)' op is neither a custom op nor a flex op", str(e))))
    if not ops:
      raise
    raise ValueError(
        f'--format={TFLITE}: LiteRT has no builtin op for {", ".join(ops)}; '
        'pass --tflite_select_tf_ops to keep them as TensorFlow ops (the '
        'interpreter then needs the Flex delegate)') from None


def export_model(module, output_dir, *, formats=(SAVED_MODEL,),
                 overwrite=False, kernel_policy=DEFAULT_KERNEL_POLICY,
                 tflite_options=TfliteOptions(), **info):
  """Writes `module` (a ServingModule) in `formats` with its info files.

  `formats`: SAVED_MODEL (its signatures, traced under `kernel_policy`)
  and / or TFLITE (TFLITE_FILE, see `convert_to_tflite`). `info` is added
  to export_info.json (e.g. config_file, checkpoint). Returns `output_dir`.
  """
  unknown = set(formats) - {SAVED_MODEL, TFLITE}
  if unknown or not formats:
    raise ValueError(f'formats {sorted(formats)}: expected '
                     f'{SAVED_MODEL!r} and / or {TFLITE!r}')
  check_output_dir(output_dir, overwrite)
  parent, base = os.path.split(os.path.abspath(output_dir))
  os.makedirs(parent, exist_ok=True)
  staging = tempfile.mkdtemp(dir=parent, prefix=f'.{base}.tmp-')
  os.chmod(staging, 0o755)  # mkdtemp's 0o700 would hide it from servers
  written = {}
  try:
    if SAVED_MODEL in formats:
      with kernels.policy_scope(kernel_policy) as policy:
        tf.saved_model.save(module, staging, signatures=module.signatures())
      written[SAVED_MODEL] = {'kernel_policy': policy.name}
    if TFLITE in formats:
      start = time.perf_counter()
      model = convert_to_tflite(module, tflite_options)
      io_utils.write_bytes(os.path.join(staging, TFLITE_FILE), model)
      written[TFLITE] = {
          'file': TFLITE_FILE,
          'image_size': list(tflite_options.image_size or
                             module.options.crop_size),
          'float16': tflite_options.float16,
          'select_tf_ops': tflite_options.select_tf_ops,
          'conversion_seconds': round(time.perf_counter() - start, 1)}
    os.makedirs(os.path.join(staging, 'assets.extra'), exist_ok=True)
    coco_format.write_json(
        os.path.join(staging, DATASET_INFO_FILE),
        dataset_info_json(module.dataset_info))
    coco_format.write_json(
        os.path.join(staging, EXPORT_INFO_FILE),
        export_info_json(module, tensorflow_version=tf.__version__,
                         formats=written, **info))
    publish_dir(staging, output_dir, overwrite=overwrite)
  finally:
    shutil.rmtree(staging, ignore_errors=True)
  return output_dir


def export(config_file, checkpoint, output_dir, *,
           max_image_size=serving.DEFAULT_MAX_IMAGE_SIZE, overwrite=False,
           formats=(SAVED_MODEL,), kernel_policy=DEFAULT_KERNEL_POLICY,
           tflite_options=TfliteOptions()):
  """Builds, restores and exports; returns the checkpoint prefix used."""
  check_output_dir(output_dir, overwrite)  # before the slow part
  with kernels.policy_scope(kernel_policy):
    module, prefix = build_serving_module(config_file, checkpoint,
                                          max_image_size=max_image_size)
  config = deeplab2_kmax.load_config(config_file)
  export_model(module, output_dir, formats=formats, overwrite=overwrite,
               kernel_policy=kernel_policy, tflite_options=tflite_options,
               config_file=os.path.abspath(config_file), checkpoint=prefix,
               experiment_name=config.experiment_name)
  return prefix


# Files beside the SavedModel -------------------------------------------------
def dataset_info_json(info):
  """The data set's facts as written to DATASET_INFO_FILE."""
  return {
      'name': info.name, 'ignore_label': info.ignore_label,
      'label_divisor': info.label_divisor,
      'categories': [{'id': c.source_id, 'name': c.name,
                      'isthing': int(c.is_thing), 'color': list(c.color),
                      'semantic_id': c.semantic_id} for c in info.classes]}


def export_info_json(module, **extra):
  """The served function's facts as written to EXPORT_INFO_FILE."""
  options = module.options
  return {
      'signatures': {name: serving.INPUT_NAMES[name]
                     for name in serving.SIGNATURES},
      'crop_size': list(options.crop_size),
      'resize_longer_side': options.resize_longer_side,
      'max_image_size': options.max_image_size,
      'layer_strides': list(module.layer_strides),
      'num_cluster_centers': module.num_centers,
      **extra}


def _read_json(saved_model_dir, name):
  path = os.path.join(saved_model_dir, name)
  try:
    with open(path, encoding='utf-8') as f:
      return json.load(f)
  except (OSError, ValueError) as e:
    raise ValueError(f'{path}: cannot read the file the exporter writes '
                     f'beside a SavedModel: {e}') from None


def read_dataset_info(saved_model_dir):
  """DatasetInfo stored beside an exported SavedModel."""
  data = _read_json(saved_model_dir, DATASET_INFO_FILE)
  path = os.path.join(saved_model_dir, DATASET_INFO_FILE)
  try:
    classes = tuple(
        dataset_info_lib.ClassInfo(
            semantic_id=int(c['semantic_id']), name=str(c['name']),
            is_thing=bool(c['isthing']),
            color=tuple(int(v) for v in c['color']),
            source_id=int(c['id']))
        for c in data['categories'])
    return dataset_info_lib.DatasetInfo(
        name=data['name'], classes=tuple(sorted(
            classes, key=lambda c: c.semantic_id)),
        ignore_label=int(data['ignore_label']),
        label_divisor=int(data['label_divisor']))
  except (KeyError, TypeError, ValueError) as e:
    raise ValueError(f'{path}: malformed dataset info ({type(e).__name__}: '
                     f'{e}); expected name, ignore_label, label_divisor and '
                     'categories with id, name, isthing, color, '
                     'semantic_id') from None


def read_export_info(saved_model_dir):
  """The dict of EXPORT_INFO_FILE (crop_size, layer_strides, ...)."""
  return _read_json(saved_model_dir, EXPORT_INFO_FILE)


def parse_args(argv):
  parser = argparse.ArgumentParser(
      prog='python -m deeplab2_kmax.export',
      description='Exports a kMaX-DeepLab checkpoint as a SavedModel and / '
      'or a LiteRT (TFLite) model.')
  parser.add_argument('--config_file', required=True,
                      help='Experiment textproto of the model.')
  parser.add_argument('--checkpoint', required=True,
                      help='Checkpoint prefix, model_dir (latest checkpoint) '
                      'or DeepLab2 checkpoint prefix.')
  parser.add_argument('--output_dir', required=True,
                      help='Folder to write the export to.')
  parser.add_argument('--format', default=SAVED_MODEL,
                      help=f'{" | ".join(FORMATS)}: a SavedModel (default), '
                      f'{TFLITE_FILE} (LiteRT builtin ops, fixed image '
                      'size) or both in the same folder.')
  parser.add_argument('--kernel_policy', default=DEFAULT_KERNEL_POLICY,
                      help='Kernels the SavedModel is traced with: REFERENCE '
                      '(default: plain TensorFlow ops, runs on stock '
                      'TensorFlow Serving, GPUs, TPUs) or CPU_OPTIMIZED '
                      '(nested XLA kernels, faster on CPUs, but needs a '
                      'runtime with XLA JIT, which stock TensorFlow Serving '
                      'is not); AUTO picks by the local devices. The LiteRT '
                      'model always uses REFERENCE.')
  parser.add_argument('--max_image_size', type=int,
                      default=serving.DEFAULT_MAX_IMAGE_SIZE,
                      help='Longest image side the served model accepts.')
  parser.add_argument('--tflite_image_size', default='',
                      help='HEIGHT,WIDTH of the LiteRT model\'s input image '
                      '(default: the eval crop of the config).')
  parser.add_argument('--tflite_float16', action='store_true',
                      help='Store the LiteRT model\'s weights as float16.')
  parser.add_argument('--tflite_select_tf_ops', action='store_true',
                      help='Allow TensorFlow (Flex) ops where LiteRT has no '
                      'builtin; the interpreter then needs the Flex '
                      'delegate.')
  parser.add_argument('--overwrite', action='store_true',
                      help='Replace a non-empty --output_dir.')
  return parser.parse_args(argv)


def check_args(args):
  """(formats, kernel policy, TfliteOptions) of the flags; ValueError names
  the flag of a bad value."""
  if args.format not in FORMATS:
    raise ValueError(f'--format={args.format}: expected one of '
                     f'{", ".join(FORMATS)}')
  try:
    policy = policy_lib.parse(args.kernel_policy)
  except ValueError as e:
    raise ValueError(f'--kernel_policy: {e}') from None
  size = None
  if args.tflite_image_size:
    match = re.fullmatch(r'\s*(\d+)\s*,\s*(\d+)\s*', args.tflite_image_size)
    if not match or min(int(v) for v in match.groups()) < 1:
      raise ValueError(f'--tflite_image_size={args.tflite_image_size}: '
                       'expected HEIGHT,WIDTH, two positive integers')
    size = tuple(int(v) for v in match.groups())
    if max(size) > args.max_image_size:
      raise ValueError(f'--tflite_image_size={args.tflite_image_size}: '
                       'expected sides of at most --max_image_size='
                       f'{args.max_image_size}')
  return FORMATS[args.format], policy, TfliteOptions(
      image_size=size, float16=args.tflite_float16,
      select_tf_ops=args.tflite_select_tf_ops)


def main(argv=None):
  args = parse_args(argv)
  try:
    formats, policy, tflite_options = check_args(args)
    prefix = export(args.config_file, args.checkpoint, args.output_dir,
                    max_image_size=args.max_image_size,
                    overwrite=args.overwrite, formats=formats,
                    kernel_policy=policy, tflite_options=tflite_options)
  except USER_ERRORS as e:
    print(f'error: {e}', file=sys.stderr)
    return 1
  written = []
  if SAVED_MODEL in formats:
    written.append(f'SavedModel (signatures: {", ".join(serving.SIGNATURES)})')
  if TFLITE in formats:
    written.append(TFLITE_FILE)
  print(f'exported {prefix} to {args.output_dir}: {"; ".join(written)}')
  return 0


if __name__ == '__main__':
  sys.exit(main())
