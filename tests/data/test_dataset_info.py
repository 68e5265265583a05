"""Tests of dataset_info.py: the built-in class tables and custom JSON."""
import ast
import fnmatch
import json
import re

import numpy as np
import pytest

from deeplab2_kmax.data import dataset_info
from tests.conftest import REPO_ROOT

CATEGORIES_DIR = REPO_ROOT / 'deeplab2_kmax' / 'data' / 'categories'
COCO = dataset_info.get_dataset_info('coco_panoptic')
CITYSCAPES = dataset_info.get_dataset_info('cityscapes_panoptic')
ADE20K = dataset_info.get_dataset_info('ade20k_panoptic')


def _by_name(info):
  names = [c.name for c in info.classes]
  assert len(set(names)) == len(names), f'{info.name}: repeated names'
  return {c.name: c for c in info.classes}


def _write_json(path, data):
  path.write_text(json.dumps(data), encoding='utf-8')
  return path


# Built-in tables -----------------------------------------------------------
@pytest.mark.parametrize(
    'name, classes, things, channels, ignore, divisor', [
        ('coco_panoptic', 133, 80, 134, 0, 256),
        ('cityscapes_panoptic', 19, 8, 19, 255, 1000),
        ('ade20k_panoptic', 150, 100, 151, 0, 1000),
        ('synthetic_panoptic', 6, 3, 7, 0, 256),
    ])
def test_counts_and_label_facts(name, classes, things, channels, ignore,
                                divisor):
  info = dataset_info.get_dataset_info(name)
  assert info.name == name
  assert (info.num_classes, info.num_things, info.num_stuff) == (
      classes, things, classes - things)
  assert info.num_semantic_channels == channels
  assert (info.ignore_label, info.label_divisor) == (ignore, divisor)
  assert info.void_label == ignore * divisor


@pytest.mark.parametrize('name', sorted(dataset_info.DATASETS))
def test_tables_are_well_formed(name):
  info = dataset_info.DATASETS[name]
  semantic_ids = [c.semantic_id for c in info.classes]
  assert semantic_ids == sorted(semantic_ids)
  for c in info.classes:
    assert c.name and c.name == c.name.strip(), c
    assert isinstance(c.is_thing, bool), c
    assert len(c.color) == 3 and all(0 <= v <= 255 for v in c.color), c
  sources = [c.source_id for c in info.classes]
  assert len(set(sources)) == len(sources)


@pytest.mark.parametrize('name', ['coco_panoptic', 'cityscapes_panoptic',
                                  'ade20k_panoptic', 'synthetic_panoptic'])
def test_channel_maps_put_things_first(name):
  info = dataset_info.get_dataset_info(name)
  channel_to_semantic = info.channel_to_semantic()  # [K]
  semantic_to_channel = info.semantic_to_channel()  # [num_semantic_channels]
  assert channel_to_semantic.shape == (info.num_classes,)
  assert semantic_to_channel.shape == (info.num_semantic_channels,)
  np.testing.assert_array_equal(
      semantic_to_channel[channel_to_semantic], np.arange(info.num_classes))
  is_thing = info.is_thing_semantic()[channel_to_semantic]
  assert is_thing[:info.num_things].all()
  assert not is_thing[info.num_things:].any()
  # Inside each group, channels follow the semantic ids.
  things = channel_to_semantic[:info.num_things]
  stuff = channel_to_semantic[info.num_things:]
  assert list(things) == sorted(things) == list(info.thing_semantic_ids)
  assert list(stuff) == sorted(stuff) == list(info.stuff_semantic_ids)
  # Semantic ids that are not classes (the in-range ignore label) map to -1.
  others = np.setdiff1d(np.arange(info.num_semantic_channels),
                        channel_to_semantic)
  assert (semantic_to_channel[others] == -1).all()
  if info.ignore_label < info.num_semantic_channels:
    assert semantic_to_channel[info.ignore_label] == -1


def test_coco_ids_follow_the_official_category_ids():
  sources = [c.source_id for c in COCO.classes]
  assert sources == sorted(sources) and sources[0] == 1 and sources[-1] == 200
  assert len(set(sources)) == 133
  assert [c.semantic_id for c in COCO.classes] == list(range(1, 134))
  # Category ids put the 80 things before the 53 stuff classes.
  assert COCO.thing_semantic_ids == tuple(range(1, 81))
  assert COCO.stuff_semantic_ids == tuple(range(81, 134))
  np.testing.assert_array_equal(COCO.channel_to_semantic(),
                                np.arange(1, 134))


