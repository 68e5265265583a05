"""Checks one of our kMaX configs against Google's DeepLab2 itself.

The four parity fixtures in ../shared/parity hold outputs that DeepLab2
computed once, for four configs at one size each. This script makes such a
comparison for any other DeepLab2 kMaX config, formula salt, input and
size, by running DeepLab2 next to our model:

  1. In DeepLab2's own virtual environment (a subprocess running this file
     with --deeplab2_side): build DeepLab2's `KMaXDeepLab` for the config
     the way its trainer does (`train_lib.create_deeplab_model`, then
     `build_deeplab_model` at the test size: Axial-ResNet-50 only runs at
     the size it was built for), list its checkpoint keys into
     WORK/variables.tsv (the shared fixtures' format), write the formula
     checkpoint WORK/checkpoint/model with
     shared/parity/make_reference_checkpoint.py --salt, restore it into the
     model by key, and save what the model computes on
     `np.random.RandomState(seed).uniform(0, 255, [1, H, W, 3])` (float32):
     the four outputs and DeepLab2's post-processed maps
     (WORK/deeplab2_outputs.npz), the pixel encoder / pixel decoder /
     transformer decoder tensors (WORK/deeplab2_intermediates.npz) and the
     settings (WORK/deeplab2_run.json).
  2. Here: build our model from --config_file, import the same checkpoint
     (`deeplab2_kmax.load_deeplab2_checkpoint`), run the same input, merge
     with DeepLab2's post-processing settings, and print one JSON line per
     kernel policy with the verdict of shared/parity/README.md:
       - class logits, mask logits, pixel features and semantic logits
         `isclose(rtol=1e-3, atol=1e-3)` on >= 99.9% of elements;
       - per-pixel argmax of the mask logits equal on >= 99.5% of pixels;
       - panoptic maps equal on >= 99% of pixels, segment ids renumbered
         (each segment of one map is paired with the segment of the other
         it overlaps most; the lower of the two directions counts).
     It also reports the maximum absolute differences, the share of pixels
     whose panoptic class agrees (for information), and the first
     intermediate tensor that is not close (first_stage_off), so a failure
     names the part where the two models part ways. The per-tensor
     comparison is written to stderr.

Post-processing, both sides: the DeepLab2 config's evaluator options
(pixel confidence, overlap threshold, reorder weights) with the area limits
and the class confidence thresholds set to 0, as for the shared fixtures.

It needs DeepLab2's environment besides ours; nothing in the package or
the tests imports this script. DeepLab2's environment is the one of
scripts/deeplab2_parameter_counts.py (see its docstring: TensorFlow 2.20,
tf_keras, DeepLab2's tree as a package named `deeplab2` with its protos
compiled, orbit from tf-models-official for its train_lib); the DeepLab2
side sets TF_USE_LEGACY_KERAS=1 and PYTHONPATH itself. DeepLab2 configs
are read as that script reads them (placeholders replaced, pretrained
weights cleared, the one field its proto lacks dropped).

Example (DeepLab2's Cityscapes ConvNeXt-T against ours):
  .venv/bin/python scripts/deeplab2_crosscheck.py \\
      --deeplab2_config=cityscapes/kmax_meta_convnext_tiny_os32 \\
      --config_file=configs/cityscapes/kmax_deeplab/kmax_convnext_tiny_os32.textproto \\
      --salt=3 --seed=1 --size=129x257 \\
      --deeplab2_python=/tmp/dl2venv/bin/python \\
      --deeplab2_dir=/tmp/dl2src/deeplab2

The exit status is 1 when a policy fails the criteria. --work_dir keeps
the files above (default: a temporary folder, removed at the end).
"""
import argparse
import json
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np

_REPO = pathlib.Path(__file__).resolve().parents[1]
_PARITY = pathlib.Path(os.environ.get(
    'DEEPLAB2_KMAX_SHARED', _REPO.parent / 'shared')) / 'parity'

# The criteria of shared/parity/README.md.
_TOLERANCE = 1e-3  # rtol and atol of numpy.isclose
_MIN_CLOSE = 0.999
_MIN_MASK_ARGMAX = 0.995
_MIN_PANOPTIC = 0.99

# DeepLab2's names of the compared outputs; ours are the same four of
# deeplab2_kmax.model.outputs, in this order.
_OUTPUTS = ('transformer_class_logits', 'pixel_space_mask_logits',
            'pixel_space_normalized_feature', 'semantic_logits')
