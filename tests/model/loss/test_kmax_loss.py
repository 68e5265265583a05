"""The total kMaX-DeepLab loss: every term against an independent NumPy
version of the formulas (brute-force matching), deep supervision with the
shared final matching, stop-gradients, NaN safety, seeding, tf.function,
tf.distribute, mixed precision and a training step."""
import itertools

import numpy as np
import pytest
import tensorflow as tf

from deeplab2_kmax.data import dataset_info
from deeplab2_kmax.model import outputs as outputs_lib
from deeplab2_kmax.model.loss import instance_discrimination_loss
from deeplab2_kmax.model.loss import kmax_loss
from deeplab2_kmax.model.loss import semantic_loss
from deeplab2_kmax.protos import config_pb2

K = 3  # channels: thing 0, thing 1, stuff 2, void 3
SIZE = 5
P = SIZE * SIZE
VOID_PIXELS = [(0, 4), (3, 4)]
CROWD_PIXELS = [(1, 4), (4, 2)]


def _targets(batch=1):
  """GT rows: thing class 0, thing class 1, padding, stuff class 2."""
  ids = np.full([SIZE, SIZE], 3, np.int32)
  ids[:2, :2] = 0
  ids[:2, 2:4] = 1
  for pixel in VOID_PIXELS + CROWD_PIXELS:
    ids[pixel] = -1
  void = np.zeros([SIZE, SIZE], bool)
  for pixel in VOID_PIXELS:
    void[pixel] = True
  # Semantic id = channel + 1, ignore label 0; crowd keeps its class (2).
  channel_of_row = np.array([0, 1, K, 2])
  semantic = np.where(ids >= 0, channel_of_row[ids] + 1, 2)
  semantic[void] = 0
  area = np.array([np.sum(ids == m) for m in range(4)])
  inverse_area = np.where(ids >= 0, P / np.maximum(area[ids], 1), P)
  targets = {
      kmax_loss.GT_SEMANTIC: semantic.astype(np.int32),
      kmax_loss.GT_MASK_IDS: ids,
      kmax_loss.GT_CLASSES: channel_of_row.astype(np.int32),
      kmax_loss.GT_VALID: np.array([True, True, False, True]),
      kmax_loss.GT_INVERSE_AREA: inverse_area.astype(np.float32),
      kmax_loss.GT_SEMANTIC_WEIGHTS: np.where(void, 0., 1.).astype(
          np.float32),
      kmax_loss.GT_VOID: void,
  }
  return {k: tf.constant(np.stack([v] * batch)) for k, v in targets.items()}


def _prediction(seed, batch=1, num_slots=4, size=SIZE):
  rng = np.random.RandomState(seed)
  feature = rng.normal(size=[batch, size, size, 4])
  feature /= np.linalg.norm(feature, axis=-1, keepdims=True)
  return {
      outputs_lib.CLASS_LOGITS: tf.constant(
          rng.normal(size=[batch, num_slots, K + 1]), tf.float32),
      outputs_lib.MASK_LOGITS: tf.constant(
          2 * rng.normal(size=[batch, size, size, num_slots]), tf.float32),
      outputs_lib.PIXEL_FEATURE: tf.constant(feature, tf.float32),
  }


def _outputs(seed, batch=1, num_slots=4, aux_seeds=()):
  result = _prediction(seed, batch, num_slots)
  result[outputs_lib.SEMANTIC_LOGITS] = tf.constant(
      np.random.RandomState(seed + 100).normal(size=[batch, SIZE, SIZE, 4]),
      tf.float32)
  result[outputs_lib.AUXILIARY_PREDICTIONS] = [
      _prediction(s, batch, num_slots) for s in aux_seeds]
  return result


def _log_softmax(x):
  x = x - x.max(axis=-1, keepdims=True)
  return x - np.log(np.exp(x).sum(axis=-1, keepdims=True))


