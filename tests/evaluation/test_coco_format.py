"""Tests of coco_format: PNG ids, writing folders, and every input error."""
import json
import os
import shutil

import numpy as np
import pytest
from PIL import Image

from deeplab2_kmax.data import dataset_info
from deeplab2_kmax.evaluation import coco_format
from deeplab2_kmax.evaluation import png_ids

INFO = dataset_info.get_dataset_info('synthetic_panoptic')  # divisor 256
GT = np.array([[257, 257, 0, 1024],
               [256, 258, 258, 1024],
               [1280, 1280, 1280, 1024]])  # crowd 256 (class 1, instance 0)


def test_id_png_round_trip(tmp_path):
  ids = np.array([[0, 1, 256], [65536, (1 << 24) - 1, 12345]])
  path = str(tmp_path / 'a.png')
  coco_format.write_id_png(path, ids)
  np.testing.assert_array_equal(coco_format.read_id_png(path, 'x'), ids)
  assert os.listdir(tmp_path) == ['a.png']  # the temporary file is gone
  with pytest.raises(ValueError, match='ids must be'):
    coco_format.write_id_png(path, ids[None])


@pytest.mark.parametrize('decoder', coco_format.available_png_decoders())
def test_png_decoders_give_pillows_ids(tmp_path, decoder):
  rng = np.random.default_rng(0)
  rgb = rng.integers(0, 256, [5, 7, 3], dtype=np.uint8)
  rgba = np.concatenate([rgb, rng.integers(0, 256, [5, 7, 1], np.uint8)], -1)
  for name, pixels, mode in (('rgb', rgb, 'RGB'), ('rgba', rgba, 'RGBA')):
    path = str(tmp_path / f'{name}.png')
    Image.fromarray(pixels, mode).save(path)
    expected = rgb[..., 0] + 256 * rgb[..., 1].astype(np.int64) + (
        65536 * rgb[..., 2].astype(np.int64))
    ids = coco_format.read_id_png(path, 'x', decoder)
    assert ids.dtype == np.int32
    np.testing.assert_array_equal(ids, expected)
  # A PNG cut short is an error with the usual message, for every decoder.
  with open(path, 'rb') as f:
    data = f.read()
  with open(path, 'wb') as f:
    f.write(data[:60])
  with pytest.raises(coco_format.CocoFormatError, match='cannot read PNG'):
    coco_format.read_id_png(path, 'x', decoder)


def test_png_decoder_choice(monkeypatch, tmp_path):
  assert coco_format.available_png_decoders()[-1] == 'pillow'
  with pytest.raises(ValueError, match="PNG decoder 'jpeg' is not installed"):
    coco_format.read_id_png('a.png', 'x', 'jpeg')
  assert coco_format.available_png_decoders()[0] == 'builtin'
  # Without the package's reader, pyspng and OpenCV, Pillow decodes all.
  monkeypatch.setattr(png_ids, '_png_ids', None)
  monkeypatch.setattr(coco_format, 'pyspng', None)
  monkeypatch.setattr(coco_format, 'cv2', None)
  assert coco_format.available_png_decoders() == ('pillow',)
  path = str(tmp_path / 'a.png')
  coco_format.write_id_png(path, [[1, 256], [65536, 0]])
  np.testing.assert_array_equal(coco_format.read_id_png(path, 'x'),
                                [[1, 256], [65536, 0]])
  for decoder in ('builtin', 'pyspng'):
    with pytest.raises(ValueError, match=f"'{decoder}' is not installed"):
      coco_format.read_id_png(path, 'x', decoder)


def test_segments_from_panoptic():
  ids, segments = coco_format.segments_from_panoptic(GT, INFO,
                                                     groundtruth=True)
  np.testing.assert_array_equal(ids, np.where(GT == 0, 0, GT + 1))
  by_id = {s['id']: s for s in segments}
  assert by_id[257] == {'id': 257, 'category_id': 1, 'iscrowd': 1, 'area': 1,
                        'bbox': [0, 1, 1, 1]}
  assert by_id[259] == {'id': 259, 'category_id': 1, 'iscrowd': 0, 'area': 2,
                        'bbox': [1, 1, 2, 1]}
  assert by_id[1025] == {'id': 1025, 'category_id': 4, 'iscrowd': 0,
                         'area': 3, 'bbox': [3, 0, 1, 3]}
  assert len(segments) == 5  # void is no segment
  _, pred_segments = coco_format.segments_from_panoptic(GT, INFO,
                                                        groundtruth=False)
  assert pred_segments[0] == {'id': 257, 'category_id': 1}
  with pytest.raises(ValueError, match='semantic id 7'):
    coco_format.segments_from_panoptic(GT + 1792, INFO, groundtruth=True)


@pytest.fixture
def folders(tmp_path):
  """A valid two-image GT / prediction pair; returns the four paths."""
  paths = {}
  for side in ('gt', 'pred'):
    paths[side] = (str(tmp_path / f'{side}.json'), str(tmp_path / side))
    with coco_format.PanopticFolderWriter(*paths[side], INFO,
                                          groundtruth=side == 'gt') as w:
      w.add(7, GT)
      w.add(8, np.roll(GT, 1, axis=1),
            scores=None if side == 'gt' else {v: 0.5 for v in range(2000)})
  return paths['gt'] + paths['pred']


