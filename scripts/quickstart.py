"""Quickstart: what deeplab2_kmax can do today, end to end on a CPU.

1. Builds the tiny kMaX-DeepLab of configs/synthetic/kmax_tiny.textproto and
   runs it on a synthetic image, printing the outputs and, per k-means
   layer, how many pixels each cluster center took.
2. If the DeepLab2 parity fixture is present (../shared/parity beside the
   checkout, or $DEEPLAB2_KMAX_SHARED/parity), writes its reference DeepLab2
   checkpoint, converts it with the command-line tool and checks the
   outputs against those DeepLab2 computed.

Training, evaluation, export and visualization join this script as they are
built (see the issues); run `bash scripts/quickstart.sh`.
"""
import os
import pathlib
import subprocess
import sys
import tempfile

import numpy as np
import tensorflow as tf

import deeplab2_kmax
from deeplab2_kmax.model import outputs

ROOT = pathlib.Path(__file__).resolve().parents[1]
SHARED = pathlib.Path(os.environ.get('DEEPLAB2_KMAX_SHARED',
                                     ROOT.parent / 'shared'))


def synthetic_image(size=129, seed=0):
  """A few flat-coloured rectangles and discs on a gradient, [1, H, W, 3]."""
  rng = np.random.default_rng(seed)
  y, x = np.mgrid[0:size, 0:size]
  image = np.stack([x, y, (x + y) / 2], -1).astype(np.float32) * 255 / size
  for _ in range(6):
    color = rng.uniform(0, 255, 3)
    cy, cx, r = rng.integers(10, size - 10, 2).tolist() + [rng.integers(6, 25)]
    if rng.random() < 0.5:
      image[(y - cy)**2 + (x - cx)**2 < r * r] = color
    else:
      image[max(0, cy - r):cy + r, max(0, cx - r):cx + r] = color
  return tf.constant(image[None])


def run_tiny_model():
  config = deeplab2_kmax.load_config(ROOT / 'configs/synthetic/kmax_tiny.textproto')
  model = deeplab2_kmax.build_model(config)
  result = model(synthetic_image(), training=False)
  print('tiny kMaX-DeepLab on a 129x129 synthetic image:')
  for key in outputs.PREDICTION_KEYS + (outputs.SEMANTIC_LOGITS,):
    print(f'  {key:16s} {result[key].shape}')
  for i, prediction in enumerate(result[outputs.AUXILIARY_PREDICTIONS]):
    logits = prediction[outputs.MASK_LOGITS]
    sizes = np.bincount(np.argmax(logits, -1).ravel(),
                        minlength=logits.shape[-1])
    print(f'  k-means layer {i} at {logits.shape[1]}x{logits.shape[2]}: '
          f'pixels per cluster {sizes.tolist()}')


def check_deeplab2_import():
  parity = SHARED / 'parity'
  if not (parity / 'make_reference_checkpoint.py').exists():
    print(f'(DeepLab2 parity fixture not found at {parity}; skipping the '
          'checkpoint import demo)')
    return
  with tempfile.TemporaryDirectory() as tmp:
    reference = os.path.join(tmp, 'deeplab2_ckpt')
    converted = os.path.join(tmp, 'kmax_r50_coco')
    subprocess.run([sys.executable, str(parity / 'make_reference_checkpoint.py'),
                    str(parity / 'deeplab2_kmax_r50' / 'variables.tsv'),
                    reference], check=True, stdout=subprocess.DEVNULL)
    coco = ROOT / 'configs/coco/kmax_deeplab/kmax_r50_os32.textproto'
    subprocess.run([sys.executable, '-m',
                    'deeplab2_kmax.tools.convert_deeplab2_checkpoint',
                    f'--config_file={coco}', f'--input={reference}',
                    f'--output={converted}'], check=True)
    model = deeplab2_kmax.build_model(deeplab2_kmax.load_config(coco))
    model(tf.zeros([1, 65, 65, 3]), training=False)
    tf.train.Checkpoint(model=model).read(converted).assert_consumed()
    expected = np.load(parity / 'deeplab2_kmax_r50' /
                       'reference_outputs_321.npz')
    result = model(tf.constant(expected['input_image']), training=False)
    close = np.isclose(result[outputs.MASK_LOGITS],
                       expected['pixel_space_mask_logits'], rtol=1e-3,
                       atol=1e-3).mean()
    print(f'kMaX R50 with the converted DeepLab2 checkpoint: mask logits '
          f'match DeepLab2 on {close:.2%} of elements')


if __name__ == '__main__':
  run_tiny_model()
  check_deeplab2_import()
