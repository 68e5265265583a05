"""Benchmarks the LiteRT export: conversion time, size, latency, agreement.

Exports a config's model (random weights: a checkpoint of the freshly
built model, so no download is needed) at an eval crop of --size with
`python -m deeplab2_kmax.export`'s code, as a SavedModel and as
`model.tflite` in float32 and float16, then runs `tf.lite.Interpreter`
(--threads threads) and the SavedModel's serving_default on the images of
--images, each resized (bilinear) to the LiteRT input of --size x --size.
Prints one JSON line per format with:
  conversion_s      time of the LiteRT conversion (export_info.json)
  tflite_mib        size of model.tflite
  latency_s         median (min, max) of --runs interpreter calls per
                    image, after one warm-up call
  saved_model_latency_s  the same for the SavedModel (TensorFlow, for scale)
  panoptic_agreement, semantic_agreement  fraction of pixels whose label
                    equals the SavedModel's, per image
  num_segments      segments of the SavedModel's panoptic map, per image
                    (random weights: --mask_scale=300 peaks their masks
                    and --class_threshold=0 lets their low-confidence
                    classes through, as tests/test_export.py does, so the
                    maps are not all void)
Example:
  python scripts/benchmark_tflite.py \
      --config_file=configs/coco/kmax_deeplab/kmax_r50_os32.textproto \
      --size=641 --mask_scale=300 --class_threshold=0 \
      --images='../shared/testdata/coco_panoptic_sample/input_images/*.jpg'
"""
import argparse
import glob
import json
import os
import pathlib
import platform
import statistics
import sys
import tempfile

from google.protobuf import text_format
import keras
import numpy as np
from PIL import Image
import tensorflow as tf

import deeplab2_kmax
from deeplab2_kmax import export
from deeplab2_kmax import serving
from deeplab2_kmax.checkpoints import deeplab2_import

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import benchmark_train  # pylint: disable=wrong-import-position


def _parse_args(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--config_file', required=True)
  parser.add_argument('--size', type=int, default=641,
                      help='eval crop and LiteRT input side (k*32+1)')
  parser.add_argument('--images', required=True,
                      help='glob of the images to run')
  parser.add_argument('--class_threshold', type=float, default=None,
                      help='thing and stuff class thresholds of the merging '
                      '(default: the config\'s)')
  parser.add_argument('--mask_scale', type=float, default=1.0,
                      help='factor on the random pixel-space mask norm\'s '
                      'gamma (sharper masks)')
  parser.add_argument('--runs', type=int, default=5)
  parser.add_argument('--threads', type=int, default=os.cpu_count())
  parser.add_argument('--work_dir', default='',
                      help='folder for the exports (default: a temporary '
                      'one, deleted at the end)')
  return parser.parse_args(argv)


def _timed(function, runs):
  """(median, min, max) seconds of `runs` calls after one warm-up call."""
  times = benchmark_train.time_steps(function, 1, runs)
  return [round(statistics.median(times), 3), round(min(times), 3),
          round(max(times), 3)]


def _write_config(config_file, size, class_threshold, folder):
  """The config with an eval crop (and longer side) of `size`."""
  config = deeplab2_kmax.load_config(config_file)
  if class_threshold is not None:
    config.evaluator_options.thing_class_threshold = class_threshold
    config.evaluator_options.stuff_class_threshold = class_threshold
  options = config.eval_dataset_options
  options.crop_size[:] = [size, size]
  if options.resize_longer_side:
    options.resize_longer_side = size
  path = os.path.join(folder, 'config.textproto')
  with open(path, 'w', encoding='utf-8') as f:
    f.write(text_format.MessageToString(config))
  return path, config


def _random_checkpoint(config, mask_scale, folder):
  keras.utils.set_random_seed(0)
  model = deeplab2_kmax.build_model(config)
  deeplab2_import.ensure_built(model)
  for variable in model.weights:
    if 'pixel_space_mask_batch_norm/gamma' in variable.path:
      variable.assign(variable * mask_scale)
  return tf.train.Checkpoint(model=model).save(os.path.join(folder, 'ckpt'))


def run(args, folder):
  config_file, config = _write_config(args.config_file, args.size,
                                      args.class_threshold, folder)
  prefix = _random_checkpoint(config, args.mask_scale,
                              os.path.join(folder, 'model_dir'))
  paths = sorted(glob.glob(args.images))
  if not paths:
    raise SystemExit(f'--images={args.images}: no file matches')
  images = [np.asarray(Image.open(p).convert('RGB').resize(
      (args.size, args.size), Image.BILINEAR)) for p in paths]

  exports = {}
  for name, formats, float16 in (
      ('float32', export.FORMATS['all'], False),
      ('float16', (export.TFLITE,), True)):
    output = os.path.join(folder, name)
    export.export(config_file, prefix, output, formats=formats,
                  tflite_options=export.TfliteOptions(float16=float16))
    exports[name] = output

  saved_model = tf.saved_model.load(exports['float32'])
  serve = saved_model.signatures[serving.SERVING_DEFAULT]
  expected = [{k: v.numpy() for k, v in serve(image=tf.constant(image))
               .items()} for image in images]
  saved_latency = [_timed(lambda i=image: serve(image=tf.constant(i)),
                          args.runs) for image in images]
  common = {'config': os.path.basename(args.config_file), 'size': args.size,
            'mask_scale': args.mask_scale,
            'class_threshold': args.class_threshold,
            'num_segments': [int(e['num_segments']) for e in expected],
            'images': [os.path.basename(p) for p in paths],
            'threads': args.threads, 'tensorflow': tf.__version__,
            'machine': platform.processor() or platform.machine(),
            'cpus': os.cpu_count()}
  for name, output in exports.items():
    info = export.read_export_info(output)
    model_path = os.path.join(output, export.TFLITE_FILE)
    interpreter = tf.lite.Interpreter(model_path=model_path,
                                      num_threads=args.threads)
    runner = interpreter.get_signature_runner(serving.SERVING_DEFAULT)
    results = [runner(image=image) for image in images]
    agreement = {key: [round(float(np.mean(r[key] == e[key])), 5)
                       for r, e in zip(results, expected)]
                 for key in ('panoptic', 'semantic')}
    latency = [_timed(lambda i=image: runner(image=i), args.runs)
               for image in images]
    print(json.dumps({
        **common, 'weights': name,
        'conversion_s': info['formats'][export.TFLITE]['conversion_seconds'],
        'tflite_mib': round(os.path.getsize(model_path) / 2**20, 1),
        'latency_s': latency, 'saved_model_latency_s': saved_latency,
        'panoptic_agreement': agreement['panoptic'],
        'semantic_agreement': agreement['semantic']}), flush=True)


def main(argv=None):
  args = _parse_args(argv)
  if args.work_dir:
    os.makedirs(args.work_dir, exist_ok=True)
    run(args, args.work_dir)
  else:
    with tempfile.TemporaryDirectory() as folder:
      run(args, folder)
  return 0


if __name__ == '__main__':
  sys.exit(main())
