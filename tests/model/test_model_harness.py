"""The shared harness every model config passes: a train step, Keras
serialization, tf.train.Checkpoint and SavedModel round trips."""
import numpy as np
import pytest
import tensorflow as tf
import keras

import deeplab2_kmax
from deeplab2_kmax.model import kmax_deeplab
from deeplab2_kmax.model import outputs

_SIZE = 65


def _images(seed=0, batch=2):
  return tf.random.uniform([batch, _SIZE, _SIZE, 3], 0, 255, seed=seed)


def _surrogate_loss(result):
  """Touches the final and every auxiliary prediction."""
  terms = [tf.reduce_mean(tf.square(result[k]))
           for k in outputs.PREDICTION_KEYS + (outputs.SEMANTIC_LOGITS,)]
  for prediction in result[outputs.AUXILIARY_PREDICTIONS]:
    terms += [tf.reduce_mean(tf.square(prediction[k]))
              for k in outputs.PREDICTION_KEYS]
  return tf.add_n(terms)


@pytest.fixture
def model(tiny_config):
  kmax = deeplab2_kmax.build_model(tiny_config)
  kmax(_images(), training=False)
  return kmax


def test_train_step_reaches_every_trainable_weight(model):
  with tf.GradientTape() as tape:
    loss = _surrogate_loss(model(_images(1), training=True))
  gradients = [tf.convert_to_tensor(g) if g is not None else None
               for g in tape.gradient(loss, model.trainable_weights)]
  missing = [v.path for v, g in zip(model.trainable_weights, gradients)
             if g is None]
  assert not missing
  optimizer = keras.optimizers.AdamW(1e-3)
  optimizer.build(model.trainable_weights)
  before = [v.numpy() for v in model.trainable_weights]
  optimizer.apply_gradients(zip(gradients, model.trainable_weights))
  # Residual branches start with a zero gamma, so some gradients are 0 at
  # initialisation; every weight with a non-zero gradient must move.
  nonzero = [bool(np.any(g.numpy())) for g in gradients]
  assert sum(nonzero) > 0.5 * len(nonzero)
  for moved, b, v in zip(nonzero, before, model.trainable_weights):
    if moved:
      assert not np.array_equal(b, v.numpy()), v.path


def test_training_updates_batch_norm_statistics(model):
  """Every norm moves its statistics (a norm whose input happens to have
  mean exactly 0, e.g. after an all-negative ReLU, keeps moving_mean at 0
  but still moves its variance)."""
  before = {v.path: v.numpy() for v in model.non_trainable_weights}
  model(_images(2), training=True)
  moved = {}
  for v in model.non_trainable_weights:
    norm = v.path.rsplit('/', 1)[0]
    moved[norm] = moved.get(norm, False) or not np.array_equal(
        before[v.path], v.numpy())
  assert len(moved) == len(before) // 2
  assert [norm for norm, m in moved.items() if not m] == []


def test_keras_serialization_round_trip(model):
  config = keras.saving.serialize_keras_object(model)
  clone = keras.saving.deserialize_keras_object(config)
  assert isinstance(clone, kmax_deeplab.KMaXDeepLab)
  clone(_images(), training=False)
  assert [v.shape for v in clone.weights] == [v.shape for v in model.weights]
  for source, target in zip(model.weights, clone.weights):
    target.assign(source)
  images = _images(3)
  np.testing.assert_allclose(clone(images)[outputs.MASK_LOGITS],
                             model(images)[outputs.MASK_LOGITS], atol=1e-5)


def test_tf_checkpoint_round_trip_is_complete(model, tiny_config, tmp_path):
  for i, variable in enumerate(model.weights):
    variable.assign(np.random.RandomState(i).uniform(
        0.5, 1.5, variable.shape).astype(np.float32))
  path = tf.train.Checkpoint(model=model).write(str(tmp_path / 'ckpt'))
  restored = deeplab2_kmax.build_model(tiny_config)
  restored(_images(), training=False)
  status = tf.train.Checkpoint(model=restored).read(path)
  status.assert_consumed()
  for a, b in zip(model.weights, restored.weights):
    np.testing.assert_array_equal(a.numpy(), b.numpy())


def test_saved_model_export_serves_the_same_outputs(model, tmp_path):
  module = tf.Module()
  module.model = model

  @tf.function(input_signature=[tf.TensorSpec([None, _SIZE, _SIZE, 3],
                                              tf.float32)])
  def serve(images):
    result = model(images, training=False)
    return {k: result[k] for k in outputs.PREDICTION_KEYS}

  module.serve = serve
  tf.saved_model.save(module, str(tmp_path / 'saved'),
                      signatures={'serving_default': serve})
  loaded = tf.saved_model.load(str(tmp_path / 'saved'))
  images = _images(5, batch=1)
  served = loaded.signatures['serving_default'](images=images)
  expected = model(images, training=False)
  for key in outputs.PREDICTION_KEYS:
    np.testing.assert_allclose(served[key], expected[key], atol=1e-5)
