r"""Runs panoptic segmentation on image files and writes COCO panoptic results.

  python -m deeplab2_kmax.predict --saved_model=/path/to/export/1 \
      --input='photos/*.jpg' --output_dir=/tmp/predictions
  # or, without an export:
  python -m deeplab2_kmax.predict --config_file=... --checkpoint=... \
      --input=photos --output_dir=/tmp/predictions

--input is an image file, a folder (its .jpg/.jpeg/.png/.bmp/.gif files) or
a glob pattern. For each image <name> the output folder receives

  predictions/<name>.png  panoptic PNG in COCO panoptic format (segment id =
                          label + 1 as R + 256 G + 65536 B, 0 = void)
  <name>_overlay.png      segment colors over the image with class names

and `predictions.json` lists them all (`annotations` with `segments_info`:
id, category_id = the data set's source id, score; `images`;
`categories`), so it can be evaluated with deeplab2_kmax.evaluation.evaluate.
Image ids are the file names without extension (as integers when they are
digits, as in COCO). Images that cannot be read or predicted are skipped,
listed at the end with the reason, and make the exit status 1.
"""
import argparse
import glob
import os
import sys

import numpy as np
from PIL import Image
import tensorflow as tf
import tqdm

from deeplab2_kmax import export
from deeplab2_kmax import serving
from deeplab2_kmax import visualization
from deeplab2_kmax.evaluation import coco_format

IMAGE_EXTENSIONS = ('.jpg', '.jpeg', '.png', '.bmp', '.gif')


class Predictor:
  """Runs serving_default of a SavedModel, or the same module in-process."""

  def __init__(self, function, dataset_info, layer_strides, num_centers,
               keep_alive=None):
    self._function = function
    self.dataset_info = dataset_info
    self.layer_strides = tuple(layer_strides)
    self.num_centers = num_centers
    self._keep_alive = keep_alive  # the loaded object owns the variables

  @classmethod
  def from_saved_model(cls, path):
    """A Predictor of a folder written by deeplab2_kmax.export."""
    if not os.path.isfile(os.path.join(path, 'saved_model.pb')):
      raise ValueError(f'--saved_model={path}: no saved_model.pb there; '
                       'expected a folder written by deeplab2_kmax.export')
    info = export.read_dataset_info(path)
    export_info = export.read_export_info(path)
    loaded = tf.saved_model.load(path)
    return cls(loaded.signatures[serving.SERVING_DEFAULT], info,
               export_info['layer_strides'],
               export_info['num_cluster_centers'], keep_alive=loaded)

  @classmethod
  def from_checkpoint(cls, config_file, checkpoint, *,
                      max_image_size=serving.DEFAULT_MAX_IMAGE_SIZE):
    """A Predictor that builds the serving module in this process."""
    module, _ = export.build_serving_module(config_file, checkpoint,
                                            max_image_size=max_image_size)
    return cls(module.serve_image, module.dataset_info, module.layer_strides,
               module.num_centers, keep_alive=module)

  @classmethod
  def from_args(cls, args):
    """From --saved_model, or --config_file with --checkpoint."""
    if args.saved_model:
      if args.config_file or args.checkpoint:
        raise ValueError('pass either --saved_model or --config_file with '
                         '--checkpoint, not both')
      return cls.from_saved_model(args.saved_model)
    if not (args.config_file and args.checkpoint):
      raise ValueError('pass --saved_model, or --config_file with '
                       '--checkpoint')
    return cls.from_checkpoint(args.config_file, args.checkpoint)

  def __call__(self, image):
    """uint8 [H, W, C] -> dict of NumPy outputs (see serving.py)."""
    result = self._function(image=tf.constant(np.asarray(image, np.uint8)))
    return {key: value.numpy() for key, value in result.items()}


def add_model_args(parser):
  """The flags choosing the model (shared with visualize_clusters)."""
  parser.add_argument('--saved_model', help='Folder written by '
                      'deeplab2_kmax.export.')
  parser.add_argument('--config_file', help='Experiment textproto (instead '
                      'of --saved_model).')
  parser.add_argument('--checkpoint', help='Checkpoint prefix or model_dir '
                      '(with --config_file).')