def _reference(match_from, penalised, targets, image=0, alpha=0.75):
  """NumPy PQ class, Dice and mask-ID terms (weighted) of one image.

  The matching and its weights come from `match_from`, the penalised logits
  from `penalised` (both prediction dicts).
  """
  def get(d, key):
    return np.asarray(d[key], np.float64)[image]
  match_class = get(match_from, outputs_lib.CLASS_LOGITS)  # [N, K+1]
  match_mask = get(match_from, outputs_lib.MASK_LOGITS).reshape(P, -1)
  pen_class = get(penalised, outputs_lib.CLASS_LOGITS)
  pen_mask = get(penalised, outputs_lib.MASK_LOGITS).reshape(P, -1)
  ids = np.asarray(targets[kmax_loss.GT_MASK_IDS])[image].ravel()
  void = np.asarray(targets[kmax_loss.GT_VOID])[image].ravel()
  classes = np.asarray(targets[kmax_loss.GT_CLASSES])[image]
  valid = np.asarray(targets[kmax_loss.GT_VALID])[image]
  num_slots, num_masks = match_mask.shape[1], len(classes)

  gt = np.zeros([P, num_masks])
  gt[ids >= 0, ids[ids >= 0]] = 1
  probs = np.exp(_log_softmax(match_mask))
  probs_non_void = probs * ~void[:, None]
  class_probs = np.exp(_log_softmax(match_class))
  dice = np.zeros([num_masks, num_slots])
  class_sim = np.zeros([num_masks, num_slots])
  for i in range(num_masks):
    for j in range(num_slots):
      dice[i, j] = (gt[:, i] @ probs_non_void[:, j]) / (
          (gt[:, i].sum() + probs_non_void[:, j].sum()) / 2 + 1e-5)
      class_sim[i, j] = class_probs[j, classes[i]] if classes[i] < K else 0
  rows = [i for i in range(num_masks) if valid[i] and classes[i] < K]
  count = min(len(rows), num_slots)
  pairs = max(
      (list(zip(chosen, slots))
       for chosen in itertools.combinations(rows, count)
       for slots in itertools.permutations(range(num_slots), count)),
      key=lambda ps: sum(dice[i, j] * class_sim[i, j] for i, j in ps))

  void_ratio = (probs * void[:, None]).sum(0) / (probs.sum(0) + 1e-5)
  target = np.full(num_slots, K)
  weight = np.maximum(void_ratio, 1e-5)
  for i, j in pairs:
    target[j], weight[j] = classes[i], max(dice[i, j], 1e-5)
  alphas = np.where(target < K, alpha, 1 - alpha)
  terms = -_log_softmax(pen_class)[np.arange(num_slots), target] * alphas * (
      weight)
  class_term = terms.sum() / np.count_nonzero(terms)

  pen_probs = np.exp(_log_softmax(pen_mask)) * gt.sum(1, keepdims=True)
  dice_term = 0.0
  for i, j in pairs:
    loss = 1 - (2 * pen_probs[:, j] @ gt[:, i] + 1) / (
        pen_probs[:, j].sum() + gt[:, i].sum() + 1)
    dice_term += max(class_sim[i, j], 1e-5) * loss
  slot_of = dict(pairs)
  log_p = _log_softmax(pen_mask)
  mask_id = np.mean([-log_p[p, slot_of[ids[p]]] for p in range(P)
                     if not void[p] and ids[p] in slot_of])
  return {kmax_loss.PQ_CLASS: 3.0 * class_term,
          kmax_loss.PQ_DICE: 3.0 * alpha / num_slots * dice_term,
          kmax_loss.MASK_ID: 0.3 * mask_id}


def _loss(**kwargs):
  return kmax_loss.KMaXLoss(num_classes=K, ignore_label=0, **kwargs)


