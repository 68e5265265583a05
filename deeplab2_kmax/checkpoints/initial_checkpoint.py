"""Initialises a model from a checkpoint: all of it, or a scope of it.

Checkpoint layouts, told apart by their keys:

  deeplab2_kmax    ours: `tf.train.Checkpoint(model=model)` as the trainer
                   and the conversion tool write it (`model/<weight path>`)
  deeplab2         DeepLab2's (`encoder/...`, `pixel_decoder/...`, ...): a
                   kMaX-DeepLab checkpoint, or an ImageNet backbone one
                   (`encoder/...` plus its classifier), imported by key
                   (deeplab2_import.py)
  deeplab2_garden  a TF Model Garden classification checkpoint
                   (`backbone/_encoder/...`): DeepLab2's encoder keys there
  deeplab2_backbone a bare DeepLab2 backbone (`downsample_layers/...`,
                   `_stem/...`): DeepLab2's ConvNeXt `pretrained_weights`

The scope (`model_options.initial_checkpoint_scope`) says which of the
model's weights the checkpoint provides; the others keep their initial
values:

  ALL                   every weight (the checkpoint must hold them all)
  PIXEL_ENCODER         the backbone's
  ALL_BUT_CLASS_LAYERS  all but the class heads (final and per transformer
                        layer) and the semantic head's last layer, whose
                        shapes depend on the class set

Every weight in the scope must be in the checkpoint with its shape: a
missing or mis-shaped one is an error listing them all, and then no weight
is changed. Checkpoint entries nothing reads (a classifier, an optimizer's
slots, weights outside the scope) are listed in the report, not an error.
`LoadReport` says what was loaded, what started fresh and why, and what was
not used; the trainer writes it to `model_dir/initial_checkpoint_report.json`.

Paths may use ${VAR}; an unset variable is an error here, where the path is
used, not when the config is loaded.
"""
import dataclasses
import logging

import numpy as np
import tensorflow as tf

from deeplab2_kmax import config as config_lib
from deeplab2_kmax import zoo
from deeplab2_kmax.checkpoints import deeplab2_import
from deeplab2_kmax.protos import config_pb2

REPORT_FILE = 'initial_checkpoint_report.json'
ALL = 'ALL'
PIXEL_ENCODER = 'PIXEL_ENCODER'
ALL_BUT_CLASS_LAYERS = 'ALL_BUT_CLASS_LAYERS'
SCOPES = (ALL, PIXEL_ENCODER, ALL_BUT_CLASS_LAYERS)
KERAS_WEIGHTS = 'keras'  # backbone.pretrained_weights: Keras's ImageNet weights

_FIELD = 'model_options.initial_checkpoint'
_SUFFIX = '/.ATTRIBUTES/VARIABLE_VALUE'
_OURS = 'model/'
# DeepLab2's encoder key prefix in each of its layouts.
_ENCODER_PREFIX = {'deeplab2': 'encoder/',
                   'deeplab2_garden': 'backbone/_encoder/',
                   'deeplab2_backbone': ''}
_ENCODER_ONLY = ('deeplab2_garden', 'deeplab2_backbone')


@dataclasses.dataclass
class LoadReport:
  """What a checkpoint load did, for logs and initial_checkpoint_report.json."""
  checkpoint: str
  layout: str
  scope: str
  loaded: list  # model weight paths
  fresh: dict  # model weight path -> why it kept its initial value
  unused: list  # checkpoint keys (without the .ATTRIBUTES suffix)

  def summary(self):
    reasons = sorted(set(self.fresh.values()))
    fresh = f'{len(self.fresh)} kept their initial values'
    if reasons:
      fresh += f' ({"; ".join(reasons)})'
    return (f'{self.checkpoint} ({self.layout} layout, scope {self.scope}): '
            f'loaded {len(self.loaded)} weights, {fresh}; '
            f'{len(self.unused)} checkpoint entries not used')

  def as_dict(self):
    return {**dataclasses.asdict(self), 'summary': self.summary()}


def scope_name(value):
  """Config enum value (or name) -> one of SCOPES."""
  if isinstance(value, str):
    name = value
  else:
    name = config_pb2.InitialCheckpointScope.Name(value)
  if name == 'INITIAL_CHECKPOINT_SCOPE_UNSPECIFIED':
    return ALL
  if name not in SCOPES:
    raise ValueError(f'initial checkpoint scope {name!r}: expected one of '
                     f'{", ".join(SCOPES)}')
  return name


def class_layer_weights(model):
  """The weights whose shapes depend on the class set: every class head and
  the semantic head's last layer."""
  layers = [model.prediction_head.class_head]
  layers += [layer.predictor.class_head
             for layer in model.transformer_decoder.kmax_layers]
  if model.semantic_head is not None:
    layers.append(model.semantic_head.last_layer)
  return [w for layer in layers for w in layer.weights]