_POST_PROCESSED = ('panoptic_pred', 'semantic_pred', 'instance_pred')
_OBJECT_GRAPH_KEY = '_CHECKPOINTABLE_OBJECT_GRAPH'

# Files in the work folder.
_TSV = 'variables.tsv'
_CHECKPOINT = 'checkpoint/model'
_DEEPLAB2_OUTPUTS = 'deeplab2_outputs.npz'
_DEEPLAB2_INTERMEDIATES = 'deeplab2_intermediates.npz'
_DEEPLAB2_RUN = 'deeplab2_run.json'


def _parse_args(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--deeplab2_config', required=True,
                      help='DATASET/NAME of a DeepLab2 config under '
                      'configs/DATASET/kmax_deeplab/NAME.textproto, e.g. '
                      'cityscapes/kmax_meta_convnext_tiny_os32')
  parser.add_argument('--config_file',
                      help='our config textproto (required except with '
                      '--deeplab2_side)')
  parser.add_argument('--salt', type=int, default=0,
                      help='salt of the formula checkpoint')
  parser.add_argument('--seed', type=int, default=0,
                      help='RandomState seed of the input image')
  parser.add_argument('--size', type=_size, default=(321, 321),
                      help='input HxW (or S for SxS); k*32+1 sizes')
  parser.add_argument('--deeplab2_dir', default='/tmp/dl2src/deeplab2',
                      help="DeepLab2's tree, a folder named deeplab2 with its "
                      'protos compiled')
  parser.add_argument('--deeplab2_python', default='/tmp/dl2venv/bin/python',
                      help="the Python of DeepLab2's virtual environment")
  parser.add_argument('--parity_dir', default=str(_PARITY),
                      help='the folder of make_reference_checkpoint.py')
  parser.add_argument('--policies', default='REFERENCE,CPU_OPTIMIZED',
                      help='our kernel policies to run, comma-separated')
  parser.add_argument('--work_dir', default=None,
                      help='keep the checkpoint and DeepLab2 outputs here')
  parser.add_argument('--deeplab2_side', action='store_true',
                      help='internal: run step 1 (in DeepLab2\'s venv) into '
                      '--work_dir')
  args = parser.parse_args(argv)
  if not args.deeplab2_side and not args.config_file:
    parser.error('--config_file is required')
  return args


def _size(text):
  parts = text.lower().split('x')
  if len(parts) == 1:
    parts = parts * 2
  if len(parts) != 2 or not all(p.isdigit() for p in parts):
    raise argparse.ArgumentTypeError(f'expected HxW or S, got {text!r}')
  return int(parts[0]), int(parts[1])


def _input_image(seed, height, width):
  """The input recipe of the shared fixtures: raw 0..255 values."""
  return np.random.RandomState(seed).uniform(
      0, 255, [1, height, width, 3]).astype(np.float32)


# Step 1: DeepLab2 (runs in DeepLab2's venv, never imports deeplab2_kmax).


def _deeplab2_config(name, package, height, width):
  """DeepLab2's config NAME at crop HxW; post-processing limits set to 0."""
  # pylint: disable=import-outside-toplevel
  from google.protobuf import text_format
  from deeplab2 import config_pb2
  import deeplab2_parameter_counts  # beside this file; standard library only
  # pylint: enable=import-outside-toplevel
  dataset, stem = name.split('/')
  path = package / 'configs' / dataset / 'kmax_deeplab' / f'{stem}.textproto'
  if not path.is_file():
    raise SystemExit(f'--deeplab2_config={name}: no file {path}')
  load_config = deeplab2_parameter_counts._load_config  # pylint: disable=protected-access
  config, dropped = load_config(path, config_pb2, text_format)
  for options in (config.train_dataset_options, config.eval_dataset_options):
    del options.crop_size[:]
    options.crop_size.extend([height, width])  # the post-processor's size
  evaluator = config.evaluator_options
  if not evaluator.HasField('maskwise_postprocessing'):
    raise SystemExit(f'{path}: evaluator_options has no '
                     'maskwise_postprocessing; expected a kMaX config')
  evaluator.thing_area_limit = 0
  evaluator.stuff_area_limit = 0
  evaluator.transformer_class_confidence_threshold = 0.0
  maskwise = evaluator.maskwise_postprocessing
  maskwise.transformer_class_confidence_threshold_thing = 0.0
  maskwise.transformer_class_confidence_threshold_stuff = 0.0
  return config, path, dropped


