"""Imports DeepLab2 kMaX-DeepLab checkpoints by key.

DeepLab2 saves object-based TF2 checkpoints whose keys are attribute paths of
its Keras objects (e.g. `encoder/_stage2/_block1/_conv1_bn_act/_conv/kernel/
.ATTRIBUTES/VARIABLE_VALUE`). This module lists, for every variable of our
model, the DeepLab2 key it comes from (walking our model's structure), reads
the checkpoint with tf.train.load_checkpoint and assigns every value.
A missing key, an unused key or a shape mismatch is an error listing all of
them; nothing is assigned unless everything matches.
"""
import dataclasses

import numpy as np
import tensorflow as tf

from deeplab2_kmax.model.pixel_encoder import convnext
from deeplab2_kmax.model.pixel_encoder import resnet


_SUFFIX = '/.ATTRIBUTES/VARIABLE_VALUE'
_BN_VARIABLES = ('gamma', 'beta', 'moving_mean', 'moving_variance')
# Checkpoint entries that are not model weights.
_NON_MODEL_KEYS = ('global_step', 'save_counter', '_CHECKPOINTABLE_OBJECT_GRAPH')


class CheckpointMismatchError(ValueError):
  """The checkpoint and the model do not have the same weights."""


@dataclasses.dataclass
class _Entry:
  key: str  # DeepLab2 key without the .ATTRIBUTES suffix
  variable: tf.Variable


def _bn(prefix, layer):
  """A Keras BatchNormalization or a GroupedBatchNorm."""
  return [_Entry(f'{prefix}/{name}', getattr(layer, name))
          for name in _BN_VARIABLES]


def _conv_bn(prefix, layer):
  if layer.depthwise:
    kernel = _Entry(f'{prefix}/_depthwise_conv/depthwise_kernel',
                    layer.kernel)
  else:
    kernel = _Entry(f'{prefix}/_conv/kernel', layer.kernel)
  return [kernel] + _bn(f'{prefix}/_batch_norm', layer.bn)


def _dense_bn(prefix, layer):
  return ([_Entry(f'{prefix}/_conv/kernel', layer.dense.kernel)] +
          _bn(f'{prefix}/_batch_norm', layer.bn))


def _separable(prefix, layer):
  return (_conv_bn(f'{prefix}/_depthwise', layer.depthwise) +
          _conv_bn(f'{prefix}/_pointwise', layer.pointwise))


def _residual_block(prefix, block):
  entries = []
  if hasattr(block, 'attention'):
    entries += _conv_bn(f'{prefix}/_conv1_bn_act', block.conv1)
    for axis_name, axis in (('_height_axis', block.attention.height_axis),
                            ('_width_axis', block.attention.width_axis)):
      p = f'{prefix}/_attention/{axis_name}'
      entries.append(_Entry(f'{p}/qkv_kernel', axis.qkv_kernel))
      entries += _bn(f'{p}/_batch_norm_qkv', axis.batch_norm_qkv)
      entries += _bn(f'{p}/_batch_norm_similarity',
                     axis.batch_norm_similarity)
      entries += _bn(f'{p}/_batch_norm_retrieved_output',
                     axis.batch_norm_retrieved_output)
      for rpe in ('query_rpe', 'key_rpe', 'value_rpe'):
        entries.append(_Entry(f'{p}/_{rpe}/embeddings',
                              getattr(axis, rpe).embeddings))
  else:
    entries += _conv_bn(f'{prefix}/_conv1_bn_act', block.conv1)
    entries += _conv_bn(f'{prefix}/_conv2_bn_act', block.conv2)
  entries += _conv_bn(f'{prefix}/_conv3_bn', block.conv3)
  if block.shortcut is not None:
    entries += _conv_bn(f'{prefix}/_shortcut', block.shortcut)
  return entries


def _kernel_bias(prefix, layer):
  return [_Entry(f'{prefix}/kernel', layer.kernel),
          _Entry(f'{prefix}/bias', layer.bias)]


def _layer_norm(prefix, layer):
  return [_Entry(f'{prefix}/gamma', layer.gamma),
          _Entry(f'{prefix}/beta', layer.beta)]


def _convnext_encoder(encoder):
  """DeepLab2's ConvNeXt: Sequentials keyed by `layer_with_weights-{j}`.

  Reshaped on load: depthwise kernels [7, 7, 1, C] -> [7, 7, C, 1], layer
  scales [1, 1, 1, C] -> [C].
  """
  p = 'encoder/downsample_layers'
  entries = (_kernel_bias(f'{p}/0/layer_with_weights-0', encoder.stem_conv) +
             _layer_norm(f'{p}/0/layer_with_weights-1', encoder.stem_norm))
  for i, (norm, conv) in enumerate(zip(encoder.downsample_norms,
                                       encoder.downsample_convs)):
    entries += _layer_norm(f'{p}/{i + 1}/layer_with_weights-0', norm)
    entries += _kernel_bias(f'{p}/{i + 1}/layer_with_weights-1', conv)
  for i, blocks in enumerate(encoder.stages):
    for j, block in enumerate(blocks):
      b = f'encoder/stages/{i}/layer_with_weights-{j}'
      entries += _kernel_bias(f'{b}/depthwise_conv', block.depthwise_conv)
      entries += _layer_norm(f'{b}/norm', block.norm)
      entries += _kernel_bias(f'{b}/pointwise_conv1', block.pointwise_conv1)
      entries += _kernel_bias(f'{b}/pointwise_conv2', block.pointwise_conv2)
      entries.append(_Entry(f'{b}/layer_scale', block.layer_scale))
  return entries


