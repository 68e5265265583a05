"""Reading and validating textproto experiment configs.

`load_config(path)` parses an ExperimentOptions textproto, substitutes
`${VAR}` in string fields from the environment and validates the result.
Every error names the file and the field (or line and column) at fault.

A string field that still holds an unset `${VAR}` after loading is not an
error at load time, so a model can be built from a config whose data paths
are not set; code that uses such a field calls `resolved()` first, which
raises naming the variable.
"""
import os
import re

from google.protobuf import descriptor
from google.protobuf import text_format

from deeplab2_kmax.data import dataset_info
from deeplab2_kmax.model.pixel_encoder import variants
from deeplab2_kmax.protos import config_pb2

ExperimentOptions = config_pb2.ExperimentOptions

_VAR = re.compile(r'\$\{([A-Za-z_][A-Za-z0-9_]*)\}')
_UNKNOWN_FIELD = re.compile(
    r'Message type "([\w.]+)" has no field named "([^"]+)"')
_UNKNOWN_ENUM = re.compile(
    r'Enum type "([\w.]+)" has no value named ([\w]+)')
_STRIDE_MULTIPLE = 32
_DATASET_FIELDS = ('train_dataset_options', 'eval_dataset_options')


class ConfigError(ValueError):
  """A config that cannot be parsed or is inconsistent."""


def load_config(path):
  """Parses, substitutes and validates the textproto at `path`."""
  path = os.fspath(path)
  try:
    with open(path, encoding='utf-8') as f:
      text = f.read()
  except OSError as e:
    raise ConfigError(f'{path}: cannot read config file: {e.strerror}') from e
  return parse_config(text, source=path)


def parse_config(text, source='<string>'):
  """Like load_config, for config text; `source` names it in errors."""
  config = ExperimentOptions()
  try:
    text_format.Parse(text, config)
  except text_format.ParseError as e:
    raise ConfigError(_describe_parse_error(e, text, source)) from None
  _substitute_environment(config)
  validate(config, source)
  return config


def resolved(value, field):
  """Returns `value`, or raises if it still holds an unset ${VAR}.

  Args:
    value: a string field's value.
    field: the field's path for the message, e.g.
      'model_options.initial_checkpoint'.
  """
  unset = _VAR.findall(value)
  if unset:
    names = ', '.join(sorted(set(unset)))
    raise ConfigError(
        f'{field} = {value!r} uses environment variable(s) {names} which '
        'are not set; export them or write the value into the config')
  return value


def _describe_parse_error(error, text, source):
  line, column = error.GetLine(), error.GetColumn()
  message = str(error)
  # The library's message starts with "line:column : "; we prefix our own.
  message = re.sub(r'^\d+:\d+ : ', '', message)
  where = f'{source}:{line}:{column}' if line else source
  unknown = _UNKNOWN_FIELD.search(message)
  if unknown:
    type_name, field = unknown.groups()
    valid = _message_fields(type_name)
    return (f'{where}: unknown field "{field}" in {type_name}; valid fields '
            f'are: {", ".join(valid)}')
  unknown = _UNKNOWN_ENUM.search(message)
  if unknown:
    type_name, value = unknown.groups()
    valid = _enum_values(type_name)
    return (f'{where}: unknown value {value} for enum {type_name}; valid '
            f'values are: {", ".join(valid)}')
  if line and '${' in text.splitlines()[line - 1]:
    message += (' (${VAR} is substituted only inside quoted string values)')
  return f'{where}: syntax error: {message}'


def _message_fields(full_name):
  try:
    desc = config_pb2.DESCRIPTOR.pool.FindMessageTypeByName(full_name)
  except KeyError:
    return []
  return [f.name for f in desc.fields]


def _enum_values(full_name):
  try:
    desc = config_pb2.DESCRIPTOR.pool.FindEnumTypeByName(full_name)
  except KeyError:
    return []
  return [v.name for v in desc.values if not v.name.endswith('UNSPECIFIED')]


def _substitute_environment(message):
  """Replaces ${VAR} by os.environ[VAR] in every set string field."""
  def substitute(value):
    return _VAR.sub(lambda m: os.environ.get(m.group(1), m.group(0)), value)

  for field, value in message.ListFields():
    if field.type == descriptor.FieldDescriptor.TYPE_MESSAGE:
      children = value if _is_repeated(field) else [value]
      for child in children:
        _substitute_environment(child)
    elif field.type == descriptor.FieldDescriptor.TYPE_STRING:
      if _is_repeated(field):
        value[:] = [substitute(v) for v in value]
      else:
        setattr(message, field.name, substitute(value))