def _write_variables_tsv(tf, prefix, tsv_path, title):
  """Lists checkpoint `prefix` as `key<TAB>shape<TAB>dtype`; returns keys."""
  reader = tf.train.load_checkpoint(prefix)
  shapes = reader.get_variable_to_shape_map()
  dtypes = reader.get_variable_to_dtype_map()
  keys = sorted(k for k in shapes if k != _OBJECT_GRAPH_KEY)
  lines = [f'# key\tshape\tdtype  ({title})']
  lines += [f'{k}\t{json.dumps(list(shapes[k]))}\t{dtypes[k].name}'
            for k in keys]
  tsv_path.write_text('\n'.join(lines) + '\n')
  return keys


def _restore_by_key(tf, checkpoint, layout_prefix, formula_prefix, scratch):
  """Restores the formula checkpoint into `checkpoint`'s objects by key.

  A TF2 checkpoint is restored through the object graph that names the key
  of each variable; the formula checkpoint has the keys only. So its values
  are written again together with the object graph of a checkpoint of this
  very model (`layout_prefix`), restored, and the model's weights are saved
  once more and compared with the formula, key by key.
  """
  formula = tf.train.load_checkpoint(formula_prefix)
  layout = tf.train.load_checkpoint(layout_prefix)
  keys = sorted(formula.get_variable_to_shape_map())
  if set(keys) != set(layout.get_variable_to_shape_map()) - {_OBJECT_GRAPH_KEY}:
    raise SystemExit('internal error: the formula checkpoint and the model '
                     'have different keys')
  restorable = str(scratch / 'restorable')
  tf.raw_ops.SaveV2(
      prefix=restorable, tensor_names=keys + [_OBJECT_GRAPH_KEY],
      shape_and_slices=[''] * (len(keys) + 1),
      tensors=[tf.constant(formula.get_tensor(k)) for k in keys] +
      [tf.constant(layout.get_tensor(_OBJECT_GRAPH_KEY))])
  checkpoint.read(restorable).assert_consumed()
  restored = tf.train.load_checkpoint(checkpoint.write(str(scratch / 'check')))
  differ = [k for k in keys if not np.array_equal(restored.get_tensor(k),
                                                  formula.get_tensor(k))]
  if differ:
    raise SystemExit(f'restoring by key failed for {len(differ)} entries, '
                     f'e.g. {differ[:3]}')


def _deeplab2_intermediates(model, images):
  """DeepLab2's tensors between its four parts, in data-flow order."""
  # pylint: disable=protected-access
  x = images / 127.5 - 1.0
  endpoints = model._pixel_encoder(x, training=False)
  endpoints = model._pixel_decoder(endpoints, training=False)
  endpoints = model._transformer_decoder(endpoints, training=False)
  # pylint: enable=protected-access
  result = {f'pixel_encoder/stage{i}': endpoints[f'stage{i}']
            for i in range(1, 6)}
  decoder_stages = sorted(k for k in endpoints if k.startswith('decoder_stage'))
  for name in decoder_stages + ['decoder_output']:
    result[f'pixel_decoder/{name}'] = endpoints[name]
  for i, prediction in enumerate(endpoints['auxiliary_outputs_pred']):
    for name in _OUTPUTS[:3]:
      result[f'transformer_decoder/auxiliary_outputs_pred/{i}/{name}'] = (
          prediction[name])
  for name in ('transformer_class_feature', 'transformer_mask_feature'):
    result[f'transformer_decoder/{name}'] = endpoints[name]
  return {k: v.numpy() for k, v in result.items()}


