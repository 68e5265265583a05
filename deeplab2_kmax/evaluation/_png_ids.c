/* Segment ids R + 256 G + 65536 B from the inflated image data of an 8-bit
 * RGB or RGBA PNG: the PNG filters (PNG specification, section 9) undone row
 * by row, each pixel packed into an int32 as it is reconstructed.
 *
 * Why a C loop: undoing the Sub and Paeth filters is a sequential recurrence
 * along each row, which NumPy cannot vectorise, and the PNG decoders on PyPI
 * (libspng through pyspng, libpng through OpenCV, Pillow) either hold the GIL
 * or pay for zlib's inflate, which is several times slower than libdeflate
 * on panoptic PNGs (measurements in docs/benchmarks.md). Python parses the
 * chunks and libdeflate (the `deflate` package) inflates; this loop runs
 * without the GIL, so an evaluation's threads decode PNGs side by side.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

/* The filters act on each byte with the same byte of the pixel to the left,
 * above and above-left, so the R, G and B bytes never mix (alpha, if any, is
 * not needed for the ids). The loop below therefore works on whole pixels
 * held as ids R + 256 G + 65536 B and adds them byte by byte without carries
 * between bytes, so a pixel costs a few integer operations. */
#define LOW7 0x7F7F7Fu
#define HIGH 0x808080u

/* (a + b) mod 256 in each of the three bytes. */
static inline uint32_t add_bytes(uint32_t a, uint32_t b) {
  return ((a & LOW7) + (b & LOW7)) ^ ((a ^ b) & HIGH);
}

/* floor((a + b) / 2) in each of the three bytes. */
static inline uint32_t average_bytes(uint32_t a, uint32_t b) {
  return (a & b) + (((a ^ b) & 0xFEFEFEu) >> 1);
}

/* The Paeth predictor of the PNG specification (section 9.4) of one byte. */
static inline uint32_t paeth_byte(int a, int b, int c) {
  const int p = a + b - c;
  const int pa = abs(p - a), pb = abs(p - b), pc = abs(p - c);
  if (pa <= pb && pa <= pc) return (uint32_t)a;
  if (pb <= pc) return (uint32_t)b;
  return (uint32_t)c;
}

/* Paeth of each byte. Where left == above-left, every byte's predictor is
 * the byte above; where above == above-left, the byte to the left. */
static inline uint32_t paeth(uint32_t a, uint32_t b, uint32_t c) {
  if (a == c) return b;
  if (b == c) return a;
  uint32_t result = 0;
  for (int shift = 0; shift < 24; shift += 8) {
    result |= paeth_byte((a >> shift) & 255, (b >> shift) & 255,
                         (c >> shift) & 255) << shift;
  }
  return result;
}

/* The filtered R, G, B bytes at `in` as one value. */
static inline uint32_t load_rgb(const uint8_t *in) {
  return (uint32_t)in[0] | ((uint32_t)in[1] << 8) | ((uint32_t)in[2] << 16);
}

/* How many whole pixels from `in` on (at most `count`) have all their
 * filtered bytes zero. Segment maps are piecewise constant, so most filtered
 * bytes are zero: runs of them are skipped eight bytes at a time. */
static inline Py_ssize_t zero_pixels(const uint8_t *in, Py_ssize_t count,
                                     int channels) {
  const uint8_t *byte = in, *end = in + count * channels;
  uint64_t word;
  while (end - byte >= 8) {
    memcpy(&word, byte, 8);
    if (word != 0) break;
    byte += 8;
  }
  while (byte < end && *byte == 0) ++byte;
  return (byte - in) / channels;
}

/* The predictor of filter 1..4 (Sub, Up, Average, Paeth) from the pixels to
 * the left, above and above-left; 0 for filter 0 (None). */
static inline uint32_t predict(int filter, uint32_t left, uint32_t up,
                               uint32_t upleft) {
  switch (filter) {
    case 1: return left;
    case 2: return up;
    case 3: return average_bytes(left, up);
    case 4: return paeth(left, up, upleft);
    default: return 0;
  }
}

/* Undoes filter `filter` of one row: `in` [width * channels] filtered bytes,
 * `up` [width] the ids above, `out` [width]. Pixels whose filtered bytes
 * are zero (most of them) take their predictor as it is, by runs; the others
 * add it byte by byte. Returns 0, or -1 for an unknown filter type. */
