"""Tests of png_ids, the evaluation's PNG reader, against Pillow.

The PNGs are written here chunk by chunk with a chosen filter type per row
(Pillow's writer picks its own), so every filter, RGB and RGBA, multiple
IDAT chunks and each kind of corruption are covered.
"""
import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from deeplab2_kmax.evaluation import png_ids


def _paeth(a, b, c):
  p = a + b - c
  pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
  return a if pa <= pb and pa <= pc else b if pb <= pc else c


def _filter_row(kind, row, above, channels):
  """PNG filter `kind` (0..4) of one row of bytes (PNG spec, section 9)."""
  row, above = row.astype(np.int64), above.astype(np.int64)
  left = np.concatenate([np.zeros(channels, np.int64), row[:-channels]])
  upleft = np.concatenate([np.zeros(channels, np.int64), above[:-channels]])
  predictor = {
      0: np.zeros_like(row),
      1: left,
      2: above,
      3: (left + above) // 2,
      4: np.array([_paeth(*abc) for abc in zip(left, above, upleft)],
                  np.int64),
  }[kind]
  return bytes([kind]) + ((row - predictor) % 256).astype(np.uint8).tobytes()


def _chunk(kind, payload, crc=None):
  if crc is None:
    crc = zlib.crc32(payload, zlib.crc32(kind))
  return struct.pack('>I4s', len(payload), kind) + payload + struct.pack(
      '>I', crc)


def _png(pixels, filters, *, depth=8, color=None, interlace=0, idat_parts=1,
         extra_chunks=(), filtered=None):
  """PNG bytes of uint8 [H, W, C] pixels, row y filtered by filters[y]."""
  height, width, channels = pixels.shape
  color = {3: 2, 4: 6}[channels] if color is None else color
  if filtered is None:
    rows = pixels.reshape(height, width * channels)
    above = np.zeros_like(rows[0])
    filtered = b''
    for row, kind in zip(rows, filters):
      filtered += _filter_row(kind, row, above, channels)
      above = row
  data = zlib.compress(filtered)
  cuts = np.linspace(0, len(data), idat_parts + 1).astype(int)
  header = struct.pack('>IIBBBBB', width, height, depth, color, 0, 0,
                       interlace)
  return (b'\x89PNG\r\n\x1a\n' + _chunk(b'IHDR', header) +
          b''.join(_chunk(kind, payload) for kind, payload in extra_chunks) +
          b''.join(_chunk(b'IDAT', data[a:b])
                   for a, b in zip(cuts[:-1], cuts[1:])) +
          _chunk(b'IEND', b''))


def _pillow_ids(data):
  with Image.open(io.BytesIO(data)) as image:
    rgb = np.asarray(image.convert('RGB')).astype(np.int64)
  return rgb[..., 0] + 256 * rgb[..., 1] + 65536 * rgb[..., 2]


def _pixels(rng, height, width, channels, piecewise):
  """Random pixels, or a few flat regions (as in segment maps)."""
  if not piecewise:
    return rng.integers(0, 256, [height, width, channels], dtype=np.uint8)
  colors = rng.integers(0, 256, [4, channels], dtype=np.uint8)
  y, x = np.mgrid[:height, :width]
  region = (y * 3 // height) + (x > width // 2).astype(int)  # [H, W] 0..3
  return colors[region]


def test_built():
  # The install builds the C extension; without it the evaluation would
  # silently fall back to a slower decoder.
  assert png_ids.available()


@pytest.mark.parametrize('channels', [3, 4])
@pytest.mark.parametrize('piecewise', [False, True])
@pytest.mark.parametrize('width', [1, 2, 13])
def test_every_filter_equals_pillow(channels, piecewise, width):
  rng = np.random.default_rng(width * 10 + channels + piecewise)
  height = 15
  pixels = _pixels(rng, height, width, channels, piecewise)
  filters = np.arange(height) % 5  # every filter, after every filter
  rng.shuffle(filters)
  data = _png(pixels, filters, idat_parts=3,
              extra_chunks=[(b'tEXt', b'Comment\x00made by the test')])
  ids = png_ids.decode_ids(data)
  assert ids.dtype == np.int32 and ids.shape == (height, width)
  np.testing.assert_array_equal(ids, _pillow_ids(data))


def test_pillows_own_pngs():
  # Pillow's writer (adaptive filters) on a segment-like id map.
  rng = np.random.default_rng(0)
  ids = rng.integers(0, 1 << 24, [6])[
      (np.add.outer(np.arange(40) // 9, np.arange(50) // 11)) % 6]
  rgb = np.stack([ids & 255, (ids >> 8) & 255, ids >> 16], -1)
  buffer = io.BytesIO()
  Image.fromarray(rgb.astype(np.uint8), 'RGB').save(buffer, format='PNG')
  np.testing.assert_array_equal(png_ids.decode_ids(buffer.getvalue()), ids)


@pytest.mark.parametrize('kwargs', [
    {'depth': 16}, {'color': 0}, {'color': 3}, {'interlace': 1}])
def test_other_pngs_are_left_to_pillow(kwargs):
  pixels = np.zeros([2, 2, 3], np.uint8)
  assert png_ids.decode_ids(_png(pixels, [0, 0], **kwargs)) is None
  assert png_ids.decode_ids(b'GIF89a...') is None


def test_corrupt_pngs_are_errors():
  pixels = np.arange(2 * 3 * 3, dtype=np.uint8).reshape(2, 3, 3)
  good = _png(pixels, [1, 4])
  with pytest.raises(OSError, match='ends at byte 65, before an IEND'):
    png_ids.decode_ids(good[:-12])
  with pytest.raises(OSError, match="chunk b'IDAT' at byte 33 is truncated"):
    png_ids.decode_ids(good[:50])
  bad_crc = bytearray(good)
  bad_crc[-30] ^= 1  # a byte of the IDAT payload
  with pytest.raises(OSError, match="b'IDAT' at byte 33 fails its CRC"):
    png_ids.decode_ids(bytes(bad_crc))
  header_first = b'\x89PNG\r\n\x1a\n' + _chunk(b'tEXt', b'a\x00b') + good[8:]
  with pytest.raises(OSError, match="first chunk is b'tEXt'.*expected IHDR"):
    png_ids.decode_ids(header_first)
  # Filtered data of the wrong length, or with an unknown filter type.
  with pytest.raises(OSError, match='longer than the 20 bytes of a 3x2'):
    png_ids.decode_ids(_png(pixels, [], filtered=bytes(21)))
  with pytest.raises(OSError, match='has 19 bytes; a 3x2 image .* needs 20'):
    png_ids.decode_ids(_png(pixels, [], filtered=bytes(19)))
  with pytest.raises(OSError, match='row 1 has filter type 5'):
    png_ids.decode_ids(_png(pixels, [], filtered=bytes(10) + b'\x05' +
                            bytes(9)))


def test_unfilter_checks_its_arguments():
  unfilter = png_ids._png_ids.unfilter_ids  # pylint: disable=protected-access
  out = np.empty([2, 3], np.int32)
  with pytest.raises(ValueError, match='channels must be 3 or 4, not 2'):
    unfilter(bytes(14), 2, 3, 2, out)
  with pytest.raises(ValueError, match='out must be a C-contiguous buffer '
                     'of 6 int32'):
    unfilter(bytes(20), 2, 3, 3, np.empty([2, 2], np.int32))
  with pytest.raises(TypeError, match='read-write'):
    unfilter(bytes(20), 2, 3, 3, np.empty([3, 2], np.int32).T)
  unfilter(bytes(20), 2, 3, 3, out)
  np.testing.assert_array_equal(out, 0)