def run_deeplab2(args, work):
  """Step 1: writes the checkpoint and DeepLab2's outputs into `work`."""
  os.environ['TF_USE_LEGACY_KERAS'] = '1'
  os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
  package = pathlib.Path(args.deeplab2_dir).resolve()
  sys.path.insert(0, str(package.parent))
  # pylint: disable=import-outside-toplevel
  import tensorflow as tf
  from deeplab2.data import dataset
  from deeplab2.trainer import train_lib
  # pylint: enable=import-outside-toplevel
  start = time.time()
  height, width = args.size
  config, path, dropped = _deeplab2_config(
      args.deeplab2_config, package, height, width)
  descriptor = dataset.MAP_NAME_TO_DATASET_INFO[
      config.train_dataset_options.dataset]
  model = train_lib.create_deeplab_model(config, descriptor)
  train_lib.build_deeplab_model(model, [height, width])

  global_step = tf.Variable(0, dtype=tf.int64, trainable=False,
                            name='global_step')  # as orbit creates it
  checkpoint = tf.train.Checkpoint(global_step=global_step,
                                   **model.checkpoint_items)
  scratch = work / 'scratch'
  layout = checkpoint.write(str(scratch / 'layout'))
  keys = _write_variables_tsv(
      tf, layout, work / _TSV,
      f'DeepLab2 {args.deeplab2_config} checkpoint layout, built at '
      f'{height}x{width}')
  if len(keys) - 1 != len(model.weights):
    raise SystemExit(f'{len(keys)} checkpoint keys (global_step included) '
                     f'but {len(model.weights)} model weights')
  (work / _CHECKPOINT).parent.mkdir(exist_ok=True)
  subprocess.run(
      [sys.executable, str(pathlib.Path(args.parity_dir) /
                           'make_reference_checkpoint.py'),
       str(work / _TSV), str(work / _CHECKPOINT), '--salt', str(args.salt)],
      check=True)
  _restore_by_key(tf, checkpoint, layout, str(work / _CHECKPOINT), scratch)
  shutil.rmtree(scratch)

  image = _input_image(args.seed, height, width)
  result = model(tf.constant(image), training=False)
  outputs = {name: result[name].numpy() for name in _OUTPUTS + _POST_PROCESSED}
  np.savez(work / _DEEPLAB2_OUTPUTS, input_image=image, **outputs)
  np.savez(work / _DEEPLAB2_INTERMEDIATES,
           **_deeplab2_intermediates(model, tf.constant(image)))

  evaluator = config.evaluator_options
  maskwise = evaluator.maskwise_postprocessing
  run = {
      'deeplab2_config': str(path),
      'config_lines_dropped': dropped,
      'dataset': descriptor.dataset_name,
      'backbone': config.model_options.backbone.name,
      'size': [height, width],
      'salt': args.salt,
      'input_seed': args.seed,
      'checkpoint_entries': len(keys),
      'label_divisor': descriptor.panoptic_label_divisor,
      'ignore_label': descriptor.ignore_label,
      'post_processing': {  # float32 fields, as written in the config
          'pixel_confidence_threshold': round(
              evaluator.pixel_confidence_threshold, 6),
          'overlap_threshold': round(maskwise.overlapping_threshold, 6),
          'reorder_class_weight': round(maskwise.reorder_class_weight, 6),
          'reorder_mask_weight': round(maskwise.reorder_mask_weight, 6),
          'thing_area_limit': 0, 'stuff_area_limit': 0,
          'class_thresholds': 0.0},
      'tensorflow': tf.__version__,
      'seconds': round(time.time() - start, 1),
  }
  (work / _DEEPLAB2_RUN).write_text(json.dumps(run, indent=1) + '\n')


def _run_deeplab2_side(args, work):
  """Runs step 1 in DeepLab2's venv, as a subprocess."""
  package = pathlib.Path(args.deeplab2_dir).resolve()
  if not (package / 'config_pb2.py').is_file():
    raise SystemExit(f'--deeplab2_dir={package}: expected DeepLab2\'s tree '
                     'with compiled protos (config_pb2.py)')
  if not (pathlib.Path(args.parity_dir) / 'make_reference_checkpoint.py'
          ).is_file():
    raise SystemExit(f'--parity_dir={args.parity_dir}: no '
                     'make_reference_checkpoint.py')
  env = dict(os.environ, TF_USE_LEGACY_KERAS='1',
             PYTHONPATH=str(package.parent))
  env.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
  h, w = args.size
  subprocess.run(
      [args.deeplab2_python, str(pathlib.Path(__file__).resolve()),
       '--deeplab2_side', f'--work_dir={work}',
       f'--deeplab2_config={args.deeplab2_config}', f'--salt={args.salt}',
       f'--seed={args.seed}', f'--size={h}x{w}',
       f'--deeplab2_dir={package}', f'--parity_dir={args.parity_dir}'],
      check=True, env=env)


# Step 2: our model (runs in our venv).


