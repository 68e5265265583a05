"""CPU paths of convolutions, batch norm + activation and GELU.

Same values as the plain TensorFlow ops of `kernels/__init__.py`, faster on
oneDNN CPUs (measured gains: docs/benchmarks.md):
  * at inference, the batch norm's affine map and the activation run as one
    XLA-compiled elementwise kernel (TensorFlow's exact GELU makes several
    passes over memory), or, for ReLU / identity after a convolution, as an
    inference FusedBatchNorm that grappler fuses into the convolution;
    dilated convolutions call tf.nn.conv2d directly (Keras's space-to-batch
    route is slower);
  * in training, stride-1 convolutions get a written-out gradient whose
    input gradient is a forward convolution (`conv2d_for_training`,
    `depthwise_conv2d_for_training`), dilated ones one that TensorFlow's CPU
    kernels lack (`dilated_conv2d_for_training`), and GELU one XLA kernel
    each way that keeps only its input for the backward pass.
Used only under the CPU_OPTIMIZED kernel policy.
"""
import tensorflow as tf
from tensorflow.python.eager import record  # pylint: disable=g-direct-tensorflow-import

_SQRT_HALF = 0.7071067811865476
_INV_SQRT_2PI = 0.3989422804014327


# Tensors smaller than this stay on plain TensorFlow ops: XLA gains nothing
# there, and every compiled shape costs memory.
_XLA_MIN_ELEMENTS = 1 << 18


def use_xla(x):
  """Whether an elementwise kernel on `x` is worth an XLA compilation."""
  size = x.shape.num_elements()
  return size is not None and size >= _XLA_MIN_ELEMENTS


def elementwise_kernel(fn):
  """`fn(x, *args)`, run as one XLA kernel when `x` is large (use_xla).

  For chains of elementwise and per-pixel ops that TensorFlow runs as
  several passes over memory; small tensors keep the plain ops.
  """
  compiled = tf.function(fn, jit_compile=True)

  def run(x, *args):
    return (compiled if use_xla(x) else fn)(x, *args)

  return run


def _tape_is_recording():
  """Whether a GradientTape could record the ops built now (in a traced
  function: whether one is active around the trace). TensorFlow has no
  public query; tf.function's concrete functions use this one to decide
  whether to record their own gradients."""
  return record.could_possibly_record()


def _gelu(x):
  return 0.5 * x * (1.0 + tf.math.erf(x * _SQRT_HALF))


@tf.function(jit_compile=True)
def _gelu_gradient(x, dy):
  """dy * GELU'(x), GELU'(x) = Phi(x) + x phi(x), as one XLA kernel."""
  cdf = 0.5 * (1.0 + tf.math.erf(x * _SQRT_HALF))
  pdf = tf.exp(-0.5 * tf.square(x)) * _INV_SQRT_2PI
  return dy * (cdf + x * pdf)


_gelu_forward = elementwise_kernel(_gelu)


@tf.custom_gradient
def _gelu_with_xla_gradient(x):
  """For x with use_xla(x): both directions compiled."""
  def grad(dy):
    return _gelu_gradient(x, dy)
  return _gelu_forward(x), grad


def gelu(x):
  """Exact GELU, 0.5 x (1 + erf(x / sqrt(2))).

  On large tensors one XLA kernel each way, with the gradient written out:
  only x is kept for the backward pass. (Differentiating through the
  compiled forward instead makes XLA return the intermediates its gradient
  needs, x / sqrt(2), erf, ...: about two extra copies of x per GELU kept
  alive until the backward pass, hundreds of MiB in a kMaX training step.)
  """
  # Without a recording tape nothing will differentiate this: no custom
  # gradient, whose IdentityN raised the inference peak RSS of the R50 at
  # 641 by about 25 MiB.
  if use_xla(x) and _tape_is_recording():
    return _gelu_with_xla_gradient(x)
  return _gelu_forward(x)


# Plain ReLU: grappler fuses it into the preceding add / convolution.
_ACTIVATIONS = {None: lambda x: x, 'none': lambda x: x, 'gelu': gelu,
                'relu': tf.nn.relu}
# act(x * scale + shift) for each activation.
_AFFINE_ACTIVATIONS = {
    name: elementwise_kernel(
        lambda x, scale, shift, act=act: act(x * scale + shift))
    for name, act in _ACTIVATIONS.items()}


def float32_value(variable):
  """The value of a (Keras) variable as a float32 tensor, whatever the
  compute dtype of the layer reading it."""
  return tf.cast(tf.convert_to_tensor(variable), tf.float32)


