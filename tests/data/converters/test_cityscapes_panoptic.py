"""Cityscapes panoptic (createPanopticImgs output) -> TFRecords."""
import numpy as np
import pytest

from deeplab2_kmax.data import converters
from deeplab2_kmax.data.converters import cityscapes_panoptic
from tests.data import fixtures

# Train ids as semantic ids (road 0, building 2, sky 10, person 11, car 13),
# divisor 1000, void 255 * 1000.
EXPECTED = (
    {'S': 10000, 'P': 11001, 'x': 11002, 'c': 13000, 'r': 0, '.': 255000},
    {'b': 2000, 'C': 13001},
)


def _convert(fixture, tmp_path, **kwargs):
  return converters.convert('cityscapes_panoptic', **fixture.paths(),
                            output=str(tmp_path / 'out' / 'val'),
                            num_shards=1, progress=False, **kwargs)


def test_converts_with_the_cityscapes_table(tmp_path):
  fixture = fixtures.write_cityscapes_panoptic(tmp_path / 'cityscapes')
  report = _convert(fixture, tmp_path)
  assert (report.dataset, report.label_divisor) == ('cityscapes_panoptic',
                                                   1000)
  examples = fixtures.read_shards(report.shards)
  assert [e['image_id'] for e in examples] == [
      b'frankfurt_000000_000294', b'lindau_000001_000019']
  assert [e['filename'] for e in examples] == [
      b'frankfurt/frankfurt_000000_000294_leftImg8bit.png',
      b'lindau/lindau_000001_000019_leftImg8bit.png']
  for example, image, values in zip(examples, fixture.images, EXPECTED):
    np.testing.assert_array_equal(example['panoptic'], image.label(values))
    np.testing.assert_array_equal(
        example['image'].shape, image.chars.shape + (3,))


def test_layout_matches_the_official_tree(tmp_path):
  fixture = fixtures.write_cityscapes_panoptic(tmp_path)
  assert cityscapes_panoptic.layout(str(tmp_path), 'val') == fixture.paths()


def test_train_id_json_is_refused(tmp_path):
  fixture = fixtures.write_cityscapes_panoptic(
      tmp_path / 'cityscapes',
      categories=fixtures.CITYSCAPES_TRAIN_ID_CATEGORIES)
  with pytest.raises(ValueError, match=r"categories disagree with dataset "
                     r"table entry 'cityscapes_panoptic': id 7 is 'traffic "
                     r"sign' in the JSON but 'road' in the table"):
    _convert(fixture, tmp_path)


def test_file_name_outside_the_naming_scheme(tmp_path):
  fixture = fixtures.write_cityscapes_panoptic(tmp_path / 'cityscapes')
  data = fixture.load_json()
  data['images'][1]['file_name'] = 'lindau.png'
  fixture.save_json(data)
  report = _convert(fixture, tmp_path, skip_invalid=True)
  assert report.num_images == 1
  assert "image 'lindau.png' (id 'lindau_000001_000019'): file_name " in str(
      report.skipped[0])