def find_images(pattern):
  """Sorted image paths of a file, a folder or a glob pattern."""
  if os.path.isdir(pattern):
    paths = [os.path.join(pattern, name) for name in os.listdir(pattern)
             if name.lower().endswith(IMAGE_EXTENSIONS)]
  elif os.path.isfile(pattern):
    paths = [pattern]
  else:
    paths = [p for p in glob.glob(pattern) if os.path.isfile(p)]
  if not paths:
    raise ValueError(f'--input={pattern}: no image found (expected a file, a '
                     f'folder with {"/".join(IMAGE_EXTENSIONS)} files, or a '
                     'glob pattern)')
  return sorted(paths)


def read_image(path):
  """uint8 [H, W, 3] RGB pixels of an image file; ValueError naming it."""
  try:
    with Image.open(path) as image:
      return np.asarray(image.convert('RGB'))
  except (OSError, ValueError, Image.DecompressionBombError) as e:
    raise ValueError(f'{path}: cannot read the image: {e}') from None


def output_names(paths):
  """One file stem per path, made unique with _2, _3, ... when repeated."""
  names, seen = [], {}
  for path in paths:
    stem = os.path.splitext(os.path.basename(path))[0]
    seen[stem] = seen.get(stem, 0) + 1
    names.append(stem if seen[stem] == 1 else f'{stem}_{seen[stem]}')
  return names


def image_id(name):
  return int(name) if name.isdigit() else name


def segment_scores(result):
  """{panoptic label: score} of the segments of one prediction."""
  count = int(result['num_segments'])
  return {int(i): float(s) for i, s in zip(result['segment_ids'][:count],
                                           result['segment_scores'][:count])}


def predict_files(predictor, paths, output_dir, *, progress=True):
  """Writes predictions of `paths` to `output_dir`; returns the failures.

  Returns a list of 'path: reason' strings (empty when all succeeded).
  """
  os.makedirs(output_dir, exist_ok=True)
  info = predictor.dataset_info
  writer = coco_format.PanopticFolderWriter(
      os.path.join(output_dir, 'predictions.json'),
      os.path.join(output_dir, 'predictions'), info, groundtruth=False)
  failures = []
  pairs = list(zip(paths, output_names(paths)))
  for path, name in tqdm.tqdm(pairs, desc='predict', unit='image',
                              disable=not progress):
    try:
      image = read_image(path)
      result = predictor(image)
    except ValueError as e:
      failures.append(str(e))
      continue
    except tf.errors.OpError as e:  # e.g. an image over max_image_size
      failures.append(f'{path}: the model rejected the image: {e.message}')
      continue
    writer.add(image_id(name), result['panoptic'], file_name=f'{name}.png',
               scores=segment_scores(result))
    visualization.save_png(
        os.path.join(output_dir, f'{name}_overlay.png'),
        visualization.overlay(image, result['panoptic'], info))
  writer.close()
  return failures


def parse_args(argv):
  parser = argparse.ArgumentParser(
      prog='python -m deeplab2_kmax.predict',
      description='Panoptic segmentation of image files (COCO panoptic '
      'results and overlays).')
  add_model_args(parser)
  parser.add_argument('--input', required=True,
                      help='Image file, folder or glob pattern.')
  parser.add_argument('--output_dir', required=True,
                      help='Folder for predictions.json, PNGs, overlays.')
  return parser.parse_args(argv)


def main(argv=None):
  args = parse_args(argv)
  try:
    paths = find_images(args.input)
    predictor = Predictor.from_args(args)
  except export.USER_ERRORS as e:
    print(f'error: {e}', file=sys.stderr)
    return 1
  failures = predict_files(predictor, paths, args.output_dir)
  done = len(paths) - len(failures)
  print(f'wrote {done} predictions to {args.output_dir}')
  if failures:
    print(f'{len(failures)} of {len(paths)} images failed:', file=sys.stderr)
    for failure in failures:
      print(f'  {failure}', file=sys.stderr)
    return 1
  return 0


if __name__ == '__main__':
  sys.exit(main())