@pytest.mark.parametrize('num_slots', [2, 4, 6])  # N < valid masks, M, > M
def test_final_terms_equal_numpy_reference(num_slots):
  targets = _targets(batch=2)
  outputs = _outputs(seed=num_slots, batch=2, num_slots=num_slots)
  losses = _loss()(outputs, targets, seed=[0, 0])
  for term in (kmax_loss.PQ_CLASS, kmax_loss.PQ_DICE, kmax_loss.MASK_ID):
    expected = np.mean([_reference(outputs, outputs, targets, image)[term]
                        for image in range(2)])
    np.testing.assert_allclose(losses[term].numpy(), expected, rtol=2e-5,
                               err_msg=term)
    np.testing.assert_allclose(losses[f'{term}/final'].numpy(), expected,
                               rtol=2e-5, err_msg=term)


def test_instance_discrimination_and_semantic_wiring():
  targets = _targets()
  outputs = _outputs(seed=1)
  seed = tf.constant([3, 4])
  losses = _loss(instance_discrimination_sample_k=7, semantic_sample_k=9)(
      outputs, targets, seed)
  disc_seed, semantic_seed = tf.random.experimental.stateless_split(seed, 2)
  samples = instance_discrimination_loss.sample_pixels(
      tf.reshape(targets['inverse_area'], [1, P]),
      tf.reshape(targets['void'], [1, P]), 7, 1.5, disc_seed)
  disc = instance_discrimination_loss.instance_discrimination(
      tf.gather(tf.reshape(outputs[outputs_lib.PIXEL_FEATURE], [1, P, 4]),
                samples, batch_dims=1),
      tf.gather(tf.reshape(targets['gt_mask_ids'], [1, P]), samples,
                batch_dims=1), targets['gt_classes'].shape[-1], 0.3)
  np.testing.assert_allclose(losses['instance_discrimination'].numpy(),
                             disc.numpy()[0], rtol=1e-6)
  semantic = semantic_loss.semantic_loss(
      outputs[outputs_lib.SEMANTIC_LOGITS], targets['semantic'],
      targets['semantic_weights'], targets['inverse_area'], targets['void'],
      ignore_label=0, sample_k=9, sample_temperature=2.0, top_k_fraction=1.0,
      seed=semantic_seed)
  np.testing.assert_allclose(losses['semantic'].numpy(), semantic.numpy()[0],
                             rtol=1e-6)
  total = sum(losses[t] for t in kmax_loss.TERMS)
  np.testing.assert_allclose(losses['total'].numpy(), total.numpy(),
                             rtol=1e-6)


def test_auxiliary_outputs_reuse_the_final_matching():
  targets = _targets()
  outputs = _outputs(seed=2, aux_seeds=(11, 12))
  losses = _loss()(outputs, targets, seed=[0, 0])
  for index, aux in enumerate(outputs[outputs_lib.AUXILIARY_PREDICTIONS]):
    expected = _reference(outputs, aux, targets)
    for term, value in expected.items():
      np.testing.assert_allclose(losses[f'{term}/aux_{index}'].numpy(),
                                 value, rtol=2e-5, err_msg=term)
  for term in kmax_loss.PER_OUTPUT_TERMS:
    parts = [losses[f'{term}/{name}'] for name in ('final', 'aux_0', 'aux_1')]
    np.testing.assert_allclose(losses[term].numpy(), sum(parts).numpy(),
                               rtol=1e-6)


def test_auxiliary_equal_to_final_gives_equal_terms():
  targets = _targets()
  outputs = _outputs(seed=3)
  final = {k: outputs[k] for k in outputs_lib.PREDICTION_KEYS}
  outputs[outputs_lib.AUXILIARY_PREDICTIONS] = [final, dict(final)]
  losses = _loss(instance_discrimination_sample_k=10)(outputs, targets,
                                                      [1, 1])
  for term in kmax_loss.PER_OUTPUT_TERMS:
    final_value = losses[f'{term}/final'].numpy()
    assert final_value > 0, term
    for name in ('aux_0', 'aux_1'):
      np.testing.assert_allclose(losses[f'{term}/{name}'].numpy(),
                                 final_value, rtol=1e-6, err_msg=term)
    np.testing.assert_allclose(losses[term].numpy(), 3 * final_value,
                               rtol=1e-6)


