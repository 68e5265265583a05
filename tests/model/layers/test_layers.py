"""Tests of the shared layers: conv/BN, batch norms, resize, blocks, fuse."""
import math

import keras
import numpy as np
import pytest
import tensorflow as tf

from deeplab2_kmax.model.kernels import cpu_conv
from deeplab2_kmax.model.layers import conv_bn
from deeplab2_kmax.model.layers import drop_path
from deeplab2_kmax.model.layers import grouped_batch_norm
from deeplab2_kmax.model.layers import resize
from deeplab2_kmax.model.layers import residual_blocks
from deeplab2_kmax.model.layers import resized_fuse
from deeplab2_kmax.trainer import runner

_EPSILON = conv_bn.BN_EPSILON


def _random(shape, seed=0):
  return np.random.RandomState(seed).normal(size=shape).astype(np.float32)


def _gelu(x):
  erf = np.vectorize(math.erf)
  return 0.5 * x * (1.0 + erf(x / math.sqrt(2.0)))


def _conv2d(x, kernel, stride=1, dilation=1, padding=(0, 0)):
  """Numpy NHWC convolution with explicit (begin, end) padding per side."""
  begin, end = padding
  x = np.pad(x, [(0, 0), (begin, end), (begin, end), (0, 0)])
  k = kernel.shape[0]
  span = dilation * (k - 1) + 1
  out_h = (x.shape[1] - span) // stride + 1
  out_w = (x.shape[2] - span) // stride + 1
  y = np.zeros((x.shape[0], out_h, out_w, kernel.shape[-1]), np.float64)
  for i in range(out_h):
    for j in range(out_w):
      patch = x[:, i * stride:i * stride + span:dilation,
                j * stride:j * stride + span:dilation, :]  # [B, k, k, Cin]
      y[:, i, j, :] = np.einsum('bhwc,hwcd->bd', patch, kernel)
  return y


def _set_batch_norm(bn, rng):
  shape = bn.gamma.shape
  bn.gamma.assign(rng.uniform(0.5, 1.5, shape).astype(np.float32))
  bn.beta.assign(rng.normal(0.0, 0.5, shape).astype(np.float32))
  bn.moving_mean.assign(rng.normal(0.0, 0.5, shape).astype(np.float32))
  bn.moving_variance.assign(rng.uniform(0.5, 2.0, shape).astype(np.float32))


def _apply_batch_norm(x, bn):
  return ((x - np.asarray(bn.moving_mean)) /
          np.sqrt(np.asarray(bn.moving_variance) + _EPSILON) *
          np.asarray(bn.gamma) + np.asarray(bn.beta))


# ConvBN / DenseBN / SeparableConvBN.