static int unfilter_row(int filter, const uint8_t *in, const uint32_t *up,
                        Py_ssize_t width, int channels, uint32_t *out) {
  if (filter > 4) return -1;
  Py_ssize_t x = 0;
  while (x < width) {
    const Py_ssize_t stop =  /* [x, stop): predictor as it is */
        x + zero_pixels(in + x * channels, width - x, channels);
    if (filter == 0) {
      memset(out + x, 0, (size_t)(stop - x) * sizeof(uint32_t));
      x = stop;
    } else if (filter == 2) {
      memcpy(out + x, up + x, (size_t)(stop - x) * sizeof(uint32_t));
      x = stop;
    }
    for (; x < stop; ++x) {
      const uint32_t left = x ? out[x - 1] : 0, upleft = x ? up[x - 1] : 0;
      if (filter == 4 && x && left == upleft) {
        /* Paeth's predictor is then the pixel above, and the pixel equals
         * it, so the same holds for the next pixel: copy the rest. */
        memcpy(out + x, up + x, (size_t)(stop - x) * sizeof(uint32_t));
        x = stop;
        break;
      }
      out[x] = predict(filter, left, up[x], upleft);
    }
    if (x == width) break;
    /* One pixel with a non-zero filtered byte. */
    out[x] = add_bytes(load_rgb(in + x * channels),
                       predict(filter, x ? out[x - 1] : 0, up[x],
                               x ? up[x - 1] : 0));
    ++x;
  }
  return 0;
}

/* Undoes the filters of `height` rows (each a filter-type byte and
 * width * channels bytes) into `out` [height * width] ids. Returns -1 on
 * success, else the index of the first row with a filter type other than
 * 0..4. */
static Py_ssize_t unfilter(const uint8_t *data, Py_ssize_t height,
                           Py_ssize_t width, int channels, const uint32_t *zeros,
                           uint32_t *out) {
  const uint32_t *up = zeros;  /* [width] the row above; zero above the first */
  for (Py_ssize_t y = 0; y < height; ++y) {
    if (unfilter_row(data[0], data + 1, up, width, channels, out) != 0) {
      return y;
    }
    data += 1 + width * channels;
    up = out;
    out += width;
  }
  return -1;
}

PyDoc_STRVAR(unfilter_ids_doc,
"unfilter_ids(data, height, width, channels, out)\n\n"
"Undoes the PNG row filters of `data` (inflated IDAT bytes: `height` rows,\n"
"each a filter-type byte and `width * channels` bytes; channels 3 for RGB,\n"
"4 for RGBA, 8 bits each) and writes the ids R + 256 G + 65536 B of the\n"
"pixels into `out`, a writable C-contiguous buffer of height * width\n"
"int32. Raises ValueError on a size mismatch or an unknown filter type.");

static PyObject *unfilter_ids(PyObject *self, PyObject *args) {
  Py_buffer data, out;
  Py_ssize_t height, width;
  int channels;
  if (!PyArg_ParseTuple(args, "y*nniw*", &data, &height, &width, &channels,
                        &out)) {
    return NULL;
  }
  PyObject *result = NULL;
  uint32_t *zeros = NULL;
  if (channels != 3 && channels != 4) {
    PyErr_Format(PyExc_ValueError, "channels must be 3 or 4, not %d",
                 channels);
    goto done;
  }
  if (height < 0 || width < 0 ||
      (width > 0 && height > PY_SSIZE_T_MAX / 4 / width)) {
    PyErr_Format(PyExc_ValueError, "bad image size %zd x %zd", width, height);
    goto done;
  }
  const Py_ssize_t expected = height * (1 + width * channels);
  if (data.len != expected) {
    PyErr_Format(PyExc_ValueError,
                 "the image data has %zd bytes; a %zdx%zd image with %d "
                 "channels needs %zd",
                 data.len, width, height, channels, expected);
    goto done;
  }
  if (out.len != height * width * (Py_ssize_t)sizeof(int32_t) ||
      !PyBuffer_IsContiguous(&out, 'C')) {
    PyErr_Format(PyExc_ValueError,
                 "out must be a C-contiguous buffer of %zd int32, not %zd "
                 "bytes", height * width, out.len);
    goto done;
  }
  zeros = (uint32_t *)calloc((size_t)width + 1, sizeof(uint32_t));
  if (zeros == NULL) {
    PyErr_NoMemory();
    goto done;
  }
  Py_ssize_t bad_row;
  Py_BEGIN_ALLOW_THREADS
  bad_row = unfilter((const uint8_t *)data.buf, height, width, channels, zeros,
                     (uint32_t *)out.buf);
  Py_END_ALLOW_THREADS
  if (bad_row >= 0) {
    PyErr_Format(PyExc_ValueError, "row %zd has filter type %d (expected "
                 "0..4)", bad_row,
                 ((const uint8_t *)data.buf)[bad_row * (1 + width * channels)]);
    goto done;
  }
  result = Py_NewRef(Py_None);
done:
  free(zeros);
  PyBuffer_Release(&data);
  PyBuffer_Release(&out);
  return result;
}

static PyMethodDef methods[] = {
    {"unfilter_ids", unfilter_ids, METH_VARARGS, unfilter_ids_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_png_ids",
    "Segment ids from the inflated data of 8-bit RGB(A) PNGs (see "
    "deeplab2_kmax.evaluation.png_ids).",
    -1, methods,
};

PyMODINIT_FUNC PyInit__png_ids(void) { return PyModule_Create(&module); }