def test_coarse_auxiliary_outputs_are_resized_align_corners():
  # Mask logits linear in (y, x) are reproduced exactly by an align-corners
  # bilinear resize, and a constant unit feature stays unit after
  # re-normalisation: the stride-2 auxiliary output equals the final one.
  targets = _targets()
  outputs = _outputs(seed=4)
  rng = np.random.RandomState(5)
  a, b, c = rng.normal(size=[3, 1, 1, 1, 4])
  grid = np.arange(SIZE, dtype=np.float64)
  fine = a + b * grid[None, :, None, None] + c * grid[None, None, :, None]
  coarse = fine[:, ::2, ::2]  # [1, 3, 3, 4]
  feature = np.ones([1, SIZE, SIZE, 4]) / 2.0
  outputs[outputs_lib.MASK_LOGITS] = tf.constant(fine, tf.float32)
  outputs[outputs_lib.PIXEL_FEATURE] = tf.constant(feature, tf.float32)
  outputs[outputs_lib.AUXILIARY_PREDICTIONS] = [{
      outputs_lib.CLASS_LOGITS: outputs[outputs_lib.CLASS_LOGITS],
      outputs_lib.MASK_LOGITS: tf.constant(coarse, tf.float32),
      outputs_lib.PIXEL_FEATURE: tf.constant(feature[:, ::2, ::2],
                                             tf.float32)}]
  losses = _loss()(outputs, targets, [0, 0])
  for term in kmax_loss.PER_OUTPUT_TERMS:
    np.testing.assert_allclose(losses[f'{term}/aux_0'].numpy(),
                               losses[f'{term}/final'].numpy(), rtol=1e-5,
                               err_msg=term)


def test_stop_gradients():
  targets = _targets()
  outputs = _outputs(seed=6, aux_seeds=(7,))
  class_logits = tf.Variable(outputs[outputs_lib.CLASS_LOGITS])
  mask_logits = tf.Variable(outputs[outputs_lib.MASK_LOGITS])
  aux = outputs[outputs_lib.AUXILIARY_PREDICTIONS][0]
  aux_class = tf.Variable(aux[outputs_lib.CLASS_LOGITS])
  aux_mask = tf.Variable(aux[outputs_lib.MASK_LOGITS])
  variables = [class_logits, mask_logits, aux_class, aux_mask]
  with tf.GradientTape(persistent=True) as tape:
    outputs[outputs_lib.CLASS_LOGITS] = tf.identity(class_logits)
    outputs[outputs_lib.MASK_LOGITS] = tf.identity(mask_logits)
    outputs[outputs_lib.AUXILIARY_PREDICTIONS] = [{
        outputs_lib.CLASS_LOGITS: tf.identity(aux_class),
        outputs_lib.MASK_LOGITS: tf.identity(aux_mask),
        outputs_lib.PIXEL_FEATURE: aux[outputs_lib.PIXEL_FEATURE]}]
    losses = _loss()(outputs, targets, [0, 0])

  def norms(name):
    grads = tape.gradient(losses[name], variables,
                          unconnected_gradients='zero')
    return [float(tf.reduce_max(tf.abs(g))) for g in grads]

  # [final class, final mask, aux class, aux mask]: each term reaches only
  # the logits it penalises; the weights from the final output are
  # constants.
  assert np.array_equal(np.nonzero(norms('pq_class/final'))[0], [0])
  assert np.array_equal(np.nonzero(norms('pq_dice/final'))[0], [1])
  assert np.array_equal(np.nonzero(norms('mask_id/final'))[0], [1])
  assert np.array_equal(np.nonzero(norms('pq_class/aux_0'))[0], [2])
  assert np.array_equal(np.nonzero(norms('pq_dice/aux_0'))[0], [3])
  assert np.array_equal(np.nonzero(norms('mask_id/aux_0'))[0], [3])


