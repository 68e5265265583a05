"""COCO panoptic -> TFRecords: labels, shards, bad inputs, real samples."""
import json
import re

import numpy as np
from PIL import Image
import pytest
import tensorflow as tf

from deeplab2_kmax.data import converters
from deeplab2_kmax.data import dataset_info
from deeplab2_kmax.data import record
from deeplab2_kmax.data.converters import panoptic_format
from tests import conftest
from tests.data import fixtures

SAMPLE = conftest.SHARED / 'testdata' / 'coco_panoptic_sample'
# Labels of the fixture images with classes from the JSON ('custom'):
# semantic ids 1..5 in category-id order (person 1, car 3, dog 18, road 149,
# sky 187), label divisor 1000, void 0.
CUSTOM_LABELS = (
    {'S': 5000, 'p': 1001, 'q': 1002, 'c': 2000, 'R': 4000, '.': 0},
    {'D': 3001, 'd': 3002, 'R': 4000, '.': 0},
    {'c': 2001, 'p': 1001, '.': 0},
)


def _convert(fixture, tmp_path, **kwargs):
  kwargs = {'num_shards': 2, 'dataset': 'custom', 'progress': False,
            **kwargs}
  return converters.convert('coco_panoptic', output=str(tmp_path / 'out' /
                                                        'val'),
                            **fixture.paths(), **kwargs)


def _raw_images(paths):
  """image/encoded bytes of every record, in order."""
  return [tf.io.parse_single_example(s, record.FEATURES)['image/encoded']
          .numpy() for p in paths for s in tf.data.TFRecordDataset(p)]


@pytest.fixture(name='coco')
def _coco(tmp_path):
  return fixtures.write_coco_panoptic(tmp_path / 'coco')


def test_converts_pixel_exactly_into_even_shards(coco, tmp_path):
  report = _convert(coco, tmp_path)
  assert report.shards == (
      str(tmp_path / 'out' / 'val-00000-of-00002.tfrecord'),
      str(tmp_path / 'out' / 'val-00001-of-00002.tfrecord'))
  assert report.images_per_shard == (2, 1)
  assert (report.dataset, report.label_divisor) == ('custom', 1000)
  assert report.num_skipped == 0 and report.warnings == ()
  examples = fixtures.read_shards(report.shards)
  assert [e['image_id'] for e in examples] == [b'139', b'285', b'632']
  assert [e['filename'] for e in examples] == [
      b'000000000139.jpg', b'000000000285.png', b'000000000632.jpg']
  for example, image, values in zip(examples, coco.images, CUSTOM_LABELS):
    np.testing.assert_array_equal(example['panoptic'], image.label(values))
    height, width = image.chars.shape
    assert example['image'].shape == (height, width, 3)
    assert (example['height'], example['width']) == (height, width)
    assert example['label_divisor'] == 1000
  # The original files, byte for byte (JPEG, PNG, grayscale JPEG).
  assert _raw_images(report.shards) == [
      coco.image_path(i).read_bytes() for i in range(3)]
  # The PNG image decodes to its exact pixels.
  np.testing.assert_array_equal(
      examples[1]['image'], np.asarray(Image.open(coco.image_path(1))))


def test_records_parse_inside_tf_data(coco, tmp_path):
  report = _convert(coco, tmp_path, num_shards=1)
  dataset = tf.data.TFRecordDataset(list(report.shards)).map(
      record.parse_example)
  eager = fixtures.read_shards(report.shards)
  for parsed, expected in zip(dataset, eager):
    np.testing.assert_array_equal(parsed['panoptic'].numpy(),
                                  expected['panoptic'])
    np.testing.assert_array_equal(parsed['image'].numpy(), expected['image'])


def test_coco_table_maps_category_ids(coco, tmp_path):
  report = _convert(coco, tmp_path, dataset=None)
  assert (report.dataset, report.label_divisor) == ('coco_panoptic', 256)
  semantic = {c.source_id: c.semantic_id for c in
              dataset_info.get_dataset_info('coco_panoptic').classes}
  person, car, dog = semantic[1], semantic[3], semantic[18]
  road, sky = semantic[149], semantic[187]
  expected = (
      {'S': sky * 256, 'p': person * 256 + 1, 'q': person * 256 + 2,
       'c': car * 256, 'R': road * 256, '.': 0},
      {'D': dog * 256 + 1, 'd': dog * 256 + 2, 'R': road * 256, '.': 0},
      {'c': car * 256 + 1, 'p': person * 256 + 1, '.': 0},
  )
  for example, image, values in zip(fixtures.read_shards(report.shards),
                                    coco.images, expected):
    np.testing.assert_array_equal(example['panoptic'], image.label(values))


