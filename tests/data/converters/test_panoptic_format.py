"""Tests of panoptic_format.py: segments -> labels, reading, pairing."""
import pickle

import numpy as np
import pytest

from deeplab2_kmax.data.converters import coco_panoptic
from deeplab2_kmax.data.converters import panoptic_format
from tests.data import fixtures

# source id -> (semantic id, is thing): 5 = a thing, 9 = stuff.
SPEC = panoptic_format.LabelSpec(
    dataset='toy', categories={5: (2, True), 9: (1, False)},
    label_divisor=10, void_label=0)


def _label(ids, segments, spec=SPEC):
  return panoptic_format.panoptic_label(np.array(ids), segments, spec,
                                        'a.jpg', 7)


def _seg(segment_id, category_id, iscrowd=0):
  return {'id': segment_id, 'category_id': category_id, 'iscrowd': iscrowd}


def test_things_numbered_in_segment_order_stuff_crowd_void():
  ids = [[300, 300, 0, 1000],
         [200, 200, 40, 1000]]
  # 200 is listed before 300, so it is instance 1; 40 is a crowd thing.
  label, absent = _label(ids, [_seg(1000, 9), _seg(200, 5), _seg(300, 5),
                               _seg(40, 5, iscrowd=1)])
  np.testing.assert_array_equal(label, [[22, 22, 0, 10],
                                        [21, 21, 20, 10]])
  assert label.dtype == np.int32 and absent == []


def test_void_label_and_no_segments():
  spec = panoptic_format.LabelSpec('toy', SPEC.categories, 10, void_label=990)
  label, _ = _label([[0, 0]], [], spec)
  np.testing.assert_array_equal(label, [[990, 990]])


@pytest.mark.parametrize('ids, segments, segment_id, match', [
    ([[1, 2]], [_seg(1, 9)], 2, 'in the PNG but not in the JSON'),
    ([[1, 1]], [_seg(1, 9), _seg(3, 9)], 3, 'has no pixel in the PNG'),
    ([[1, 1]], [_seg(1, 4)], 1, 'category_id 4 is not a class'),
    ([[1, 1]], [_seg(1, 9), _seg(1, 9)], 1, 'listed twice'),
    ([[1, 1]], [_seg(0, 9), _seg(1, 9)], 0, 'must be positive'),
])
def test_bad_segments_name_image_and_segment(ids, segments, segment_id, match):
  with pytest.raises(panoptic_format.InvalidImageError, match=match) as info:
    _label(ids, segments)
  error = info.value
  assert (error.file_name, error.image_id, error.segment_id) == (
      'a.jpg', 7, segment_id)
  assert f"image 'a.jpg' (id 7), segment {segment_id}:" in str(error)


def test_more_instances_than_the_divisor_holds():
  ids = np.arange(1, 11)[None]  # [1, 10]: ten instances of class 5.
  with pytest.raises(panoptic_format.InvalidImageError,
                     match='instance 10 of category 5 does not fit below '
                           'label_divisor 10') as info:
    _label(ids, [_seg(i, 5) for i in range(1, 11)])
  assert info.value.segment_id == 10
  label, _ = _label(ids[:, :9], [_seg(i, 5) for i in range(1, 10)])
  np.testing.assert_array_equal(label, [np.arange(21, 30)])


def test_absent_segments_can_be_allowed():
  spec = panoptic_format.LabelSpec('toy', SPEC.categories, 10, 0,
                                   allow_absent_segments=True)
  label, absent = _label([[1, 0]], [_seg(3, 9), _seg(2, 5), _seg(1, 5)], spec)
  np.testing.assert_array_equal(label, [[22, 0]])  # 1 is the 2nd instance.
  assert absent == [2, 3]


def test_malformed_segment_entry():
  with pytest.raises(panoptic_format.InvalidImageError, match='"category_id"'):
    _label([[1]], [{'id': 1}])


def test_error_survives_pickling():
  error = panoptic_format.InvalidImageError('a.jpg', 7, 'bad', 12)
  copy = pickle.loads(pickle.dumps(error))
  assert str(copy) == str(error) and copy.segment_id == 12


def test_image_format_from_magic_bytes():
  assert panoptic_format.image_format(b'\xff\xd8\xff\xe0rest') == 'jpeg'
  assert panoptic_format.image_format(b'\x89PNG\r\n\x1a\nrest') == 'png'
  assert panoptic_format.image_format(b'GIF89a') is None


def test_read_image_and_segment_ids(tmp_path):
  fixture = fixtures.write_coco_panoptic(tmp_path)
  task = panoptic_format.make_tasks(fixture.load_json(), fixture.images_dir,
                                    fixture.panoptic_dir,
                                    coco_panoptic.FORMAT)[0]
  data, fmt, size = panoptic_format.read_image(task)
  assert data == fixture.image_path(0).read_bytes()
  assert (fmt, size) == ('jpeg', (6, 8))
  np.testing.assert_array_equal(panoptic_format.read_segment_ids(task),
                                fixture.images[0].segment_ids)


def test_make_tasks_pairs_images_and_annotations(tmp_path):
  fixture = fixtures.write_coco_panoptic(tmp_path)
  data = fixture.load_json()
  del data['annotations'][1]  # Image 285 loses its annotation.
  data['annotations'].append({'image_id': 999, 'file_name': 'x.png',
                              'segments_info': []})
  tasks = panoptic_format.make_tasks(data, 'imgs', 'pngs',
                                     coco_panoptic.FORMAT)
  assert [type(t).__name__ for t in tasks] == [
      'ImageTask', 'InvalidImageError', 'ImageTask', 'InvalidImageError']
  assert tasks[0].image_path.endswith('imgs/000000000139.jpg')
  assert tasks[0].label_path.endswith('pngs/000000000139.png')
  assert (tasks[0].height, tasks[0].width) == (6, 8)
  assert 'no entry in "annotations"' in str(tasks[1])
  assert tasks[1].image_id == 285
  assert "image 'x.png' (id 999)" in str(tasks[3])
