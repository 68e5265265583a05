"""A small synthetic data set in TFRecords, made once per test session."""
import pytest

from deeplab2_kmax.data import converters
from deeplab2_kmax.data import synthetic


@pytest.fixture(scope='session')
def synthetic_tfrecords(tmp_path_factory):
  """Folder with train-*.tfrecord (24 images) and val-*.tfrecord (4)."""
  root = tmp_path_factory.mktemp('synthetic')
  raw = root / 'raw'
  synthetic.generate(raw, num_train=24, num_val=4, seed=0)
  for split, shards in (('train', 2), ('val', 1)):
    converters.convert(
        'coco_panoptic', images_dir=raw / 'images' / split,
        panoptic_json=raw / 'annotations' / f'panoptic_{split}.json',
        panoptic_dir=raw / 'annotations' / f'panoptic_{split}',
        output=root / split, num_shards=shards,
        dataset='synthetic_panoptic', progress=False)
  return root


@pytest.fixture
def synthetic_env(synthetic_tfrecords, monkeypatch):
  monkeypatch.setenv('SYNTHETIC_DATA', str(synthetic_tfrecords))
  return synthetic_tfrecords