def test_foreign_categories_fall_back_to_json_classes(tmp_path):
  categories = [dict(c, name=f'my-class-{c["id"]}')
                for c in fixtures.COCO_CATEGORIES]
  coco = fixtures.write_coco_panoptic(tmp_path / 'mine',
                                      categories=categories)
  report = _convert(coco, tmp_path, dataset=None)
  assert (report.dataset, report.label_divisor) == ('custom', 1000)
  assert 'classes taken from the JSON categories' in report.warnings[0]
  for example, image, values in zip(fixtures.read_shards(report.shards),
                                    coco.images, CUSTOM_LABELS):
    np.testing.assert_array_equal(example['panoptic'], image.label(values))


def test_custom_label_divisor_and_table_conflict(coco, tmp_path):
  report = _convert(coco, tmp_path, label_divisor=100)
  label = fixtures.read_shards(report.shards)[0]['panoptic']
  assert label[1, 2] == 101 and label[0, 0] == 500
  with pytest.raises(ValueError, match='conflicts with dataset table entry'):
    _convert(coco, tmp_path, dataset='coco_panoptic', label_divisor=1000)
  with pytest.raises(ValueError, match='unknown dataset'):
    _convert(coco, tmp_path, dataset='no_such_set')
  with pytest.raises(ValueError, match='unknown format'):
    converters.convert('voc', output='x', num_shards=1, **coco.paths())


