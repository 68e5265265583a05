"""Tests of augment/autoaugment.py and augment/autoaugment_ops.py.

The ops are compared with PIL on small random images. Tolerance: the
look-up-table ops (Equalize, AutoContrast, Solarize, Posterize, Invert) must
match exactly; the blend ops (Brightness, Color, Contrast, Sharpness) may
differ by at most 1 on at most 1% of the values, because PIL blends with its
own float arithmetic and truncates (with Pillow 10-13 they match exactly).
"""
import itertools

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image, ImageEnhance, ImageOps

from deeplab2_kmax.data.augment import autoaugment
from deeplab2_kmax.data.augment import autoaugment_ops as ops
from deeplab2_kmax.data.augment.autoaugment import PolicyOp

POLICY = 'simple_classification_policy'


def _seed(value):
  return tf.constant([value, 3], tf.int64)


def _images():
  """Random uint8 images: tiny, narrow-range and large enough to equalize."""
  rng = np.random.default_rng(0)
  images = [rng.integers(0, 256, size, dtype=np.uint8)
            for size in ((1, 5, 3), (2, 2, 3), (5, 7, 3))]
  skewed = rng.integers(40, 90, (24, 20, 3)).astype(np.uint8)
  skewed[..., 1] = (skewed[..., 1].astype(np.int32) ** 2 // 90).astype(
      np.uint8)
  images += [skewed, rng.integers(0, 256, (20, 24, 3), dtype=np.uint8),
             np.full((4, 4, 3), 9, np.uint8)]
  return images


def _in_tf_data(fn, image):
  spec = tf.TensorSpec([None, None, 3], tf.uint8)
  dataset = tf.data.Dataset.from_generator(lambda: iter([image]),
                                           output_signature=spec)
  return np.asarray(next(iter(dataset.map(fn))))


def _assert_close_to_pil(ours, pil):
  ours, pil = np.asarray(ours, np.int32), np.asarray(pil, np.int32)
  assert ours.shape == pil.shape
  assert np.abs(ours - pil).max() <= 1
  assert np.mean(ours != pil) <= 0.01


ENHANCE = {'brightness': ImageEnhance.Brightness, 'color': ImageEnhance.Color,
           'contrast': ImageEnhance.Contrast,
           'sharpness': ImageEnhance.Sharpness}


@pytest.mark.parametrize('name', sorted(ENHANCE))
def test_enhance_ops_match_pil(name):
  op = getattr(ops, name)
  for image in _images():
    for factor in (0.1, 0.28, 0.46, 1.0, 1.36, 1.9):
      expected = ENHANCE[name](Image.fromarray(image)).enhance(factor)
      _assert_close_to_pil(op(image, factor), expected)


def test_lookup_table_ops_match_pil():
  for image in _images():
    pil = Image.fromarray(image)
    np.testing.assert_array_equal(ops.grayscale(image)[..., 0],
                                  pil.convert('L'))
    np.testing.assert_array_equal(ops.equalize(image), ImageOps.equalize(pil))
    np.testing.assert_array_equal(ops.autocontrast(image),
                                  ImageOps.autocontrast(pil))
    np.testing.assert_array_equal(ops.invert(image), ImageOps.invert(pil))
    for threshold in (0, 35, 128, 179, 256):
      np.testing.assert_array_equal(ops.solarize(image, threshold),
                                    ImageOps.solarize(pil, threshold))
    for bits in range(1, 9):
      np.testing.assert_array_equal(ops.posterize(image, bits),
                                    ImageOps.posterize(pil, bits))
  # The skewed image really is changed by equalize (step > 0).
  skewed = _images()[3]
  assert (np.asarray(ops.equalize(skewed)) != skewed).any()
  np.testing.assert_array_equal(ops.posterize(skewed, 0), 0)


def test_ops_in_tf_data_equal_eager():
  image = _images()[3]
  for op, args in ((ops.equalize, ()), (ops.autocontrast, ()),
                   (ops.sharpness, (1.72,)), (ops.contrast, (0.46,)),
                   (ops.color, (1.9,)), (ops.solarize, (35,))):
    fn = lambda im, op=op, args=args: op(im, *args)
    np.testing.assert_array_equal(_in_tf_data(fn, image), fn(image))


# ----------------------------------------------------------------- policies --


def test_simple_classification_policy_structure():
  resolved = autoaugment.resolve_policy(POLICY)
  expected = (
      (('Sharpness', 0.4, (1.36,)), ('Brightness', 0.2, (1.9,))),
      (('Equalize', 0.0, ()), ('Contrast', 0.2, (1.9,))),
      (('Sharpness', 0.2, (1.72,)), ('Color', 0.2, (1.72,))),
      (('Solarize', 0.2, (179,)), ('Equalize', 0.6, ())),
      (('Sharpness', 0.2, (0.28,)), ('Equalize', 0.2, ())),
  )
  assert len(resolved) == len(expected)
  for sub_policy, expected_sub_policy in zip(resolved, expected):
    assert len(sub_policy) == 2
    for step, (op, prob, args) in zip(sub_policy, expected_sub_policy):
      assert (step.op, step.prob) == (op, prob)
      assert step.args == pytest.approx(args)


