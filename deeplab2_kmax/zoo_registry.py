"""DeepLab2's published kMaX-DeepLab checkpoints and ImageNet backbones.

A name is the archive's file name without `.tar.gz`; the archive is at
`DEEPLAB2_CHECKPOINT_URL/<name>.tar.gz` (g3doc/projects/kmax_deeplab.md and
imagenet_pretrained_checkpoints.md of google-research/deeplab2). Metrics are
DeepLab2's reported single-scale numbers on the validation set, as computed
by the official scripts (COCO and ADE20K: PQ, PQ things, PQ stuff; ADE20K and
Cityscapes add mIoU; Cityscapes adds mask AP); not measured here.
"""
import dataclasses

DEEPLAB2_CHECKPOINT_URL = (
    'https://storage.googleapis.com/gresearch/tf-deeplab/checkpoint')

KMAX = 'kmax'  # a whole kMaX-DeepLab model
IMAGENET = 'imagenet'  # an ImageNet-pretrained backbone


@dataclasses.dataclass(frozen=True)
class ZooEntry:
  name: str
  kind: str  # KMAX or IMAGENET
  backbone: str  # our backbone name (model_options.backbone.name)
  dataset: str = ''  # KMAX: our data set name
  config: str = ''  # KMAX: our config, relative to the repository
  metrics: tuple = ()  # ((metric, value), ...) reported by DeepLab2

  @property
  def url(self):
    return f'{DEEPLAB2_CHECKPOINT_URL}/{self.name}.tar.gz'


def _kmax(name, backbone, dataset, config, **metrics):
  return ZooEntry(name, KMAX, backbone, dataset,
                  f'configs/{dataset.split("_")[0]}/kmax_deeplab/{config}',
                  tuple(metrics.items()))


_COCO = 'coco_panoptic'
_CITYSCAPES = 'cityscapes_panoptic'
_ADE20K = 'ade20k_panoptic'

ENTRIES = (
    _kmax('kmax_resnet50_coco_train', 'resnet50', _COCO,
          'kmax_r50_os32.textproto', PQ=53.0, PQ_thing=58.3, PQ_stuff=44.9),
    _kmax('kmax_maxs_gelu_coco_train', 'axial_resnet50', _COCO,
          'kmax_axial_r50_os32.textproto', PQ=56.2, PQ_thing=62.2,
          PQ_stuff=47.1),
    _kmax('kmax_convnext_tiny_coco_train', 'convnext_tiny', _COCO,
          'kmax_convnext_tiny_os32.textproto', PQ=55.3, PQ_thing=61.0,
          PQ_stuff=46.7),
    _kmax('kmax_convnext_small_coco_train', 'convnext_small', _COCO,
          'kmax_convnext_small_os32.textproto', PQ=56.3, PQ_thing=62.2,
          PQ_stuff=47.5),
    _kmax('kmax_convnext_base_coco_train', 'convnext_base', _COCO,
          'kmax_convnext_base_os32.textproto', PQ=57.2, PQ_thing=63.4,
          PQ_stuff=47.8),
    _kmax('kmax_convnext_large_coco_train', 'convnext_large', _COCO,
          'kmax_convnext_large_os32.textproto', PQ=57.9, PQ_thing=64.0,
          PQ_stuff=48.6),
    _kmax('kmax_convnext_large_coco_train_unlabeled', 'convnext_large', _COCO,
          'kmax_convnext_large_os32.textproto', PQ=58.1, PQ_thing=64.3,
          PQ_stuff=48.8),
    _kmax('kmax_resnet50_cityscapes_train', 'resnet50', _CITYSCAPES,
          'kmax_r50_os32.textproto', PQ=64.3, PQ_thing=57.7, PQ_stuff=69.1,
          mask_AP=38.5, mIoU=79.7),
    _kmax('kmax_maxs_gelu_cityscapes_train', 'axial_resnet50', _CITYSCAPES,
          'kmax_axial_r50_os32.textproto', PQ=66.4, PQ_thing=61.2,
          PQ_stuff=70.2, mask_AP=41.6, mIoU=82.1),
    _kmax('kmax_convnext_tiny_cityscapes_train', 'convnext_tiny', _CITYSCAPES,
          'kmax_convnext_tiny_os32.textproto', PQ=66.3, PQ_thing=60.2,
          PQ_stuff=70.8, mask_AP=41.2, mIoU=82.6),
    _kmax('kmax_convnext_small_cityscapes_train', 'convnext_small',
          _CITYSCAPES, 'kmax_convnext_small_os32.textproto', PQ=67.3,
          PQ_thing=61.6, PQ_stuff=71.5, mask_AP=42.6, mIoU=83.1),
    _kmax('kmax_convnext_base_cityscapes_train', 'convnext_base', _CITYSCAPES,
          'kmax_convnext_base_os32.textproto', PQ=68.0, PQ_thing=62.6,
          PQ_stuff=72.0, mask_AP=43.0, mIoU=83.1),
    _kmax('kmax_convnext_large_cityscapes_train', 'convnext_large',
          _CITYSCAPES, 'kmax_convnext_large_os32.textproto', PQ=68.4,
          PQ_thing=62.9, PQ_stuff=72.4, mask_AP=44.0, mIoU=83.5),
    _kmax('kmax_resnet50_res641_ade20k_train', 'resnet50', _ADE20K,
          'kmax_r50_os32.textproto', PQ=41.5, PQ_thing=40.4, PQ_stuff=43.7,
          mIoU=45.0),
    _kmax('kmax_resnet50_res1281_ade20k_train', 'resnet50', _ADE20K,
          'kmax_r50_os32_res1281.textproto', PQ=42.3, PQ_thing=42.2,
          PQ_stuff=42.5, mIoU=45.3),
    _kmax('kmax_convnext_large_res641_ade20k_train', 'convnext_large',
          _ADE20K, 'kmax_convnext_large_os32.textproto', PQ=48.7,
          PQ_thing=48.0, PQ_stuff=50.0, mIoU=54.8),
    _kmax('kmax_convnext_large_res1281_ade20k_train', 'convnext_large',
          _ADE20K, 'kmax_convnext_large_os32_res1281.textproto', PQ=50.9,
          PQ_thing=51.0, PQ_stuff=50.7, mIoU=55.2),
    # ImageNet backbones: ResNets through initial_checkpoint with scope
    # PIXEL_ENCODER, ConvNeXts through backbone.pretrained_weights.
    ZooEntry('resnet50_imagenet1k', IMAGENET, 'resnet50'),
    ZooEntry('resnet50_imagenet1k_strong_training_strategy', IMAGENET,
             'resnet50'),
    ZooEntry('maxs_gelu_imagenet_22k_1k_224', IMAGENET, 'axial_resnet50'),
    ZooEntry('convnext_tiny_imagenet_22k_1k_384', IMAGENET, 'convnext_tiny'),
    ZooEntry('convnext_small_imagenet_22k_1k_384', IMAGENET,
             'convnext_small'),
    ZooEntry('convnext_base_imagenet_22k_1k_384', IMAGENET, 'convnext_base'),
    ZooEntry('convnext_large_imagenet_22k_1k_384', IMAGENET,
             'convnext_large'),
)
REGISTRY = {entry.name: entry for entry in ENTRIES}