def scope_weights(model, scope):
  """The model weights a checkpoint loads under `scope` -> ({id: weight},
  {path: why it keeps its initial value} of the others)."""
  weights = model.weights
  if scope == ALL:
    return {id(w): w for w in weights}, {}
  if scope == PIXEL_ENCODER:
    chosen = {id(w) for w in model.pixel_encoder.weights}
    reason = 'not in the pixel encoder (scope PIXEL_ENCODER)'
  else:
    chosen = {id(w) for w in weights} - {
        id(w) for w in class_layer_weights(model)}
    reason = 'class layer (scope ALL_BUT_CLASS_LAYERS)'
  return ({id(w): w for w in weights if id(w) in chosen},
          {w.path: reason for w in weights if id(w) not in chosen})


def checkpoint_layout(keys):
  """The layout of a checkpoint with these keys (suffixes stripped), or None."""
  if any(k.startswith(_OURS) for k in keys):
    return 'deeplab2_kmax'
  stems = ('_stem/', 'downsample_layers/')
  for layout in ('deeplab2', 'deeplab2_garden', 'deeplab2_backbone'):
    prefix = _ENCODER_PREFIX[layout]
    if any(k.startswith(tuple(prefix + s for s in stems)) for k in keys):
      return layout
  return None


def _key_map(model, layout):
  """[(checkpoint key, model weight)] of every weight the layout can hold."""
  if layout == 'deeplab2_kmax':
    # KMaXDeepLab lists its weights by path as checkpoint children;
    # TensorFlow escapes '.' and '/' in a child's name.
    return [(_OURS + w.path.replace('.', '..').replace('/', '.S'), w)
            for w in model.weights]
  pairs = deeplab2_import.deeplab2_variable_map(model)
  if layout in _ENCODER_ONLY:
    prefix = _ENCODER_PREFIX[layout]
    pairs = [(prefix + k[len('encoder/'):], w) for k, w in pairs
             if k.startswith('encoder/')]
  return pairs


def resolve_prefix(checkpoint, where):
  """A checkpoint prefix of `checkpoint` (a prefix, or a folder: its latest
  checkpoint, or its only ckpt-<step>.index when it has no "checkpoint"
  file, as in DeepLab2's archives)."""
  if not tf.io.gfile.isdir(checkpoint):
    return checkpoint
  prefix = tf.train.latest_checkpoint(checkpoint)
  if prefix is not None:
    return prefix
  indexes = sorted(tf.io.gfile.glob(f'{checkpoint}/*.index'))
  if len(indexes) == 1:
    return indexes[0][:-len('.index')]
  raise deeplab2_import.CheckpointMismatchError(
      f'{where}: the folder holds no checkpoint (no "checkpoint" file and '
      f'{"several" if indexes else "no"} *.index files); pass a checkpoint '
      'prefix or a model_dir the trainer wrote')


def restore(model, checkpoint, *, scope=ALL, where):
  """Loads the `scope` weights of `checkpoint` into `model` (built here if
  needed); returns a LoadReport.

  Raises:
    deeplab2_import.CheckpointMismatchError: no checkpoint, an unreadable
      one, one of an unknown layout, or one that lacks weights of the scope
      or holds them with other shapes (then nothing is assigned).
  """
  scope = scope_name(scope)
  if zoo.is_zoo_path(checkpoint):
    try:
      checkpoint = str(zoo.resolve(checkpoint))
    except zoo.ZooError as e:
      raise deeplab2_import.CheckpointMismatchError(f'{where}: {e}') from None
  prefix = resolve_prefix(checkpoint, where)
  try:
    reader = tf.train.load_checkpoint(prefix)
  except (tf.errors.NotFoundError, tf.errors.DataLossError, ValueError) as e:
    raise deeplab2_import.CheckpointMismatchError(
        f'{where}: cannot read a TensorFlow checkpoint: {e}') from None
  shapes = reader.get_variable_to_shape_map()
  available = {k[:-len(_SUFFIX)]: k for k in shapes if k.endswith(_SUFFIX)}
  layout = checkpoint_layout(available)
  if layout is None:
    raise deeplab2_import.CheckpointMismatchError(
        f'{where}: the checkpoint does not match the model: {prefix} is '
        'neither a deeplab2_kmax checkpoint (model/... keys) nor a DeepLab2 '
        'one (encoder/..., backbone/_encoder/..., or a bare backbone\'s '
        '_stem/... or downsample_layers/... keys)')
  if layout in _ENCODER_ONLY and scope != PIXEL_ENCODER:
    # Only the backbone can come from a backbone-only file.
    scope = PIXEL_ENCODER
  deeplab2_import.ensure_built(model)
  chosen, fresh = scope_weights(model, scope)

  missing, mismatched, values = [], [], []
  for key, weight in _key_map(model, layout):
    if id(weight) not in chosen:
      continue
    if key not in available:
      missing.append(key)
      continue
    shape = shapes[available[key]]
    if int(np.prod(shape)) != int(np.prod(weight.shape)) or not (
        deeplab2_import.compatible_shapes(shape, weight.shape)):
      mismatched.append(f'{key}: checkpoint {list(shape)}, model '
                        f'{list(weight.shape)}')
      continue
    values.append((key, weight))
  if missing or mismatched:
    raise deeplab2_import.CheckpointMismatchError(_mismatch_message(
        where, prefix, layout, scope, missing, mismatched))
  for key, weight in values:
    value = reader.get_tensor(available[key]).reshape(weight.shape)
    weight.assign(value.astype(np.dtype(weight.dtype)))
  read = {key for key, _ in values}
  unused = sorted(k for k in available if k not in read and (
      k.startswith(_OURS) if layout == 'deeplab2_kmax'
      else deeplab2_import.is_model_key(k)))
  report = LoadReport(
      checkpoint=prefix, layout=layout, scope=scope,
      loaded=[w.path for _, w in values], fresh=fresh,
      unused=unused)
  logging.info('initial weights: %s', report.summary())
  return report


