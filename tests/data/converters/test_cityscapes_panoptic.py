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


def test_converts_the_output_of_the_official_create_panoptic_imgs(tmp_path):
  # gtFine instanceIds -> cityscapesScripts' own createPanopticImgs -> this
  # converter: every image is found under leftImg8bit/{split}/{city}/.
  create = pytest.importorskip(
      'cityscapesscripts.preparation.createPanopticImgs')
  from PIL import Image  # pylint: disable=import-outside-toplevel
  root = tmp_path / 'cityscapes'
  # Label ids: sky 23, road 7, unlabeled 0; persons 24000, 24001 (label
  # 24, instances 0 and 1); a crowd of cars (label 26, no instance id).
  ids = np.array([[23, 23, 23, 23, 23, 23],
                  [24000, 24000, 23, 23, 26, 26],
                  [24000, 24000, 24001, 24001, 26, 26],
                  [7, 7, 7, 7, 0, 0]], np.uint16)  # 16-bit PNGs
  for city, stem in (('frankfurt', 'frankfurt_000000_000294'),
                     ('lindau', 'lindau_000001_000019')):
    gt = root / 'gtFine' / 'val' / city
    gt.mkdir(parents=True)
    Image.fromarray(ids).save(gt / f'{stem}_gtFine_instanceIds.png')
    image = root / 'leftImg8bit' / 'val' / city
    image.mkdir(parents=True)
    Image.fromarray(np.zeros(ids.shape + (3,), np.uint8)).save(
        image / f'{stem}_leftImg8bit.png')
  create.convert2panoptic(str(root / 'gtFine'), str(root / 'gtFine'),
                          setNames=['val'])
  report = converters.convert(
      'cityscapes_panoptic', **cityscapes_panoptic.layout(str(root), 'val'),
      output=str(tmp_path / 'out' / 'val'), num_shards=1, progress=False)
  assert report.num_images == 2 and not report.skipped
  examples = fixtures.read_shards(report.shards)
  assert sorted(e['filename'] for e in examples) == [
      b'frankfurt/frankfurt_000000_000294_leftImg8bit.png',
      b'lindau/lindau_000001_000019_leftImg8bit.png']
  # Train ids: sky 10, road 0, person 11, car 13; void 255.
  semantic = examples[0]['panoptic'] // 1000
  np.testing.assert_array_equal(semantic, [[10, 10, 10, 10, 10, 10],
                                           [11, 11, 10, 10, 13, 13],
                                           [11, 11, 11, 11, 13, 13],
                                           [0, 0, 0, 0, 255, 255]])
  persons = examples[0]['panoptic'][semantic == 11]
  assert len(set(persons.tolist())) == 2 and min(persons % 1000) >= 1
  assert set((examples[0]['panoptic'][semantic == 13] % 1000).tolist()) == {0}


def test_file_name_without_gtfine_is_read_the_same_way():
  assert cityscapes_panoptic.image_file_name(
      {'file_name': 'frankfurt_000000_000294_leftImg8bit.png'}) == (
          'frankfurt/frankfurt_000000_000294_leftImg8bit.png')
  assert cityscapes_panoptic.image_file_name(
      {'file_name': 'frankfurt_000000_000294_gtFine_leftImg8bit.png'}) == (
          'frankfurt/frankfurt_000000_000294_leftImg8bit.png')
