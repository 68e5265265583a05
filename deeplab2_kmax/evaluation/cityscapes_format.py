"""Predictions in the formats of the Cityscapes benchmark scripts.

`cityscapesscripts` evaluates three tasks from three layouts; with
`evaluator_options.cityscapes_predictions` the evaluator writes, next to
the COCO panoptic folder (which, with Cityscapes label ids as category ids,
is what `evalPanopticSemanticLabeling` reads):

- `semantic/<image>.png`: uint8 Cityscapes label ids (not train ids; 0 =
  unlabeled where the model predicts the ignore label), the input of
  `evalPixelLevelSemanticLabeling`;
- `instance/<image>.txt` with one line `masks/<image>_<k>.png <label id>
  <score>` per predicted thing segment, and `instance/masks/<image>_<k>.png`
  (uint8, 255 on the segment, 0 elsewhere), the input of
  `evalInstanceLevelSemanticLabeling`.

`<image>` is the stem of the input image's file name (for example
`frankfurt_000000_000294_leftImg8bit`): the scripts find a prediction by
the `city_sequence_frame` in its name. All maps are at the original image
size; files are written whole (temporary name, then rename).
"""
import os

import numpy as np
from PIL import Image

from deeplab2_kmax import io_utils

UNLABELED_ID = 0


class CityscapesWriter:
  """Writes semantic and instance predictions of images to `directory`."""

  def __init__(self, directory, dataset_info):
    self.directory = os.fspath(directory)
    self.info = dataset_info
    # Semantic id -> Cityscapes label id (the classes' source ids).
    self._label_ids = np.full([dataset_info.num_semantic_channels],
                              UNLABELED_ID, np.uint8)
    for c in dataset_info.classes:
      if not 0 <= c.source_id <= 255:
        raise ValueError(f'{dataset_info.name}: class {c.name!r} has source '
                         f'id {c.source_id}, not a Cityscapes label id '
                         '(0..255)')
      self._label_ids[c.semantic_id] = c.source_id
    self._things = {c.semantic_id for c in dataset_info.classes if c.is_thing}

  def add(self, stem, semantic, panoptic, scores):
    """Writes one image.

    Args:
      stem: the input image's file name without extension.
      semantic: int [H, W] semantic ids (train ids; ignore label allowed).
      panoptic: int [H, W] panoptic labels, semantic * divisor + instance.
      scores: {panoptic label: score} of the predicted segments.

    Returns:
      The number of instance masks written.
    """
    semantic = np.asarray(semantic)
    known = (semantic >= 0) & (semantic < len(self._label_ids))
    label_ids = np.where(
        known, self._label_ids[np.where(known, semantic, 0)], UNLABELED_ID)
    _write_png(os.path.join(self.directory, 'semantic', f'{stem}.png'),
               label_ids.astype(np.uint8))

    panoptic = np.asarray(panoptic)
    divisor = self.info.label_divisor
    lines = []
    for label in sorted(scores):
      if label // divisor not in self._things or label % divisor == 0:
        continue  # stuff, or a crowd region (no instance)
      mask = panoptic == label
      if not mask.any():
        continue
      name = f'{stem}_{len(lines)}.png'
      _write_png(os.path.join(self.directory, 'instance', 'masks', name),
                 mask.astype(np.uint8) * 255)
      lines.append(f'masks/{name} {self._label_ids[label // divisor]} '
                   f'{float(scores[label]):.6f}\n')
    io_utils.write_text(
        os.path.join(self.directory, 'instance', f'{stem}.txt'),
        ''.join(lines))
    return len(lines)


def _write_png(path, array):
  with io_utils.replacing(path, 'wb') as f:
    Image.fromarray(array).save(f, format='PNG')
