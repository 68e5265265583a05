"""Tests of the drawing of synthetic panoptic images."""
import numpy as np
import pytest

from deeplab2_kmax.data import dataset_info
from deeplab2_kmax.data import synthetic_render

INFO = dataset_info.get_dataset_info('synthetic_panoptic')
THING_IDS = {c.source_id for c in INFO.classes if c.is_thing}
STUFF_IDS = {c.source_id for c in INFO.classes if not c.is_thing}


def check_segments(ids, segments_info, min_area=16):
  """Asserts that `segments_info` lists exactly the segments of `ids`."""
  listed = [s['id'] for s in segments_info]
  assert len(listed) == len(set(listed))
  assert set(np.unique(ids).tolist()) - {0} == set(listed)
  assert len(listed) <= synthetic_render.MAX_SEGMENTS
  for segment in segments_info:
    mask = ids == segment['id']
    rows, cols = np.nonzero(mask)
    assert segment['area'] == mask.sum() >= min_area
    assert segment['bbox'] == [cols.min(), rows.min(),
                               cols.max() - cols.min() + 1,
                               rows.max() - rows.min() + 1]
    assert segment['category_id'] in THING_IDS | STUFF_IDS
    assert segment['iscrowd'] in (0, 1)
    if segment['iscrowd']:
      assert segment['category_id'] in THING_IDS


def _render_many(seed, count, options=None):
  return [synthetic_render.render(np.random.default_rng([seed, i]), options)
          for i in range(count)]


def test_segments_info_matches_the_id_map():
  options = synthetic_render.SyntheticOptions(height=128, width=160,
                                              min_area=30)
  for sample in _render_many(1, 8, options):
    assert sample.image.shape == (128, 160, 3)
    assert sample.image.dtype == np.uint8
    assert sample.segment_ids.shape == (128, 160)
    check_segments(sample.segment_ids, sample.segments_info, min_area=30)
    stuff = [s for s in sample.segments_info if s['category_id'] in STUFF_IDS]
    assert 1 <= len(stuff) <= 3


def test_same_generator_state_same_sample():
  first = synthetic_render.render(np.random.default_rng(5))
  second = synthetic_render.render(np.random.default_rng(5))
  other = synthetic_render.render(np.random.default_rng(6))
  np.testing.assert_array_equal(first.image, second.image)
  np.testing.assert_array_equal(first.segment_ids, second.segment_ids)
  assert first.segments_info == second.segments_info
  assert not np.array_equal(first.image, other.image)


def test_crowd_void_and_instances_occur():
  samples = _render_many(0, 30)
  crowd = sum(any(s['iscrowd'] for s in x.segments_info) for x in samples)
  void = sum(bool((x.segment_ids == 0).any()) for x in samples)
  assert 0 < crowd < 30
  assert 0 < void < 30
  things = [sum(s['category_id'] in THING_IDS and not s['iscrowd']
                for s in x.segments_info) for x in samples]
  assert max(things) >= 4 and min(things) >= 1


def test_same_class_instances_touch():
  touching = 0
  for sample in _render_many(3, 20):
    ids = sample.segment_ids
    category = {s['id']: s['category_id'] for s in sample.segments_info
                if s['category_id'] in THING_IDS and not s['iscrowd']}
    pairs = set()
    for a, b in ((ids[1:], ids[:-1]), (ids[:, 1:], ids[:, :-1])):
      edge = a != b
      pairs |= set(zip(a[edge].tolist(), b[edge].tolist()))
    touching += any(x in category and y in category and
                    category[x] == category[y] for x, y in pairs)
  assert touching >= 6  # about 3 in 20 images without deliberate touching


def _class_colour_spread(samples, category_ids):
  """(largest gap between class mean colours, mean within-class std)."""
  colours = {c: [] for c in category_ids}
  for sample in samples:
    for segment in sample.segments_info:
      if segment['category_id'] in colours and not segment['iscrowd']:
        mask = sample.segment_ids == segment['id']
        colours[segment['category_id']].append(sample.image[mask].mean(axis=0))
  assert all(len(v) >= 15 for v in colours.values())
  means = [np.mean(v, axis=0) for v in colours.values()]  # [3] each
  spread = np.mean([np.std(v, axis=0).mean() for v in colours.values()])
  return max(np.abs(a - b).max() for a in means for b in means), spread


def test_colour_does_not_tell_the_class():
  samples = _render_many(2, 50)
  for category_ids in (THING_IDS, STUFF_IDS):
    gap, spread = _class_colour_spread(samples, category_ids)
    assert spread > 25  # colours vary a lot within a class ...
    assert gap < spread  # ... and the class means lie within that spread


def test_bad_options():
  with pytest.raises(ValueError, match='at most 12'):
    synthetic_render.SyntheticOptions(max_things=9)
  with pytest.raises(ValueError, match='too small'):
    synthetic_render.SyntheticOptions(height=16)
  with pytest.raises(ValueError, match='min_stuff'):
    synthetic_render.SyntheticOptions(min_stuff=0)
