"""Segment ids of 8-bit RGB(A) PNGs: the evaluation's fast PNG reader.

A COCO panoptic PNG is an 8-bit RGB image whose pixels are segment ids
R + 256 G + 65536 B. Its compressed data is tiny (about 10 KB for 640x480)
and inflates to almost 1 MB of long runs, so most of a decoder's time goes
into inflating; zlib does that several times slower than libdeflate. This
reader parses the PNG chunks here (checking every CRC), inflates the image
data with libdeflate (the `deflate` package) and undoes the row filters in a
small C loop (`_png_ids.c`) that packs the ids directly. Both release the
GIL, so an evaluation's threads read PNGs side by side. Measured in
docs/benchmarks.md (issue #5).

Other PNGs (grey, palette, 16-bit, interlaced) are not read here:
`decode_ids` returns None for them and the caller uses Pillow.
"""
import struct
import zlib

import numpy as np

try:
  import deflate
  from deeplab2_kmax.evaluation import _png_ids
except ImportError:  # the C extension was not built, or no libdeflate
  deflate = _png_ids = None

_SIGNATURE = b'\x89PNG\r\n\x1a\n'
_CHUNK_HEADER = struct.Struct('>I4s')  # length, type
_IHDR = struct.Struct('>IIBBBBB')  # width, height, depth, color, ..., interlace
_CHANNELS = {2: 3, 6: 4}  # color type -> channels (RGB, RGBA)


def available():
  """Whether the fast reader is built and libdeflate is installed."""
  return _png_ids is not None


def _chunks(data):
  """Yields (type, payload) of each chunk up to IEND; OSError if corrupt."""
  pos = len(_SIGNATURE)
  while True:
    if pos + 12 > len(data):
      raise OSError(f'truncated: it ends at byte {len(data)}, before an IEND '
                    'chunk')
    length, kind = _CHUNK_HEADER.unpack_from(data, pos)
    end = pos + 8 + length
    if end + 4 > len(data):
      raise OSError(f'chunk {kind!r} at byte {pos} is truncated: it needs '
                    f'{length} bytes')
    payload = data[pos + 8:end]
    crc, = struct.unpack_from('>I', data, end)
    if zlib.crc32(payload, zlib.crc32(kind)) != crc:
      raise OSError(f'chunk {kind!r} at byte {pos} fails its CRC check')
    yield kind, payload
    if kind == b'IEND':
      return
    pos = end + 4


def decode_ids(data):
  """int32 [H, W] ids R + 256 G + 65536 B of an 8-bit RGB(A) PNG's bytes.

  Returns None where the fast reader does not apply (not built, not a
  PNG, or a PNG that is not 8-bit non-interlaced RGB or RGBA). Raises
  OSError, with what is wrong, for a corrupt one.
  """
  if _png_ids is None or not data.startswith(_SIGNATURE):
    return None
  chunks = _chunks(data)
  kind, header = next(chunks)
  if kind != b'IHDR' or len(header) != _IHDR.size:
    raise OSError(f'the first chunk is {kind!r} of {len(header)} bytes; '
                  'expected IHDR of 13')
  width, height, depth, color, _, _, interlace = _IHDR.unpack(header)
  if depth != 8 or color not in _CHANNELS or interlace:
    return None
  channels = _CHANNELS[color]
  idat = b''.join(payload for kind, payload in chunks if kind == b'IDAT')
  expected = height * (1 + width * channels)
  try:
    raw = deflate.zlib_decompress(idat, expected)
  except deflate.DeflateError:
    raise OSError('its image data (IDAT) does not inflate: corrupt or '
                  f'longer than the {expected} bytes of a {width}x{height} '
                  'image') from None
  ids = np.empty([height, width], np.int32)
  try:
    _png_ids.unfilter_ids(raw, height, width, channels, ids)
  except ValueError as e:
    raise OSError(f'its image data is corrupt: {e}') from None
  return ids
