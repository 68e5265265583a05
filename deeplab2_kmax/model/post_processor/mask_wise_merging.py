"""Mask-wise merging: cluster masks and classes -> panoptic segmentation.

The post-processing of kMaX-DeepLab (spec §7; DeepLab2's `maskwise`
post-processor, after MaskFormer and Panoptic SegFormer):

1. Class probabilities: softmax over the K + 1 class logits of each of the N
   cluster centers; prediction and confidence are argmax / max over the K
   non-void channels.
2. Mask probabilities: softmax over the N centers of the mask logits. Mask
   score of a center = mean probability over the pixels where it exceeds the
   pixel-confidence threshold (at logit resolution).
3. Centers are ranked by `confidence^w_c * mask_score^w_m` (stable sort).
4. Binary masks (probability > threshold, at input resolution after an
   align-corners bilinear resize of the logits) are pasted on an empty
   canvas in rank order. A mask is kept when its class confidence reaches
   the thing or stuff threshold (by its predicted class) and more than
   `overlap_threshold` of its pixels are still free; only free pixels are
   pasted.
5. Unpasted pixels are void; thing segments smaller than `thing_area_limit`
   and stuff regions (per class) smaller than `stuff_area_limit` become void.
   Thing instance ids are rank + 1; stuff segments have instance id 0.

The semantic map is the pixel-wise argmax (center argmax, then its class)
with no thresholds, for mIoU.

Everything is TensorFlow, batched and static-shaped, so it runs inside a
SavedModel and on accelerators, and converts to LiteRT with builtin ops
only (the paste loop carries plain tensors; counts are segment sums).
"""
import dataclasses

import numpy as np
import tensorflow as tf


@dataclasses.dataclass(frozen=True)
class MergingOptions:
  """Thresholds of mask-wise merging (EvaluatorOptions in the config)."""
  pixel_confidence_threshold: float = 0.4
  thing_class_threshold: float = 0.7
  stuff_class_threshold: float = 0.5
  overlap_threshold: float = 0.8
  reorder_class_weight: float = 1.0
  reorder_mask_weight: float = 1.0
  thing_area_limit: int = 0
  stuff_area_limit: int = 0

  @classmethod
  def from_config(cls, evaluator_options):
    e = evaluator_options
    return cls(
        pixel_confidence_threshold=e.pixel_confidence_threshold,
        thing_class_threshold=e.thing_class_threshold,
        stuff_class_threshold=e.stuff_class_threshold,
        overlap_threshold=e.overlap_threshold,
        reorder_class_weight=e.reorder_class_weight,
        reorder_mask_weight=e.reorder_mask_weight,
        thing_area_limit=e.thing_area_limit,
        stuff_area_limit=e.stuff_area_limit)


def resize_align_corners(x, size):
  """Bilinear resize with align_corners=True ([B, h, w, C] -> [B, H, W, C])."""
  if tuple(x.shape[1:3]) == tuple(size):
    return x
  return tf.compat.v1.image.resize(
      x, size, method=tf.image.ResizeMethod.BILINEAR, align_corners=True)


