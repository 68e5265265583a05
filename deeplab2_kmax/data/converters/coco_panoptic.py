"""COCO panoptic: the format itself, and any data set written in it.

Official layout (panopticapi; `split` = train2017 or val2017):

  ROOT/{split}/*.jpg                          images
  ROOT/annotations/panoptic_{split}.json      images, annotations, categories
  ROOT/annotations/panoptic_{split}/*.png     segment-id PNGs

`images[].file_name` is relative to the images folder; image ids are
integers. Category ids are the source ids of the `coco_panoptic` table.
A data set in this format whose categories are not those of the table (a
user's own data) converts with classes taken from the JSON's categories.
"""
import os

from deeplab2_kmax.data.converters import panoptic_format


def image_file_name(image):
  """Image path relative to the images folder: the JSON's file_name."""
  return str(image['file_name'])


def layout(root, split='val2017'):
  """Paths of the official layout under `root` for `split`."""
  return {
      'images_dir': os.path.join(root, split),
      'panoptic_json': os.path.join(root, 'annotations',
                                    f'panoptic_{split}.json'),
      'panoptic_dir': os.path.join(root, 'annotations', f'panoptic_{split}'),
  }


FORMAT = panoptic_format.PanopticFormat(
    name='coco_panoptic', default_dataset='coco_panoptic',
    image_file_name=image_file_name, layout=layout, custom_fallback=True)
