"""Reads TFRecord shards so that a bad record is reported by file and index.

TensorFlow reports a truncated shard as "truncated record at 4711" and an
undecodable image as "Unknown image file format", without naming the file or
the record. This module keeps the shard path and the record index with each
record until it is decoded, and turns failures into errors that name both:

- Reading (`read_shards`): each shard is read with read errors ending it
  early; a check after its last record compares the bytes read with the
  file's size. Every record takes its length + 16 bytes (length, two CRCs),
  so a shortfall means a truncated or corrupted shard; the error names the
  first record that could not be read and its byte offset. Shards must be
  uncompressed TFRecord files (what the converters write).
- Decoding (`decode_records`): each record is decoded in a one-element
  dataset whose errors are caught (and logged as a warning with TensorFlow's
  reason), followed by a fallback element flagged as failed; the first of the
  two is kept. A failed element raises an error naming shard and index.

Errors surface as `tf.errors.InvalidArgumentError` while iterating.
"""
import glob
import os

import tensorflow as tf

from deeplab2_kmax import config as config_lib
from deeplab2_kmax.data import record

_RECORD_OVERHEAD = 16  # uint64 length, uint32 length CRC, uint32 data CRC


def list_files(patterns, field='file_pattern'):
  """Sorted paths matching the glob `patterns`; errors name `field`.

  Raises:
    ConfigError: a pattern still holds an unset ${VAR}, or matches no file.
  """
  patterns = list(patterns)
  if not patterns:
    raise config_lib.ConfigError(f'{field}: no file pattern given')
  files = []
  for pattern in patterns:
    pattern = config_lib.resolved(pattern, field)
    matches = sorted(p for p in glob.glob(os.path.expanduser(pattern))
                     if os.path.isfile(p))
    if not matches:
      raise config_lib.ConfigError(
          f'{field} = {pattern!r} matches no file; expected TFRecord shards '
          '(written by deeplab2_kmax.data.build_tfrecords)')
    files.extend(matches)
  return sorted(set(files))


def read_shards(files, *, shuffle=False, repeat=False, seed=None,
                cycle_length=8, deterministic=True):
  """Dataset of (path, index, serialized record) from uncompressed shards.

  Args:
    files: list of shard paths (e.g. from `list_files`).
    shuffle: shuffle the order of the shards (each epoch anew).
    repeat: cycle through the shards forever.
    seed: seed of the shard shuffle, None for a random one.
    cycle_length: number of shards read in parallel, interleaved.
    deterministic: keep the interleave order fixed.
  """
  sizes = [os.path.getsize(f) for f in files]
  shards = tf.data.Dataset.from_tensor_slices(
      (tf.constant(files, tf.string), tf.constant(sizes, tf.int64)))
  if shuffle:
    shards = shards.shuffle(len(files), seed=seed,
                            reshuffle_each_iteration=True)
  if repeat:
    shards = shards.repeat()
  return shards.interleave(
      _read_shard, cycle_length=max(1, min(cycle_length, len(files))),
      block_length=1, num_parallel_calls=tf.data.AUTOTUNE,
      deterministic=deterministic)


def _read_shard(path, size):
  """(path, index, record) of one shard; checks all of it could be read."""
  records = tf.data.TFRecordDataset(path).ignore_errors(
      log_warning=True).enumerate()  # (index, record); stops at a bad one
  end = tf.data.Dataset.from_tensors(
      (tf.constant(-1, tf.int64), tf.constant('')))

  def account(state, element):
    read_bytes, count = state
    index, serialized = element
    is_end = index < 0
    length = tf.cast(tf.strings.length(serialized), tf.int64)
    read_bytes += tf.where(is_end, tf.constant(0, tf.int64),
                           length + _RECORD_OVERHEAD)
    count += tf.cast(~is_end, tf.int64)
    message = tf.strings.join([
        path, ': cannot read record ', tf.strings.as_string(count),
        ' at byte offset ', tf.strings.as_string(read_bytes), ' of ',
        tf.strings.as_string(size), ': the TFRecord shard is truncated or '
        'corrupted (see the warning logged above); rewrite it with the '
        'converter'])
    check = tf.debugging.Assert(
        tf.logical_or(~is_end, tf.equal(read_bytes, size)), [message])
    with tf.control_dependencies([check]):
      index = tf.identity(index)
    return (read_bytes, count), (index, serialized)

  zero = tf.constant(0, tf.int64)
  checked = records.concatenate(end).scan((zero, zero), account)
  return checked.filter(lambda index, _: index >= 0).map(
      lambda index, serialized: (path, index, serialized))


def decode_records(records, *, decode_fn=record.parse_example,
                   deterministic=True):
  """Maps (path, index, serialized) to decode_fn(serialized).

  A record that fails to parse or decode raises an InvalidArgumentError
  naming the shard and the record index. `decode_fn` must return a dict of
  tensors; an `ok` entry is reserved.
  """
  spec = tf.data.Dataset.from_tensors(tf.constant('')).map(
      decode_fn).element_spec
  failed = {key: tf.zeros([0 if d is None else d for d in s.shape], s.dtype)
            for key, s in spec.items()}

  def decode_one(path, index, serialized):
    good = tf.data.Dataset.from_tensors(serialized).map(
        lambda s: ({**decode_fn(s), 'ok': True}, path, index)).ignore_errors(
            log_warning=True)
    bad = tf.data.Dataset.from_tensors(({**failed, 'ok': False}, path, index))
    return good.concatenate(bad).take(1)

  def check(sample, path, index):
    message = tf.strings.join([
        path, ': record ', tf.strings.as_string(index),
        ' cannot be parsed or decoded (bad image or label bytes, a missing '
        'feature, or image and label of different sizes); TensorFlow\'s '
        'reason is logged above as a warning, or run '
        'deeplab2_kmax.data.shard_reader.record_error(path, index)'])
    with tf.control_dependencies([tf.debugging.Assert(sample['ok'],
                                                      [message])]):
      return {k: tf.identity(v) for k, v in sample.items() if k != 'ok'}

  decoded = records.interleave(
      decode_one, cycle_length=tf.data.AUTOTUNE, block_length=1,
      num_parallel_calls=tf.data.AUTOTUNE, deterministic=deterministic)
  return decoded.map(check)


def record_error(path, index, decode_fn=None):
  """TensorFlow's error message for record `index` of `path`, or None.

  Reads and decodes the one record eagerly, to explain a failure reported
  by the pipeline (whose warning log may be silenced).
  """
  decode_fn = decode_fn or parse_checked
  try:
    for serialized in tf.data.TFRecordDataset(path).skip(index).take(1):
      decode_fn(serialized)
      return None
  except tf.errors.OpError as e:
    return e.message
  return f'{path} has no record {index}'


def parse_checked(serialized):
  """`record.parse_example` that also checks image and label sizes agree."""
  sample = record.parse_example(serialized)
  image_size = tf.shape(sample['image'])[:2]
  label_size = tf.shape(sample['panoptic'])
  stored = tf.stack([sample['height'], sample['width']])
  check = tf.debugging.Assert(
      tf.reduce_all(tf.equal(image_size, label_size)) &
      tf.reduce_all(tf.equal(image_size, stored)),
      ['image size', image_size, 'label size', label_size,
       'image/height, image/width', stored])
  with tf.control_dependencies([check]):
    return {k: tf.identity(v) for k, v in sample.items()}
