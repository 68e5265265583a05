"""ADE20K panoptic, as written by the Mask2Former preparation script.

Layout under ADEChallengeData2016 (`split` = training or validation; the
annotation files use the short names train and val):

  ROOT/images/{training,validation}/ADE_{train,val}_XXXXXXXX.jpg
  ROOT/ade20k_panoptic_{train,val}.json
  ROOT/ade20k_panoptic_{train,val}/ADE_{train,val}_XXXXXXXX.png

Image ids are the file names without extension. Category ids are 0..149
(the 150 SceneParsing classes, 0 = wall), the source ids of the
`ade20k_panoptic` table. The script paints stuff segments first and thing
instances over them, so a stuff segment can end up with no pixel left while
the JSON still lists it; such segments are accepted with a warning.
"""
import os

from deeplab2_kmax.data.converters import panoptic_format

_SHORT = {'training': 'train', 'validation': 'val'}


def image_file_name(image):
  """Image path relative to images/{split}: the JSON's file_name."""
  return str(image['file_name'])


def layout(root, split='validation'):
  """Paths of the preparation script's layout under `root` for `split`."""
  long_names = {short: name for name, short in _SHORT.items()}
  folder = long_names.get(split, split)
  short = _SHORT.get(split, split)
  return {
      'images_dir': os.path.join(root, 'images', folder),
      'panoptic_json': os.path.join(root, f'ade20k_panoptic_{short}.json'),
      'panoptic_dir': os.path.join(root, f'ade20k_panoptic_{short}'),
  }


FORMAT = panoptic_format.PanopticFormat(
    name='ade20k_panoptic', default_dataset='ade20k_panoptic',
    image_file_name=image_file_name, layout=layout,
    allow_absent_segments=True)
