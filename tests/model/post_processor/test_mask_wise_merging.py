"""Mask-wise merging: hand-made cases and parity with DeepLab2's output."""
import numpy as np
import pytest
import tensorflow as tf

from deeplab2_kmax.model.post_processor import mask_wise_merging as mwm
from tests import conftest
from tests.conftest import PARITY_DIR

BIG = 20.0


def _merge(class_logits, mask_logits, **options):
  defaults = dict(pixel_confidence_threshold=0.4, thing_class_threshold=0.5,
                  stuff_class_threshold=0.5, overlap_threshold=0.8)
  defaults.update(options)
  mask_logits = np.asarray(mask_logits, np.float32)
  out = mwm.merge(
      np.asarray(class_logits, np.float32), mask_logits,
      mask_logits.shape[1:3],
      # Two classes: channel 0 = thing with semantic id 1, channel 1 = stuff
      # with semantic id 2; ignore 0, divisor 10.
      channel_to_semantic=[1, 2], num_things=1, label_divisor=10,
      ignore_label=0, options=mwm.MergingOptions(**defaults))
  return {k: v.numpy() for k, v in out.items()}


def _class_logits(*channels):
  """One row per center: its predicted channel (2 = void) with high conf."""
  logits = np.full([1, len(channels), 3], -BIG, np.float32)
  for i, c in enumerate(channels):
    logits[0, i, c] = BIG
  return logits


def _masks(*regions, shape=(4, 6)):
  """Mask logits [1, H, W, N]: center i owns regions[i] (a bool array)."""
  logits = np.full((1,) + shape + (len(regions),), -BIG, np.float32)
  for i, region in enumerate(regions):
    logits[0, ..., i][region] = BIG
  return logits


def test_things_stuff_void_and_segment_table():
  region = np.zeros((4, 6), bool)
  a, b, c = region.copy(), region.copy(), region.copy()
  a[:2, :2] = True      # thing
  b[:, 3:] = True       # stuff
  c[2:, :2] = True      # second thing
  # Pixels in no region: every center has equal logits -> prob 1/3 < 0.4.
  out = _merge(_class_logits(0, 1, 0), _masks(a, b, c))
  panoptic = out['panoptic'][0]
  assert set(np.unique(panoptic[a])) == {panoptic[0, 0]}
  assert panoptic[0, 0] // 10 == 1 and panoptic[0, 0] % 10 > 0
  assert set(np.unique(panoptic[b])) == {20}
  assert panoptic[2, 0] // 10 == 1 and panoptic[2, 0] != panoptic[0, 0]
  assert (panoptic[:, 2] == 0).all()  # void column
  np.testing.assert_array_equal(out['instance'][0] > 0, a | c)
  areas = dict(zip(out['segment_ids'][0], out['segment_areas'][0]))
  assert areas[20] == 12 and areas[panoptic[0, 0]] == 4
  assert out['segment_is_thing'][0].sum() == 2


def test_class_threshold_and_overlap():
  region = np.zeros((4, 6), bool)
  a = region.copy()
  a[:, :4] = True
  b = region.copy()
  b[:, 2:] = True  # overlaps a on half of its pixels
  class_logits = _class_logits(0, 0)
  # Both centers can be confident at once only through the mask logits.
  logits = np.full([1, 4, 6, 2], -BIG, np.float32)
  logits[0, ..., 0][a] = BIG
  logits[0, ..., 1][b] = BIG
  logits[0, :, 2:4, :] = BIG  # both > 0.4 there (0.5 each)
  out = _merge(class_logits, logits)
  panoptic = out['panoptic'][0]
  # The second mask loses half its pixels (> 1 - 0.8): dropped.
  assert len(np.unique(panoptic[panoptic > 0])) == 1
  out = _merge(class_logits, logits, overlap_threshold=0.4)
  assert len(np.unique(panoptic[panoptic > 0])) == 1
  assert len(np.unique(out['panoptic'][0])) == 2
  # Low class confidence drops everything.
  weak = np.zeros([1, 2, 3], np.float32)
  out = _merge(weak, logits)
  assert (out['panoptic'] == 0).all()


