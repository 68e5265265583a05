"""Convolution + batch norm + activation blocks shared by every model part.

Conventions follow the reference implementation (DeepLab2), so that its
checkpoints load unchanged:
  * convolutions followed by a batch norm have no bias; kernels He-normal
    (depthwise kernels Glorot-uniform);
  * strided convolutions pad symmetrically by (k - 1) // 2 on each side and
    then run 'valid' (equal to 'same' on the k*32+1 sizes this model uses,
    and well defined on any other size);
  * batch norm is synchronized across replicas, momentum 0.99, epsilon 1e-3;
  * GELU is exact (erf), never the tanh approximation.

Speed: at inference the batch norm's affine map and the activation run as
one XLA-compiled elementwise kernel (TensorFlow's own exact GELU makes
several passes over memory and is ~4x slower on CPU), or, for ReLU after a
convolution, an inference FusedBatchNorm that grappler fuses into it; and
convolutions call tf.nn.conv2d directly (Keras routes dilated convolutions through
space-to-batch, up to 3x slower on the ASPP's rates). In training, stride-1
convolutions use `conv2d_for_training`, whose input gradient is a forward
convolution (faster than TensorFlow's Conv2DBackpropInput on CPU), and
dilated ones `dilated_conv2d_for_training` (TensorFlow's CPU kernels have
no dilated conv2d gradient).
"""
import keras
import tensorflow as tf
from tensorflow.python.eager import record  # pylint: disable=g-direct-tensorflow-import

from deeplab2_kmax.model.layers import sync_batch_norm

BN_MOMENTUM = 0.99
BN_EPSILON = 1e-3
_SQRT_HALF = 0.7071067811865476
_INV_SQRT_2PI = 0.3989422804014327


def batch_norm(name, gamma_initializer='ones', axis=-1):
  """A synchronized BatchNormalization with the project's constants."""
  return sync_batch_norm.SyncBatchNormalization(
      axis=axis, momentum=BN_MOMENTUM, epsilon=BN_EPSILON,
      gamma_initializer=gamma_initializer, name=name)


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


def get_activation(name):
  """'relu', 'gelu' (exact) or None (identity)."""
  try:
    return _ACTIVATIONS[name]
  except KeyError:
    raise ValueError(f'unknown activation {name!r}; expected relu, gelu or '
                     'none') from None


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


def batch_norm_activation(bn, x, activation, training):
  """act(bn(x)); at inference fused with the moving statistics.

  After a convolution, ReLU and identity use TensorFlow's inference
  FusedBatchNorm, which grappler folds into the convolution (one oneDNN
  kernel with BN and ReLU as post-ops); GELU, and everything that is not a
  4-D feature map, use one XLA kernel for the affine map and activation.
  """
  if training:
    return get_activation(activation)(bn(x, training=True))
  get_activation(activation)  # validates the name
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


@keras.saving.register_keras_serializable(package='deeplab2_kmax')
class Conv2D(keras.layers.Conv2D):
  """keras.layers.Conv2D whose stride-1 'same' convolution trains with the
  faster gradient of `conv2d_for_training` (same forward values)."""

  def convolution_op(self, inputs, kernel):
    if (tuple(self.strides) == (1, 1) and
        tuple(self.dilation_rate) == (1, 1) and self.padding == 'same' and
        self.groups == 1 and self.data_format == 'channels_last'):
      return conv2d_for_training(inputs, kernel)
    return super().convolution_op(inputs, kernel)


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