@pytest.mark.parametrize('size', [9, 5, 33])
def test_conv_bn_stride_2_halves_odd_sizes(size):
  layer = conv_bn.ConvBN(4, 3, strides=2)
  y = layer(tf.zeros([1, size, size + 2, 3]))
  assert y.shape == (1, (size + 1) // 2, (size + 3) // 2, 4)


@pytest.mark.parametrize('size,kernel_size', [(9, 3), (8, 3), (8, 5), (7, 4)])
def test_conv_bn_stride_2_pads_symmetrically(size, kernel_size):
  """Strided convs pad (k-1)//2 before and the rest after, on any size.

  On even sizes this differs from 'same' (which pads more at the end).
  """
  rng = np.random.RandomState(size + kernel_size)
  layer = conv_bn.ConvBN(5, kernel_size, strides=2, activation='relu')
  x = _random([2, size, size, 3], seed=size)
  layer(x)
  _set_batch_norm(layer.bn, rng)
  kernel = np.asarray(layer.kernel)
  begin = (kernel_size - 1) // 2
  padding = (begin, kernel_size - 1 - begin)
  expected = np.maximum(
      _apply_batch_norm(_conv2d(x, kernel, stride=2, padding=padding),
                        layer.bn), 0.0)
  y = layer(x, training=False).numpy()
  np.testing.assert_allclose(y, expected, atol=1e-4)
  # The same through tf.nn with explicit padding.
  tf_conv = tf.nn.conv2d(x, kernel, strides=2,
                         padding=[[0, 0], list(padding), list(padding),
                                  [0, 0]]).numpy()
  np.testing.assert_allclose(
      y, np.maximum(_apply_batch_norm(tf_conv, layer.bn), 0.0), atol=1e-4)


def test_conv_bn_stride_1_keeps_size_and_applies_gelu():
  rng = np.random.RandomState(3)
  layer = conv_bn.ConvBN(4, 3, activation='gelu')
  x = _random([1, 6, 5, 2], seed=3)
  layer(x)
  _set_batch_norm(layer.bn, rng)
  expected = _gelu(_apply_batch_norm(
      _conv2d(x, np.asarray(layer.kernel), padding=(1, 1)), layer.bn))
  np.testing.assert_allclose(layer(x).numpy(), expected, atol=1e-4)


@pytest.mark.parametrize('shape', [[2, 3, 5, 7], [1, 65, 65, 64]])
@pytest.mark.parametrize('in_function', [False, True])
def test_gelu_and_its_gradient_equal_exact_gelu(shape, in_function):
  # The second shape is above cpu_conv._XLA_MIN_ELEMENTS: the XLA kernels
  # with the hand-written gradient; the first takes the plain ops.
  x = tf.constant(_random(shape, seed=5) * 3.0)
  weights = tf.constant(_random(shape, seed=6))

  def value_and_gradient(gelu):
    with tf.GradientTape() as tape:
      tape.watch(x)
      y = gelu(x)
      loss = tf.reduce_sum(y * weights)
    return y, tape.gradient(loss, x)

  def exact(t):
    return tf.nn.gelu(t, approximate=False)

  if in_function:
    y, dx = tf.function(lambda: value_and_gradient(cpu_conv.gelu))()
  else:
    y, dx = value_and_gradient(cpu_conv.gelu)
  expected_y, expected_dx = value_and_gradient(exact)
  np.testing.assert_allclose(y.numpy(), expected_y.numpy(), atol=2e-6)
  np.testing.assert_allclose(dx.numpy(), expected_dx.numpy(), atol=2e-6)


def test_gelu_keeps_only_its_input_for_the_backward_pass():
  # Differentiating through a compiled forward makes TensorFlow rewrite the
  # call to also return the intermediates of the gradient; with the
  # hand-written gradient every compiled call keeps its single output.
  spec = tf.TensorSpec([1, 65, 65, 64], tf.float32)

  @tf.function(input_signature=[spec])
  def gradient(x):
    with tf.GradientTape() as tape:
      tape.watch(x)
      loss = tf.reduce_sum(cpu_conv.gelu(x) * x)
    return tape.gradient(loss, x)

  graph = gradient.get_concrete_function().graph
  calls = [op for op in graph.get_operations()
           if op.type in ('PartitionedCall', 'StatefulPartitionedCall')]
  assert len(calls) == 2  # the forward and the gradient kernel
  assert all(len(op.outputs) == 1 for op in calls), [
      (op.name, len(op.outputs)) for op in calls]


def test_gelu_without_a_tape_has_no_custom_gradient_ops():
  # At inference the custom gradient's IdentityN only costs memory.
  graph = tf.function(cpu_conv.gelu).get_concrete_function(
      tf.TensorSpec([1, 65, 65, 64], tf.float32)).graph
  types = [op.type for op in graph.get_operations()]
  assert 'IdentityN' not in types
  assert types.count('StatefulPartitionedCall') + types.count(
      'PartitionedCall') == 1


def test_conv_bn_dilation():
  rng = np.random.RandomState(4)
  layer = conv_bn.ConvBN(3, 3, dilation_rate=2)
  x = _random([1, 9, 9, 2], seed=4)
  y = layer(x)
  assert y.shape == (1, 9, 9, 3)
  _set_batch_norm(layer.bn, rng)
  expected = _apply_batch_norm(
      _conv2d(x, np.asarray(layer.kernel), dilation=2, padding=(2, 2)),
      layer.bn)
  np.testing.assert_allclose(layer(x).numpy(), expected, atol=1e-4)


@pytest.mark.parametrize('tapwise_min_pixels', [1, 10**9])
@pytest.mark.parametrize('kernel_size', [1, 3, 5])
def test_conv2d_for_training_equals_conv2d_and_its_gradients(
    kernel_size, tapwise_min_pixels, monkeypatch):
  # Values and both gradients of the hand-written backward pass against
  # TensorFlow's own, on an odd and an even map size; the kernel gradient
  # by one matmul per tap and by TensorFlow's filter gradient.
  monkeypatch.setattr(cpu_conv, "_TAPWISE_FILTER_GRADIENT_MIN_PIXELS",
                      tapwise_min_pixels)
  for height, width in ((7, 6), (5, 9)):
    x = tf.constant(_random([2, height, width, 4], seed=kernel_size))
    kernel = tf.constant(_random([kernel_size, kernel_size, 4, 3], seed=9))
    upstream = tf.constant(_random([2, height, width, 3], seed=10))
    _assert_same_values_and_gradients(
        cpu_conv.conv2d_for_training,
        lambda x, k: tf.nn.conv2d(x, k, 1, 'SAME'), x, kernel, upstream)


def _assert_same_values_and_gradients(conv, reference, x, kernel, upstream):
  """conv(x, kernel) and its gradients for x and kernel equal reference's."""
  results = []
  for fn in (conv, reference):
    with tf.GradientTape() as tape:
      tape.watch([x, kernel])
      y = fn(x, kernel)
    results.append([y] + tape.gradient(y, [x, kernel],
                                       output_gradients=upstream))
  for got, want in zip(*results):
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize('batch', [1, 2])
@pytest.mark.parametrize('kernel_size', [3, 5, 7])
def test_depthwise_conv2d_for_training_equals_tf_and_its_gradients(
    kernel_size, batch):
  # 5x5 and 7x7 kernel gradients by a depthwise conv with the output
  # gradient as the kernel; maps smaller than the kernel too.
  for height, width in ((7, 6), (5, 9), (3, 2)):
    x = tf.constant(_random([batch, height, width, 4], seed=kernel_size))
    kernel = tf.constant(_random([kernel_size, kernel_size, 4, 1], seed=3))
    upstream = tf.constant(_random([batch, height, width, 4], seed=4))
    _assert_same_values_and_gradients(
        cpu_conv.depthwise_conv2d_for_training,
        lambda x, k: tf.nn.depthwise_conv2d(x, k, [1] * 4, 'SAME'), x, kernel,
        upstream)


@pytest.mark.parametrize('spec', [[None, 6, 7, 3], [None, None, None, 3]])
def test_depthwise_kernel_gradient_with_an_unknown_batch_or_size(spec):
  # An unknown map size keeps TensorFlow's kernel gradient.
  x = tf.constant(_random([2, 6, 7, 3], seed=1))
  kernel = tf.constant(_random([5, 5, 3, 1], seed=2))

  def kernel_gradient(conv):
    @tf.function(input_signature=[tf.TensorSpec(spec),
                                  tf.TensorSpec([5, 5, 3, 1])])
    def step(x, kernel):
      with tf.GradientTape() as tape:
        tape.watch(kernel)
        y = conv(x, kernel)
        loss = tf.reduce_sum(y * y)
      return tape.gradient(loss, kernel)
    return step(x, kernel)

  np.testing.assert_allclose(
      kernel_gradient(cpu_conv.depthwise_conv2d_for_training),
      kernel_gradient(lambda x, k: tf.nn.depthwise_conv2d(x, k, [1] * 4,
                                                          'SAME')),
      rtol=1e-4, atol=1e-4)


def test_conv2d_layer_trains_like_keras_conv2d():
  # conv_bn.Conv2D (1x1 with bias, as the heads use it) against Keras's own
  # layer with the same weights: outputs and gradients.
  x = tf.constant(_random([2, 5, 6, 4], seed=5))
  ours = conv_bn.Conv2D(3, 1, use_bias=True)
  theirs = keras.layers.Conv2D(3, 1, use_bias=True)
  ours.build(x.shape)
  theirs.build(x.shape)
  theirs.set_weights([w + 0.5 for w in ours.get_weights()])
  ours.set_weights(theirs.get_weights())
  results = []
  for layer in (ours, theirs):
    with tf.GradientTape() as tape:
      tape.watch(x)
      y = layer(x)
      loss = tf.reduce_sum(y * tf.range(3, dtype=tf.float32))
    results.append([y] + tape.gradient(loss, [x] + layer.trainable_weights))
  for got, want in zip(*results):
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
  assert isinstance(keras.layers.deserialize(
      keras.layers.serialize(ours)), conv_bn.Conv2D)


@pytest.mark.parametrize('rate', [2, 6])
def test_conv_bn_dilated_training_gradient_equals_space_to_batch(rate):
  # In training a dilated conv has a written-out gradient; it must equal
  # that of TensorFlow's dilated conv.
  layer = conv_bn.ConvBN(3, 3, dilation_rate=rate)
  x = tf.constant(_random([1, 9, 9, 2], seed=rate))
  layer(x)
  upstream = tf.constant(_random([1, 9, 9, 3], seed=1))
  with tf.GradientTape() as tape:
    tape.watch(x)
    y = layer.bn(tf.nn.convolution(x, layer.kernel, padding='SAME',
                                   dilations=rate), training=True)
  want = tape.gradient(y, [x, layer.kernel], output_gradients=upstream)
  with tf.GradientTape() as tape:
    tape.watch(x)
    y = layer(x, training=True)
  got = tape.gradient(y, [x, layer.kernel], output_gradients=upstream)
  for a, b in zip(got, want):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)