def inference_affine(bn, dtype=None):
  """(scale, shift) with bn(x) = x * scale + shift at inference.

  `bn` is a Keras BatchNormalization or a GroupedBatchNorm (any parameter
  shape); its moving statistics are used. Computed in the variables' dtype
  (float32), then cast to `dtype` if given.
  """
  scale = float32_value(bn.gamma) * tf.math.rsqrt(
      float32_value(bn.moving_variance) + bn.epsilon)
  shift = float32_value(bn.beta) - float32_value(bn.moving_mean) * scale
  if dtype is not None:
    scale, shift = tf.cast(scale, dtype), tf.cast(shift, dtype)
  return scale, shift


def batch_norm_activation_inference(bn, x, activation):
  """act(bn(x)) with the moving statistics.

  After a convolution, ReLU and identity use TensorFlow's inference
  FusedBatchNorm, which grappler folds into the convolution (one oneDNN
  kernel with BN and ReLU as post-ops); GELU, and everything that is not a
  4-D feature map, use one XLA kernel for the affine map and activation.
  """
  if len(x.shape) == 4 and activation in (None, 'none', 'relu'):
    y, _, _ = tf.compat.v1.nn.fused_batch_norm(
        x, bn.gamma, bn.beta, bn.moving_mean, bn.moving_variance,
        epsilon=bn.epsilon, is_training=False)
    return tf.nn.relu(y) if activation == 'relu' else y
  return _AFFINE_ACTIVATIONS[activation](x, *inference_affine(bn, x.dtype))


def _tap_offsets(kernel_size, rate, length):
  """[(tap index, offset)] of the taps that read inside an axis of `length`."""
  center = kernel_size // 2
  return [(i, (i - center) * rate) for i in range(kernel_size)
          if abs((i - center) * rate) < length]


# From this many pixels per map (stride 8 of a 641 crop and finer), the
# kernel gradient of a KxK convolution is faster as one matmul per tap:
# 3x3 at 161x161x64 -> 64 channels 83 -> 52 ms, at 81x81x128 -> 128
# 53 -> 28 ms, and no faster at 41x41 (2 CPU threads, oneDNN).
_TAPWISE_FILTER_GRADIENT_MIN_PIXELS = 64 * 64


def _tapwise_filter_gradient(x, dy, size):
  """The kernel gradient of a stride-1 'SAME' KxK conv, one matmul per tap.

  dK[a, b] = sum over pixels p of x_padded[p + (a, b)]^T dy[p].
  """
  pad = size // 2
  padded = tf.pad(x, [[0, 0], [pad, pad], [pad, pad], [0, 0]])
  height, width, channels = x.shape[1], x.shape[2], x.shape[3]
  dy = tf.reshape(dy, [-1, dy.shape[-1]])  # [B*H*W, Cout]
  taps = [tf.matmul(tf.reshape(padded[:, a:a + height, b:b + width],
                               [-1, channels]), dy, transpose_a=True)
          for a in range(size) for b in range(size)]  # each [Cin, Cout]
  return tf.reshape(tf.stack(taps), [size, size, channels, dy.shape[-1]])


def conv2d_for_training(x, kernel):
  """tf.nn.conv2d(x, kernel, 1, 'SAME') for an odd square kernel, with a
  faster gradient on CPU.

  TensorFlow's Conv2DBackpropInput / Conv2DBackpropFilter kernels are 1.3-3x
  slower than a forward convolution of the same size on this model's maps
  (2 CPU threads, oneDNN). For stride 1 and 'SAME' padding the input
  gradient is itself a forward convolution, of the output gradient with the
  kernel flipped in space and its channel axes swapped; the kernel gradient
  of a 1x1 convolution is one matmul, and that of a larger kernel on a large
  map one matmul per tap. Same values up to float summation order.
  """
  # A tensor, not the (autocast) variable: the custom gradient below must
  # not read variables itself.
  kernel = tf.cast(kernel, x.dtype)
  size = kernel.shape[0]
  if size % 2 != 1 or kernel.shape[1] != size:
    return tf.nn.conv2d(x, kernel, 1, 'SAME')

  @tf.custom_gradient
  def conv(x, kernel):
    def grad(dy):
      flipped = tf.transpose(tf.reverse(kernel, [0, 1]), [0, 1, 3, 2])
      dx = tf.nn.conv2d(dy, flipped, 1, 'SAME')
      if size == 1:
        dk = tf.matmul(tf.reshape(x, [-1, x.shape[-1]]),
                       tf.reshape(dy, [-1, dy.shape[-1]]), transpose_a=True)
        dk = tf.reshape(dk, kernel.shape)
      elif None not in x.shape[1:3] and (
          x.shape[1] * x.shape[2] >= _TAPWISE_FILTER_GRADIENT_MIN_PIXELS):
        dk = _tapwise_filter_gradient(x, dy, size)
      else:
        dk = tf.compat.v1.nn.conv2d_backprop_filter(
            x, tf.shape(kernel), dy, [1, 1, 1, 1], 'SAME')
      return dx, dk
    return tf.nn.conv2d(x, kernel, 1, 'SAME'), grad

  return conv(x, kernel)


