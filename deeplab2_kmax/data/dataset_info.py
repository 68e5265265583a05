"""One table of dataset facts; no code path chooses behaviour from a name.

Class channels of the model are ordered things first, then stuff; the
semantic head predicts dataset ids directly (channel = dataset id).
"""
import dataclasses


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
  """Facts about a panoptic data set."""
  name: str
  # Number of thing + stuff classes K (the class head predicts K + 1).
  num_classes: int
  num_things: int
  # Channels of the semantic head (COCO/ADE20K include id 0 = ignore).
  num_semantic_channels: int
  ignore_label: int
  label_divisor: int

  @property
  def num_stuff(self):
    return self.num_classes - self.num_things


DATASETS = {
    'coco_panoptic': DatasetInfo(
        name='coco_panoptic', num_classes=133, num_things=80,
        num_semantic_channels=134, ignore_label=0, label_divisor=256),
    'cityscapes_panoptic': DatasetInfo(
        name='cityscapes_panoptic', num_classes=19, num_things=8,
        num_semantic_channels=19, ignore_label=255, label_divisor=1000),
    'ade20k_panoptic': DatasetInfo(
        name='ade20k_panoptic', num_classes=150, num_things=100,
        num_semantic_channels=151, ignore_label=0, label_divisor=1000),
    'synthetic_panoptic': DatasetInfo(
        name='synthetic_panoptic', num_classes=6, num_things=3,
        num_semantic_channels=7, ignore_label=0, label_divisor=256),
}


def get_dataset_info(name):
  """Returns the DatasetInfo of `name`; a clear error lists the known ones."""
  try:
    return DATASETS[name]
  except KeyError:
    raise ValueError(
        f'unknown dataset {name!r}; expected one of {sorted(DATASETS)}'
    ) from None
