"""Shared test fixtures: paths of the repository, configs and shared data."""
import os
import pathlib

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