def _is_repeated(field):
  # protobuf >= 6 exposes `is_repeated`; `label` is gone from upb descriptors.
  return field.is_repeated


def transformer_decoder_options(model_options):
  """The TransformerDecoderOptions of whichever meta-architecture is set."""
  which = model_options.WhichOneof('meta_architecture')
  if which is None:
    return None
  return getattr(model_options, which).transformer_decoder


def validate(config, source='<config>'):
  """Raises ConfigError naming the field of the first inconsistency."""
  def fail(field, message):
    raise ConfigError(f'{source}: {field}: {message}')

  model = config.model_options
  backbone = model.backbone.name
  if backbone not in variants.backbone_names():
    fail('model_options.backbone.name',
         f'unknown backbone {backbone!r}; expected one of '
         f'{variants.backbone_names()}')
  _check_keep_prob(fail, 'model_options.backbone.drop_path_keep_prob',
                   model.backbone.drop_path_keep_prob)
  if (model.backbone.pretrained_weights == 'keras' and
      backbone not in variants.CONVNEXT_VARIANTS):
    fail('model_options.backbone.pretrained_weights',
         f'"keras" (keras.applications\' ImageNet weights) exists only for '
         f'the ConvNeXt backbones; the backbone is {backbone!r}')

  stages = model.pixel_decoder.stages
  if not stages:
    fail('model_options.pixel_decoder.stages', 'at least one stage is needed')
  strides = [s.stride for s in stages]
  if strides[0] != 32 or any(b * 2 != a for a, b in zip(strides, strides[1:])):
    fail('model_options.pixel_decoder.stages',
         f'strides must run 32, 16, 8, ... halving each stage; got {strides}')
  if strides[-1] < 2:
    fail('model_options.pixel_decoder.stages',
         f'the finest stride is 2; got {strides}')
  for i, stage in enumerate(stages):
    field = f'model_options.pixel_decoder.stages[{i}]'
    if stage.block_type == stage.BLOCK_TYPE_UNSPECIFIED:
      fail(field + '.block_type', 'set AXIAL or BOTTLENECK')
    if stage.num_blocks < 1 or stage.filters < 1:
      fail(field, 'num_blocks and filters must be positive')
  if model.pixel_decoder.num_heads < 1:
    fail('model_options.pixel_decoder.num_heads', 'must be positive')

  decoder = transformer_decoder_options(model)
  if decoder is None:
    fail('model_options', 'set a meta-architecture: kmax_deeplab or '
         'cmt_deeplab')
  prefix = f'model_options.{model.WhichOneof("meta_architecture")}.' \
           'transformer_decoder'
  if not decoder.stages:
    fail(prefix + '.stages', 'at least one stage is needed')
  for i, stage in enumerate(decoder.stages):
    if stage.stride not in strides[:-1]:
      fail(f'{prefix}.stages[{i}].stride',
           f'{stage.stride} is not a pixel-decoder stride other than the '
           f'finest; expected one of {strides[:-1]}')
    if stage.num_layers < 1:
      fail(f'{prefix}.stages[{i}].num_layers', 'must be positive')
  if decoder.num_cluster_centers < 1:
    fail(prefix + '.num_cluster_centers', 'must be positive')
  if decoder.center_width % (2 * decoder.num_heads):
    fail(prefix + '.center_width',
         f'{decoder.center_width} must be a multiple of 2 * num_heads '
         f'({2 * decoder.num_heads})')
  if (decoder.cross_attention_activation ==
      config_pb2.CROSS_ATTENTION_ACTIVATION_UNSPECIFIED):
    fail(prefix + '.cross_attention_activation',
         'set SPATIAL_SOFTMAX, CLUSTER_SOFTMAX or CLUSTER_ARGMAX')
  _check_keep_prob(fail, prefix + '.drop_path_keep_prob',
                   decoder.drop_path_keep_prob)

  semantic = model.semantic_head
  if semantic.use_decoder:
    for i, skip in enumerate(semantic.low_level):
      if skip.stride not in (4, 8, 16) or skip.channels < 1:
        fail(f'model_options.semantic_head.low_level[{i}]',
             'stride must be 4, 8 or 16 and channels positive')

  for name in _DATASET_FIELDS:
    if config.HasField(name):
      _validate_dataset(fail, name, getattr(config, name))
  if all(config.HasField(name) for name in _DATASET_FIELDS):
    train, evaluation = (getattr(config, name).dataset
                         for name in _DATASET_FIELDS)
    if train != evaluation:
      fail('eval_dataset_options.dataset',
           f'{evaluation!r} differs from train_dataset_options.dataset '
           f'{train!r}; the model predicts the classes of one data set')