def merge(class_logits, mask_logits, output_size, *, channel_to_semantic,
          num_things, label_divisor, ignore_label, options=MergingOptions()):
  """Panoptic, semantic and instance maps from the model's logits.

  Args:
    class_logits: [B, N, K + 1], channels things, stuff, void.
    mask_logits: [B, h, w, N] at the model's output stride.
    output_size: (H, W), the padded input size (static).
    channel_to_semantic: int sequence [K], semantic id of each class channel.
    num_things: channels 0..num_things-1 are thing classes.
    label_divisor, ignore_label: the data set's panoptic label encoding.
    options: MergingOptions.

  Returns:
    dict of
      panoptic [B, H, W] int32: semantic_id * label_divisor + instance id,
        void = ignore_label * label_divisor;
      semantic [B, H, W] int32: pixel-wise argmax semantic ids;
      instance [B, H, W] int32: instance id of thing pixels, else 0;
      instance_scores [B, H, W] float32: max mask probability per pixel;
      semantic_scores [B, H, W] float32: class confidence of the pasted
        segment (0 where void);
      and per segment, in rank order ([B, N]): segment_ids (panoptic label),
      segment_classes (semantic id), segment_is_thing, segment_scores
      (ranking score), segment_areas (pixels in `panoptic`; 0 for centers
      that were not kept, and for stuff centers merged into a
      higher-ranked center of the same class).
  """
  height, width = output_size
  class_logits = tf.cast(class_logits, tf.float32)
  mask_logits = tf.cast(mask_logits, tf.float32)
  batch = tf.shape(class_logits)[0]
  num_centers = class_logits.shape[1]
  if num_centers >= label_divisor:
    raise ValueError(f'{num_centers} cluster centers need instance ids up to '
                     f'{num_centers}, which the label divisor '
                     f'{label_divisor} cannot hold')
  channel_to_semantic = np.asarray(channel_to_semantic, np.int32)
  num_semantic = int(channel_to_semantic.max()) + 2
  channel_to_semantic = tf.constant(channel_to_semantic)
  threshold = options.pixel_confidence_threshold

  # 1. Classes.
  class_probs = tf.nn.softmax(class_logits, axis=-1)[..., :-1]  # [B, N, K]
  class_pred = tf.argmax(class_probs, axis=-1, output_type=tf.int32)
  confidence = tf.reduce_max(class_probs, axis=-1)  # [B, N]

  # 2. Mask scores at logit resolution.
  small_probs = tf.nn.softmax(mask_logits, axis=-1)  # [B, h, w, N]
  detected = tf.cast(small_probs > threshold, tf.float32)
  mask_scores = tf.math.divide_no_nan(
      tf.reduce_sum(small_probs * detected, axis=[1, 2]),
      tf.reduce_sum(detected, axis=[1, 2]))  # [B, N]

  # 3. Ranking.
  rank_score = (tf.pow(confidence, options.reorder_class_weight) *
                tf.pow(mask_scores, options.reorder_mask_weight))
  order = tf.argsort(rank_score, axis=-1, direction='DESCENDING',
                     stable=True)  # [B, N]
  ranked_class = tf.gather(class_pred, order, batch_dims=1)
  ranked_confidence = tf.gather(confidence, order, batch_dims=1)
  ranked_is_thing = ranked_class < num_things
  confident = tf.where(ranked_is_thing,
                       ranked_confidence >= options.thing_class_threshold,
                       ranked_confidence >= options.stuff_class_threshold)

  # 4. Paste binary masks in rank order.
  logits = resize_align_corners(mask_logits, (height, width))
  probs = tf.nn.softmax(logits, axis=-1)  # [B, H, W, N]
  instance_scores = tf.reduce_max(probs, axis=-1)
  binary = tf.transpose(
      tf.reshape(probs > threshold, [batch, height * width, num_centers]),
      [0, 2, 1])  # [B, N, H*W]
  binary = tf.gather(binary, order, batch_dims=1)  # rank order
  del probs

  centers = tf.range(num_centers)

  def paste(rank, canvas, kept):
    mask = tf.gather(binary, rank, axis=1)  # [B, H*W]
    free = tf.logical_and(mask, tf.equal(canvas, 0))
    original = tf.reduce_sum(tf.cast(mask, tf.float32), axis=-1)
    remaining = tf.reduce_sum(tf.cast(free, tf.float32), axis=-1)
    keep = tf.logical_and(tf.gather(confident, rank, axis=1),
                          remaining > original * options.overlap_threshold)
    canvas = tf.where(tf.logical_and(free, keep[:, None]), rank + 1, canvas)
    kept = tf.logical_or(kept, tf.logical_and(
        keep[:, None], tf.equal(centers, rank)[None]))  # [B, N]
    return rank + 1, canvas, kept

  # A loop of plain tensors (no TensorArray), which LiteRT runs as a
  # builtin WHILE.
  canvas = tf.zeros([batch, height * width], tf.int32)  # rank + 1; 0 = free
  kept = tf.zeros([batch, num_centers], tf.bool)  # [B, N]
  _, canvas, kept = tf.while_loop(
      lambda rank, *_: rank < num_centers, paste,
      (tf.constant(0), canvas, kept))

  # 5. Segment labels, area limits, void.
  pasted = canvas > 0
  pixel_rank = tf.maximum(canvas - 1, 0)
  pixel_channel = tf.gather(ranked_class, pixel_rank, batch_dims=1)
  pixel_semantic = tf.gather(channel_to_semantic, pixel_channel)
  pixel_thing = tf.logical_and(pasted, pixel_channel < num_things)
  pixel_stuff = tf.logical_and(pasted, pixel_channel >= num_things)
  if options.thing_area_limit > 0:
    pixel_thing = tf.logical_and(pixel_thing, _area_at_least(
        tf.where(pixel_thing, canvas, 0), num_centers + 1,
        options.thing_area_limit))
  if options.stuff_area_limit > 0:
    pixel_stuff = tf.logical_and(pixel_stuff, _area_at_least(
        tf.where(pixel_stuff, pixel_semantic + 1, 0), num_semantic,
        options.stuff_area_limit))
  void = ignore_label * label_divisor
  panoptic = tf.where(
      pixel_thing, pixel_semantic * label_divisor + canvas,
      tf.where(pixel_stuff, pixel_semantic * label_divisor, void))
  instance = tf.where(pixel_thing, canvas, 0)
  semantic_scores = tf.where(
      tf.logical_or(pixel_thing, pixel_stuff),
      tf.gather(ranked_confidence, pixel_rank, batch_dims=1), 0.0)

  segments = _segments(panoptic, canvas, pixel_thing, pixel_stuff, kept,
                       ranked_class, ranked_is_thing, channel_to_semantic,
                       tf.gather(rank_score, order, batch_dims=1),
                       num_centers, label_divisor)

  # Pixel-wise semantic map (no thresholds).
  pixel_center = tf.argmax(logits, axis=-1, output_type=tf.int32)
  semantic = tf.gather(channel_to_semantic,
                       tf.gather(class_pred, tf.reshape(
                           pixel_center, [batch, -1]), batch_dims=1))

  def image(x):
    return tf.reshape(x, [batch, height, width])

  return {
      'panoptic': image(panoptic),
      'semantic': image(semantic),
      'instance': image(instance),
      'instance_scores': instance_scores,
      'semantic_scores': image(semantic_scores),
      **segments,
  }


