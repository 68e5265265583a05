"""Keras's own ImageNet ConvNeXt weights in our ConvNeXt encoder.

`keras.applications.ConvNeXt{Tiny,Small,Base,Large}` is the same network
as DeepLab2's ConvNeXt (../shared/docs/deeplab2_backbones.md section 1.1):
the same weights, layer by layer. Ours keeps DeepLab2's zero paddings before
the stem and before each downsampling norm, and has no final LayerNorm and no
input normalisation (the model scales images to [-1, 1] for every backbone,
as DeepLab2 does with its converted ConvNeXt weights), so with the same
weights the two agree where their functions coincide (no padding).

The map is by layer name and attribute, never by weight order (our blocks
create their layer scale first) or by variable path (Keras numbers its
layer-scale variables with a global counter). The only conversion is the
depthwise kernel: Keras's grouped Conv2D [7, 7, 1, C] is our
DepthwiseConv2D's [7, 7, C, 1], the same numbers in the same order.
"""
import keras

from deeplab2_kmax.checkpoints import deeplab2_import
from deeplab2_kmax.model.pixel_encoder import variants

KERAS_MODELS = {'convnext_tiny': 'ConvNeXtTiny',
                'convnext_small': 'ConvNeXtSmall',
                'convnext_base': 'ConvNeXtBase',
                'convnext_large': 'ConvNeXtLarge'}


def keras_convnext(variant, weights='imagenet', input_size=65):
  """keras.applications' ConvNeXt of `variant` without its classifier and
  its input normalisation (`weights`: "imagenet", None or a file)."""
  if variant not in KERAS_MODELS:
    raise ValueError(f'{variant!r}: Keras has ImageNet weights only for the '
                     f'ConvNeXts ({", ".join(KERAS_MODELS)})')
  application = getattr(keras.applications, KERAS_MODELS[variant])
  return application(weights=weights, include_top=False,
                     include_preprocessing=False,
                     input_shape=(input_size, input_size, 3))


def weight_pairs(encoder, keras_model):
  """[(our weight, Keras weight)] for every weight of our ConvNeXtEncoder."""
  name = encoder.variant
  layer = keras_model.get_layer
  pairs = []

  def kernel_bias(ours, theirs):
    pairs.extend([(ours.kernel, theirs.kernel), (ours.bias, theirs.bias)])

  def norm(ours, theirs):
    pairs.extend([(ours.gamma, theirs.gamma), (ours.beta, theirs.beta)])

  stem = layer(f'{name}_stem')
  kernel_bias(encoder.stem_conv, stem.get_layer(f'{name}_stem_conv'))
  norm(encoder.stem_norm, stem.get_layer(f'{name}_stem_layernorm'))
  for i in range(3):  # Keras's downsampling block i precedes our stage i+1.
    block = layer(f'{name}_downsampling_block_{i}')
    norm(encoder.downsample_norms[i],
         block.get_layer(f'{name}_downsampling_layernorm_{i}'))
    kernel_bias(encoder.downsample_convs[i],
                block.get_layer(f'{name}_downsampling_conv_{i}'))
  for i, blocks in enumerate(encoder.stages):
    for j, ours in enumerate(blocks):
      prefix = f'{name}_stage_{i}_block_{j}'
      kernel_bias(ours.depthwise_conv, layer(f'{prefix}_depthwise_conv'))
      norm(ours.norm, layer(f'{prefix}_layernorm'))
      kernel_bias(ours.pointwise_conv1, layer(f'{prefix}_pointwise_conv_1'))
      kernel_bias(ours.pointwise_conv2, layer(f'{prefix}_pointwise_conv_2'))
      pairs.append((ours.layer_scale, layer(f'{prefix}_layer_scale').gamma))
  return pairs


def copy_weights(encoder, keras_model):
  """Assigns the Keras model's weights to our encoder (built); returns
  (paths of our weights loaded, paths of Keras weights not used)."""
  pairs = weight_pairs(encoder, keras_model)
  covered = {id(ours) for ours, _ in pairs}
  if len(covered) != len(pairs) or covered != {id(w) for w in encoder.weights}:
    raise RuntimeError('internal error: the Keras ConvNeXt map does not '
                       'cover the encoder exactly once')
  for ours, theirs in pairs:
    ours.assign(keras.ops.reshape(theirs.value, ours.shape))
  used = {id(theirs) for _, theirs in pairs}
  unused = [w.path for w in keras_model.weights if id(w) not in used]
  return [ours.path for ours, _ in pairs], unused


def load_keras_imagenet_weights(model, backbone, *, where, weights='imagenet'):
  """Loads Keras's ImageNet ConvNeXt weights into `model`'s pixel encoder;
  returns an initial_checkpoint.LoadReport."""
  # Imported here: initial_checkpoint imports this module lazily.
  from deeplab2_kmax.checkpoints import initial_checkpoint  # pylint: disable=import-outside-toplevel
  if backbone not in variants.CONVNEXT_VARIANTS:
    raise deeplab2_import.CheckpointMismatchError(
        f'{where}: Keras has ImageNet weights only for the ConvNeXt '
        f'backbones ({", ".join(KERAS_MODELS)}); the backbone is '
        f'{backbone!r}')
  try:
    source = keras_convnext(backbone, weights=weights)
  except Exception as e:  # pylint: disable=broad-except
    # Keras reports a failed download or a bad file in many exception types.
    raise deeplab2_import.CheckpointMismatchError(
        f'{where}: cannot get keras.applications.{KERAS_MODELS[backbone]} '
        f'ImageNet weights (Keras downloads them into ~/.keras/models): '
        f'{type(e).__name__}: {e}') from None
  deeplab2_import.ensure_built(model)
  loaded, unused = copy_weights(model.pixel_encoder, source)
  _, fresh = initial_checkpoint.scope_weights(
      model, initial_checkpoint.PIXEL_ENCODER)
  return initial_checkpoint.LoadReport(
      checkpoint=f'keras.applications.{KERAS_MODELS[backbone]}'
                 f'(weights={weights!r})',
      layout='keras', scope=initial_checkpoint.PIXEL_ENCODER, loaded=loaded,
      fresh=fresh,
      unused=unused)