def test_magnitude_scale():
  resolved = autoaugment.resolve_policy(POLICY, magnitude_scale=0.2)
  # Levels are multiplied by 0.2 before the mapping; probabilities stay.
  assert resolved[0][0].args == pytest.approx((0.352,))  # Sharpness level 1.4
  assert resolved[0][1].args == pytest.approx((0.46,))  # Brightness level 2
  assert resolved[3][0].args == (35,)  # Solarize int(1.4 / 10 * 256)
  assert [s.prob for p in resolved for s in p] == [
      0.4, 0.2, 0.0, 0.2, 0.2, 0.2, 0.2, 0.6, 0.2, 0.2]
  assert autoaugment.resolve_policy(POLICY, 0.0)[3][0].args == (0,)


def test_errors():
  image = np.zeros([4, 4, 3], np.uint8)
  with pytest.raises(ValueError, match='simple_classification_policy'):
    autoaugment.distort_image(image, _seed(0), policy='no_such_policy')
  with pytest.raises(ValueError, match='uint8'):
    autoaugment.distort_image(image.astype(np.float32), _seed(0))
  with pytest.raises(ValueError, match='>= 0'):
    autoaugment.resolve_policy(POLICY, magnitude_scale=-1.0)


def test_unknown_op_in_policy(monkeypatch):
  monkeypatch.setitem(autoaugment.POLICIES, 'broken',
                      ((PolicyOp('Rotate', 1.0, 3),),))
  with pytest.raises(ValueError, match="'Rotate'.*Sharpness"):
    autoaugment.resolve_policy('broken')


def _candidates(image, policy, magnitude_scale=1.0):
  """All outputs a policy can give: any subset of each sub-policy's ops."""
  outputs = []
  for sub_policy in autoaugment.resolve_policy(policy, magnitude_scale):
    steps = [step for step in sub_policy if step.prob > 0]
    for applied in itertools.product((False, True), repeat=len(steps)):
      out = image
      for step, apply_op in zip(steps, applied):
        if apply_op:
          out = autoaugment.OPS[step.op][0](out, *step.args)
      outputs.append(np.asarray(out))
  return outputs


def _distort_many(image, num_seeds, **kwargs):
  """distort_image for seeds 0..num_seeds-1, inside tf.data."""
  dataset = tf.data.Dataset.range(num_seeds).map(
      lambda s: autoaugment.distort_image(image, tf.stack([s, 3]), **kwargs))
  return [np.asarray(out) for out in dataset]


def test_distort_image_outputs_and_determinism():
  image = _images()[3]
  for magnitude_scale in (1.0, 0.2):
    candidates = _candidates(image, POLICY, magnitude_scale)
    outputs = _distort_many(image, 60, magnitude_scale=magnitude_scale)
    for seed in (0, 1, 2):
      eager = autoaugment.distort_image(image, _seed(seed),
                                        magnitude_scale=magnitude_scale)
      assert eager.dtype == tf.uint8 and eager.shape == image.shape
      np.testing.assert_array_equal(eager, outputs[seed])
    distinct = set()
    for out in outputs:
      matches = [i for i, c in enumerate(candidates)
                 if np.array_equal(out, c)]
      assert matches, 'output is no combination of the policy ops'
      distinct.add(out.tobytes())
    assert len(distinct) >= 4
  # Unknown [H, W] inside tf.data.
  distort = lambda im: autoaugment.distort_image(im, _seed(0))
  np.testing.assert_array_equal(_in_tf_data(distort, image), distort(image))


def test_sub_policy_choice_and_op_probability(monkeypatch):
  image = _images()[4]
  inverted = np.asarray(ops.invert(image))
  posterized = np.asarray(ops.posterize(image, 2))
  monkeypatch.setitem(autoaugment.POLICIES, 'three_ways', (
      (PolicyOp('Invert', 1.0, 0),),
      (PolicyOp('Posterize', 1.0, 5),),  # bits int(5 / 10 * 4) = 2
      (PolicyOp('Solarize', 1.0, 10),),  # threshold 256: unchanged
  ))
  outputs = _distort_many(image, 300, policy='three_ways')
  counts = [sum(np.array_equal(out, target) for out in outputs)
            for target in (inverted, posterized, image)]
  assert sum(counts) == 300
  assert all(70 <= count <= 130 for count in counts), counts

  monkeypatch.setitem(autoaugment.POLICIES, 'half_invert',
                      ((PolicyOp('Invert', 0.3, 0),),))
  outputs = _distort_many(image, 300, policy='half_invert')
  num_inverted = sum(np.array_equal(out, inverted) for out in outputs)
  num_kept = sum(np.array_equal(out, image) for out in outputs)
  assert num_kept + num_inverted == 300
  assert 60 <= num_inverted <= 120  # p = 0.3


def test_magnitude_scale_reaches_the_ops(monkeypatch):
  image = _images()[4]
  monkeypatch.setitem(autoaugment.POLICIES, 'solarize',
                      ((PolicyOp('Solarize', 1.0, 7),),))
  for scale, threshold in ((1.0, 179), (0.2, 35)):
    out = autoaugment.distort_image(image, _seed(0), policy='solarize',
                                    magnitude_scale=scale)
    np.testing.assert_array_equal(out, ops.solarize(image, threshold))
