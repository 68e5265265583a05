"""Counts the parameters of DeepLab2's own kMaX-DeepLab models, per config.

Builds Google's DeepLab2 `KMaXDeepLab` for each of its published kMaX
configs (configs/{coco,cityscapes,ade20k}/kmax_deeplab/kmax_meta_*.textproto)
the way DeepLab2's trainer does (deeplab2/trainer/train_lib.py:
`create_deeplab_model` with the train dataset's descriptor from
`dataset.MAP_NAME_TO_DATASET_INFO`, then `build_deeplab_model`: one
inference call on a `tf.keras.Input` of the train crop size), and writes
one JSON file: per config the trainable and non-trainable parameter counts,
the same per checkpoint item (`model.checkpoint_items`: encoder,
pixel_decoder, transformer_decoder, the heads), and the number of model
variables in the checkpoint (DeepLab2's `tf.train.Checkpoint` of
`global_step` plus the checkpoint items, written to a temporary folder and
listed; `global_step` itself is not counted). The configs' `${...}`
placeholders are replaced by dummy strings and `initial_checkpoint` and the
backbone's `pretrained_weights` are cleared, so nothing is loaded.

The written file (tests/data/deeplab2_parameter_counts.json) is for this
project's tests to compare its own models against; nothing in the package or
the tests imports this script. It runs DeepLab2 (TensorFlow with Keras 2),
never deeplab2_kmax, so it needs its own virtual environment:

  python3.11 -m venv /tmp/dl2venv
  /tmp/dl2venv/bin/pip install 'tensorflow==2.20.*' 'tf_keras==2.20.*' \\
      protobuf grpcio-tools numpy absl-py immutabledict pyyaml \\
      pycocotools matplotlib
  # orbit, for importing DeepLab2's train_lib (optional, see below):
  /tmp/dl2venv/bin/pip install --no-deps 'tf-models-official==2.20.0'
  # DeepLab2's tree as a package named `deeplab2`, protos compiled in place:
  mkdir -p /tmp/dl2src/deeplab2 && (cd DEEPLAB2_GIT && git archive HEAD) \\
      | tar -x -C /tmp/dl2src/deeplab2  # (any copy of the tree will do)
  cd /tmp/dl2src && /tmp/dl2venv/bin/python -m grpc_tools.protoc -I. \\
      --python_out=. deeplab2/*.proto

The script sets TF_USE_LEGACY_KERAS=1 itself (so tf.keras is tf_keras).
It calls train_lib's own two functions when train_lib imports (it needs
orbit, pycocotools and matplotlib); otherwise it makes the same calls itself
(train_lib's kMaX branch); the JSON's `built_with` says which.
DeepLab2's custom C++ op (merge_semantic_and_instance_maps) need not be
built: only Panoptic-DeepLab's post-processor imports it, inside a function.

Example:
  /tmp/dl2venv/bin/python scripts/deeplab2_parameter_counts.py \\
      --deeplab2_dir=/tmp/dl2src/deeplab2 \\
      --deeplab2_commit=$(git -C DEEPLAB2_GIT rev-parse HEAD) \\
      --output=tests/data/deeplab2_parameter_counts.json \\
      --check=coco/kmax_meta_r50_os32=PARITY/deeplab2_kmax_r50/variables.tsv

Each --check NAME=TSV compares the config's checkpoint keys, shapes and
dtypes with a variables.tsv (`key<TAB>shape<TAB>dtype` lines, `#` comments)
and fails if they differ.
"""
import argparse
import importlib.metadata
import json
import os
import pathlib
import re
import subprocess
import sys
import tempfile
import types

_DATASETS = ('coco', 'cityscapes', 'ade20k')
_PLACEHOLDER = re.compile(r'\$\{[A-Za-z0-9_]+\}')
_OBJECT_GRAPH_KEY = '_CHECKPOINTABLE_OBJECT_GRAPH'
_GLOBAL_STEP_PREFIX = 'global_step/'
# Fields of MaXDeepLabOptions that a published config sets but DeepLab2's
# model.proto lacks (see _load_config).
_FIELDS_MISSING_FROM_PROTO = ('transformer_decoder_drop_path_keep_prob',)