def test_conv_bn_rejects_strided_dilated_conv():
  with pytest.raises(ValueError, match='dilated'):
    conv_bn.ConvBN(3, 3, strides=2, dilation_rate=2)


def test_conv_bn_has_no_bias():
  layer = conv_bn.ConvBN(3, 1)
  layer(tf.zeros([1, 3, 3, 2]))
  assert sorted(v.name for v in layer.trainable_weights) == [
      'beta', 'gamma', 'kernel']


def test_conv_bn_depthwise_keeps_channels():
  layer = conv_bn.ConvBN(None, 3, depthwise=True)
  assert layer(tf.zeros([2, 5, 5, 7])).shape == (2, 5, 5, 7)


def test_get_activation_rejects_unknown_name():
  with pytest.raises(ValueError, match='swish'):
    conv_bn.get_activation('swish')


def test_dense_bn_matches_numpy():
  rng = np.random.RandomState(5)
  layer = conv_bn.DenseBN(6, activation='relu')
  x = _random([2, 7, 4], seed=5)
  assert layer(x).shape == (2, 7, 6)
  _set_batch_norm(layer.bn, rng)
  expected = np.maximum(
      _apply_batch_norm(x @ np.asarray(layer.dense.kernel), layer.bn), 0.0)
  np.testing.assert_allclose(layer(x).numpy(), expected, atol=1e-4)
  assert layer.dense.bias is None