def test_area_limits_and_stuff_merge():
  region = np.zeros((4, 6), bool)
  small, s1, s2 = region.copy(), region.copy(), region.copy()
  small[0, 0] = True
  s1[:, 3:] = True
  s2[:, 1:3] = True
  out = _merge(_class_logits(0, 1, 1), _masks(small, s1, s2),
               thing_area_limit=2)
  panoptic = out['panoptic'][0]
  assert panoptic[0, 0] == 0  # thing below the area limit -> void
  assert (panoptic[s1 | s2] == 20).all()  # two stuff centers, one segment
  areas = out['segment_areas'][0][out['segment_ids'][0] == 20]
  assert sorted(areas) == [0, 20]
  out = _merge(_class_logits(0, 1, 1), _masks(small, s1, s2),
               stuff_area_limit=21)
  assert (out['panoptic'][0][s1 | s2] == 0).all()


def test_batched_equals_single_and_runs_in_tf_function():
  rng = np.random.default_rng(0)
  class_logits = rng.normal(size=[3, 5, 3]).astype(np.float32) * 3
  mask_logits = rng.normal(size=[3, 5, 5, 5]).astype(np.float32) * 3
  kwargs = dict(channel_to_semantic=[1, 2], num_things=1, label_divisor=10,
                ignore_label=0, options=mwm.MergingOptions(
                    thing_class_threshold=0.3, stuff_class_threshold=0.3))
  batched = mwm.merge(class_logits, mask_logits, (17, 17), **kwargs)
  graph = tf.function(lambda c, m: mwm.merge(c, m, (17, 17), **kwargs))
  for i in range(3):
    single = graph(class_logits[i:i + 1], mask_logits[i:i + 1])
    for key in batched:
      if batched[key].dtype.is_floating:
        np.testing.assert_allclose(batched[key][i], single[key][0],
                                   rtol=1e-5)
      else:
        np.testing.assert_array_equal(batched[key][i], single[key][0])


def test_parity_with_deeplab2_post_processor():
  outputs = PARITY_DIR / 'deeplab2_kmax_r50' / 'reference_outputs_321.npz'
  if not outputs.exists():
    pytest.skip(f'parity fixture not found at {outputs}')
  ref = np.load(outputs)
  # reference_summary_321.json: COCO thresholds, class thresholds and area
  # limits 0, pixel confidence 0.4, overlap 0.8, reorder weights 1/1.
  out = mwm.merge(
      ref['transformer_class_logits'], ref['pixel_space_mask_logits'],
      (321, 321), channel_to_semantic=list(range(1, 134)), num_things=80,
      label_divisor=256, ignore_label=0, options=mwm.MergingOptions(
          0.4, 0.0, 0.0, 0.8, 1.0, 1.0, 0, 0))
  ours, theirs = out['panoptic'].numpy()[0], ref['panoptic_pred'][0]
  # Segment ids may be renumbered: match each of ours to its majority.
  assert conftest.panoptic_agreement(ours, theirs) >= 0.99
  assert (out['semantic'].numpy()[0] == ref['semantic_pred'][0]).mean() >= 0.99
  np.testing.assert_allclose(out['instance_scores'].numpy()[0],
                             ref['instance_scores'][0], atol=1e-5)
  np.testing.assert_allclose(out['semantic_scores'].numpy()[0],
                             ref['semantic_scores'][0], atol=1e-5)


@pytest.mark.parametrize('in_function', [False, True])
def test_histogram_equals_bincount_per_row(in_function):
  rng = np.random.RandomState(7)
  index_map = rng.randint(0, 6, size=(3, 50)).astype(np.int32)
  index_map[2] = 5  # a row with one index only
  histogram = lambda m: mwm.histogram(m, 6)  # pylint: disable=unnecessary-lambda-assignment
  if in_function:  # batch and length unknown when traced
    histogram = tf.function(histogram, input_signature=[
        tf.TensorSpec([None, None], tf.int32)])
  counts = histogram(tf.constant(index_map))
  expected = np.stack([np.bincount(row, minlength=6) for row in index_map])
  np.testing.assert_array_equal(counts.numpy(), expected)
