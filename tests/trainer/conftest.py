"""A small synthetic data set in TFRecords, made once per test session."""
import pytest

from deeplab2_kmax.data import synthetic


@pytest.fixture(scope='session')
def synthetic_tfrecords(tmp_path_factory):
  """Folder with train-*.tfrecord (24 images) and val-*.tfrecord (4)."""
  root = tmp_path_factory.mktemp('synthetic')
  synthetic.write_tfrecords(root, num_train=24, num_val=4, seed=0,
                            train_shards=2)
  return root


@pytest.fixture
def synthetic_env(synthetic_tfrecords, monkeypatch):
  monkeypatch.setenv('SYNTHETIC_DATA', str(synthetic_tfrecords))
  return synthetic_tfrecords
