"""Evaluation metrics: panoptic quality, mask AP, mIoU, COCO panoptic I/O.

- `panoptic_quality.PanopticQuality`: streaming PQ / SQ / RQ with the rules
  of the official COCO and Cityscapes panoptic evaluations.
- `mask_ap.MaskAP`: COCO instance mask AP of panoptic predictions.
- `miou.MeanIoU`: mIoU from a confusion matrix.
- `coco_format`: COCO panoptic folders (evaluation and writing);
  `python -m deeplab2_kmax.evaluation.evaluate` is the standalone CLI.

The accumulators take NumPy arrays and merge across replicas with `+`.
"""
from deeplab2_kmax.evaluation.coco_format import CocoFormatError
from deeplab2_kmax.evaluation.coco_format import evaluate_folders
from deeplab2_kmax.evaluation.coco_format import PanopticFolderWriter
from deeplab2_kmax.evaluation.mask_ap import MaskAP
from deeplab2_kmax.evaluation.miou import MeanIoU
from deeplab2_kmax.evaluation.panoptic_quality import Category
from deeplab2_kmax.evaluation.panoptic_quality import PanopticQuality
from deeplab2_kmax.evaluation.panoptic_quality import PQStats

__all__ = ['Category', 'CocoFormatError', 'MaskAP', 'MeanIoU',
           'PanopticFolderWriter', 'PanopticQuality', 'PQStats',
           'evaluate_folders']
