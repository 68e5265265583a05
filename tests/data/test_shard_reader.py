"""Tests of shard_reader: file listing and errors naming shard and record."""
import io

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from deeplab2_kmax import config as config_lib
from deeplab2_kmax.data import record
from deeplab2_kmax.data import shard_reader


def _png(array):
  buffer = io.BytesIO()
  Image.fromarray(array).save(buffer, format='PNG')
  return buffer.getvalue()


def _example(index, image_bytes=None, label_shape=(6, 5)):
  label = np.full(label_shape, 1000 + index, np.int32)
  if image_bytes is None:
    image_bytes = _png(np.full((6, 5, 3), index, np.uint8))
  return record.make_example(
      image_bytes=image_bytes, image_format='png', filename=f'{index}.png',
      image_id=index, label=label, label_divisor=1000)


def _write(path, examples):
  with tf.io.TFRecordWriter(str(path)) as writer:
    for example in examples:
      writer.write(example)
  return str(path)


def _decode_all(files):
  records = shard_reader.read_shards(files)
  dataset = shard_reader.decode_records(
      records, decode_fn=shard_reader.parse_checked)
  return list(dataset.as_numpy_iterator())


def test_list_files_sorted_and_errors(tmp_path, monkeypatch):
  for name in ('b.tfrecord', 'a.tfrecord', 'c.txt'):
    (tmp_path / name).write_bytes(b'')
  assert shard_reader.list_files([str(tmp_path / '*.tfrecord')]) == [
      str(tmp_path / 'a.tfrecord'), str(tmp_path / 'b.tfrecord')]
  with pytest.raises(config_lib.ConfigError,
                     match=r"train.file_pattern = '.*/none-\*' matches no"):
    shard_reader.list_files([str(tmp_path / 'none-*')],
                            field='train.file_pattern')
  monkeypatch.delenv('H4_UNSET_DIR', raising=False)
  with pytest.raises(config_lib.ConfigError, match='H4_UNSET_DIR'):
    shard_reader.list_files(['${H4_UNSET_DIR}/train-*.tfrecord'])


def test_read_shards_keeps_path_and_index(tmp_path):
  files = [_write(tmp_path / 'a.tfrecord', [_example(i) for i in range(3)]),
           _write(tmp_path / 'b.tfrecord', [_example(7)])]
  rows = list(shard_reader.read_shards(files).as_numpy_iterator())
  keys = sorted((path.decode(), int(index)) for path, index, _ in rows)
  assert keys == [(files[0], 0), (files[0], 1), (files[0], 2), (files[1], 0)]
  samples = _decode_all(files)
  assert sorted(s['image_id'] for s in samples) == [b'0', b'1', b'2', b'7']
  assert samples[0]['image'].shape == (6, 5, 3)


def test_truncated_shard_names_file_and_record(tmp_path):
  path = _write(tmp_path / 'train-0.tfrecord', [_example(i) for i in range(3)])
  data = open(path, 'rb').read()
  with open(path, 'wb') as f:
    f.write(data[:-10])
  with pytest.raises(tf.errors.InvalidArgumentError,
                     match=r'train-0.tfrecord: cannot read record 2 at byte'):
    _decode_all([path])


def test_corrupted_record_names_file_and_record(tmp_path):
  path = _write(tmp_path / 'train-1.tfrecord', [_example(i) for i in range(3)])
  data = bytearray(open(path, 'rb').read())
  first = len(_example(0)) + 16
  data[first + 40] ^= 0xFF  # inside record 1: its CRC no longer matches
  with open(path, 'wb') as f:
    f.write(bytes(data))
  with pytest.raises(tf.errors.InvalidArgumentError,
                     match=r'train-1.tfrecord: cannot read record 1 at byte'):
    _decode_all([path])


def test_bad_image_bytes_name_file_and_record(tmp_path):
  examples = [_example(0), _example(1, image_bytes=b'not an image'),
              _example(2)]
  path = _write(tmp_path / 'val-3.tfrecord', examples)
  with pytest.raises(tf.errors.InvalidArgumentError,
                     match=r'val-3.tfrecord: record 1 cannot be parsed'):
    _decode_all([path])


def test_image_and_label_of_different_sizes_are_reported(tmp_path):
  path = _write(tmp_path / 'val-4.tfrecord',
                [_example(0, label_shape=(4, 5))])
  with pytest.raises(tf.errors.InvalidArgumentError,
                     match=r'val-4.tfrecord: record 0 cannot be parsed'):
    _decode_all([path])


def test_good_records_before_a_bad_one_are_delivered(tmp_path):
  path = _write(tmp_path / 'x.tfrecord',
                [_example(0), _example(1, image_bytes=b'bad')])
  dataset = shard_reader.decode_records(
      shard_reader.read_shards([path]), decode_fn=shard_reader.parse_checked)
  iterator = iter(dataset)
  assert next(iterator)['image_id'].numpy() == b'0'
  with pytest.raises(tf.errors.InvalidArgumentError, match='record 1'):
    next(iterator)


def test_record_error_explains_a_record(tmp_path):
  path = _write(tmp_path / 'y.tfrecord',
                [_example(0), _example(1, image_bytes=b'bad')])
  assert shard_reader.record_error(path, 0) is None
  assert 'Unknown image file format' in shard_reader.record_error(path, 1)
  assert 'has no record 5' in shard_reader.record_error(path, 5)
