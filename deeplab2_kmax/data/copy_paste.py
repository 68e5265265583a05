"""Panoptic copy-paste: segments of a second image pasted onto the first.

kMaX-DeepLab (Yu et al., ECCV 2022) extends the thing-only copy-paste of
InstaBoost and Simple Copy-Paste to panoptic labels (spec section 8; the
behaviour follows DeepLab2's `data/sample_generator.py`). Both samples are
already augmented and cropped to the same size; the pasted one was augmented
independently with the scale range halved, and padded with the void label.

Exact semantics of `panoptic_copy_paste`:

1. The segments of the pasted label are its distinct panoptic values (void
   included); say there are U of them.
2. A number n is drawn uniformly from {0, ..., U}, and a random subset of n
   segments is chosen.
3. Every segment of a thing class is added to the subset (crowd regions of
   thing classes included); stuff segments stay in only if drawn.
4. The void segment is removed, so void pixels (and the padding of the pasted
   crop, which carries the void label) are never pasted.
5. Pasted thing instances are renumbered so they cannot collide with the
   first image's instances of the same class: instance id i of class c
   becomes i + (largest instance id of class c in the first label). An
   instance whose new id would reach label_divisor is not pasted (it cannot
   be written in the label); crowd regions keep instance id 0.
6. Where a pixel belongs to a pasted segment, the image and the label take
   the pasted values; elsewhere they keep the first sample's.

DeepLab2 also counts padding as a segment of its own when drawing n; here
padding and void are one segment, a negligible difference in how many
segments are drawn. DeepLab2 renumbers pasted instances as
label_divisor - 1 - i instead of offsetting them; both give unique ids.
"""
import tensorflow as tf


def panoptic_copy_paste(image, panoptic, paste_image, paste_panoptic, seed, *,
                        label_divisor, ignore_label, thing_semantic_ids):
  """Pastes a random subset of segments (all things) of a second sample.

  Args:
    image: [H, W, 3] image of the first sample (any dtype).
    panoptic: int32 [H, W] panoptic label of the first sample.
    paste_image: [H, W, 3] image to paste from, same dtype as `image`.
    paste_panoptic: int32 [H, W] its panoptic label.
    seed: int32/int64 [2] seed of the stateless random ops.
    label_divisor: the data set's label divisor.
    ignore_label: the data set's ignore label (semantic id of void).
    thing_semantic_ids: sequence of the semantic ids of thing classes.

  Returns:
    (image [H, W, 3], panoptic int32 [H, W]) after pasting.
  """
  panoptic = tf.cast(panoptic, tf.int32)
  paste_panoptic = tf.cast(paste_panoptic, tf.int32)
  void_label = ignore_label * label_divisor
  seeds = tf.random.experimental.stateless_split(seed, 2)

  segments, segment_of_pixel = tf.unique(
      tf.reshape(paste_panoptic, [-1]))  # [U], [H*W]
  num_segments = tf.size(segments)
  num_drawn = tf.random.stateless_uniform(
      [], seeds[0], minval=0, maxval=num_segments + 1, dtype=tf.int32)
  priority = tf.random.stateless_uniform([num_segments], seeds[1])  # [U]
  drawn = tf.argsort(tf.argsort(priority)) < num_drawn  # [U]

  semantic = segments // label_divisor  # [U]
  things = tf.constant(list(thing_semantic_ids), tf.int32, shape=[
      len(thing_semantic_ids)])
  is_thing = tf.reduce_any(semantic[:, None] == things[None, :], axis=1)
  keep = (drawn | is_thing) & (segments != void_label)  # [U]

  # Renumber pasted instances above the first label's ids of their class.
  instance = segments % label_divisor  # [U]
  offset = tf.where(instance > 0,
                    _instance_offsets(panoptic, semantic, label_divisor), 0)
  keep &= instance + offset < label_divisor
  new_labels = segments + offset  # [U]

  paste = tf.reshape(tf.gather(keep, segment_of_pixel),
                     tf.shape(paste_panoptic))  # [H, W]
  pasted_label = tf.reshape(tf.gather(new_labels, segment_of_pixel),
                            tf.shape(paste_panoptic))  # [H, W]
  image = tf.where(paste[..., None], paste_image, image)
  panoptic = tf.where(paste, pasted_label, panoptic)
  return image, panoptic


def _instance_offsets(panoptic, semantic, label_divisor):
  """Largest instance id of each class of `semantic` in `panoptic`, or 0."""
  labels = tf.reshape(panoptic, [-1])  # [H*W]
  label_semantic = labels // label_divisor
  num_ids = tf.maximum(tf.reduce_max(label_semantic),
                       tf.reduce_max(semantic)) + 1
  largest = tf.math.unsorted_segment_max(
      labels % label_divisor, label_semantic, num_ids)  # [num_ids]
  # Classes absent from `panoptic` get the dtype's lowest value.
  return tf.maximum(tf.gather(largest, semantic), 0)  # [U]
