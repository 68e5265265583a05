"""Benchmarks the training input pipeline: images per second, COCO recipe.

Generates COCO-sized data once (640x480 JPEGs of smooth random content and
random panoptic labels with COCO classes: stuff bands, thing ellipses, a
crowd region and void) written with `record.make_example` into TFRecord
shards, then runs `input_pipeline.build_dataset` with the COCO training
recipe for each crop size: longer side resized to the crop, random scale
0.3..1.7 step 0.1, AutoAugment "simple_classification_policy", flip and
panoptic copy-paste, targets at stride 4. After --warmup batches it times
--batches batches and prints one JSON line per crop size:

  crop, batch_size, images, seconds, images_per_s, machine, processor,
  tf_version, cpu_count (os.cpu_count), usable_cpus (the affinity mask)

Example:
  python scripts/benchmark_input.py --crops=641,1281 --batches=8
"""
import argparse
import io
import json
import os
import platform
import tempfile
import time

import numpy as np


def _parse_args(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--crops', default='641,1281',
                      help='comma-separated square crop sizes (k*32+1)')
  parser.add_argument('--batch_size', type=int, default=8)
  parser.add_argument('--batches', type=int, default=8,
                      help='timed batches per crop size')
  parser.add_argument('--warmup', type=int, default=2,
                      help='untimed batches first (tracing, buffers)')
  parser.add_argument('--num_images', type=int, default=64)
  parser.add_argument('--num_shards', type=int, default=8)
  parser.add_argument('--data_dir', default=None,
                      help='folder for the generated shards (reused when '
                      'it holds them already); default: a temporary one')
  return parser.parse_args(argv)


def _random_sample(rng, info, height=480, width=640):
  """A smooth random RGB image and a COCO-like panoptic label."""
  from PIL import Image  # pylint: disable=import-outside-toplevel
  coarse = rng.integers(0, 256, [12, 16, 3], dtype=np.uint8)
  image = np.asarray(Image.fromarray(coarse).resize(
      (width, height), Image.BILINEAR)).astype(np.int16)
  image = np.clip(image + rng.integers(-12, 13, image.shape), 0, 255)
  divisor = info.label_divisor
  stuff = rng.choice(info.stuff_semantic_ids, 3, replace=False)
  things = info.thing_semantic_ids
  label = np.empty([height, width], np.int32)
  bands = np.sort(rng.integers(0, height, 2))
  for index, (start, end) in enumerate(zip([0, *bands], [*bands, height])):
    label[start:end] = stuff[index] * divisor
  rows, cols = np.mgrid[:height, :width]
  counts = {}
  for _ in range(rng.integers(4, 16)):
    semantic = int(rng.choice(things))
    counts[semantic] = counts.get(semantic, 0) + 1
    cy, cx = rng.integers(0, height), rng.integers(0, width)
    ry, rx = rng.integers(8, 120, 2)
    inside = ((rows - cy) / ry) ** 2 + ((cols - cx) / rx) ** 2 <= 1
    label[inside] = semantic * divisor + counts[semantic]
  label[-40:, :60] = int(things[0]) * divisor  # crowd
  label[:10, -10:] = info.void_label
  return image.astype(np.uint8), label


def generate(data_dir, num_images, num_shards, info):
  """Writes shards train-XXXXX.tfrecord; returns their glob pattern."""
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  from PIL import Image  # pylint: disable=import-outside-toplevel
  from deeplab2_kmax.data import record  # pylint: disable=import-outside-toplevel
  pattern = os.path.join(data_dir, 'train-*.tfrecord')
  if len(tf.io.gfile.glob(pattern)) == num_shards:
    return pattern
  rng = np.random.default_rng(0)
  for shard in range(num_shards):
    path = os.path.join(data_dir, f'train-{shard:05d}.tfrecord')
    with tf.io.TFRecordWriter(path + '.tmp') as writer:
      for index in range(shard, num_images, num_shards):
        image, label = _random_sample(rng, info)
        buffer = io.BytesIO()
        Image.fromarray(image).save(buffer, format='JPEG', quality=90)
        writer.write(record.make_example(
            image_bytes=buffer.getvalue(), image_format='jpeg',
            filename=f'{index:012d}.jpg', image_id=index, label=label,
            label_divisor=info.label_divisor))
    os.replace(path + '.tmp', path)
  return pattern


def coco_options(pattern, crop, batch_size):
  """DatasetOptions of the COCO training recipe at one crop size."""
  from deeplab2_kmax.protos import config_pb2  # pylint: disable=import-outside-toplevel
  options = config_pb2.DatasetOptions(
      dataset='coco_panoptic', file_pattern=[pattern], batch_size=batch_size,
      crop_size=[crop, crop], resize_longer_side=crop, max_thing_id=128,
      shuffle=True, shuffle_buffer_size=64, cycle_length=8)
  options.augmentations.CopyFrom(config_pb2.AugmentationOptions(
      min_scale_factor=0.3, max_scale_factor=1.7, scale_factor_step_size=0.1,
      autoaugment_policy='simple_classification_policy',
      autoaugment_magnitude_scale=1.0, flip=True, panoptic_copy_paste=True))
  return options


def run_case(pattern, crop, args, info):
  """Times the pipeline at one crop size; returns the JSON record."""
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  from deeplab2_kmax.data import input_pipeline  # pylint: disable=import-outside-toplevel
  dataset = input_pipeline.build_dataset(
      coco_options(pattern, crop, args.batch_size), dataset_info=info,
      is_training=True, output_stride=4)
  iterator = iter(dataset)
  for _ in range(args.warmup):
    next(iterator)
  start = time.perf_counter()
  for _ in range(args.batches):
    batch = next(iterator)
  batch['image'].numpy()
  seconds = time.perf_counter() - start
  images = args.batches * args.batch_size
  return {
      'benchmark': 'input_pipeline_train_coco_recipe',
      'crop': crop,
      'batch_size': args.batch_size,
      'images': images,
      'seconds': round(seconds, 2),
      'images_per_s': round(images / seconds, 2),
      'machine': platform.node(),
      'processor': platform.processor() or platform.machine(),
      'tf_version': tf.__version__,
      'cpu_count': os.cpu_count(),
      'usable_cpus': len(os.sched_getaffinity(0)),
  }


def main(argv=None):
  args = _parse_args(argv)
  os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
  from deeplab2_kmax.data import dataset_info  # pylint: disable=import-outside-toplevel
  info = dataset_info.get_dataset_info('coco_panoptic')
  with tempfile.TemporaryDirectory() as temporary:
    data_dir = args.data_dir or temporary
    os.makedirs(data_dir, exist_ok=True)
    pattern = generate(data_dir, args.num_images, args.num_shards, info)
    for crop in (int(c) for c in args.crops.split(',')):
      print(json.dumps(run_case(pattern, crop, args, info)), flush=True)


if __name__ == '__main__':
  main()
