"""Tests of sharded_writer.py: names, even split, atomic appearance."""
import os

import pytest
import tensorflow as tf

from deeplab2_kmax.data.converters import sharded_writer


def _records(path):
  return [r.numpy() for r in tf.data.TFRecordDataset(str(path))]


def test_shard_names_are_five_digit_index_and_count():
  assert sharded_writer.shard_paths('d/train', 4) == [
      'd/train-00000-of-00004.tfrecord', 'd/train-00001-of-00004.tfrecord',
      'd/train-00002-of-00004.tfrecord', 'd/train-00003-of-00004.tfrecord']
  assert sharded_writer.temporary_path('d/train-00001-of-00004.tfrecord') == (
      os.path.join('d', '.train-00001-of-00004.tfrecord.tmp'))
  with pytest.raises(ValueError, match='num_shards'):
    sharded_writer.shard_paths('d/train', 0)


@pytest.mark.parametrize('num_items, num_shards, sizes', [
    (6, 4, (2, 1, 2, 1)), (8, 4, (2, 2, 2, 2)), (3, 2, (2, 1)),
    (2, 3, (1, 1, 0)), (5, 1, (5,))])
def test_items_split_evenly_in_contiguous_blocks(num_items, num_shards, sizes):
  assert sharded_writer.shard_sizes(num_items, num_shards) == sizes
  shards = [sharded_writer.shard_of(i, num_items, num_shards)
            for i in range(num_items)]
  assert shards == sorted(shards)


def test_shards_appear_only_at_commit(tmp_path):
  output = str(tmp_path / 'train')
  with sharded_writer.ShardedWriter(output, 3) as writer:
    writer.write(0, b'a')
    writer.write(0, b'b')
    writer.write(2, b'c')  # Shard 1 stays empty.
    assert not list(tmp_path.glob('train-*'))
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        '.train-00000-of-00003.tfrecord.tmp',
        '.train-00001-of-00003.tfrecord.tmp',
        '.train-00002-of-00003.tfrecord.tmp']
    paths = writer.commit()
  assert paths == sharded_writer.shard_paths(output, 3)
  assert sorted(os.listdir(tmp_path)) == [os.path.basename(p) for p in paths]
  assert [_records(p) for p in paths] == [[b'a', b'b'], [], [b'c']]
  assert writer.counts == [2, 0, 1]


def test_failure_leaves_no_shard(tmp_path):
  output = str(tmp_path / 'train')
  with pytest.raises(RuntimeError, match='boom'):
    with sharded_writer.ShardedWriter(output, 2) as writer:
      writer.write(0, b'a')
      writer.write(1, b'b')
      raise RuntimeError('boom')
  assert not os.listdir(tmp_path)


def test_records_must_come_in_shard_order(tmp_path):
  with sharded_writer.ShardedWriter(str(tmp_path / 'x'), 2) as writer:
    writer.write(1, b'a')
    with pytest.raises(ValueError, match='non-decreasing'):
      writer.write(0, b'b')
    with pytest.raises(ValueError, match='out of range'):
      writer.write(2, b'b')


def test_existing_shards_need_overwrite_and_stale_ones_go(tmp_path):
  output = str(tmp_path / 'val')
  with sharded_writer.ShardedWriter(output, 3) as writer:
    writer.write(0, b'old')
    writer.commit()
  unrelated = tmp_path / 'val_extra-00000-of-00001.tfrecord'
  unrelated.write_bytes(b'')
  with pytest.raises(FileExistsError, match='--overwrite'):
    sharded_writer.ShardedWriter(output, 2)
  with sharded_writer.ShardedWriter(output, 2, overwrite=True) as writer:
    writer.write(1, b'new')
    paths = writer.commit()
  assert sorted(sharded_writer.existing_shards(output)) == paths
  assert [_records(p) for p in paths] == [[], [b'new']]
  assert unrelated.exists()