# From this kernel size, the kernel gradient of a depthwise conv in training
# is `_depthwise_kernel_gradient`. Measured on the 2-core CPU (2026-12-03,
# forward op alone, [1, H, H, C] maps): 5x5 on 161x161x256 18 ms against
# 119 ms for TensorFlow's DepthwiseConv2dNativeBackpropFilter, on 81x81x256
# 3.4 against 15 ms; but 3x3 on 161x161x256 15 against 7 ms.
_DEPTHWISE_CONV_KERNEL_GRADIENT_MIN_SIZE = 5


def _depthwise_kernel_gradient(x, dy, size):
  """[size, size, C, 1] kernel gradient of a stride-1 'SAME' depthwise conv.

  dk[i, j, c] = sum over b, y, x of x_pad[b, y + i, x + j, c] * dy[b, y, x, c]
  is itself a depthwise convolution: of the padded input, with the output
  gradient as its [H, W] kernel, 'VALID', giving a [size, size] map per
  channel. Images become channels (b, c) and are summed afterwards.
  """
  height, width, channels = x.shape[1:]
  pad = size // 2
  x = tf.pad(x, [[0, 0], [pad, pad], [pad, pad], [0, 0]])  # [B, H+2p, W+2p, C]
  if x.shape[0] != 1:  # images next to channels: [1, ..., B*C]
    x = tf.transpose(x, [1, 2, 0, 3])  # [H+2p, W+2p, B, C]
    dy = tf.transpose(dy, [1, 2, 0, 3])  # [H, W, B, C]
  x = tf.reshape(x, [1, height + 2 * pad, width + 2 * pad, -1])
  dy = tf.reshape(dy, [height, width, -1, 1])  # [H, W, B*C, 1]
  dk = tf.nn.depthwise_conv2d(x, dy, [1, 1, 1, 1], 'VALID')  # [1, k, k, B*C]
  dk = tf.reshape(dk, [size, size, -1, channels])  # [k, k, B, C]
  return tf.reduce_sum(dk, axis=2)[..., None]  # [k, k, C, 1]


def depthwise_conv2d_for_training(x, kernel):
  """tf.nn.depthwise_conv2d(x, kernel, 'SAME') at stride 1 for an odd square
  [k, k, C, 1] kernel, with a faster input gradient on CPU.

  As in `conv2d_for_training`: the input gradient of a stride-1 'SAME'
  depthwise convolution is the depthwise convolution of the output gradient
  with the kernel flipped in space: for the 5x5 on 161x161x256 a profile
  of the training step showed about 40 ms for that forward op against
  140 ms for TensorFlow's DepthwiseConv2dNativeBackpropInput. The kernel
  gradient of kernels of 5x5 and larger is `_depthwise_kernel_gradient`.
  """
  kernel = tf.cast(kernel, x.dtype)
  size = kernel.shape[0]
  strides = [1, 1, 1, 1]
  if size % 2 != 1 or kernel.shape[1] != size or kernel.shape[3] != 1:
    return tf.nn.depthwise_conv2d(x, kernel, strides, 'SAME')
  # The kernel gradient as a conv needs the map's size as a static shape.
  conv_kernel_gradient = (size >= _DEPTHWISE_CONV_KERNEL_GRADIENT_MIN_SIZE and
                          None not in x.shape[1:])

  @tf.custom_gradient
  def conv(x, kernel):
    def grad(dy):
      dx = tf.nn.depthwise_conv2d(dy, tf.reverse(kernel, [0, 1]), strides,
                                  'SAME')
      if conv_kernel_gradient:
        dk = _depthwise_kernel_gradient(x, dy, size)
      else:
        dk = tf.compat.v1.nn.depthwise_conv2d_native_backprop_filter(
            x, tf.shape(kernel), dy, strides, 'SAME')
      return dx, dk
    return tf.nn.depthwise_conv2d(x, kernel, strides, 'SAME'), grad

  return conv(x, kernel)