def histogram(index_map, num_indices):
  """int32 [B, num_indices]: how many of the P entries of each row of the
  int32 [B, P] `index_map` hold each index 0 .. num_indices - 1.

  A segment sum over the flattened batch (LiteRT has it as a builtin; it
  has no bincount).
  """
  batch = tf.shape(index_map)[0]
  offsets = tf.range(batch)[:, tf.newaxis] * num_indices  # [B, 1]
  counts = tf.math.unsorted_segment_sum(
      tf.ones_like(index_map), index_map + offsets,
      batch * num_indices)  # [B * num_indices]
  return tf.reshape(counts, [batch, num_indices])


def _area_at_least(index_map, num_indices, limit):
  """bool [B, P]: whether each pixel's index (0 = none) covers >= limit."""
  counts = histogram(index_map, num_indices)  # [B, num]
  area = tf.gather(counts, index_map, batch_dims=1)
  return tf.logical_and(index_map > 0, area >= limit)


def _segments(panoptic, canvas, pixel_thing, pixel_stuff, kept, ranked_class,
              ranked_is_thing, channel_to_semantic, ranked_score, num_centers,
              label_divisor):
  """Per-rank segment table; stuff centers of one class share one segment."""
  in_segment = tf.logical_or(pixel_thing, pixel_stuff)
  rank_area = histogram(tf.where(in_segment, canvas, 0),
                        num_centers + 1)[:, 1:]  # [B, N]
  semantic = tf.gather(channel_to_semantic, ranked_class)  # [B, N]
  # The leader of a stuff class is its best-ranked kept center; it carries
  # the area of all kept centers of that class.
  same_stuff = tf.logical_and(
      tf.equal(semantic[:, :, None], semantic[:, None, :]),
      tf.logical_and(tf.logical_not(ranked_is_thing)[:, :, None],
                     tf.logical_not(ranked_is_thing)[:, None, :]))
  same_stuff = tf.logical_and(same_stuff, tf.logical_and(
      kept[:, :, None], kept[:, None, :]))  # [B, N, N]
  earlier = tf.linalg.band_part(tf.ones([num_centers, num_centers]), -1, 0)
  has_earlier = tf.reduce_any(tf.logical_and(
      same_stuff, tf.cast(earlier, tf.bool)[None] & ~tf.eye(
          num_centers, dtype=tf.bool)[None]), axis=-1)
  stuff_total = tf.reduce_sum(
      tf.where(same_stuff, rank_area[:, None, :], 0), axis=-1)
  area = tf.where(ranked_is_thing, rank_area,
                  tf.where(has_earlier, 0, stuff_total))
  area = tf.where(kept, area, 0)
  ranks = tf.range(1, num_centers + 1)[None]
  segment_ids = semantic * label_divisor + tf.where(ranked_is_thing, ranks, 0)
  del panoptic
  return {
      'segment_ids': segment_ids,
      'segment_classes': semantic,
      'segment_is_thing': ranked_is_thing,
      'segment_scores': ranked_score,
      'segment_areas': area,
  }