def _parse_args(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--deeplab2_dir', required=True,
                      help="DeepLab2's source tree, a folder named deeplab2 "
                      'with its protos compiled (config_pb2.py)')
  parser.add_argument('--output', required=True, help='JSON file to write')
  parser.add_argument('--deeplab2_commit', default=None,
                      help='commit the tree was exported from (default: '
                      '`git rev-parse HEAD` in --deeplab2_dir, if it is a '
                      'git checkout)')
  parser.add_argument('--configs', nargs='*', default=None,
                      help='only these configs, as DATASET/NAME (e.g. '
                      'coco/kmax_meta_r50_os32); default: all kmax_meta_*')
  parser.add_argument('--check', action='append', default=[],
                      metavar='NAME=TSV',
                      help="compare config NAME's checkpoint keys with a "
                      'variables.tsv; repeatable')
  return parser.parse_args(argv)


def _check_setup(args):
  """Raises SystemExit naming what is missing, before TensorFlow loads."""
  package = pathlib.Path(args.deeplab2_dir).resolve()
  if package.name != 'deeplab2' or not (
      package / 'model' / 'kmax_deeplab.py').is_file():
    raise SystemExit(f'--deeplab2_dir={package}: expected DeepLab2\'s tree '
                     'in a folder named deeplab2 (with model/kmax_deeplab.py)')
  if not (package / 'config_pb2.py').is_file():
    raise SystemExit(f'{package}: its protos are not compiled (no '
                     f'config_pb2.py); run `cd {package.parent} && python -m '
                     'grpc_tools.protoc -I. --python_out=. deeplab2/*.proto`')
  for check in args.check:
    if '=' not in check:
      raise SystemExit(f'--check={check}: expected NAME=TSV')
    if not pathlib.Path(check.split('=', 1)[1]).is_file():
      raise SystemExit(f'--check={check}: no such file')
  return package


def _commit(package, given):
  if given:
    return given
  try:
    return subprocess.run(
        ['git', '-C', str(package), 'rev-parse', 'HEAD'], check=True,
        capture_output=True, text=True).stdout.strip()
  except (OSError, subprocess.CalledProcessError):
    return None


def _config_files(package, names):
  """{'DATASET/NAME': path} of the kMaX meta configs, sorted."""
  found = {}
  for dataset in _DATASETS:
    folder = package / 'configs' / dataset / 'kmax_deeplab'
    for path in sorted(folder.glob('kmax_meta_*.textproto')):
      found[f'{dataset}/{path.stem}'] = path
  if names:
    missing = [n for n in names if n not in found]
    if missing:
      raise SystemExit(f'--configs: not found: {missing}; '
                       f'known: {sorted(found)}')
    found = {n: found[n] for n in names}
  return found


def _load_config(path, config_pb2, text_format):
  """Parses a config; returns it and the lines dropped to parse it.

  DeepLab2's ade20k/kmax_meta_convnext_large_os32.textproto sets
  `max_deeplab.transformer_decoder_drop_path_keep_prob`, a field that its
  model.proto (at least up to commit 64bc1c1) does not have, so DeepLab2
  itself cannot parse it. KMaXDeepLab hard-codes that value per dataset
  (1.0 for ADE20K, the value the config sets), and a drop-path rate does not
  change any parameter, so such a line is dropped when, and only when, the
  proto lacks the field.
  """
  text = _PLACEHOLDER.sub('dummy', path.read_text())
  dropped = []
  known = config_pb2.ModelOptions.MaXDeepLabOptions.DESCRIPTOR.fields_by_name
  for field in _FIELDS_MISSING_FROM_PROTO:
    if field in known:
      continue
    lines = text.splitlines()
    dropped += [l.strip() for l in lines if l.strip().startswith(field + ':')]
    text = '\n'.join(l for l in lines if not l.strip().startswith(field + ':'))
  config = text_format.Parse(text, config_pb2.ExperimentOptions())
  config.model_options.ClearField('initial_checkpoint')
  config.model_options.backbone.ClearField('pretrained_weights')
  return config, dropped