def _tap_regions(kernel_shape, rate, height, width):
  """(tap i, tap j, input slice, output slice) of each tap of a 'SAME'
  dilated conv that reads inside an [height, width] map."""
  for i, dy in _tap_offsets(kernel_shape[0], rate, height):
    y0, y1 = max(0, -dy), height - max(0, dy)  # output rows this tap reaches
    for j, dx in _tap_offsets(kernel_shape[1], rate, width):
      x0, x1 = max(0, -dx), width - max(0, dx)
      yield (i, j, (slice(None), slice(y0 + dy, y1 + dy), slice(x0 + dx, x1 + dx)),
             (slice(None), slice(y0, y1), slice(x0, x1)))


def dilated_conv2d_for_training(x, kernel, rate):
  """tf.nn.conv2d(x, kernel, 1, 'SAME', dilations=rate), for training.

  TensorFlow's CPU kernels have no gradient for a dilated conv2d (Keras's
  space-to-batch route has one, but slow: its input gradient at rate 18 on
  the R50's 21x21 map took 6 s of op time in a standalone gradient step).
  The gradient here is written out: the input gradient is one dilated
  convolution of the output gradient with the kernel flipped in space and
  its channel axes swapped, the kernel gradient one matmul per tap over the
  region where that tap reads inside the map (taps wholly in the padding
  get zero). The ASPP of the R50 config (rates 6, 12, 18 on 21x21x2048),
  forward and backward: 80-83 ms on the 2-core CPU, against 305 ms when
  the gradient went through slices (a zero-filled copy of the input per
  tap). Needs the static spatial shape of x.
  """
  def forward(x, kernel):
    return tf.nn.conv2d(x, kernel, 1, 'SAME', dilations=rate)

  kernel = tf.cast(kernel, x.dtype)  # a tensor: the gradient reads no variable
  if not _tape_is_recording():  # nothing differentiates: no custom gradient
    return forward(x, kernel)
  height, width = x.shape[1], x.shape[2]

  @tf.custom_gradient
  def conv(x, kernel):
    def grad(dy):
      flipped = tf.transpose(tf.reverse(kernel, [0, 1]), [0, 1, 3, 2])
      dx = tf.nn.conv2d(dy, flipped, 1, 'SAME', dilations=rate)
      taps = {(i, j): tf.matmul(tf.reshape(x[source], [-1, x.shape[-1]]),
                                tf.reshape(dy[target], [-1, dy.shape[-1]]),
                                transpose_a=True)
              for i, j, source, target in _tap_regions(kernel.shape, rate,
                                                       height, width)}
      zero = tf.zeros(kernel.shape[2:], kernel.dtype)  # [Cin, Cout]
      dk = tf.stack([taps.get((i, j), zero)
                     for i in range(kernel.shape[0])
                     for j in range(kernel.shape[1])])
      return dx, tf.reshape(dk, kernel.shape)

    return forward(x, kernel), grad

  return conv(x, kernel)




def conv2d(x, kernel, strides, padding, dilation_rate, training):
  """tf.nn.conv2d(x, kernel, strides, padding, dilations=dilation_rate)."""
  if training and dilation_rate != 1 and None not in x.shape[1:3]:
    return dilated_conv2d_for_training(x, kernel, dilation_rate)
  if training and dilation_rate != 1:
    # Maps of unknown size: the space-to-batch formulation has a gradient
    # on CPU (TensorFlow's dilated conv2d has none).
    return tf.nn.convolution(x, kernel, padding=padding,
                             dilations=dilation_rate)
  if training and strides == 1 and padding == 'SAME':
    return conv2d_for_training(x, kernel)
  return tf.nn.conv2d(x, kernel, strides, padding, dilations=dilation_rate)


def depthwise_conv2d(x, kernel, strides, padding, dilation_rate, training):
  """tf.nn.depthwise_conv2d with [strides] * 2 and [dilation_rate] * 2."""
  if training and (strides, dilation_rate, padding) == (1, 1, 'SAME'):
    return depthwise_conv2d_for_training(x, kernel)
  return tf.nn.depthwise_conv2d(x, kernel, [1, strides, strides, 1], padding,
                                dilations=[dilation_rate] * 2)