def test_coco_named_classes():
  by_name = _by_name(COCO)
  person = by_name['person']
  assert (person.semantic_id, person.source_id, person.is_thing) == (1, 1, True)
  assert person.color == (220, 20, 60)
  assert by_name['toothbrush'].source_id == 90
  assert by_name['toothbrush'].semantic_id == 80
  assert by_name['banner'].semantic_id == 81 and not by_name['banner'].is_thing
  for name, source_id in [('wall-other-merged', 199), ('sky-other-merged', 187),
                          ('rug-merged', 200), ('playingfield', 145),
                          ('door-stuff', 112)]:
    assert by_name[name].source_id == source_id, name
    assert not by_name[name].is_thing, name
  assert by_name['rug-merged'].semantic_id == 133
  assert by_name['rug-merged'].color == (250, 141, 255)
  assert by_name['hair drier'].is_thing
  assert COCO.by_source_id()[13].name == 'stop sign'
  assert 12 not in COCO.by_source_id()


def test_cityscapes_uses_train_ids_and_label_ids():
  names = ['road', 'sidewalk', 'building', 'wall', 'fence', 'pole',
           'traffic light', 'traffic sign', 'vegetation', 'terrain', 'sky',
           'person', 'rider', 'car', 'truck', 'bus', 'train', 'motorcycle',
           'bicycle']
  label_ids = [7, 8, 11, 12, 13, 17, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28,
               31, 32, 33]
  assert [c.name for c in CITYSCAPES.classes] == names
  assert [c.semantic_id for c in CITYSCAPES.classes] == list(range(19))
  assert [c.source_id for c in CITYSCAPES.classes] == label_ids
  assert CITYSCAPES.thing_semantic_ids == tuple(range(11, 19))
  np.testing.assert_array_equal(
      CITYSCAPES.channel_to_semantic(),
      list(range(11, 19)) + list(range(11)))
  by_name = _by_name(CITYSCAPES)
  assert by_name['road'].color == (128, 64, 128)
  assert by_name['bicycle'].color == (119, 11, 32)
  assert CITYSCAPES.by_source_id()[26].name == 'car'
  assert (CITYSCAPES.semantic_to_channel() >= 0).all()  # 255 is out of range.


def test_ade20k_ids_and_things():
  assert [c.semantic_id for c in ADE20K.classes] == list(range(1, 151))
  assert [c.source_id for c in ADE20K.classes] == list(range(150))
  by_semantic = ADE20K.by_semantic_id()
  assert by_semantic[1].name == 'wall' and not by_semantic[1].is_thing
  assert by_semantic[150].name == 'flag' and by_semantic[150].is_thing
  assert by_semantic[9].name == 'window'  # Stripped of its trailing space.
  by_name = _by_name(ADE20K)
  for thing in ['person', 'car', 'bed', 'chair', 'bicycle', 'clock']:
    assert by_name[thing].is_thing, thing
  for stuff in ['sky', 'floor', 'road, route', 'grass', 'sea', 'skyscraper']:
    assert not by_name[stuff].is_thing, stuff
  assert by_name['person'].semantic_id == 13
  assert by_name['person'].color == (150, 5, 61)
  assert len(ADE20K.thing_semantic_ids) == 100
  assert len(ADE20K.stuff_semantic_ids) == 50


def test_every_table_file_is_loaded_and_shipped():
  files = sorted(CATEGORIES_DIR.glob('*.json'))
  assert {p.stem for p in files} == {
      'coco_panoptic', 'cityscapes_panoptic', 'ade20k_panoptic'}
  for path in files:
    data = json.loads(path.read_text(encoding='utf-8'))
    assert data['name'] == path.stem
    assert len(data['categories']) == dataset_info.DATASETS[
        path.stem].num_classes
  # setup.py's package_data must cover the files, or wheels lack them.
  setup = ast.parse((REPO_ROOT / 'setup.py').read_text(encoding='utf-8'))
  patterns = []
  for node in ast.walk(setup):
    if isinstance(node, ast.keyword) and node.arg == 'package_data':
      patterns = ast.literal_eval(node.value)['deeplab2_kmax']
  for path in files:
    relative = path.relative_to(REPO_ROOT / 'deeplab2_kmax').as_posix()
    assert any(fnmatch.fnmatch(relative, p) for p in patterns), (
        relative, patterns)


def test_categories_json_round_trips_through_from_categories_json(tmp_path):
  for info in (COCO, ADE20K):
    path = _write_json(tmp_path / f'{info.name}.json',
                       {'categories': info.categories_json()})
    loaded = dataset_info.from_categories_json(
        path, name=info.name, label_divisor=info.label_divisor)
    assert loaded == info


def test_unknown_dataset_lists_the_known_ones():
  with pytest.raises(ValueError, match=r"'mnist'.*coco_panoptic"):
    dataset_info.get_dataset_info('mnist')


