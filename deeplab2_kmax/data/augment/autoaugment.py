"""AutoAugment policies: one random sub-policy of photometric ops per image.

AutoAugment (Cubuk et al., CVPR 2019) describes a policy as a list of
sub-policies, each a short sequence of (op, probability, magnitude). For
every image one sub-policy is chosen uniformly at random and its ops are
applied in order, each with its own probability. kMaX-DeepLab uses DeepLab2's
"simple_classification_policy" (spec section 8,
`data/preprocessing/autoaugment_policy.py`) on the uint8 image after random
scaling; the label is untouched since all ops are photometric.

Magnitudes are integer levels 0..10 (`MAX_LEVEL`) mapped to op arguments as
in DeepLab2 / TF Model Garden `autoaugment_utils.py`:

* Brightness, Color, Contrast, Sharpness: factor = level / 10 * 1.8 + 0.1
  (0.1..1.9; 1 keeps the image).
* Solarize: threshold = int(level / 10 * 256).
* Posterize: bits = int(level / 10 * 4).
* AutoContrast, Equalize, Invert: no argument.

Magnitude scaling: DeepLab2's `convert_policy(..., magnitude_scale=s)`
multiplies every level by s before the mapping above and leaves the
probabilities alone; its Cityscapes configs use the policy it registers as
"simple_classification_policy_magnitude_scale_0.2". Here the scale is the
`magnitude_scale` argument (config `autoaugment_magnitude_scale`), applied
the same way: with s = 0.2, Solarize level 7 gives threshold
int(1.4 / 10 * 256) = 35 and an enhance op at level 10 gives factor 0.46.

Policies are data in `POLICIES`; add one there to make it available. The ops
themselves (matching PIL) live in `autoaugment_ops.py`.
"""
import functools
import typing

import tensorflow as tf

from deeplab2_kmax.data.augment import autoaugment_ops

MAX_LEVEL = 10.0


class PolicyOp(typing.NamedTuple):
  """One step of a sub-policy: op name, probability and magnitude level."""
  op: str
  prob: float
  magnitude: float


# Sub-policies of two ops each, as (op, probability, magnitude).
POLICIES = {
    'simple_classification_policy': (
        (PolicyOp('Sharpness', 0.4, 7), PolicyOp('Brightness', 0.2, 10)),
        (PolicyOp('Equalize', 0.0, 9), PolicyOp('Contrast', 0.2, 10)),
        (PolicyOp('Sharpness', 0.2, 9), PolicyOp('Color', 0.2, 9)),
        (PolicyOp('Solarize', 0.2, 7), PolicyOp('Equalize', 0.6, 9)),
        (PolicyOp('Sharpness', 0.2, 1), PolicyOp('Equalize', 0.2, 7)),
    ),
}


def _no_args(level):
  del level
  return ()


def _enhance_factor(level):
  return (level / MAX_LEVEL * 1.8 + 0.1,)


def _solarize_threshold(level):
  return (int(level / MAX_LEVEL * 256),)


def _posterize_bits(level):
  return (int(level / MAX_LEVEL * 4),)


# Op name -> (image function, level -> tuple of its extra arguments).
OPS = {
    'AutoContrast': (autoaugment_ops.autocontrast, _no_args),
    'Equalize': (autoaugment_ops.equalize, _no_args),
    'Invert': (autoaugment_ops.invert, _no_args),
    'Posterize': (autoaugment_ops.posterize, _posterize_bits),
    'Solarize': (autoaugment_ops.solarize, _solarize_threshold),
    'Color': (autoaugment_ops.color, _enhance_factor),
    'Contrast': (autoaugment_ops.contrast, _enhance_factor),
    'Brightness': (autoaugment_ops.brightness, _enhance_factor),
    'Sharpness': (autoaugment_ops.sharpness, _enhance_factor),
}


class ResolvedOp(typing.NamedTuple):
  """A policy step ready to run: op name, probability, op arguments."""
  op: str
  prob: float
  args: tuple


def resolve_policy(policy, magnitude_scale=1.0):
  """Returns the sub-policies of `policy` with levels turned into arguments.

  Args:
    policy: a key of `POLICIES`.
    magnitude_scale: multiplier of every magnitude level (>= 0).

  Returns:
    Tuple of sub-policies, each a tuple of `ResolvedOp`.

  Raises:
    ValueError: for an unknown policy, an unknown op in it, or a negative
      magnitude_scale.
  """
  if policy not in POLICIES:
    raise ValueError(
        f'Unknown AutoAugment policy {policy!r} (train_dataset_options.'
        f'augmentations.autoaugment_policy); known policies: '
        f'{", ".join(sorted(POLICIES))}.')
  if magnitude_scale < 0:
    raise ValueError(
        'AutoAugment magnitude_scale (augmentations.'
        f'autoaugment_magnitude_scale) must be >= 0, got {magnitude_scale}.')
  resolved = []
  for sub_policy in POLICIES[policy]:
    steps = []
    for step in sub_policy:
      if step.op not in OPS:
        raise ValueError(
            f'AutoAugment policy {policy!r} uses unknown op {step.op!r}; '
            f'known ops: {", ".join(sorted(OPS))}.')
      level_to_args = OPS[step.op][1]
      steps.append(ResolvedOp(step.op, step.prob,
                              level_to_args(step.magnitude * magnitude_scale)))
    resolved.append(tuple(steps))
  return tuple(resolved)


def _run_op(step, image):
  function = OPS[step.op][0]
  return function(image, *step.args)


def _apply_sub_policy(image, sub_policy, seeds):
  """Applies each op of `sub_policy` with its probability; seeds [N, 2]."""
  for index, step in enumerate(sub_policy):
    if step.prob <= 0:
      continue
    if step.prob >= 1:
      image = _run_op(step, image)
      continue
    draw = tf.random.stateless_uniform([], seeds[index])  # uniform [0, 1)
    image = tf.cond(draw < step.prob, functools.partial(_run_op, step, image),
                    functools.partial(tf.identity, image))
  return image


def distort_image(image, seed, *, policy='simple_classification_policy',
                  magnitude_scale=1.0):
  """Applies one random sub-policy of an AutoAugment policy to an image.

  Args:
    image: uint8 [H, W, 3] RGB image.
    seed: int32/int64 [2] seed; it picks the sub-policy and whether each of
      its ops runs.
    policy: a key of `POLICIES`.
    magnitude_scale: multiplier of every magnitude level (see module doc).

  Returns:
    uint8 [H, W, 3] augmented image.

  Raises:
    ValueError: for an unknown policy or a non-uint8 image.
  """
  sub_policies = resolve_policy(policy, magnitude_scale)
  image = tf.convert_to_tensor(image)
  if image.dtype != tf.uint8:
    raise ValueError(
        f'distort_image expects a uint8 [H, W, 3] image, got {image.dtype.name}'
        '; cast it with tf.cast(tf.clip_by_value(image, 0, 255), tf.uint8).')
  num_steps = max(len(sub_policy) for sub_policy in sub_policies)
  seeds = tf.random.experimental.stateless_split(seed, 1 + num_steps)
  choice = tf.random.stateless_uniform(
      [], seeds[0], minval=0, maxval=len(sub_policies), dtype=tf.int32)
  branches = [functools.partial(_apply_sub_policy, image, sub_policy,
                                seeds[1:])
              for sub_policy in sub_policies]
  augmented = tf.switch_case(choice, branches)
  augmented.set_shape(image.shape)
  return augmented
