"""Mask-ID cross-entropy (MaX-DeepLab, Wang et al., CVPR 2021).

Every pixel's mask logits form a softmax over the N prediction slots (masks
never overlap); the target is the slot that the Hungarian matching gave to
the pixel's GT mask. Void pixels are ignored (weight 0); crowd pixels and
pixels of GT masks that received no slot (only possible with more valid GT
masks than slots) have an all-zero target, hence a zero loss, and so do not
count either. The loss of an image is the mean over the pixels with a
non-zero loss.
"""
import tensorflow as tf

from deeplab2_kmax.model.loss import reduction


def mask_id_cross_entropy(mask_logits, gt_masks, assignment, pixel_weights):
  """Per-pixel slot cross-entropy, averaged per image.

  Args:
    mask_logits: [B, P, N] logits (cast to float32).
    gt_masks: float32 [B, P, M], 0/1 GT masks (all-zero rows at void and
      crowd pixels).
    assignment: float32 [B, M, N], 1 where GT mask m is matched to slot n.
    pixel_weights: float32 [B, P], 0 at void pixels, 1 elsewhere.

  Returns:
    float32 [B].
  """
  log_probs = tf.nn.log_softmax(tf.cast(mask_logits, tf.float32), axis=-1)
  targets = tf.einsum('bpm,bmn->bpn', gt_masks, assignment)  # [B, P, N]
  cross_entropy = -tf.reduce_sum(targets * log_probs, axis=-1)  # [B, P]
  return reduction.mean_over_non_zero(cross_entropy * pixel_weights)