# Custom data sets ----------------------------------------------------------
def test_custom_list_form_orders_by_category_id(tmp_path):
  path = _write_json(tmp_path / 'cats.json', [
      {'id': 7, 'name': 'road', 'isthing': 0, 'color': [1, 2, 3]},
      {'id': 3, 'name': 'car', 'isthing': 1, 'color': [4, 5, 6]},
      {'id': 12, 'name': 'sky'},
  ])
  info = dataset_info.from_categories_json(path)
  assert info.name == 'custom'
  assert (info.ignore_label, info.label_divisor) == (0, 1000)
  assert [(c.semantic_id, c.source_id, c.name, c.is_thing)
          for c in info.classes] == [(1, 3, 'car', True), (2, 7, 'road', False),
                                     (3, 12, 'sky', False)]
  assert info.by_source_id()[7].color == (1, 2, 3)
  sky = info.by_source_id()[12].color  # Defaulted from the fixed palette.
  assert len(sky) == 3 and all(0 <= v <= 255 for v in sky)
  assert info.num_semantic_channels == 4
  np.testing.assert_array_equal(info.channel_to_semantic(), [1, 2, 3])


def test_custom_annotation_file_form(tmp_path):
  path = _write_json(tmp_path / 'panoptic_train.json', {
      'images': [], 'annotations': [],
      'categories': [{'id': 1, 'name': 'cell', 'isthing': 1},
                     {'id': 2, 'name': 'background', 'isthing': 0}],
  })
  info = dataset_info.from_categories_json(path, name='cells',
                                           label_divisor=256)
  assert (info.name, info.num_things, info.num_stuff) == ('cells', 1, 1)
  assert info.label_divisor == 256
  # The order in the file does not matter, default colors included.
  reordered = _write_json(tmp_path / 'panoptic_val.json', [
      {'id': 2, 'name': 'background', 'isthing': 0},
      {'id': 1, 'name': 'cell', 'isthing': 1}])
  again = dataset_info.from_categories_json(reordered, name='cells',
                                            label_divisor=256)
  assert again == info


@pytest.mark.parametrize('content, expected', [
    ('{not json', r'cannot read categories JSON'),
    ('[]', r'non-empty list of categories.*found list'),
    ('{"images": []}', r'"categories" list; found an object with keys '
     r"\['images'\]"),
    ('[3]', r'categories\[0\] is 3'),
    ('[{"id": 1}]', r"categories\[0\] lacks \['name'\]"),
    ('[{"id": "a", "name": "x"}]', r'categories\[0\]: "id" must be a '
     r"non-negative integer; found 'a'"),
    ('[{"id": 1, "name": "x"}, {"id": 1, "name": "y"}]',
     r'categories\[1\] repeats id 1 of categories\[0\]'),
    ('[{"id": 1, "name": "x", "color": [1, 2]}]',
     r'categories\[0\] \(id 1\): "color" must be \[r, g, b\].*\[1, 2\]'),
    ('[{"id": 1, "name": "x", "color": [1, 2, 300]}]', r'"color"'),
    ('[{"id": 1, "name": "x", "isthing": "yes"}]',
     r'"isthing" must be 0 or 1; found \'yes\''),
    ('[{"id": 1, "name": ""}]', r'"name" must be a non-empty string'),
])
def test_custom_errors_name_the_file_and_category(tmp_path, content,
                                                  expected):
  path = tmp_path / 'bad_categories.json'
  path.write_text(content, encoding='utf-8')
  with pytest.raises(ValueError) as info:
    dataset_info.from_categories_json(path)
  message = str(info.value)
  assert message.startswith(f'{path}: '), message
  assert re.search(expected, message), message


def test_custom_missing_file_names_the_path(tmp_path):
  path = tmp_path / 'absent.json'
  with pytest.raises(ValueError, match=re.escape(f'{path}: cannot read')):
    dataset_info.from_categories_json(path)


def test_built_in_table_errors_name_the_file(tmp_path):
  path = _write_json(tmp_path / 'broken.json', {
      'name': 'broken', 'ignore_label': 0, 'label_divisor': 10,
      'categories': [{'semantic_id': 0, 'id': 1, 'name': 'a'}]})
  with pytest.raises(ValueError,
                     match=re.escape(f'{path}: broken: ignore label 0 is '
                                     'also a class')):
    dataset_info._load_table(path)  # pylint: disable=protected-access
  _write_json(path, {'name': 'broken', 'ignore_label': 0,
                     'label_divisor': '1000', 'categories': []})
  with pytest.raises(ValueError, match=re.escape(
      f'{path}: "label_divisor" must be a non-negative integer; found '
      "'1000'")):
    dataset_info._load_table(path)  # pylint: disable=protected-access
  _write_json(path, {'name': 'broken', 'categories': []})
  with pytest.raises(ValueError, match=r"lacks \['ignore_label', "
                     r"'label_divisor'\]"):
    dataset_info._load_table(path)  # pylint: disable=protected-access


def test_instance_metric_of_the_tables_and_a_bad_value():
  assert dataset_info.get_dataset_info(
      'cityscapes_panoptic').instance_metric == 'cityscapes'
  assert dataset_info.get_dataset_info('coco_panoptic').instance_metric == (
      'coco')
  with pytest.raises(ValueError, match="instance_metric 'voc': expected one "
                     "of coco, cityscapes"):
    dataset_info.DatasetInfo(name='x', classes=(), ignore_label=0,
                             label_divisor=256, instance_metric='voc')
