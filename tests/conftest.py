"""Shared test fixtures: paths of the repository, configs and shared data."""
import os
import pathlib

import numpy as np
import pytest

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
CONFIGS = REPO_ROOT / 'configs'
TINY_CONFIG = CONFIGS / 'synthetic' / 'kmax_tiny.textproto'
COCO_CONFIG = CONFIGS / 'coco' / 'kmax_deeplab' / 'kmax_r50_os32.textproto'
# ../shared beside the checkout (parity fixture, real COCO samples); tests
# that need it skip when it is absent. DEEPLAB2_KMAX_SHARED overrides it.
SHARED = pathlib.Path(os.environ.get('DEEPLAB2_KMAX_SHARED',
                                     REPO_ROOT.parent / 'shared'))
PARITY_DIR = SHARED / 'parity'

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')


@pytest.fixture
def tiny_config():
  import deeplab2_kmax  # pylint: disable=import-outside-toplevel
  return deeplab2_kmax.load_config(TINY_CONFIG)


def parity_encoder_shapes(fixture):
  """{key without .ATTRIBUTES suffix: shape} of the `encoder/` entries of
  a parity fixture's variables.tsv (lines: key, shape like [3, 3, 64], dtype).
  """
  suffix = '/.ATTRIBUTES/VARIABLE_VALUE'
  shapes = {}
  tsv = require_parity_fixture() / fixture / 'variables.tsv'
  for line in tsv.read_text().splitlines():
    key, shape, _ = line.split('\t')
    if key.startswith('encoder/'):
      shapes[key[:-len(suffix)]] = [int(d) for d in shape.strip('[]').split(',')
                                    if d.strip()]
  return shapes


def panoptic_agreement(ours, theirs):
  """Fraction of pixels in agreeing segments of two panoptic maps whose ids
  may be renumbered: each of our segments counts its pixels in the
  reference segment it overlaps most."""
  pairs, counts = np.unique(np.stack([np.ravel(ours), np.ravel(theirs)]),
                            axis=1, return_counts=True)
  best = {}
  for (o, _), c in zip(pairs.T, counts):
    best[o] = max(best.get(o, 0), c)
  return sum(best.values()) / np.size(ours)


def require_parity_fixture():
  if not (PARITY_DIR / 'make_reference_checkpoint.py').exists():
    pytest.skip(f'parity fixture not found at {PARITY_DIR}')
  return PARITY_DIR


@pytest.fixture(autouse=True)
def _restore_kernel_policy():
  """The kernel policy is process-wide (the runner sets it): each test
  starts from the default (AUTO on this machine's devices)."""
  from deeplab2_kmax.model.kernels import policy  # pylint: disable=import-outside-toplevel
  saved = policy._active  # pylint: disable=protected-access
  policy._active = None  # pylint: disable=protected-access
  yield
  policy._active = saved  # pylint: disable=protected-access