def test_non_finite_terms_are_zeroed_and_reported():
  targets = _targets(batch=2)
  outputs = _outputs(seed=8, batch=2)
  clean = _loss()({k: v[1:] if k != outputs_lib.AUXILIARY_PREDICTIONS else v
                   for k, v in outputs.items()},
                  {k: v[1:] for k, v in targets.items()}, [0, 0])
  class_logits = outputs[outputs_lib.CLASS_LOGITS].numpy()
  class_logits[0, 1, 2] = np.nan
  outputs[outputs_lib.CLASS_LOGITS] = tf.constant(class_logits)
  losses = _loss()(outputs, targets, [0, 0])
  assert np.isfinite(losses['total'].numpy())
  # The broken image counts as 0 in the batch mean of the class term.
  np.testing.assert_allclose(losses['pq_class'].numpy(),
                             clean['pq_class'].numpy() / 2, rtol=1e-6)
  assert losses['non_finite/pq_class'].numpy() == 1
  assert losses['non_finite/mask_id'].numpy() == 0
  names = kmax_loss.non_finite_terms(losses)
  assert 'pq_class' in names and 'mask_id' not in names
  assert kmax_loss.non_finite_terms(clean) == []


def test_all_void_image_gives_finite_losses():
  targets = _targets()
  targets['gt_mask_ids'] = -tf.ones_like(targets['gt_mask_ids'])
  targets['gt_valid'] = tf.zeros_like(targets['gt_valid'])
  targets['void'] = tf.ones_like(targets['void'])
  targets['semantic'] = tf.zeros_like(targets['semantic'])
  targets['semantic_weights'] = tf.zeros_like(targets['semantic_weights'])
  targets['inverse_area'] = tf.fill(targets['inverse_area'].shape, float(P))
  losses = _loss()(_outputs(seed=9), targets, [0, 0])
  for term in ('pq_dice', 'mask_id', 'instance_discrimination', 'semantic'):
    assert losses[term].numpy() == 0.0, term
  # Every slot is taught void, with weight ~1 (its mask lies on void).
  assert 0 < losses['pq_class'].numpy() < np.inf
  assert kmax_loss.non_finite_terms(losses) == []


def test_sampling_is_determined_by_the_seed():
  targets = _targets()
  outputs = _outputs(seed=10)
  loss = _loss(instance_discrimination_sample_k=6, semantic_sample_k=6)
  first = loss(outputs, targets, tf.constant([1, 2], tf.int64))
  again = loss(outputs, targets, tf.constant([1, 2], tf.int64))
  other = loss(outputs, targets, tf.constant([2, 1], tf.int64))
  for term in ('instance_discrimination', 'semantic'):
    assert first[term].numpy() == again[term].numpy()
    assert first[term].numpy() != other[term].numpy()
  assert first['pq_class'].numpy() == other['pq_class'].numpy()


def _batch_for_equivalence():
  loss = _loss(instance_discrimination_sample_k=8, semantic_sample_k=8)
  args = (_outputs(seed=11, batch=2, aux_seeds=(12,)), _targets(batch=2),
          tf.constant([4, 5]))
  return loss, args, loss(*args)


@pytest.mark.slow
def test_graph_and_distribute_match_eager():
  loss, args, eager = _batch_for_equivalence()
  graph = tf.function(loss, jit_compile=False)(*args)
  strategy = tf.distribute.MirroredStrategy(['/cpu:0'])
  distributed = strategy.run(tf.function(loss), args)
  for name, value in eager.items():
    np.testing.assert_allclose(graph[name].numpy(), value.numpy(), rtol=1e-5,
                               err_msg=name)
    np.testing.assert_allclose(distributed[name].numpy(), value.numpy(),
                               rtol=1e-5, err_msg=name)


