"""ADE20K panoptic (Mask2Former preparation script output) -> TFRecords."""
import numpy as np

from deeplab2_kmax.data import converters
from deeplab2_kmax.data import dataset_info
from deeplab2_kmax.data.converters import ade20k_panoptic
from tests.data import fixtures


def _convert(fixture, tmp_path, **kwargs):
  return converters.convert('ade20k_panoptic', **fixture.paths(),
                            output=str(tmp_path / 'out' / 'val'),
                            num_shards=2, progress=False, **kwargs)


def _expected():
  semantic = {c.source_id: c.semantic_id for c in
              dataset_info.get_dataset_info('ade20k_panoptic').classes}
  wall, sky, road = semantic[0], semantic[2], semantic[6]
  person, car = semantic[12], semantic[20]
  return (
      {'w': wall * 1000, 's': sky * 1000, 'r': road * 1000,
       'p': person * 1000 + 1, 'c': car * 1000 + 1, '.': 0},
      {'w': wall * 1000, 'p': person * 1000 + 1, 'q': person * 1000 + 2},
  )


def test_converts_with_the_ade20k_table(tmp_path):
  fixture = fixtures.write_ade20k_panoptic(tmp_path / 'ade')
  report = _convert(fixture, tmp_path)
  assert (report.dataset, report.label_divisor) == ('ade20k_panoptic', 1000)
  assert report.images_per_shard == (1, 1)
  examples = fixtures.read_shards(report.shards)
  assert [e['image_id'] for e in examples] == [b'ADE_val_00000001',
                                                b'ADE_val_00000002']
  assert [e['filename'] for e in examples] == [b'ADE_val_00000001.jpg',
                                                b'ADE_val_00000002.jpg']
  for example, image, values in zip(examples, fixture.images, _expected()):
    np.testing.assert_array_equal(example['panoptic'], image.label(values))


def test_painted_over_segments_are_a_warning(tmp_path):
  fixture = fixtures.write_ade20k_panoptic(tmp_path / 'ade')
  data = fixture.load_json()
  data['annotations'][1]['segments_info'].insert(
      0, {'id': 99, 'category_id': 2, 'iscrowd': 0, 'area': 3,
          'bbox': [0, 0, 1, 3]})
  fixture.save_json(data)
  report = _convert(fixture, tmp_path)
  assert report.num_images == 2 and not report.skipped
  assert ("1 JSON segments in 1 images have no pixel in their PNG (first: "
          "image 'ADE_val_00000002.jpg', segment 99)") in report.warnings[0]
  example = fixtures.read_shards(report.shards)[1]
  np.testing.assert_array_equal(example['panoptic'],
                                fixture.images[1].label(_expected()[1]))


def test_layout_accepts_long_and_short_split_names(tmp_path):
  fixture = fixtures.write_ade20k_panoptic(tmp_path)
  for split in ('validation', 'val'):
    assert ade20k_panoptic.layout(str(tmp_path), split) == fixture.paths()
