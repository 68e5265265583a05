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
  # ResNets' stem, or ConvNeXts' stem and downsampling layers.
  return any(k.startswith(('encoder/_stem/', 'encoder/downsample_layers/'))
             for k in keys)


def load_initial_checkpoint(model, config):
  """Loads the config's initial checkpoint into `model`.

  Returns the checkpoint prefix that was loaded, or None when the field is
  empty. Raises ConfigError for an unset ${VAR}, and
  deeplab2_import.CheckpointMismatchError when the checkpoint cannot be read
  or does not match the model.
  """
  path = config_lib.resolved(config.model_options.initial_checkpoint, _FIELD)
  if not path:
    return None
  return restore_model(model, path, where=f'{_FIELD} = {path!r}')


def restore_model(model, checkpoint, *, where):
  """Loads the model weights of `checkpoint` into `model`.

  Args:
    model: a KMaXDeepLab (built here if needed).
    checkpoint: a checkpoint prefix, a folder (its latest checkpoint), or a
      DeepLab2 checkpoint prefix (imported by key).
    where: what named the checkpoint (a flag or a config field), for errors.

  Returns:
    The checkpoint prefix read.

  Raises:
    deeplab2_import.CheckpointMismatchError: no checkpoint, an unreadable
      one, or one that lacks weights of the model. An optimizer's slots in
      the checkpoint are not needed and not an error.
  """
  prefix = checkpoint
  if tf.io.gfile.isdir(checkpoint):
    prefix = tf.train.latest_checkpoint(checkpoint)
    if prefix is None:
      raise deeplab2_import.CheckpointMismatchError(
          f'{where}: the folder holds no checkpoint (no "checkpoint" file '
          'naming a ckpt-<step>); pass a checkpoint prefix or a model_dir '
          'the trainer wrote')
  try:
    deeplab2_layout = is_deeplab2_checkpoint(prefix)
  except (tf.errors.NotFoundError, tf.errors.DataLossError, ValueError) as e:
    raise deeplab2_import.CheckpointMismatchError(
        f'{where}: cannot read a TensorFlow checkpoint: {e}') from None
  if deeplab2_layout:
    deeplab2_import.load_deeplab2_checkpoint(model, prefix)
    return prefix
  deeplab2_import.ensure_built(model)
  status = tf.train.Checkpoint(model=model).read(prefix)
  try:
    status.assert_existing_objects_matched()
  except AssertionError as e:
    raise deeplab2_import.CheckpointMismatchError(
        f'{where}: the checkpoint does not match the model: {e}') from None
  status.expect_partial()
  return prefix