@keras.saving.register_keras_serializable(package='deeplab2_kmax')
class ConvBN(keras.layers.Layer):
  """Conv2D (no bias) -> BN -> activation, with symmetric stride padding.

  `kernel` is the convolution kernel ([k, k, Cin, Cout], or [k, k, C, 1] when
  `depthwise`) and `bn` the batch norm (checkpoint importers map DeepLab2's
  `_conv` / `_batch_norm` onto them).
  """

  def __init__(self, filters, kernel_size=1, strides=1, activation=None,
               bn_gamma_initializer='ones', depthwise=False, dilation_rate=1,
               **kwargs):
    super().__init__(**kwargs)
    if strides != 1 and dilation_rate != 1:
      raise ValueError('a strided convolution cannot be dilated')
    get_activation(activation)
    self.filters = filters
    self.kernel_size = kernel_size
    self.strides = strides
    self.activation = activation
    self.bn_gamma_initializer = bn_gamma_initializer
    self.depthwise = depthwise
    self.dilation_rate = dilation_rate
    self.bn = batch_norm('batch_norm', bn_gamma_initializer)

  def build(self, input_shape):
    channels = input_shape[-1]
    k = self.kernel_size
    if self.depthwise:
      self.kernel = self.add_weight(name='depthwise_kernel',
                                    shape=(k, k, channels, 1),
                                    initializer='glorot_uniform')
      out_channels = channels
    else:
      self.kernel = self.add_weight(name='kernel',
                                    shape=(k, k, channels, self.filters),
                                    initializer='he_normal')
      out_channels = self.filters
    self.bn.build((None, None, None, out_channels))

  def call(self, x, training=False):
    padding = 'SAME'
    if self.strides != 1:
      begin = (self.kernel_size - 1) // 2
      end = self.kernel_size - 1 - begin
      x = tf.pad(x, [[0, 0], [begin, end], [begin, end], [0, 0]])
      padding = 'VALID'
    if self.depthwise and training and (self.strides, self.dilation_rate) == (
        1, 1):
      x = depthwise_conv2d_for_training(x, self.kernel)
    elif self.depthwise:
      rate = [self.dilation_rate] * 2
      x = tf.nn.depthwise_conv2d(x, self.kernel, [1, self.strides,
                                                  self.strides, 1],
                                 padding, dilations=rate)
    elif training and self.dilation_rate != 1 and None not in x.shape[1:3]:
      x = dilated_conv2d_for_training(x, self.kernel, self.dilation_rate)
    elif self.dilation_rate != 1 and training:
      # The space-to-batch formulation has a gradient on CPU (TensorFlow's
      # dilated conv2d has none) and computes the same values.
      x = tf.nn.convolution(x, self.kernel, padding=padding,
                            dilations=self.dilation_rate)
    elif training and self.strides == 1 and self.dilation_rate == 1:
      x = conv2d_for_training(x, self.kernel)
    else:
      x = tf.nn.conv2d(x, self.kernel, self.strides, padding,
                       dilations=self.dilation_rate)
    return batch_norm_activation(self.bn, x, self.activation, training)

  def get_config(self):
    return {**super().get_config(), 'filters': self.filters,
            'kernel_size': self.kernel_size, 'strides': self.strides,
            'activation': self.activation,
            'bn_gamma_initializer': self.bn_gamma_initializer,
            'depthwise': self.depthwise, 'dilation_rate': self.dilation_rate}


@keras.saving.register_keras_serializable(package='deeplab2_kmax')
class DenseBN(keras.layers.Layer):
  """A 1x1 projection of a [B, N, C] sequence (no bias) -> BN -> activation.

  DeepLab2 stores these as Conv1D kernels [1, Cin, Cout]; here the kernel is
  a Dense [Cin, Cout] (a plain matmul).
  """

  def __init__(self, units, activation=None, bn_gamma_initializer='ones',
               kernel_initializer='he_normal', **kwargs):
    super().__init__(**kwargs)
    get_activation(activation)
    self.units = units
    self.activation = activation
    self.bn_gamma_initializer = bn_gamma_initializer
    self.kernel_initializer = keras.initializers.get(kernel_initializer)
    self.dense = keras.layers.Dense(units, use_bias=False,
                                    kernel_initializer=self.kernel_initializer,
                                    name='conv')
    self.bn = batch_norm('batch_norm', bn_gamma_initializer)

  def build(self, input_shape):
    self.dense.build(input_shape)
    self.bn.build(tuple(input_shape[:-1]) + (self.units,))

  def call(self, x, training=False):
    return batch_norm_activation(self.bn, self.dense(x), self.activation,
                                 training)

  def get_config(self):
    return {**super().get_config(), 'units': self.units,
            'activation': self.activation,
            'bn_gamma_initializer': self.bn_gamma_initializer,
            'kernel_initializer': keras.initializers.serialize(
                self.kernel_initializer)}


@keras.saving.register_keras_serializable(package='deeplab2_kmax')
class SeparableConvBN(keras.layers.Layer):
  """Depthwise KxK conv -> BN -> act, then pointwise 1x1 -> BN -> act."""

  def __init__(self, filters, kernel_size=5, activation='gelu', **kwargs):
    super().__init__(**kwargs)
    self.filters = filters
    self.kernel_size = kernel_size
    self.activation = activation
    self.depthwise = ConvBN(None, kernel_size, activation=activation,
                            depthwise=True, name='depthwise')
    self.pointwise = ConvBN(filters, 1, activation=activation,
                            name='pointwise')

  def call(self, x, training=False):
    return self.pointwise(self.depthwise(x, training=training),
                          training=training)

  def get_config(self):
    return {**super().get_config(), 'filters': self.filters,
            'kernel_size': self.kernel_size, 'activation': self.activation}
