"""CMT-DeepLab's mask-approximation loss on the reference masks (ours).

Each CMT layer predicts a soft reference mask per center (a 2-D Gaussian,
model/transformer_decoder/cmt_layer.py). The centers matched to a ground-
truth mask by the final matching are trained to approximate that mask:
  loss = mean over matched (m, n) of 1 - Dice(gt_m, r_n),
  Dice(g, r) = 2 sum_p g r / (sum_p g + sum_p r),
with the reference masks zeroed at void pixels. Unmatched centers get no
target. An image without matched masks contributes 0.
"""
import tensorflow as tf

_EPSILON = 1e-5


def reference_mask_dice_loss(reference_masks, gt_masks, assignment,
                             non_void):
  """Per-image loss [B].

  Args:
    reference_masks: float32 [B, P, N] in [0, 1].
    gt_masks: float32 [B, P, M] 0/1.
    assignment: float32 [B, M, N] 0/1, the final matching.
    non_void: float32 [B, P], 0 at void pixels.
  """
  reference = reference_masks * non_void[:, :, None]  # [B, P, N]
  intersection = tf.einsum('bpm,bpn->bmn', gt_masks, reference)  # [B, M, N]
  sizes = (tf.reduce_sum(gt_masks, axis=1)[:, :, None] +
           tf.reduce_sum(reference, axis=1)[:, None, :])  # [B, M, N]
  dice = 2.0 * intersection / (sizes + _EPSILON)
  matched = tf.reduce_sum(assignment, axis=[1, 2])  # [B]
  loss = tf.reduce_sum(assignment * (1.0 - dice), axis=[1, 2])
  return tf.math.divide_no_nan(loss, matched)