def test_separable_conv_bn_shapes():
  layer = conv_bn.SeparableConvBN(8, kernel_size=5)
  y = layer(tf.random.normal([2, 7, 6, 3]))
  assert y.shape == (2, 7, 6, 8)
  assert layer.depthwise.kernel.shape == (5, 5, 3, 1)
  assert layer.pointwise.kernel.shape == (1, 1, 3, 8)


# GroupedBatchNorm.

_PARAM_SHAPE = (3, 1, 4, 1, 1)
_REDUCE_AXES = (1, 3, 4)


def test_grouped_batch_norm_inference_matches_formula():
  rng = np.random.RandomState(6)
  layer = grouped_batch_norm.GroupedBatchNorm(_PARAM_SHAPE)
  layer.build()
  _set_batch_norm(layer, rng)
  assert layer.gamma.shape == _PARAM_SHAPE
  x = _random([3, 2, 4, 5, 5], seed=6)
  expected = _apply_batch_norm(x, layer)
  np.testing.assert_allclose(layer(x, training=False).numpy(), expected,
                             atol=1e-5)


def _check_training_step(layer, x, y, rng_values):
  gamma, beta, old_mean, old_var = rng_values
  mean = x.mean(axis=_REDUCE_AXES, keepdims=True)
  var = x.var(axis=_REDUCE_AXES, keepdims=True)
  expected = (x - mean) / np.sqrt(var + _EPSILON) * gamma + beta
  np.testing.assert_allclose(y, expected, atol=1e-4)
  np.testing.assert_allclose(layer.moving_mean.numpy(),
                             0.99 * old_mean + 0.01 * mean, atol=1e-5)
  np.testing.assert_allclose(layer.moving_variance.numpy(),
                             0.99 * old_var + 0.01 * var, atol=1e-5)


def _snapshot(layer):
  return tuple(np.array(v) for v in (layer.gamma, layer.beta,
                                     layer.moving_mean, layer.moving_variance))