def _size(shape):
  size = 1
  for d in shape:
    size *= int(d)
  return size


def _count(variables):
  return sum(_size(v.shape) for v in variables)


def _checkpoint_keys(tf, checkpoint_dict):
  """{key: (shape, dtype)} of a tf.train.Checkpoint of checkpoint_dict."""
  with tempfile.TemporaryDirectory() as tmp:
    prefix = tf.train.Checkpoint(**checkpoint_dict).write(
        os.path.join(tmp, 'ckpt'))
    reader = tf.train.load_checkpoint(prefix)
    shapes = reader.get_variable_to_shape_map()
    dtypes = reader.get_variable_to_dtype_map()
    return {k: (list(shapes[k]), dtypes[k].name) for k in shapes
            if k != _OBJECT_GRAPH_KEY}


def _read_tsv(path):
  keys = {}
  for line in pathlib.Path(path).read_text().splitlines():
    if not line.strip() or line.startswith('#'):
      continue
    key, shape, dtype = line.split('\t')
    keys[key] = (json.loads(shape), dtype)
  return keys


def _compare(name, keys, tsv_path):
  """Returns a one-line verdict; raises if keys, shapes or dtypes differ."""
  expected = _read_tsv(tsv_path)
  only_ours = sorted(set(keys) - set(expected))
  only_theirs = sorted(set(expected) - set(keys))
  differ = sorted(k for k in set(keys) & set(expected)
                  if keys[k] != expected[k])
  if only_ours or only_theirs or differ:
    raise SystemExit(
        f'{name}: checkpoint differs from {tsv_path}: '
        f'{len(only_ours)} keys only in the built model (e.g. '
        f'{only_ours[:3]}), {len(only_theirs)} only in the tsv (e.g. '
        f'{only_theirs[:3]}), {len(differ)} with other shape/dtype (e.g. '
        f'{differ[:3]})')
  size = sum(_size(s) for k, (s, _) in keys.items()
             if not k.startswith(_GLOBAL_STEP_PREFIX))
  return (f'{name}: {len(keys)} keys (shape, dtype) equal to {tsv_path}; '
          f'model variables {len(keys) - 1}, {size} values')


def measure(name, path, modules):
  """Builds DeepLab2's model for one config; returns its counts and keys."""
  tf, text_format, config_pb2, dataset, train_lib = modules
  config, dropped = _load_config(path, config_pb2, text_format)
  descriptor = dataset.MAP_NAME_TO_DATASET_INFO[
      config.train_dataset_options.dataset]
  model = train_lib.create_deeplab_model(config, descriptor)
  train_lib.build_deeplab_model(
      model, list(config.train_dataset_options.crop_size))
  items = model.checkpoint_items
  counts = {
      'dataset': config.train_dataset_options.dataset,
      'backbone': config.model_options.backbone.name,
      'train_crop_size': list(config.train_dataset_options.crop_size),
      'config_lines_dropped': dropped,
      'trainable': _count(model.trainable_weights),
      'non_trainable': _count(model.non_trainable_weights),
      'items': {
          item_name: {'trainable': _count(item.trainable_weights),
                      'non_trainable': _count(item.non_trainable_weights)}
          for item_name, item in items.items()},
  }
  # Every weight is in exactly one checkpoint item.
  for kind in ('trainable', 'non_trainable'):
    summed = sum(c[kind] for c in counts['items'].values())
    if summed != counts[kind]:
      raise SystemExit(f'{name}: {kind} items sum to {summed}, '
                       f'model has {counts[kind]}')
  global_step = tf.Variable(0, dtype=tf.int64, trainable=False,
                            name='global_step')  # as orbit creates it
  keys = _checkpoint_keys(tf, dict(global_step=global_step, **items))
  model_keys = [k for k in keys if not k.startswith(_GLOBAL_STEP_PREFIX)]
  counts['num_variables'] = len(model_keys)
  if len(model_keys) != len(model.weights):
    raise SystemExit(f'{name}: {len(model_keys)} checkpoint keys but '
                     f'{len(model.weights)} model weights')
  checkpoint_values = sum(_size(keys[k][0]) for k in model_keys)
  if checkpoint_values != counts['trainable'] + counts['non_trainable']:
    raise SystemExit(f'{name}: checkpoint holds {checkpoint_values} values, '
                     'the model\'s weights '
                     f'{counts["trainable"] + counts["non_trainable"]}')
  tf.keras.backend.clear_session()
  return counts, keys