def _edit_json(path, edit):
  with open(path, encoding='utf-8') as f:
    data = json.load(f)
  edit(data)
  with open(path, 'w', encoding='utf-8') as f:
    json.dump(data, f)


@pytest.mark.parametrize('decoder', coco_format.available_png_decoders())
def test_valid_folders_evaluate(folders, decoder):
  metric = coco_format.evaluate_folders(*folders, num_threads=2,
                                        png_decoder=decoder)
  assert metric.result()['per_class'][4]['pq'] == 1.0
  with open(folders[2], encoding='utf-8') as f:
    assert json.load(f)['annotations'][1]['segments_info'][0]['score'] == 0.5


def _pred_segments(data, image=0):
  return data['annotations'][image]['segments_info']


@pytest.mark.parametrize('edit, message', [
    (lambda d: d['annotations'][0].update(file_name='missing.png'),
     r"image 7: PNG .*missing.png does not exist"),
    (lambda d: _pred_segments(d).pop(0),
     r"image 7: PNG .* segment ids not listed in segments_info: 257 "
     r"\(RGB \(1, 1, 0\), 1 pixels\)"),
    (lambda d: _pred_segments(d).append({'id': 99, 'category_id': 1}),
     r'image 7: segments_info lists segment ids \[99\] that do not occur'),
    (lambda d: _pred_segments(d)[1].update(category_id=77),
     r'image 7: segment 258 has category_id 77, which is not a category'),
    (lambda d: d['annotations'].pop(1),
     r'no prediction for image 8'),
    (lambda d: _pred_segments(d).append(dict(_pred_segments(d)[0])),
     r'image 7: segment id 257 is listed twice'),
    (lambda d: _pred_segments(d).append({'id': 0, 'category_id': 1}),
     r'image 7: segment id 0 is outside \[1, 16777215\] \(0 is void\)'),
    (lambda d: _pred_segments(d).append({'id': 5}),
     r'image 7: segments_info\[5\] = .*expected integer "id" and '
     r'"category_id"'),
    (lambda d: d['annotations'].append(dict(d['annotations'][0])),
     r'image 7: more than one annotation'),
    (lambda d: d['annotations'][0].pop('segments_info'),
     r"annotations\[0\]: lacks \['segments_info'\]"),
    (lambda d: d.pop('annotations'),
     r'expected an object with an "annotations" list \(prediction JSON\)'),
])
def test_prediction_errors(folders, edit, message):
  _edit_json(folders[2], edit)
  with pytest.raises(coco_format.CocoFormatError, match=message) as error:
    coco_format.evaluate_folders(*folders)
  assert str(error.value).startswith(folders[2])  # names the JSON


@pytest.mark.parametrize('edit, message', [
    (lambda d: d.pop('categories'), 'needs a non-empty "categories" list'),
    (lambda d: d['categories'][0].pop('isthing'),
     r'categories\[0\] = .*"isthing" 0 or 1'),
    (lambda d: _pred_segments(d)[0].update(iscrowd=2),
     r'image 7: segment 257: "iscrowd" must be 0 or 1; found 2'),
    (lambda d: _pred_segments(d)[0].update(area=-1),
     r'image 7: segment 257: "area" must be a non-negative number'),
])
def test_groundtruth_errors(folders, edit, message):
  _edit_json(folders[0], edit)
  with pytest.raises(coco_format.CocoFormatError, match=message) as error:
    coco_format.evaluate_folders(*folders)
  assert str(error.value).startswith(folders[0])


def test_file_errors(folders):
  gt_json, gt_dir, pred_json, pred_dir = folders
  # Size mismatch.
  coco_format.write_id_png(os.path.join(pred_dir, '7.png'),
                           np.zeros([3, 5], np.int64))
  with pytest.raises(coco_format.CocoFormatError,
                     match=r'image 7: PNG .*7.png is 5x3 \(WxH\), the ground '
                           r'truth 4x3'):
    coco_format.evaluate_folders(*folders)
  # Not an RGB PNG.
  Image.fromarray(np.zeros([3, 4], np.uint8), 'L').save(
      os.path.join(pred_dir, '7.png'))
  with pytest.raises(coco_format.CocoFormatError, match='has mode L'):
    coco_format.evaluate_folders(*folders)
  # Not a PNG at all.
  with open(os.path.join(pred_dir, '7.png'), 'w', encoding='utf-8') as f:
    f.write('text')
  with pytest.raises(coco_format.CocoFormatError, match='cannot read PNG'):
    coco_format.evaluate_folders(*folders)
  # Not JSON; missing folder.
  with open(pred_json, 'w', encoding='utf-8') as f:
    f.write('{')
  with pytest.raises(coco_format.CocoFormatError,
                     match='cannot read the prediction JSON'):
    coco_format.evaluate_folders(*folders)
  shutil.rmtree(gt_dir)
  with pytest.raises(coco_format.CocoFormatError,
                     match='the ground-truth PNG folder does not exist'):
    coco_format.evaluate_folders(*folders)
