"""Cityscapes panoptic, as written by cityscapesScripts' createPanopticImgs.

Layout (`split` = train, val or test):

  ROOT/leftImg8bit/{split}/{city}/{city}_{seq}_{frame}_leftImg8bit.png
  ROOT/gtFine/cityscapes_panoptic_{split}.json
  ROOT/gtFine/cityscapes_panoptic_{split}/
      {city}_{seq}_{frame}_gtFine_panoptic.png

Image ids are strings `{city}_{seq}_{frame}`. createPanopticImgs names each
image `{city}_{seq}_{frame}_gtFine_leftImg8bit.png` in `images[].file_name`
(its instanceIds file name with the suffix swapped): a base name, with the
`_gtFine` of the label files, so the real path
`{city}/{city}_{seq}_{frame}_leftImg8bit.png` is rebuilt from it (a name
without `_gtFine` is read the same way).
Category ids are Cityscapes label ids (e.g. 24 person, 26 car, 7 road),
the source ids of the `cityscapes_panoptic` table, which maps them to train
ids. Segment ids are `label_id * 1000 + k` for thing instances and the
label id for stuff and for crowd regions (`iscrowd` 1). A JSON made with
`--use-train-id` has train ids as category ids; the category names then
disagree with the table and the conversion stops with an error.
"""
import os

from deeplab2_kmax.data.converters import panoptic_format

_SUFFIX = '_leftImg8bit.png'


_GT_FINE = '_gtFine'


def image_file_name(image):
  """`{city}/{city}_{seq}_{frame}_leftImg8bit.png`, relative to
  leftImg8bit/{split}, from the JSON's file_name."""
  name = str(image['file_name'])
  stem = name[:-len(_SUFFIX)] if name.endswith(_SUFFIX) else ''
  if stem.endswith(_GT_FINE):
    stem = stem[:-len(_GT_FINE)]
  parts = stem.rsplit('_', 2)  # city, sequence, frame
  if len(parts) != 3 or not all(parts):
    raise ValueError(f'file_name {name!r} is not '
                     f'{{city}}_{{seq}}_{{frame}}{_GT_FINE}{_SUFFIX} (as '
                     'createPanopticImgs writes it)')
  return f'{parts[0]}/{stem}{_SUFFIX}'


def layout(root, split='val'):
  """Paths of the createPanopticImgs layout under `root` for `split`."""
  return {
      'images_dir': os.path.join(root, 'leftImg8bit', split),
      'panoptic_json': os.path.join(root, 'gtFine',
                                    f'cityscapes_panoptic_{split}.json'),
      'panoptic_dir': os.path.join(root, 'gtFine',
                                   f'cityscapes_panoptic_{split}'),
  }


FORMAT = panoptic_format.PanopticFormat(
    name='cityscapes_panoptic', default_dataset='cityscapes_panoptic',
    image_file_name=image_file_name, layout=layout)