def _resnet_stem(stem):
  """ResNet-50's one conv + BN, or MaX-S's Inception stem."""
  if isinstance(stem, resnet.InceptionStem):
    return (_conv_bn('encoder/_stem/_conv1_bn_act', stem.conv1) +
            _conv_bn('encoder/_stem/_conv2_bn_act', stem.conv2) +
            _conv_bn('encoder/_stem/_conv3_bn', stem.conv3))
  return _conv_bn('encoder/_stem', stem)


def _encoder(encoder):
  if isinstance(encoder, convnext.ConvNeXtEncoder):
    return _convnext_encoder(encoder)
  entries = _resnet_stem(encoder.stem)
  for s, blocks in enumerate(encoder.stages):
    for b, block in enumerate(blocks):
      entries += _residual_block(f'encoder/_stage{s + 2}/_block{b + 1}', block)
  return entries


def _pixel_decoder(decoder):
  entries = []
  for i, norm in enumerate(decoder.backbone_norms):
    entries += [_Entry(f'pixel_decoder/_backbone_norms/{i}/gamma', norm.gamma),
                _Entry(f'pixel_decoder/_backbone_norms/{i}/beta', norm.beta)]
  for i, blocks in enumerate(decoder.stage_blocks):
    for b, block in enumerate(blocks):
      entries += _residual_block(f'pixel_decoder/_stages/{i}/_block{b + 1}',
                                 block)
  for i, fuse in enumerate(decoder.skip_connections):
    for j, projection in enumerate(fuse.projections):
      if projection is not None:
        entries += _conv_bn(
            f'pixel_decoder/_skip_connections/{i}/_resized_conv_bn{j + 1}',
            projection)
  return entries


def _prediction_head(prefix, head, private):
  """The MaX head; `private` heads (inside kMaX layers) prefix names by _."""
  u = '_' if private else ''
  return (
      _separable(f'{prefix}{u}pixel_space_head/conv_block/_conv1_bn_act',
                 head.pixel_conv) +
      [_Entry(f'{prefix}{u}pixel_space_head/final_conv/kernel',
              head.pixel_final_conv.kernel),
       _Entry(f'{prefix}{u}pixel_space_head/final_conv/bias',
              head.pixel_final_conv.bias)] +
      _bn(f'{prefix}{u}pixel_space_feature_batch_norm', head.pixel_feature_bn) +
      _bn(f'{prefix}{u}pixel_space_mask_batch_norm', head.mask_bn) +
      _dense_bn(f'{prefix}{u}transformer_mask_head', head.mask_head) +
      [_Entry(f'{prefix}{u}transformer_class_head/_conv/kernel',
              head.class_head.kernel),
       _Entry(f'{prefix}{u}transformer_class_head/_conv/bias',
              head.class_head.bias)])


def _transformer_decoder(decoder):
  entries = [_Entry('transformer_decoder/cluster_centers',
                    decoder.cluster_centers)]
  for i, layer in enumerate(decoder.kmax_layers):
    p = f'transformer_decoder/_kmax_decoder/{i}/_block1_transformer'
    entries += _dense_bn(f'{p}/_pixel_conv1_bn_act', layer.pixel_conv1)
    entries += _dense_bn(f'{p}/_memory_conv1_bn_act', layer.memory_conv1)
    entries += _dense_bn(f'{p}/_memory_qkv_conv_bn', layer.memory_qkv)
    entries += _dense_bn(f'{p}/_pixel_v_conv_bn', layer.pixel_v)
    entries += _bn(f'{p}/_kmeans_memory_batch_norm_retrieved_value',
                   layer.kmeans_bn)
    entries += _dense_bn(f'{p}/_kmeans_memory_conv3_bn', layer.kmeans_conv3)
    entries += _bn(f'{p}/_memory_attention/_batch_norm_similarity',
                   layer.similarity_bn)
    entries += _bn(f'{p}/_memory_attention/_batch_norm_retrieved_value',
                   layer.retrieved_value_bn)
    entries += _dense_bn(f'{p}/_memory_conv3_bn', layer.memory_conv3)
    entries += _dense_bn(f'{p}/_memory_ffn_conv1_bn_act', layer.ffn_conv1)
    entries += _dense_bn(f'{p}/_memory_ffn_conv2_bn', layer.ffn_conv2)
    entries += _prediction_head(f'{p}/_auxiliary_clustering_predictor/',
                                layer.predictor, private=True)
  entries += _dense_bn('transformer_decoder/_class_embedding_projection',
                       decoder.class_embedding)
  entries += _dense_bn('transformer_decoder/_mask_embedding_projection',
                       decoder.mask_embedding)
  return entries