# Bad inputs: (mutation of the fixture, image index, segment id, message).
def _truncate(path):
  path.write_bytes(path.read_bytes()[:len(path.read_bytes()) // 2])


def _edit_segments(coco, index, edit):
  data = coco.load_json()
  edit(data['annotations'][index]['segments_info'])
  coco.save_json(data)


def _resize_image(coco, index):
  Image.new('RGB', (5, 3)).save(coco.image_path(index), format='PNG')


def _set_height(coco, index):
  data = coco.load_json()
  data['images'][index]['height'] = 7
  coco.save_json(data)


BAD_INPUTS = {
    'missing image': (lambda c: c.image_path(1).unlink(), 1, None,
                      'cannot read the image'),
    'corrupt image': (lambda c: _truncate(c.image_path(0)), 0, None,
                      'corrupt image'),
    'not an image': (lambda c: c.image_path(2).write_bytes(b'GIF89a....'),
                     2, None, 'neither JPEG nor PNG'),
    'missing png': (lambda c: c.label_path(2).unlink(), 2, None,
                    'cannot read panoptic label'),
    'corrupt png': (lambda c: _truncate(c.label_path(1)), 1, None,
                    'cannot read panoptic label'),
    'png segment not in json': (
        lambda c: _edit_segments(c, 0, lambda s: s.pop(2)), 0, 4260062,
        'in the PNG but not in the JSON'),
    'json segment not in png': (
        lambda c: _edit_segments(c, 2, lambda s: s.append(
            {'id': 123, 'category_id': 1, 'iscrowd': 0})), 2, 123,
        'has no pixel in the PNG'),
    'unknown category': (
        lambda c: _edit_segments(c, 2, lambda s: s[0].update(
            category_id=999)), 2, 777, 'category_id 999 is not a class'),
    'size mismatch': (lambda c: _resize_image(c, 1), 1, None,
                      'image is 3x5 (HxW) but panoptic label'),
    'json size mismatch': (lambda c: _set_height(c, 0), 0, None,
                           'JSON height x width is 7x8'),
}


@pytest.mark.parametrize('case', sorted(BAD_INPUTS))
def test_bad_input_names_image_and_segment(coco, tmp_path, case):
  mutate, index, segment_id, message = BAD_INPUTS[case]
  mutate(coco)
  image = coco.images[index]
  with pytest.raises(panoptic_format.InvalidImageError,
                     match=re.escape(message)) as info:
    _convert(coco, tmp_path)
  text = str(info.value)
  assert f"image '{image.path}' (id {image.image_id})" in text
  if segment_id is not None:
    assert f'segment {segment_id}:' in text
  # Nothing that looks like a shard is left, not even a hidden one.
  assert not list((tmp_path / 'out').iterdir())

  report = _convert(coco, tmp_path, skip_invalid=True)
  assert [(e.file_name, e.image_id) for e in report.skipped] == [
      (image.path, image.image_id)]
  assert report.num_images == 2
  assert f"image '{image.path}'" in report.summary()
  written = [e['image_id'] for e in fixtures.read_shards(report.shards)]
  assert str(image.image_id).encode() not in written and len(written) == 2


def test_too_many_instances_for_the_divisor(coco, tmp_path):
  # Image 139 has two persons; divisor 2 holds only instance 1.
  with pytest.raises(panoptic_format.InvalidImageError,
                     match=r"image '000000000139.jpg' \(id 139\), segment "
                           '4260062: instance 2 of category 1'):
    _convert(coco, tmp_path, label_divisor=2)


def test_interrupted_run_leaves_no_shard(coco, tmp_path, monkeypatch):
  calls = []
  original = panoptic_format.convert_image

  def interrupt_on_third(task, spec):
    calls.append(task)
    if len(calls) == 3:
      raise KeyboardInterrupt
    return original(task, spec)

  monkeypatch.setattr(panoptic_format, 'convert_image', interrupt_on_third)
  with pytest.raises(KeyboardInterrupt):
    _convert(coco, tmp_path)
  assert not list((tmp_path / 'out').iterdir())


def test_existing_output_needs_overwrite(coco, tmp_path):
  _convert(coco, tmp_path)
  with pytest.raises(FileExistsError, match='overwrite'):
    _convert(coco, tmp_path, num_shards=3)
  report = _convert(coco, tmp_path, num_shards=3, overwrite=True)
  assert sorted(p.name for p in (tmp_path / 'out').iterdir()) == [
      f'val-0000{i}-of-00003.tfrecord' for i in range(3)]
  assert report.images_per_shard == (1, 1, 1)


def test_worker_pool_writes_identical_shards(coco, tmp_path):
  one = _convert(coco, tmp_path / 'one')
  two = _convert(coco, tmp_path / 'two', num_workers=2)
  assert two.images_per_shard == one.images_per_shard
  for a, b in zip(one.shards, two.shards):
    with open(a, 'rb') as fa, open(b, 'rb') as fb:
      assert fa.read() == fb.read()


def test_real_coco_samples_match_the_json(tmp_path):
  """Every pixel of two real COCO val images decodes back to its segment."""
  if not (SAMPLE / 'panoptic_examples.json').exists():
    pytest.skip(f'COCO panoptic sample not found at {SAMPLE}')
  report = converters.convert(
      'coco_panoptic', images_dir=str(SAMPLE / 'input_images'),
      panoptic_json=str(SAMPLE / 'panoptic_examples.json'),
      panoptic_dir=str(SAMPLE / 'panoptic_examples'),
      output=str(tmp_path / 'val'), num_shards=1, progress=False)
  info = dataset_info.get_dataset_info('coco_panoptic')
  assert report.dataset == 'coco_panoptic' and report.num_images == 2
  divisor, semantic = info.label_divisor, info.by_source_id()
  data = json.loads((SAMPLE / 'panoptic_examples.json').read_text())
  annotations = {a['image_id']: a for a in data['annotations']}
  for example in fixtures.read_shards(report.shards):
    annotation = annotations[int(example['image_id'])]
    label = example['panoptic']
    ids = record.rgb_to_id(np.asarray(Image.open(
        SAMPLE / 'panoptic_examples' / annotation['file_name'])))
    assert label.shape == ids.shape == example['image'].shape[:2]
    np.testing.assert_array_equal(label[ids == 0], info.void_label)
    shared_areas = {}  # stuff / crowd label -> summed JSON areas
    thing_labels = set()
    for segment in annotation['segments_info']:
      values = np.unique(label[ids == segment['id']])
      assert len(values) == 1, segment
      value = int(values[0])
      cls = semantic[segment['category_id']]
      assert value // divisor == cls.semantic_id, segment
      if cls.is_thing and not segment['iscrowd']:
        assert value % divisor > 0 and value not in thing_labels, segment
        thing_labels.add(value)
        assert np.sum(label == value) == segment['area'], segment
      else:
        assert value % divisor == 0, segment
        shared_areas[value] = shared_areas.get(value, 0) + segment['area']
    for value, area in shared_areas.items():
      assert np.sum(label == value) == area, value
  assert _raw_images(report.shards) == [
      (SAMPLE / 'input_images' / i['file_name']).read_bytes()
      for i in data['images']]


def test_category_missing_from_a_named_table(tmp_path):
  categories = fixtures.COCO_CATEGORIES + [
      {'id': 201, 'name': 'extra', 'isthing': 1, 'color': [1, 2, 3]}]
  coco = fixtures.write_coco_panoptic(tmp_path / 'coco',
                                      categories=categories)
  _edit_segments(coco, 2, lambda s: s[1].update(category_id=201))
  with pytest.raises(panoptic_format.InvalidImageError,
                     match=r"segment 778: category_id 201 is not a class of "
                           r"dataset 'coco_panoptic'"):
    _convert(coco, tmp_path, dataset='coco_panoptic')
  report = _convert(coco, tmp_path, dataset='coco_panoptic',
                    skip_invalid=True)
  assert report.num_images == 2 and report.skipped[0].image_id == 632
  assert 'category ids [201] are not classes of' in report.warnings[0]