def _close_fraction(ours, theirs):
  return float(np.isclose(ours, theirs, rtol=_TOLERANCE,
                          atol=_TOLERANCE).mean())


def _segment_agreement(a, b):
  """Share of pixels in matching segments, ids renumbered: each segment of
  `a` counts its pixels in the segment of `b` it overlaps most."""
  pairs, counts = np.unique(np.stack([a.ravel(), b.ravel()]), axis=1,
                            return_counts=True)  # [2, P], [P]
  best = {}
  for segment, count in zip(pairs[0], counts):
    best[segment] = max(best.get(segment, 0), count)
  return sum(best.values()) / a.size


def _panoptic_agreement(ours, theirs):
  return min(_segment_agreement(ours, theirs),
             _segment_agreement(theirs, ours))


def _our_intermediates(model, images, outputs):
  """Our tensors under the names of _deeplab2_intermediates."""
  x = images / 127.5 - 1.0
  backbone = model.pixel_encoder(x, training=False)  # {ResNet stride: ...}
  pixels = model.pixel_decoder(backbone, training=False)
  class_embeddings, mask_embeddings, auxiliary = model.transformer_decoder(
      pixels, training=False)
  result = {f'pixel_encoder/stage{i + 1}': backbone[key]
            for i, key in enumerate(sorted(backbone))}
  strides = sorted(pixels, reverse=True)
  for i, stride in enumerate(strides[:-1]):
    result[f'pixel_decoder/decoder_stage{i + 1}'] = pixels[stride]
  result['pixel_decoder/decoder_output'] = pixels[strides[-1]]
  our_names = (outputs.CLASS_LOGITS, outputs.MASK_LOGITS,
               outputs.PIXEL_FEATURE)
  for i, prediction in enumerate(auxiliary):
    for ours, theirs in zip(our_names, _OUTPUTS[:3]):
      result[f'transformer_decoder/auxiliary_outputs_pred/{i}/{theirs}'] = (
          prediction[ours])
  result['transformer_decoder/transformer_class_feature'] = class_embeddings
  result['transformer_decoder/transformer_mask_feature'] = mask_embeddings
  return result


def _first_stage_off(ours, theirs):
  """Name of the first DeepLab2 intermediate we do not match, or None;
  writes the whole comparison to stderr."""
  first = None
  for name in theirs.files:  # in data-flow order
    reference = theirs[name]
    value = np.asarray(ours[name]) if name in ours else None
    if value is None or value.shape != reference.shape:
      line = (f'shape ours {None if value is None else list(value.shape)} '
              f'DeepLab2 {list(reference.shape)}')
      off = True
    else:
      fraction = _close_fraction(value, reference)
      line = (f'{list(value.shape)} close {fraction:.4%} max |diff| '
              f'{np.abs(value - reference).max():.3g} (mean |DeepLab2| '
              f'{np.abs(reference).mean():.3g})')
      off = fraction < _MIN_CLOSE
    print(f'  {name}: {line}{"  <- off" if off else ""}', file=sys.stderr)
    if off and first is None:
      first = name
  return first