def test_grouped_batch_norm_training_uses_batch_statistics():
  rng = np.random.RandomState(7)
  layer = grouped_batch_norm.GroupedBatchNorm(_PARAM_SHAPE)
  layer.build()
  _set_batch_norm(layer, rng)
  before = _snapshot(layer)
  # Per-group offsets and scales, so that wrong reduce axes would show.
  x = (_random([3, 2, 4, 5, 5], seed=7) * rng.uniform(0.5, 3, _PARAM_SHAPE) +
       rng.normal(0, 2, _PARAM_SHAPE)).astype(np.float32)
  y = layer(x, training=True).numpy()
  _check_training_step(layer, x, y, before)


def test_grouped_batch_norm_training_inside_tf_function():
  rng = np.random.RandomState(8)
  layer = grouped_batch_norm.GroupedBatchNorm(_PARAM_SHAPE)
  layer.build()
  _set_batch_norm(layer, rng)
  before = _snapshot(layer)
  x = (_random([3, 2, 4, 3, 6], seed=8) + rng.normal(0, 2, _PARAM_SHAPE)
      ).astype(np.float32)

  @tf.function
  def step(inputs):
    return layer(inputs, training=True)

  y = step(tf.constant(x)).numpy()
  _check_training_step(layer, x, y, before)


def test_grouped_batch_norm_rejects_wrong_rank():
  layer = grouped_batch_norm.GroupedBatchNorm(_PARAM_SHAPE)
  with pytest.raises(ValueError, match='rank'):
    layer(tf.zeros([3, 2, 4, 5]))


# resize_align_corners.


def _resize_reference(images, size):
  """Bilinear align-corners resize in numpy."""
  _, in_h, in_w, _ = images.shape
  out_h, out_w = size

  def sources(n_in, n_out):
    scale = (n_in - 1) / (n_out - 1) if n_out > 1 else 0.0
    pos = np.arange(n_out) * scale
    lo = np.minimum(np.floor(pos).astype(int), n_in - 1)
    hi = np.minimum(lo + 1, n_in - 1)
    return lo, hi, pos - lo

  y0, y1, wy = sources(in_h, out_h)
  x0, x1, wx = sources(in_w, out_w)
  wy = wy[None, :, None, None]
  wx = wx[None, None, :, None]
  top = images[:, y0][:, :, x0] * (1 - wx) + images[:, y0][:, :, x1] * wx
  bottom = images[:, y1][:, :, x0] * (1 - wx) + images[:, y1][:, :, x1] * wx
  return top * (1 - wy) + bottom * wy


@pytest.mark.parametrize('in_size,out_size', [
    ((5, 5), (9, 9)), ((3, 7), (5, 13)), ((9, 9), (5, 5)), ((4, 6), (7, 3))])
def test_resize_align_corners_matches_numpy(in_size, out_size):
  images = _random([2, *in_size, 3], seed=9)
  y = resize.resize_align_corners(tf.constant(images), out_size).numpy()
  assert y.shape == (2, *out_size, 3)
  np.testing.assert_allclose(y, _resize_reference(images, out_size),
                             atol=1e-5)


def test_resize_align_corners_keeps_corners_and_grid_points():
  images = _random([1, 5, 5, 2], seed=10)
  y = resize.resize_align_corners(tf.constant(images), (9, 9)).numpy()
  # With k*s+1 sizes every input pixel lands exactly on an output pixel.
  np.testing.assert_allclose(y[:, ::2, ::2], images, atol=1e-6)


def test_resize_align_corners_equal_size_is_a_no_op():
  images = tf.random.normal([1, 5, 7, 2])
  assert resize.resize_align_corners(images, (5, 7)) is images


def test_resize_align_corners_keeps_dtype():
  images = tf.random.normal([1, 3, 3, 2], dtype=tf.float16)
  assert resize.resize_align_corners(images, (5, 5)).dtype == tf.float16


# DropPath.


def test_drop_path_is_identity_at_inference():
  layer = drop_path.DropPath(0.5)
  x = tf.random.normal([8, 3, 3, 2])
  np.testing.assert_array_equal(layer(x, training=False).numpy(), x.numpy())


def test_drop_path_keep_one_is_identity_in_training():
  layer = drop_path.DropPath(1.0)
  x = tf.random.normal([8, 3, 2])
  np.testing.assert_array_equal(layer(x, training=True).numpy(), x.numpy())


