"""TensorBoard pictures: input | ground truth | prediction, side by side.

Evaluation shows the post-processed panoptic prediction of the first
examples of the evaluation split. Training shows the first example of the
loop's last batch with the model's raw per-pixel answer of that training
step: each pixel takes the class of the cluster center it is assigned to
(argmax over the mask logits, at the output stride), so one sees what the
model learns before any post-processing. Both are written only when Orbit
records summaries (the summary interval; the chief's writer).
"""
import numpy as np
import tensorflow as tf

from deeplab2_kmax import visualization

# Examples shown per evaluation.
MAX_IMAGES = 3
_MARGIN = 4  # pixels between the panels


def panels(images, gt_panoptic, pred_panoptic, dataset_info):
  """uint8 [n, H, 3 W + 2 margin, 3]: input, ground truth and prediction.

  Args:
    images: float or uint8 [n, H, W, 3], values 0..255.
    gt_panoptic: int [n, H, W] panoptic labels (void = dataset's void).
    pred_panoptic: int [n, H, W], or [n, h, w] at an output stride (taken
      to H, W as align-corners nearest neighbours, as the model's grid).
    dataset_info: DatasetInfo (colors, label divisor, void).
  """
  rows = []
  for image, gt, pred in zip(images, gt_panoptic, pred_panoptic):
    image = np.clip(np.asarray(image), 0, 255).astype(np.uint8)
    pred = _nearest_align_corners(np.asarray(pred), image.shape[:2])
    margin = np.full([image.shape[0], _MARGIN, 3], 255, np.uint8)
    rows.append(np.concatenate([
        image, margin,
        visualization.overlay(image, gt, dataset_info, draw_names=False),
        margin,
        visualization.overlay(image, pred, dataset_info, draw_names=False),
    ], axis=1))
  return np.stack(rows)


def write(name, images, gt_panoptic, pred_panoptic, dataset_info, step):
  """Writes `panels(...)` to the default summary writer, if recording."""
  if not bool(tf.summary.should_record_summaries()):
    return
  pictures = panels(images, gt_panoptic, pred_panoptic, dataset_info)
  tf.summary.image(name, pictures, step=step, max_outputs=len(pictures))


def per_pixel_panoptic(class_channels, clusters, dataset_info):
  """int32 [..., h, w] panoptic labels from the raw training outputs.

  Args:
    class_channels: int [..., N] argmax class channel of each center
      (things first, then stuff, last = void).
    clusters: int [..., h, w] the center each pixel is assigned to.
    dataset_info: DatasetInfo of the channels.
  """
  channel_to_semantic = np.asarray(dataset_info.channel_to_semantic())
  class_channels = np.asarray(class_channels)
  clusters = np.asarray(clusters)
  channel = np.take_along_axis(
      class_channels, clusters.reshape(clusters.shape[:-2] + (-1,)),
      axis=-1).reshape(clusters.shape)  # [..., h, w]
  void = channel >= len(channel_to_semantic)
  semantic = channel_to_semantic[np.minimum(channel,
                                            len(channel_to_semantic) - 1)]
  instance = np.where(channel < dataset_info.num_things, clusters + 1, 0)
  panoptic = semantic * dataset_info.label_divisor + instance
  return np.where(void, dataset_info.void_label, panoptic).astype(np.int32)


def _nearest_align_corners(label, size):
  """label [h, w] -> [H, W] by nearest neighbour on the align-corners grid."""
  height, width = size
  if label.shape == (height, width):
    return label
  rows = np.round(np.arange(height) * (label.shape[0] - 1) /
                  max(height - 1, 1)).astype(np.int64)
  cols = np.round(np.arange(width) * (label.shape[1] - 1) /
                  max(width - 1, 1)).astype(np.int64)
  return label[rows[:, None], cols[None, :]]