def main(argv=None):
  args = _parse_args(argv)
  package = _check_setup(args)
  checks = dict(c.split('=', 1) for c in args.check)
  files = _config_files(package, args.configs)
  unknown = sorted(set(checks) - set(files))
  if unknown:
    raise SystemExit(f'--check names no selected config: {unknown}')

  os.environ['TF_USE_LEGACY_KERAS'] = '1'
  os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
  sys.path.insert(0, str(package.parent))
  # pylint: disable=import-outside-toplevel
  import tensorflow as tf
  from google.protobuf import text_format
  from deeplab2 import config_pb2
  from deeplab2.data import dataset
  # train_lib imports orbit and DeepLab2's trainer; its two model-building
  # functions are used as they are when it imports, else the same calls
  # are made here.
  try:
    from deeplab2.trainer import train_lib
    built_with = 'deeplab2.trainer.train_lib'
  except ImportError as e:
    print(f'deeplab2.trainer.train_lib does not import ({e}); making its '
          'calls here', flush=True)
    built_with = 'train_lib calls repeated by this script'
    from deeplab2.model import kmax_deeplab

    def create_deeplab_model(config, dataset_descriptor):
      # train_lib.create_deeplab_model's branch for kMaX configs.
      assert 'kmax_' in config.model_options.backbone.name
      assert config.model_options.WhichOneof(
          'meta_architecture') == 'max_deeplab'
      return kmax_deeplab.KMaXDeepLab(config, dataset_descriptor)

    def build_deeplab_model(model, crop_size, batch_size=None):
      # train_lib.build_deeplab_model for single-frame models.
      model(tf.keras.Input(list(crop_size) + [3], batch_size=batch_size),
            training=False)

    train_lib = types.SimpleNamespace(
        create_deeplab_model=create_deeplab_model,
        build_deeplab_model=build_deeplab_model)
  # pylint: enable=import-outside-toplevel
  modules = (tf, text_format, config_pb2, dataset, train_lib)

  results, verdicts = {}, []
  for name, path in files.items():
    counts, keys = measure(name, path, modules)
    results[name] = counts
    print(f'{name}: trainable {counts["trainable"]:,} non-trainable '
          f'{counts["non_trainable"]:,} variables {counts["num_variables"]}',
          flush=True)
    if name in checks:
      verdicts.append(_compare(name, keys, checks[name]))
      print(verdicts[-1], flush=True)

  output = {
      'deeplab2_commit': _commit(package, args.deeplab2_commit),
      'tensorflow': tf.__version__,
      'tf_keras': importlib.metadata.version('tf_keras'),
      'made_by': 'scripts/deeplab2_parameter_counts.py',
      'built_with': built_with,
      'configs': results,
  }
  out = pathlib.Path(args.output)
  out.parent.mkdir(parents=True, exist_ok=True)
  out.write_text(json.dumps(output, indent=2) + '\n')
  print(f'wrote {out}')


if __name__ == '__main__':
  main()