def test_drop_path_zeros_or_scales_whole_samples():
  keep = 0.5
  layer = drop_path.DropPath(keep)
  x = tf.random.uniform([64, 3, 3, 2], 1.0, 2.0)  # Nonzero everywhere.
  y = layer(x, training=True).numpy()
  dropped = np.all(y == 0.0, axis=(1, 2, 3))
  scaled = np.all(np.isclose(y, x.numpy() / keep), axis=(1, 2, 3))
  assert np.all(dropped ^ scaled)  # Each sample is one or the other.
  assert dropped.any() and scaled.any()  # Fails with probability 2**-63.


def test_drop_path_stream_continues_from_a_checkpoint(tmp_path):
  # Its random state is a layer variable that the trainer checkpoints
  # (runner.random_states): restored, it draws what it would have drawn.
  layer = drop_path.DropPath(0.5)
  x = tf.ones([64, 1])
  layer(x, training=True)
  states = runner.random_states(layer)
  assert len(states) == 1
  prefix = tf.train.Checkpoint(random_states=states).write(
      str(tmp_path / 'ckpt'))
  expected = [layer(x, training=True).numpy() for _ in range(2)]
  assert not np.array_equal(*expected)  # a new draw per call
  tf.train.Checkpoint(random_states=states).read(prefix).assert_consumed()
  for value in expected:
    np.testing.assert_array_equal(layer(x, training=True).numpy(), value)


@pytest.mark.parametrize('keep_prob', [0.0, -0.1, 1.5])
def test_drop_path_rejects_bad_keep_prob(keep_prob):
  with pytest.raises(ValueError, match='keep_prob'):
    drop_path.DropPath(keep_prob)


# Residual blocks.


def test_bottleneck_block_shapes():
  block = residual_blocks.BottleneckBlock(4, 16)
  assert block(tf.zeros([2, 9, 9, 16])).shape == (2, 9, 9, 16)
  assert block.shortcut is None
  strided = residual_blocks.BottleneckBlock(4, 16, strides=2)
  assert strided(tf.zeros([2, 9, 9, 16])).shape == (2, 5, 5, 16)
  assert strided.shortcut is not None
  dilated = residual_blocks.BottleneckBlock(2, 3, dilation_rate=2)
  assert dilated(tf.zeros([1, 5, 5, 3])).shape == (1, 5, 5, 8)


def test_axial_block_shape():
  block = residual_blocks.AxialBlock(4, 16, num_heads=2, activation='gelu')
  assert block(tf.zeros([2, 5, 3, 16])).shape == (2, 5, 3, 16)
  assert block.shortcut is None


def test_strided_axial_block_shape():
  """MaX-S's first stage-5 block: strided attention and 1x1/2 shortcut."""
  block = residual_blocks.AxialBlock(4, 16, strides=2, num_heads=2,
                                     activation='gelu')
  assert block(tf.zeros([2, 5, 4, 16])).shape == (2, 3, 2, 16)
  assert block.shortcut is not None and block.shortcut.strides == 2


@pytest.mark.parametrize('training', [False, True])
def test_fresh_bottleneck_block_is_relu_of_input(training):
  x = _random([2, 5, 5, 16], seed=11)
  block = residual_blocks.BottleneckBlock(4, 16)
  np.testing.assert_allclose(block(x, training=training).numpy(),
                             np.maximum(x, 0.0), atol=1e-6)


def test_fresh_axial_block_is_gelu_of_input():
  x = _random([2, 5, 3, 16], seed=12)
  block = residual_blocks.AxialBlock(4, 16, num_heads=2, activation='gelu')
  np.testing.assert_allclose(block(x, training=False).numpy(), _gelu(x),
                             atol=1e-5)


def test_fresh_block_with_projection_is_shortcut_of_activated_input():
  x = _random([2, 5, 5, 6], seed=13)
  block = residual_blocks.BottleneckBlock(4, 6, strides=2)
  y = block(x, training=False).numpy()
  assert y.shape == (2, 3, 3, 16)
  expected = block.shortcut(np.maximum(x, 0.0), training=False).numpy()
  np.testing.assert_allclose(y, expected, atol=1e-6)
  assert np.abs(expected).max() > 0


