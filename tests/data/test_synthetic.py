"""Tests of the synthetic data set writer (COCO panoptic layout, CLI)."""
import json

import numpy as np
from PIL import Image
import pytest

from deeplab2_kmax.data import dataset_info
from deeplab2_kmax.data import synthetic
from deeplab2_kmax.data import synthetic_render
from tests.data import test_synthetic_render

INFO = dataset_info.get_dataset_info('synthetic_panoptic')


def _read_ids(path):
  rgb = np.asarray(Image.open(path).convert('RGB')).astype(np.int64)
  return rgb[..., 0] + 256 * rgb[..., 1] + 65536 * rgb[..., 2]  # [H, W]


def _load(root, split):
  return json.loads(
      (root / 'annotations' / f'panoptic_{split}.json').read_text())


@pytest.fixture(scope='module')
def dataset(tmp_path_factory):
  root = tmp_path_factory.mktemp('synthetic')
  synthetic.generate(root, num_train=6, num_val=3, seed=7)
  return root


def test_layout_and_schema(dataset):
  for split, count in (('train', 6), ('val', 3)):
    data = _load(dataset, split)
    assert set(data) >= {'images', 'annotations', 'categories'}
    assert data['categories'] == INFO.categories_json()
    assert len(data['images']) == len(data['annotations']) == count
    jpgs = dataset / 'images' / split
    assert sorted(p.name for p in jpgs.iterdir()) == (
        sorted(image['file_name'] for image in data['images']))
    pngs = dataset / 'annotations' / f'panoptic_{split}'
    assert sorted(p.name for p in pngs.iterdir()) == (
        sorted(a['file_name'] for a in data['annotations']))
    for image, annotation in zip(data['images'], data['annotations']):
      assert set(image) == {'id', 'file_name', 'width', 'height'}
      assert set(annotation) == {'image_id', 'file_name', 'segments_info'}
      assert annotation['image_id'] == image['id']
      with Image.open(jpgs / image['file_name']) as jpg:
        assert jpg.format == 'JPEG' and jpg.mode == 'RGB'
        assert jpg.size == (image['width'], image['height']) == (144, 144)
      for segment in annotation['segments_info']:
        assert set(segment) == {'id', 'category_id', 'iscrowd', 'area', 'bbox'}
  val_ids = {i['id'] for i in _load(dataset, 'val')['images']}
  assert not {i['id'] for i in _load(dataset, 'train')['images']} & val_ids
  assert not list(dataset.rglob('*.tmp'))


def test_png_matches_json(dataset):
  for split in synthetic.SPLITS:
    for annotation in _load(dataset, split)['annotations']:
      ids = _read_ids(dataset / 'annotations' / f'panoptic_{split}' /
                      annotation['file_name'])
      test_synthetic_render.check_segments(ids, annotation['segments_info'])


def test_same_seed_same_files(dataset, tmp_path):
  # Fewer training images: the validation images must not change.
  synthetic.generate(tmp_path, num_train=2, num_val=3, seed=7)
  for split in synthetic.SPLITS:
    for path in (tmp_path / 'annotations' / f'panoptic_{split}').iterdir():
      twin = dataset / path.relative_to(tmp_path)
      assert path.read_bytes() == twin.read_bytes()
    for path in (tmp_path / 'images' / split).iterdir():
      twin = dataset / path.relative_to(tmp_path)
      np.testing.assert_array_equal(np.asarray(Image.open(path)),
                                    np.asarray(Image.open(twin)))
  val = 'annotations/panoptic_val.json'
  assert (tmp_path / val).read_bytes() == (dataset / val).read_bytes()
  other = synthetic_render.render(synthetic.sample_rng(8, 'val', 0))
  same = synthetic_render.render(synthetic.sample_rng(7, 'val', 0))
  assert not np.array_equal(other.image, same.image)


def test_cli(tmp_path, capsys):
  out = tmp_path / 'data'
  assert synthetic.main([f'--output_dir={out}', '--num_train=2',
                         '--num_val=1', '--seed=3', '--height=128',
                         '--width=160']) == 0
  assert 'wrote 2 train and 1 val images' in capsys.readouterr().out
  data = _load(out, 'train')
  assert [(i['width'], i['height']) for i in data['images']] == [(160, 128)] * 2
  with Image.open(out / 'images/val' / '000001000001.jpg') as jpg:
    assert jpg.size == (160, 128)


def test_refuses_to_overwrite(tmp_path, capsys):
  synthetic.generate(tmp_path, num_train=3, num_val=1, seed=0)
  with pytest.raises(FileExistsError, match='--overwrite'):
    synthetic.generate(tmp_path, num_train=1, num_val=1, seed=0)
  assert synthetic.main([f'--output_dir={tmp_path}', '--num_train=1']) == 1
  assert str(tmp_path) in capsys.readouterr().err
  synthetic.generate(tmp_path, num_train=1, num_val=1, seed=0, overwrite=True)
  assert len(list((tmp_path / 'images/train').iterdir())) == 1
  assert len(list((tmp_path / 'annotations/panoptic_train').iterdir())) == 1
  assert len(_load(tmp_path, 'train')['images']) == 1


def test_interrupted_run_leaves_no_json(tmp_path, monkeypatch):
  render, calls = synthetic_render.render, []

  def failing_render(rng, options=None, info=None):
    calls.append(1)
    if len(calls) == 3:
      raise KeyboardInterrupt
    return render(rng, options, info)

  monkeypatch.setattr(synthetic_render, 'render', failing_render)
  with pytest.raises(KeyboardInterrupt):
    synthetic.generate(tmp_path, num_train=4, num_val=1, seed=0)
  assert len(list((tmp_path / 'images/train').iterdir())) == 2
  assert not list(tmp_path.rglob('*.json'))


def test_bad_image_counts(tmp_path):
  with pytest.raises(ValueError, match='num_train'):
    synthetic.generate(tmp_path, num_train=-1, num_val=1, seed=0)
  assert not list(tmp_path.iterdir())


def test_own_categories_are_drawn_and_written(tmp_path, capsys):
  categories = [{'id': 40, 'name': 'square', 'isthing': 1},
                {'id': 7, 'name': 'disk', 'isthing': 1},
                {'id': 90, 'name': 'checker', 'isthing': 0}]
  path = tmp_path / 'categories.json'
  path.write_text(json.dumps(categories))
  assert synthetic.main([f'--output_dir={tmp_path / "d"}', '--num_train=6',
                         '--num_val=0', f'--categories_json={path}']) == 0
  document = json.loads(
      (tmp_path / 'd' / 'annotations' / 'panoptic_train.json').read_text())
  assert sorted(c['id'] for c in document['categories']) == [7, 40, 90]
  used = {s['category_id'] for a in document['annotations']
          for s in a['segments_info']}
  assert used <= {7, 40, 90} and 90 in used and used & {7, 40}


def test_categories_without_a_drawer_are_an_error(tmp_path, capsys):
  path = tmp_path / 'categories.json'
  path.write_text(json.dumps([{'id': 1, 'name': 'cat', 'isthing': 1},
                              {'id': 2, 'name': 'noise', 'isthing': 0}]))
  assert synthetic.main([f'--output_dir={tmp_path / "d"}', '--num_train=1',
                         '--num_val=0', f'--categories_json={path}']) == 1
  error = capsys.readouterr().err
  assert "['cat'] have no drawer" in error and 'disk' in error
  assert not (tmp_path / 'd').exists()