def _semantic_head(head):
  entries = []
  if head.use_decoder:
    p = 'semantic_decoder/_aspp'
    entries += _conv_bn(f'{p}/_conv_bn_act', head.aspp.conv_1x1)
    for i, conv in enumerate(head.aspp.atrous_convs):
      entries += _conv_bn(f'{p}/_aspp_conv{i + 1}/_conv_bn_act', conv)
    entries += _conv_bn(f'{p}/_aspp_pool/_conv_bn_act', head.aspp.pool_conv)
    entries += _conv_bn(f'{p}/_proj_conv_bn_act', head.aspp.projection)
    for i, (low, fusion) in enumerate(zip(head.low_level_convs,
                                          head.fusion_convs)):
      entries += _conv_bn(f'semantic_decoder/_low_level_conv{i + 1}', low)
      entries += _separable(f'semantic_decoder/_fusion_conv{i + 1}'
                            '/_conv1_bn_act', fusion)
  entries += _separable('semantic_head_without_last_layer/_conv1_bn_act',
                        head.head_conv)
  entries += [_Entry('semantic_last_layer/kernel', head.last_layer.kernel),
              _Entry('semantic_last_layer/bias', head.last_layer.bias)]
  return entries


def deeplab2_variable_map(model):
  """[(DeepLab2 key without suffix, our variable)] for every model weight."""
  entries = (_encoder(model.pixel_encoder) +
             _pixel_decoder(model.pixel_decoder) +
             _transformer_decoder(model.transformer_decoder) +
             _prediction_head('', model.prediction_head, private=False))
  if model.semantic_head is not None:
    entries += _semantic_head(model.semantic_head)
  mapped = {id(e.variable) for e in entries}
  unmapped = [v.path for v in model.weights if id(v) not in mapped]
  if unmapped or len(mapped) != len(entries):
    raise RuntimeError('internal error: the DeepLab2 key map does not cover '
                       f'the model exactly; unmapped: {unmapped}')
  return [(e.key, e.variable) for e in entries]


def is_model_key(key):
  return not (key in _NON_MODEL_KEYS or key.startswith('optimizer/') or
              '.OPTIMIZER_SLOT' in key or key.startswith('_CHECKPOINTABLE'))


def ensure_built(model, size=65):
  """Builds `model` by calling it once on a small input if needed."""
  if not model.built or not model.weights:
    model(tf.zeros([1, size, size, 3]), training=False)


def load_deeplab2_checkpoint(model, prefix):
  """Assigns every weight of `model` from the DeepLab2 checkpoint `prefix`.

  Returns the number of tensors loaded. Raises CheckpointMismatchError
  listing all missing keys, unused keys and shape mismatches; in that case
  no weight is changed.
  """
  try:
    reader = tf.train.load_checkpoint(prefix)
  except (tf.errors.NotFoundError, tf.errors.DataLossError, ValueError) as e:
    raise CheckpointMismatchError(
        f'{prefix}: cannot read a TensorFlow checkpoint: {e}') from e
  shapes = reader.get_variable_to_shape_map()
  available = {k[:-len(_SUFFIX)] if k.endswith(_SUFFIX) else k: k
               for k in shapes if is_model_key(k.split('/.ATTRIBUTES')[0])}
  ensure_built(model)
  variable_map = deeplab2_variable_map(model)

  missing, mismatched, values = [], [], []
  for key, variable in variable_map:
    if key not in available:
      missing.append(key)
      continue
    value = reader.get_tensor(available[key])
    if value.size != int(np.prod(variable.shape)) or not compatible_shapes(
        value.shape, variable.shape):
      mismatched.append(f'{key}: checkpoint {list(value.shape)}, model '
                        f'{list(variable.shape)}')
      continue
    values.append((variable, value.reshape(variable.shape)))
  used = {key for key, _ in variable_map}
  unused = sorted(k for k in available if k not in used)
  if missing or unused or mismatched:
    parts = [f'{prefix}: the checkpoint does not match the model '
             f'({len(missing)} missing, {len(unused)} unused, '
             f'{len(mismatched)} shape mismatches); no weight was loaded.']
    for title, items in (('missing keys', missing), ('unused keys', unused),
                         ('shape mismatches', mismatched)):
      if items:
        parts.append(f'{title}:\n  ' + '\n  '.join(items))
    raise CheckpointMismatchError('\n'.join(parts))
  for variable, value in values:
    variable.assign(value.astype(variable.dtype.name if hasattr(
        variable.dtype, 'name') else variable.dtype))
  return len(values)


def compatible_shapes(checkpoint_shape, model_shape):
  """Equal shapes up to size-1 axes (DeepLab2 Conv1D [1, I, O] vs [I, O],
  per-head norms [8] vs [1, 8, 1, 1])."""
  squeeze = lambda s: [int(d) for d in s if int(d) != 1]  # pylint: disable=unnecessary-lambda-assignment
  return squeeze(checkpoint_shape) == squeeze(model_shape)
