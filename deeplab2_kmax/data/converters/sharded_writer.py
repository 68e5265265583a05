"""Writes serialized records into N TFRecord shards that appear atomically.

Shard names follow `{output}-{index:05d}-of-{count:05d}.tfrecord`, e.g.
`DIR/train-00000-of-00004.tfrecord` for `output=DIR/train`, `count=4`.

Items are split into contiguous, even blocks: item i of n goes to shard
`i * count // n`, so block sizes differ by at most one and the order of the
items is kept when the shards are read in name order.

While a conversion runs, every shard lives under a hidden temporary name
(`DIR/.train-00000-of-00004.tfrecord.tmp`). Only `commit()`, called after the
last item, renames them, all together, to their final names; `abort()` (also
run when the `with` block raises) deletes them. So a failed run leaves no
shards, and an interrupted one (killed process) leaves only hidden `.tmp`
files that no `train-*-of-*.tfrecord` pattern matches.
"""
import glob
import os

import tensorflow as tf

SUFFIX = '.tfrecord'


def shard_paths(output, num_shards):
  """Final file names of the `num_shards` shards of `output`."""
  if num_shards < 1:
    raise ValueError(f'num_shards must be >= 1, got {num_shards}')
  return [f'{output}-{index:05d}-of-{num_shards:05d}{SUFFIX}'
          for index in range(num_shards)]


def temporary_path(path):
  """The hidden name a shard is written under until it is committed."""
  folder, name = os.path.split(path)
  return os.path.join(folder, f'.{name}.tmp')


def shard_of(item_index, num_items, num_shards):
  """Shard of item `item_index` when `num_items` are split evenly."""
  return item_index * num_shards // num_items


def shard_sizes(num_items, num_shards):
  """Number of items in each shard, e.g. (2, 1, 2, 1) for 6 over 4."""
  sizes = [0] * num_shards
  for index in range(num_items):
    sizes[shard_of(index, num_items, num_shards)] += 1
  return tuple(sizes)


def existing_shards(output):
  """Shards of any count already present for `output`, sorted."""
  pattern = f'{glob.escape(output)}-[0-9]*-of-[0-9]*{SUFFIX}'
  return sorted(glob.glob(pattern))


class ShardedWriter:
  """Writes records to shards in non-decreasing shard order.

  Use as a context manager; call `commit()` once everything is written:

    with ShardedWriter('out/train', 4) as writer:
      for index, record in enumerate(records):
        writer.write(shard_of(index, len(records), 4), record)
      paths = writer.commit()

  Only one shard file is open at a time, so thousands of shards are fine.
  Existing shards of `output` (of any count) are an error unless
  `overwrite`; with `overwrite` they are replaced at commit, and those that
  the new shard set does not reuse are deleted.
  """

  def __init__(self, output, num_shards, overwrite=False):
    self.output = os.fspath(output)
    self.paths = shard_paths(self.output, num_shards)
    self.counts = [0] * num_shards
    self._stale = existing_shards(self.output)
    if self._stale and not overwrite:
      shown = ', '.join(self._stale[:3])
      more = f' and {len(self._stale) - 3} more' if len(self._stale) > 3 else ''
      raise FileExistsError(
          f'{self.output}: shards already exist ({shown}{more}); pass '
          '--overwrite (overwrite=True) to replace them')
    folder = os.path.dirname(os.path.abspath(self.output))
    os.makedirs(folder, exist_ok=True)
    self._shard = -1  # Index of the shard being written; -1 before any.
    self._writer = None
    self._done = False

  def __enter__(self):
    return self

  def __exit__(self, exc_type, exc, traceback):
    if not self._done:
      self.abort()
    return False

  def _open_through(self, shard):
    """Closes the current shard and opens every shard up to `shard`."""
    while self._shard < shard:
      if self._writer is not None:
        self._writer.close()
      self._shard += 1
      self._writer = tf.io.TFRecordWriter(
          temporary_path(self.paths[self._shard]))

  def write(self, shard, serialized):
    """Appends one serialized record to shard `shard` (never an earlier one)."""
    if self._done:
      raise RuntimeError(f'{self.output}: write after commit or abort')
    if not 0 <= shard < len(self.paths):
      raise ValueError(f'shard {shard} out of range [0, {len(self.paths)})')
    if shard < self._shard:
      raise ValueError(f'shard {shard} written after shard {self._shard}; '
                       'records must come in non-decreasing shard order')
    self._open_through(shard)
    self._writer.write(serialized)
    self.counts[shard] += 1

  def commit(self):
    """Closes every shard and renames all of them into place; returns paths."""
    if self._done:
      raise RuntimeError(f'{self.output}: commit after commit or abort')
    self._open_through(len(self.paths) - 1)  # Empty trailing shards too.
    self._writer.close()
    self._writer = None
    for path in self.paths:
      os.replace(temporary_path(path), path)
    for path in self._stale:
      if path not in self.paths and os.path.exists(path):
        os.remove(path)
    self._done = True
    return list(self.paths)

  def abort(self):
    """Deletes every temporary shard; no final name is touched."""
    if self._writer is not None:
      self._writer.close()
      self._writer = None
    for path in self.paths:
      try:
        os.remove(temporary_path(path))
      except FileNotFoundError:
        pass
    self._done = True
