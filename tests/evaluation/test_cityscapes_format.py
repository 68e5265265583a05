"""The Cityscapes scripts' semantic and instance prediction formats."""
import numpy as np
import pytest
from PIL import Image

from deeplab2_kmax.data import dataset_info
from deeplab2_kmax.evaluation import cityscapes_format

INFO = dataset_info.get_dataset_info('cityscapes_panoptic')
DIV = INFO.label_divisor
ROAD, PERSON, CAR = 0, 11, 13  # train ids; label ids 7, 24, 26


def test_stuff_crowd_and_empty_segments_get_no_instance(tmp_path):
  panoptic = np.full([3, 4], ROAD * DIV, np.int32)
  panoptic[0, 0] = PERSON * DIV      # a crowd region: no instance id
  panoptic[2, 3] = CAR * DIV + 5
  scores = {ROAD * DIV: 0.9, PERSON * DIV: 0.8, CAR * DIV + 5: 0.7,
            CAR * DIV + 6: 0.6}      # segment 6 has no pixel left
  semantic = panoptic // DIV
  semantic[1, 1] = INFO.ignore_label
  writer = cityscapes_format.CityscapesWriter(tmp_path, INFO)
  assert writer.add('img', semantic, panoptic, scores) == 1
  label_ids = np.asarray(Image.open(tmp_path / 'semantic' / 'img.png'))
  np.testing.assert_array_equal(label_ids, [[24, 7, 7, 7], [7, 0, 7, 7],
                                            [7, 7, 7, 26]])
  assert (tmp_path / 'instance' / 'img.txt').read_text() == (
      'masks/img_0.png 26 0.700000\n')
  mask = np.asarray(Image.open(tmp_path / 'instance' / 'masks' /
                               'img_0.png'))
  assert mask.sum() == 255 and mask[2, 3] == 255


def test_an_image_without_things_gets_an_empty_list(tmp_path):
  panoptic = np.full([2, 2], ROAD * DIV, np.int32)
  writer = cityscapes_format.CityscapesWriter(tmp_path, INFO)
  assert writer.add('img', panoptic // DIV, panoptic, {ROAD * DIV: 1.0}) == 0
  assert (tmp_path / 'instance' / 'img.txt').read_text() == ''


def test_ids_that_are_not_label_ids_are_an_error(tmp_path):
  custom = dataset_info.DatasetInfo(
      name='custom', ignore_label=0, label_divisor=256, classes=(
          dataset_info.ClassInfo(1, 'thing', True, (1, 2, 3), 1000),))
  with pytest.raises(ValueError, match="'thing' has source id 1000"):
    cityscapes_format.CityscapesWriter(tmp_path, custom)
