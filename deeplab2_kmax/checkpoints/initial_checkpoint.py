"""Initialises a model from `model_options.initial_checkpoint`.

The checkpoint may be a DeepLab2 kMaX checkpoint (recognised by its
`encoder/` keys and imported by key, see deeplab2_import.py) or one of ours
(`tf.train.Checkpoint(model=model)`, as written by the conversion tool and
the trainer). The path may use ${VAR}; an unset variable is an error here,
where the path is used, not when the config is loaded.
"""
import tensorflow as tf

from deeplab2_kmax import config as config_lib
from deeplab2_kmax.checkpoints import deeplab2_import

_FIELD = 'model_options.initial_checkpoint'


def is_deeplab2_checkpoint(prefix):
  """True if the checkpoint at `prefix` has DeepLab2's key layout."""
  keys = tf.train.load_checkpoint(prefix).get_variable_to_shape_map()
  return any(k.startswith('encoder/_stem/') for k in keys)


def load_initial_checkpoint(model, config):
  """Loads the config's initial checkpoint into `model`.

  Returns the checkpoint prefix that was loaded, or None when the field is
  empty. Raises ConfigError for an unset ${VAR}, and
  deeplab2_import.CheckpointMismatchError when the checkpoint cannot be read
  or does not match the model.
  """
  prefix = config_lib.resolved(config.model_options.initial_checkpoint,
                               _FIELD)
  if not prefix:
    return None
  if tf.io.gfile.isdir(prefix):
    latest = tf.train.latest_checkpoint(prefix)
    if latest is None:
      raise deeplab2_import.CheckpointMismatchError(
          f'{_FIELD} = {prefix!r}: the folder holds no checkpoint')
    prefix = latest
  try:
    deeplab2_layout = is_deeplab2_checkpoint(prefix)
  except (tf.errors.NotFoundError, tf.errors.DataLossError, ValueError) as e:
    raise deeplab2_import.CheckpointMismatchError(
        f'{_FIELD} = {prefix!r}: cannot read a TensorFlow checkpoint: '
        f'{e}') from e
  if deeplab2_layout:
    deeplab2_import.load_deeplab2_checkpoint(model, prefix)
    return prefix
  deeplab2_import.ensure_built(model)
  status = tf.train.Checkpoint(model=model).read(prefix)
  try:
    status.assert_existing_objects_matched()
    status.expect_partial()
  except AssertionError as e:
    raise deeplab2_import.CheckpointMismatchError(
        f'{_FIELD} = {prefix!r}: the checkpoint does not match the model: '
        f'{e}') from e
  return prefix
