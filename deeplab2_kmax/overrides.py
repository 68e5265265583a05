"""`--override=field.path=value`: set any config field by its dotted path.

    trainer_options.solver_options.base_learning_rate=0.001
    train_dataset_options.crop_size=129,129        (repeated: comma list)
    train_dataset_options.file_pattern=[a/*.tfrecord, b/*.tfrecord]
    model_options.kmax_deeplab.transformer_decoder.cross_attention_activation=CLUSTER_SOFTMAX

A value replaces the whole field (all elements of a repeated field). Unknown
paths, message-valued targets and values of the wrong type are errors that
name the override and list what was expected.
"""
from google.protobuf import descriptor

from deeplab2_kmax import config as config_lib

_FD = descriptor.FieldDescriptor
_INTS = (_FD.TYPE_INT32, _FD.TYPE_INT64, _FD.TYPE_UINT32, _FD.TYPE_UINT64,
         _FD.TYPE_SINT32, _FD.TYPE_SINT64, _FD.TYPE_FIXED32,
         _FD.TYPE_FIXED64, _FD.TYPE_SFIXED32, _FD.TYPE_SFIXED64)
_FLOATS = (_FD.TYPE_FLOAT, _FD.TYPE_DOUBLE)


def apply_overrides(config, overrides, source='<config>'):
  """Applies `path=value` strings to `config` in place and re-validates."""
  for override in overrides:
    _apply_one(config, override)
  config_lib.validate(config, source)
  return config


def _apply_one(config, override):
  path, sep, raw = override.partition('=')
  path = path.strip()
  if not sep or not path:
    raise config_lib.ConfigError(
        f'--override={override!r}: expected field.path=value')
  message = config
  names = path.split('.')
  for depth, name in enumerate(names):
    fields = message.DESCRIPTOR.fields_by_name
    if name not in fields:
      where = '.'.join(names[:depth]) or message.DESCRIPTOR.name
      raise config_lib.ConfigError(
          f'--override={override!r}: {where} has no field {name!r}; valid '
          f'fields: {", ".join(sorted(fields))}')
    field = fields[name]
    last = depth == len(names) - 1
    if field.type == _FD.TYPE_MESSAGE:
      if last or _is_repeated(field):
        raise config_lib.ConfigError(
            f'--override={override!r}: {path} is a message'
            f'{" list" if _is_repeated(field) else ""}; override one of its '
            'scalar fields instead')
      message = getattr(message, name)  # creates the sub-message
      continue
    if not last:
      raise config_lib.ConfigError(
          f'--override={override!r}: {".".join(names[:depth + 1])} is a '
          f'scalar and has no field {names[depth + 1]!r}')
    _set_field(message, field, raw.strip(), override)


def _is_repeated(field):
  # protobuf >= 5 exposes is_repeated; older versions only `label`.
  is_repeated = getattr(field, 'is_repeated', None)
  if is_repeated is not None:
    return is_repeated
  return field.label == _FD.LABEL_REPEATED


def _set_field(message, field, raw, override):
  if _is_repeated(field):
    text = raw[1:-1] if raw.startswith('[') and raw.endswith(']') else raw
    items = [item.strip() for item in text.split(',') if item.strip()]
    values = [_parse_scalar(field, item, override) for item in items]
    container = getattr(message, field.name)
    del container[:]
    container.extend(values)
  else:
    setattr(message, field.name, _parse_scalar(field, raw, override))


def _parse_scalar(field, raw, override):
  def fail(expected):
    raise config_lib.ConfigError(
        f'--override={override!r}: {field.name} expects {expected}, got '
        f'{raw!r}')

  if field.type in _INTS:
    try:
      return int(raw)
    except ValueError:
      fail('an integer')
  if field.type in _FLOATS:
    try:
      return float(raw)
    except ValueError:
      fail('a number')
  if field.type == _FD.TYPE_BOOL:
    lowered = raw.lower()
    if lowered in ('true', '1', 'yes'):
      return True
    if lowered in ('false', '0', 'no'):
      return False
    fail('true or false')
  if field.type == _FD.TYPE_ENUM:
    names = [v.name for v in field.enum_type.values]
    if raw not in names:
      fail(f'one of {", ".join(names)}')
    return field.enum_type.values_by_name[raw].number
  if field.type == _FD.TYPE_STRING:
    if len(raw) >= 2 and raw[0] == raw[-1] and raw[0] in '"\'':
      raw = raw[1:-1]
    return raw
  if field.type == _FD.TYPE_BYTES:
    return raw.encode('utf-8')
  fail(f'a value of protobuf type {field.type}')
