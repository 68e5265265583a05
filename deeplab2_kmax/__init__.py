"""deeplab2_kmax: kMaX-DeepLab and CMT-DeepLab in TensorFlow 2 / Keras 3.

Public API:
  config = deeplab2_kmax.load_config(path)
  model = deeplab2_kmax.build_model(config)
  outputs = model(images, training=False)
  deeplab2_kmax.load_deeplab2_checkpoint(model, prefix)
  report = deeplab2_kmax.load_initial_checkpoint(model, config)
"""
from deeplab2_kmax.config import ConfigError
from deeplab2_kmax.config import load_config


def build_model(config):
  """Builds the model described by an ExperimentOptions (see builder.py)."""
  from deeplab2_kmax.model import builder  # pylint: disable=import-outside-toplevel
  return builder.build_model(config)


def load_deeplab2_checkpoint(model, prefix):
  """Loads every weight of a DeepLab2 kMaX checkpoint (see checkpoints/)."""
  from deeplab2_kmax.checkpoints import deeplab2_import  # pylint: disable=import-outside-toplevel
  return deeplab2_import.load_deeplab2_checkpoint(model, prefix)


def load_initial_checkpoint(model, config):
  """Loads `model_options.initial_checkpoint` with its scope (any layout,
  or zoo:NAME); returns a LoadReport (see checkpoints/initial_checkpoint.py)
  or None when the field is empty."""
  from deeplab2_kmax.checkpoints import initial_checkpoint  # pylint: disable=import-outside-toplevel
  return initial_checkpoint.load_initial_checkpoint(model, config)


__all__ = ['ConfigError', 'build_model', 'load_config',
           'load_deeplab2_checkpoint', 'load_initial_checkpoint']
