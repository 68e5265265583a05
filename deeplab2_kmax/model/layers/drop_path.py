"""Stochastic depth (drop path) on residual branches.

Each sample of the batch keeps the whole branch with probability keep_prob
(kept branches are scaled by 1 / keep_prob); at inference it is the identity.
The draws come from a Keras `SeedGenerator`, whose state is part of the
layer's variables: the trainer checkpoints it, so a resumed run drops the
same branches as an uninterrupted one.
"""
import keras
import tensorflow as tf


@keras.saving.register_keras_serializable(package='deeplab2_kmax')
class DropPath(keras.layers.Layer):
  """Drops a residual branch per sample during training."""

  def __init__(self, keep_prob=1.0, **kwargs):
    super().__init__(**kwargs)
    if not 0.0 < keep_prob <= 1.0:
      raise ValueError(f'keep_prob must be in (0, 1]; got {keep_prob}')
    self.keep_prob = keep_prob
    self.seed_generator = keras.random.SeedGenerator()

  def call(self, x, training=False):
    if not training or self.keep_prob == 1.0:
      return x
    shape = [tf.shape(x)[0]] + [1] * (len(x.shape) - 1)
    keep = tf.floor(self.keep_prob + keras.random.uniform(
        shape, dtype=x.dtype, seed=self.seed_generator))
    return x * keep / self.keep_prob

  def get_config(self):
    return {**super().get_config(), 'keep_prob': self.keep_prob}