def _validate_dataset(fail, name, options):
  """Checks one DatasetOptions.

  A categories_json that still holds an unset ${VAR} passes here, like other
  paths; dataset_info_for reports it when the classes are needed.
  """
  if options.dataset != 'custom':
    if options.dataset not in dataset_info.DATASETS:
      fail(f'{name}.dataset', f'unknown dataset {options.dataset!r}; '
           f'expected "custom" or one of {sorted(dataset_info.DATASETS)}')
    if options.categories_json:
      fail(f'{name}.categories_json', 'is read only for dataset "custom"; '
           f'remove it or set dataset: "custom" (found dataset '
           f'{options.dataset!r})')
  elif not options.categories_json:
    fail(f'{name}.categories_json', 'dataset "custom" needs a categories '
         'JSON in COCO panoptic format (a list of categories, or an '
         'annotation file with a "categories" list)')
  crop = list(options.crop_size)
  if len(crop) != 2:
    fail(f'{name}.crop_size', f'expected [height, width]; got {crop}')
  for size in crop:
    if size < 1 or (size - 1) % _STRIDE_MULTIPLE:
      fail(f'{name}.crop_size',
           f'{size} is not of the form k*{_STRIDE_MULTIPLE}+1 (e.g. 641, '
           f'1281, 1025); got {crop}')
  if options.batch_size < 1:
    fail(f'{name}.batch_size', 'must be positive')


def _check_keep_prob(fail, field, value):
  if not 0.0 < value <= 1.0:
    fail(field, f'keep probability must be in (0, 1]; got {value}')


def dataset_info_for(config):
  """DatasetInfo of the config's data set (training, else evaluation).

  Dataset "custom" reads `categories_json` (see
  dataset_info.from_categories_json). When both data sets are custom with
  different JSON files, both are read and must describe the same classes
  (colors aside).
  """
  names = [name for name in _DATASET_FIELDS if config.HasField(name)]
  if not names:
    raise ConfigError('the config names no data set (train_dataset_options '
                      'or eval_dataset_options), so the number of classes '
                      'is unknown')
  info = _dataset_info_of(names[0], getattr(config, names[0]))
  if len(names) == 2:
    first, second = (getattr(config, name) for name in names)
    if (second.dataset != first.dataset or
        second.categories_json != first.categories_json):
      other = _dataset_info_of(names[1], second)
      if _class_facts(other) != _class_facts(info):
        raise ConfigError(
            f'{names[1]}: its classes ({other.num_classes} from '
            f'{second.categories_json or second.dataset!r}) differ from '
            f'those of {names[0]} ({info.num_classes} from '
            f'{first.categories_json or first.dataset!r}); the model '
            'predicts the classes of one data set')
  return info


def _class_facts(info):
  """What the model depends on: ids, names and thing flags of the classes."""
  return (info.ignore_label, info.label_divisor,
          [(c.semantic_id, c.source_id, c.name, c.is_thing)
           for c in info.classes])


def _dataset_info_of(name, options):
  """DatasetInfo of one DatasetOptions; errors name the field at fault."""
  if options.dataset != 'custom':
    try:
      return dataset_info.get_dataset_info(options.dataset)
    except ValueError as e:
      raise ConfigError(f'{name}.dataset: {e}') from None
  field = f'{name}.categories_json'
  if not options.categories_json:
    raise ConfigError(
        f'{field}: dataset "custom" needs categories_json, a COCO panoptic '
        'categories JSON (a list of categories, or an annotation file with '
        'a "categories" list); it is not set')
  path = resolved(options.categories_json, field)
  try:
    return dataset_info.from_categories_json(path)
  except ValueError as e:
    raise ConfigError(f'{field}: {e}') from None