def test_compiled_loss_with_tf_matching_matches_eager():
  # What a jit_compile training step runs: the TensorFlow Hungarian path.
  # Every pixel is sampled: XLA's stateless random streams differ from
  # TensorFlow's kernels', so only a draw of all pixels is the same set.
  _, args, _ = _batch_for_equivalence()
  settings = dict(instance_discrimination_sample_k=10**6, semantic_sample_k=0)
  eager = _loss(**settings)(*args)
  compiled = tf.function(_loss(use_host_matching=False, **settings),
                         jit_compile=True)(*args)
  for name, value in eager.items():
    np.testing.assert_allclose(compiled[name].numpy(), value.numpy(),
                               rtol=1e-4, atol=1e-6, err_msg=name)


def test_half_precision_outputs_are_computed_in_float32():
  loss, (outputs, targets, seed), eager = _batch_for_equivalence()
  half = tf.nest.map_structure(lambda x: tf.cast(x, tf.float16), outputs)
  mixed = loss(half, targets, seed)
  for name, value in eager.items():
    assert mixed[name].dtype == tf.float32
    np.testing.assert_allclose(mixed[name].numpy(), value.numpy(), rtol=2e-2,
                               atol=1e-3, err_msg=name)


@pytest.mark.slow
def test_gradient_steps_lower_the_loss():
  targets = _targets()
  outputs = _outputs(seed=13, aux_seeds=(14,))
  variables = tf.nest.map_structure(tf.Variable, outputs)
  loss = _loss(instance_discrimination_sample_k=12, semantic_sample_k=12)
  optimizer = tf.keras.optimizers.Adam(0.05)

  @tf.function
  def step():
    with tf.GradientTape() as tape:
      current = tf.nest.map_structure(tf.identity, variables)
      for prediction in [current] + current['auxiliary_predictions']:
        prediction['pixel_feature'] = tf.math.l2_normalize(
            prediction['pixel_feature'], -1)
      total = loss(current, targets, [7, 7])['total']
    flat = tf.nest.flatten(variables)
    optimizer.apply_gradients(zip(tape.gradient(total, flat), flat))
    return total

  values = [float(step()) for _ in range(15)]
  assert values[-1] < 0.8 * values[0], values


def test_from_config_and_errors():
  options = config_pb2.LossOptions(semantic_sample_k=0,
                                   semantic_top_k_percent=0.2)
  info = dataset_info.get_dataset_info('synthetic_panoptic')
  loss = kmax_loss.KMaXLoss.from_config(options, info)
  assert (loss.num_classes, loss.ignore_label) == (6, 0)
  assert loss.pq_style_weight == pytest.approx(3.0)
  assert loss.mask_id_weight == pytest.approx(0.3)
  assert loss.instance_discrimination_sample_k == 4096
  assert loss.semantic_top_k_fraction == pytest.approx(0.2)
  assert loss.semantic_sample_k == 0
  with pytest.raises(ValueError, match='class_logits'):
    loss(_outputs(seed=0), _targets(), [0, 0])  # 4 channels, not 7
  outputs = _outputs(seed=0)
  outputs[outputs_lib.MASK_LOGITS] = outputs[outputs_lib.MASK_LOGITS][:, :3]
  with pytest.raises(ValueError, match='gt_mask_ids'):
    _loss()(outputs, _targets(), [0, 0])
  with pytest.raises(ValueError, match='semantic_top_k_percent'):
    _loss(semantic_top_k_fraction=1.5)
  outputs = _outputs(seed=0)
  del outputs[outputs_lib.SEMANTIC_LOGITS]
  with pytest.raises(ValueError, match='semantic_logits'):
    _loss()(outputs, _targets(), [0, 0])
  # Without the semantic term the head is not needed.
  assert 'total' in _loss(semantic_weight=0.0)(outputs, _targets(), [0, 0])