def _compare(result, merged, reference, run, outputs):
  """The criteria of shared/parity/README.md; returns the report dict."""
  our_names = (outputs.CLASS_LOGITS, outputs.MASK_LOGITS,
               outputs.PIXEL_FEATURE, outputs.SEMANTIC_LOGITS)
  report = {'close': {}, 'max_abs_diff': {}, 'shapes': {}}
  failures = []
  for ours, theirs in zip(our_names, _OUTPUTS):
    value, expected = np.asarray(result[ours]), reference[theirs]
    report['shapes'][ours] = list(value.shape)
    if value.shape != expected.shape:
      failures.append(f'{ours}: shape {list(value.shape)}, DeepLab2 '
                      f'{list(expected.shape)}')
      continue
    report['close'][ours] = round(_close_fraction(value, expected), 6)
    report['max_abs_diff'][ours] = float(np.abs(value - expected).max())
    if report['close'][ours] < _MIN_CLOSE:
      failures.append(f'{ours}: {report["close"][ours]:.4%} close')
  if report['shapes'][outputs.MASK_LOGITS] == list(
      reference['pixel_space_mask_logits'].shape):
    argmax = float((np.argmax(result[outputs.MASK_LOGITS], -1) == np.argmax(
        reference['pixel_space_mask_logits'], -1)).mean())
    report['mask_argmax_agreement'] = round(argmax, 6)
    if argmax < _MIN_MASK_ARGMAX:
      failures.append(f'mask argmax agrees on {argmax:.4%} of pixels')
  ours, theirs = merged['panoptic'].numpy()[0], reference['panoptic_pred'][0]
  panoptic = _panoptic_agreement(ours, theirs)
  report['panoptic_agreement'] = round(panoptic, 6)
  if panoptic < _MIN_PANOPTIC:
    failures.append(f'panoptic map agrees on {panoptic:.4%} of pixels')
  report['panoptic_class_agreement'] = round(float(
      (ours // run['our_label_divisor'] ==
       theirs // run['label_divisor']).mean()), 6)
  report['panoptic_segments'] = [int(np.unique(ours).size),
                                 int(np.unique(theirs).size)]
  report['verdict'] = 'FAIL' if failures else 'PASS'
  report['failures'] = failures
  return report


def run_ours(args, work):
  """Step 2: our model on the same checkpoint and input; prints reports."""
  os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
  # pylint: disable=import-outside-toplevel
  import tensorflow as tf
  import deeplab2_kmax
  from deeplab2_kmax import config as config_lib
  from deeplab2_kmax.model import kernels
  from deeplab2_kmax.model import outputs
  from deeplab2_kmax.model.post_processor import mask_wise_merging
  # pylint: enable=import-outside-toplevel
  run = json.loads((work / _DEEPLAB2_RUN).read_text())
  reference = np.load(work / _DEEPLAB2_OUTPUTS)
  intermediates = np.load(work / _DEEPLAB2_INTERMEDIATES)
  config = deeplab2_kmax.load_config(args.config_file)
  info = config_lib.dataset_info_for(config)
  run['our_label_divisor'] = info.label_divisor
  model = deeplab2_kmax.build_model(config)
  loaded = deeplab2_kmax.load_deeplab2_checkpoint(model,
                                                  str(work / _CHECKPOINT))
  settings = run['post_processing']
  options = mask_wise_merging.MergingOptions(
      pixel_confidence_threshold=settings['pixel_confidence_threshold'],
      thing_class_threshold=0.0, stuff_class_threshold=0.0,
      overlap_threshold=settings['overlap_threshold'],
      reorder_class_weight=settings['reorder_class_weight'],
      reorder_mask_weight=settings['reorder_mask_weight'],
      thing_area_limit=0, stuff_area_limit=0)
  images = tf.constant(reference['input_image'])
  verdicts = []
  for policy in args.policies.split(','):
    start = time.time()
    print(f'{args.deeplab2_config} vs {args.config_file}, {policy}:',
          file=sys.stderr)
    with kernels.policy_scope(policy):
      result = model(images, training=False)
      merged = mask_wise_merging.merge(
          result[outputs.CLASS_LOGITS], result[outputs.MASK_LOGITS],
          images.shape[1:3], channel_to_semantic=info.channel_to_semantic(),
          num_things=info.num_things, label_divisor=info.label_divisor,
          ignore_label=info.ignore_label, options=options)
      ours = _our_intermediates(model, images, outputs)
    report = {
        'deeplab2_config': args.deeplab2_config,
        'config_file': args.config_file,
        'salt': args.salt, 'seed': args.seed, 'size': list(args.size),
        'policy': policy,
        'entries_loaded': loaded,
        'checkpoint_entries': run['checkpoint_entries'],
        **_compare(result, merged, reference, run, outputs),
        'first_stage_off': _first_stage_off(ours, intermediates),
        'seconds_deeplab2': run['seconds'],
        'seconds_ours': round(time.time() - start, 1),
    }
    print(json.dumps(report), flush=True)
    verdicts.append(report['verdict'])
  return verdicts


def main(argv=None):
  args = _parse_args(argv)
  if args.deeplab2_side:
    run_deeplab2(args, pathlib.Path(args.work_dir))
    return
  with tempfile.TemporaryDirectory() as tmp:
    work = pathlib.Path(args.work_dir or tmp).resolve()
    work.mkdir(parents=True, exist_ok=True)
    _run_deeplab2_side(args, work)
    verdicts = run_ours(args, work)
  if 'FAIL' in verdicts:
    sys.exit(1)


if __name__ == '__main__':
  main()