def _mismatch_message(where, prefix, layout, scope, missing, mismatched):
  parts = [f'{where}: {prefix} ({layout} layout) does not provide the '
           f'weights of scope {scope} ({len(missing)} missing, '
           f'{len(mismatched)} with another shape); no weight was loaded.']
  if mismatched and scope == ALL:
    parts.append('A checkpoint of another class set: set '
                 'model_options.initial_checkpoint_scope: '
                 'ALL_BUT_CLASS_LAYERS.')
  if missing and scope == ALL and layout == 'deeplab2' and all(
      not k.startswith('encoder/') for k in missing):
    parts.append('A backbone-only (ImageNet) checkpoint: set '
                 'model_options.initial_checkpoint_scope: PIXEL_ENCODER.')
  for title, items in (('missing', missing), ('other shape', mismatched)):
    if items:
      parts.append(f'{title}:\n  ' + '\n  '.join(items))
  return '\n'.join(parts)


def load_initial_checkpoint(model, config):
  """Loads the config's initial checkpoint into `model` with its scope.

  Returns the LoadReport, or None when the field is empty. Raises
  ConfigError for an unset ${VAR}, and CheckpointMismatchError when the
  checkpoint cannot be read or does not provide the scope's weights.
  """
  path = config_lib.resolved(config.model_options.initial_checkpoint, _FIELD)
  if not path:
    return None
  return restore(model, path,
                 scope=scope_name(
                     config.model_options.initial_checkpoint_scope),
                 where=f'{_FIELD} = {path!r}')


def load_pretrained_weights(model, config):
  """Loads `model_options.backbone.pretrained_weights` into the pixel
  encoder; returns the LoadReport, or None when the field is empty.

  A checkpoint path (any layout above; a whole model's gives its encoder),
  or "keras": keras.applications' ImageNet weights of the ConvNeXt
  (keras_convnext.py; downloaded by Keras into its cache).
  """
  field = 'model_options.backbone.pretrained_weights'
  path = config_lib.resolved(config.model_options.backbone.pretrained_weights,
                             field)
  if not path:
    return None
  if path == KERAS_WEIGHTS:
    # Imported here: it imports keras.applications.
    from deeplab2_kmax.checkpoints import keras_convnext  # pylint: disable=import-outside-toplevel
    return keras_convnext.load_keras_imagenet_weights(
        model, config.model_options.backbone.name, where=f'{field} = "keras"')
  return restore(model, path, scope=PIXEL_ENCODER,
                 where=f'{field} = {path!r}')


def warm_start(model, config, *, evaluation=False):
  """The initial weights of a run that starts without a checkpoint of its
  own: the initial checkpoint if set, else the backbone's pretrained
  weights. Returns {field: LoadReport or None}.

  For an evaluation (`evaluation`), the initial checkpoint is the model to
  evaluate: it is loaded whole (scope ALL, whatever the config's scope,
  which is about starting a training), and pretrained weights are not read.
  """
  if evaluation:
    path = config_lib.resolved(config.model_options.initial_checkpoint,
                               _FIELD)
    report = restore(model, path, scope=ALL,
                     where=f'{_FIELD} = {path!r} (evaluated whole)')
    return {'pretrained_weights': None, 'initial_checkpoint': report}
  # Whatever its scope, an initial checkpoint provides the encoder:
  # pretrained weights would be overwritten, so they are not read.
  pretrained = None
  if not config.model_options.initial_checkpoint:
    pretrained = load_pretrained_weights(model, config)
  return {'pretrained_weights': pretrained,
          'initial_checkpoint': load_initial_checkpoint(model, config)}


def restore_model(model, checkpoint, *, where):
  """Loads every weight of `checkpoint` (a prefix, a folder, ours or
  DeepLab2's) into `model`; returns the prefix read."""
  return restore(model, checkpoint, scope=ALL, where=where).checkpoint


def is_deeplab2_checkpoint(prefix):
  """True if the checkpoint at `prefix` has one of DeepLab2's layouts."""
  keys = [k[:-len(_SUFFIX)] for k in
          tf.train.load_checkpoint(prefix).get_variable_to_shape_map()
          if k.endswith(_SUFFIX)]
  return checkpoint_layout(keys) not in (None, 'deeplab2_kmax')
