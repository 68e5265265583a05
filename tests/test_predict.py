"""The prediction command line: COCO panoptic results, overlays, failures."""
import json
import os

import numpy as np
from PIL import Image
import pytest

from deeplab2_kmax import predict
from deeplab2_kmax.evaluation import coco_format
from tests import test_export


@pytest.fixture(scope='module')
def exported(tmp_path_factory):
  return test_export.shared_export(tmp_path_factory)


@pytest.fixture(scope='module')
def predictor(exported):
  return predict.Predictor.from_saved_model(exported.saved_model)


@pytest.fixture
def image_folder(tmp_path):
  folder = tmp_path / 'images'
  folder.mkdir()
  Image.fromarray(test_export.make_image(seed=0)).save(
      folder / '000000000139.png')
  Image.fromarray(test_export.make_image(72, 90, seed=1)).save(
      folder / 'street.png')
  (folder / 'broken.png').write_bytes(b'this is not a PNG')
  (folder / 'notes.txt').write_text('not an image: ignored')
  return folder


def _run(*args):
  return predict.main([str(a) for a in args])


@pytest.mark.slow
def test_writes_coco_panoptic_results_overlays_and_reports_failures(
    exported, image_folder, tmp_path, capsys):
  output = tmp_path / 'out'
  code = _run(f'--saved_model={exported.saved_model}',
              f'--input={image_folder}', f'--output_dir={output}')
  err = capsys.readouterr().err
  assert code == 1  # broken.png failed
  assert '1 of 3 images failed' in err
  assert f'{image_folder / "broken.png"}: cannot read the image' in err

  data = coco_format.load_panoptic_json(str(output / 'predictions.json'),
                                        'prediction')
  annotations = {a['image_id']: a for a in data['annotations']}
  assert sorted(annotations, key=str) == [139, 'street']
  categories = {c['id']: c['name'] for c in data['categories']}
  assert categories[1] == 'disk'

  image = np.asarray(Image.open(image_folder / '000000000139.png'))
  served = exported.serve(image)
  ids = coco_format.read_id_png(
      str(output / 'predictions' / '000000000139.png'), 'test')
  np.testing.assert_array_equal(
      ids, np.where(served['panoptic'] == 0, 0, served['panoptic'] + 1))
  count = int(served['num_segments'])
  expected = {int(i) + 1: (int(c), float(s)) for i, c, s in zip(
      served['segment_ids'][:count], served['segment_category_ids'][:count],
      served['segment_scores'][:count])}
  segments = annotations[139]['segments_info']
  assert {s['id']: (s['category_id'], pytest.approx(s['score']))
          for s in segments} == expected

  for name, size in (('000000000139', (100, 120)), ('street', (72, 90))):
    with Image.open(output / f'{name}_overlay.png') as overlay:
      assert overlay.size[::-1] == size and overlay.mode == 'RGB'
  assert not [p for p in os.listdir(output) if p.startswith('.')]


@pytest.mark.slow
def test_predictions_evaluate_with_the_coco_panoptic_evaluator(
    exported, predictor, image_folder, tmp_path):
  (image_folder / 'broken.png').unlink()
  output = tmp_path / 'out'
  paths = predict.find_images(f'{image_folder}/*.png')
  assert predict.predict_files(predictor, paths, str(output),
                               progress=False) == []
  # Ground truth = the model's own panoptic maps: PQ must be 100%.
  gt_json = tmp_path / 'gt.json'
  with coco_format.PanopticFolderWriter(
      str(gt_json), str(tmp_path / 'gt'), predictor.dataset_info,
      groundtruth=True) as writer:
    for name in ('000000000139', 'street'):
      image = np.asarray(Image.open(image_folder / f'{name}.png'))
      writer.add(predict.image_id(name), exported.serve(image)['panoptic'],
                 file_name=f'{name}.png')
  metric = coco_format.evaluate_folders(
      str(gt_json), str(tmp_path / 'gt'), str(output / 'predictions.json'),
      str(output / 'predictions'))
  assert metric.result()['All']['pq'] == pytest.approx(1.0)


@pytest.mark.slow
def test_checkpoint_path_matches_the_saved_model(exported, tmp_path):
  folder = tmp_path / 'images'
  folder.mkdir()
  Image.fromarray(test_export.make_image(seed=2)).save(folder / 'a.png')
  assert _run(f'--config_file={exported.config_file}',
              f'--checkpoint={exported.prefix}', f'--input={folder / "a.png"}',
              f'--output_dir={tmp_path / "out"}') == 0
  ids = coco_format.read_id_png(str(tmp_path / 'out' / 'predictions' /
                                    'a.png'), 'test')
  served = exported.serve(test_export.make_image(seed=2))['panoptic']
  np.testing.assert_array_equal(ids, np.where(served == 0, 0, served + 1))


@pytest.mark.slow
def test_image_over_the_size_limit_is_skipped_with_the_reason(predictor,
                                                              tmp_path):
  path = tmp_path / 'wide.png'
  Image.fromarray(np.zeros([2, 4100, 3], np.uint8)).save(path)
  failures = predict.predict_files(predictor, [str(path)],
                                   str(tmp_path / 'out'), progress=False)
  assert len(failures) == 1
  assert f'{path}: the model rejected the image' in failures[0]
  assert 'max_image_size = 4096' in failures[0]
  with open(tmp_path / 'out' / 'predictions.json', encoding='utf-8') as f:
    assert json.load(f)['annotations'] == []


def test_find_images_reads_files_folders_and_globs(tmp_path):
  for name in ('b.JPG', 'a.png', 'c.txt'):
    (tmp_path / name).write_bytes(b'')
  assert predict.find_images(str(tmp_path)) == [
      str(tmp_path / 'a.png'), str(tmp_path / 'b.JPG')]
  assert predict.find_images(str(tmp_path / 'c.txt')) == [
      str(tmp_path / 'c.txt')]
  assert predict.find_images(str(tmp_path / '*.png')) == [
      str(tmp_path / 'a.png')]
  with pytest.raises(ValueError, match='no image found'):
    predict.find_images(str(tmp_path / '*.gif'))


def test_output_names_are_unique_and_ids_numeric_when_digits():
  names = predict.output_names(['x/1.png', 'y/1.jpg', 'z/cat.png'])
  assert names == ['1', '1_2', 'cat']
  assert predict.image_id('000139') == 139 and predict.image_id('cat') == 'cat'


def test_model_flags_are_checked(tmp_path, capsys):
  (tmp_path / 'a.png').write_bytes(b'')
  assert _run(f'--input={tmp_path / "a.png"}', f'--output_dir={tmp_path}') == 1
  assert 'pass --saved_model, or --config_file' in capsys.readouterr().err
  assert _run(f'--saved_model={tmp_path}', f'--input={tmp_path / "a.png"}',
              f'--output_dir={tmp_path}') == 1
  assert 'no saved_model.pb there' in capsys.readouterr().err