def test_trained_block_is_no_longer_identity():
  """Guards the check above: with nonzero conv3 gamma the branch shows."""
  x = _random([1, 5, 5, 16], seed=14)
  block = residual_blocks.BottleneckBlock(4, 16)
  block(x)
  block.conv3.bn.gamma.assign(tf.ones_like(block.conv3.bn.gamma))
  assert not np.allclose(block(x).numpy(), np.maximum(x, 0.0), atol=1e-3)


# ResizedFuse.


def test_resized_fuse_output_takes_last_input_size():
  fuse = resized_fuse.ResizedFuse(6, (8, 4))
  y = fuse([tf.random.normal([2, 3, 3, 8]), tf.random.normal([2, 5, 5, 4])])
  assert y.shape == (2, 5, 5, 6)
  assert all(p is not None for p in fuse.projections)


def test_resized_fuse_skips_projection_when_channels_match():
  coarse = _random([2, 3, 3, 8], seed=15)
  fine = _random([2, 5, 5, 4], seed=16)
  fuse = resized_fuse.ResizedFuse(4, (8, 4))
  y = fuse([coarse, fine], training=False).numpy()
  assert fuse.projections[0] is not None
  assert fuse.projections[1] is None
  # The matching input is added as is, without activation.
  projected = fuse.projections[0](_gelu(coarse), training=False).numpy()
  expected = _resize_reference(projected, (5, 5)) + fine
  np.testing.assert_allclose(y, expected, atol=1e-4)


def test_resized_fuse_without_projections_is_resize_and_sum():
  coarse = _random([1, 3, 3, 4], seed=17)
  fine = _random([1, 5, 5, 4], seed=18)
  fuse = resized_fuse.ResizedFuse(4, (4, 4))
  y = fuse([coarse, fine]).numpy()
  assert fuse.projections == [None, None]
  assert not fuse.trainable_weights
  np.testing.assert_allclose(y, _resize_reference(coarse, (5, 5)) + fine,
                             atol=1e-5)


# Dilated convolution in training (written-out gradient).


@pytest.mark.parametrize('size,rate', [((9, 7), 2), ((9, 7), 6), ((5, 11), 6),
                                       ((21, 23), 6), ((21, 21), 12),
                                       ((21, 21), 18)])
@pytest.mark.parametrize('in_function', [False, True])
def test_dilated_conv2d_for_training_equals_dilated_conv(size, rate,
                                                         in_function):
  # Values and both gradients against TensorFlow's space-to-batch route.
  # Some of these taps fall wholly in the padding (rate >= a side): their
  # kernel gradient must be exactly zero, as TensorFlow's.
  x = tf.random.normal([2, *size, 6], seed=rate)
  kernel = tf.random.normal([3, 3, 6, 5], seed=1)
  upstream = tf.random.normal([2, *size, 5], seed=2)

  def values_and_gradients(conv):
    with tf.GradientTape() as tape:
      tape.watch([x, kernel])
      y = conv(x, kernel)
    return [y, *tape.gradient(y, [x, kernel], output_gradients=upstream)]

  def ours(x, kernel):
    return cpu_conv.dilated_conv2d_for_training(x, kernel, rate)

  def dilated(x, kernel):
    return tf.nn.convolution(x, kernel, padding='SAME', dilations=rate)

  got = (tf.function(lambda: values_and_gradients(ours))() if in_function
         else values_and_gradients(ours))
  want = values_and_gradients(dilated)
  for a, b in zip(got, want):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)


def test_dilated_conv2d_for_training_without_a_tape_is_one_conv():
  # Without a recording tape the custom gradient's ops would only cost
  # memory.
  graph = tf.function(
      lambda x, k: cpu_conv.dilated_conv2d_for_training(x, k, 6)
  ).get_concrete_function(tf.TensorSpec([1, 21, 21, 8], tf.float32),
                          tf.TensorSpec([3, 3, 8, 4], tf.float32)).graph
  types = [op.type for op in graph.get_operations()]
  assert 'IdentityN' not in types
  assert types.count('Conv2D') == 1


def test_conv_bn_large_rate_inference_matches_training_graph_values():
  x = _random([1, 21, 21, 4], seed=21)
  layer = conv_bn.ConvBN(3, 3, dilation_rate=18, activation='gelu')
  layer(x)
  fast = layer(x, training=False).numpy()
  plain = tf.nn.convolution(x, layer.kernel, padding='SAME', dilations=18)
  plain = _gelu(layer.bn(plain, training=False).numpy())
  np.testing.assert_allclose(fast, plain, atol=1e-5)
