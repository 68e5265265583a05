"""The served model: a plain tf.Module with image-in, panoptic-out signatures.

`ServingModule` wraps a built kMaX-DeepLab model and its post-processing so
that a SavedModel runs with TensorFlow alone (`tf.saved_model.load`, or
TensorFlow Serving): the module holds the model's variables in a list and its
tf.functions capture them; no Keras object or deeplab2_kmax code is needed to
load it. Signatures (`SIGNATURES`):

  serving_default  image uint8 [H, W, C], C = 1 (gray), 3 (RGB) or 4 (RGBA;
                   alpha is dropped); any size up to `max_image_size`.
  serving_batch    images uint8 [B, H, W, C], images of one size.
  serving_bytes    image_bytes string [], a JPEG, PNG, GIF or BMP file.

Each image goes through the evaluation preprocessing of the config:

  1. resize (bilinear, corners aligned, as data/augment/geometric.py): the
     longer side to `eval_dataset_options.resize_longer_side` when set; then,
     if the image is still larger than the crop, shrink it keeping its aspect
     ratio until it fits (the side that limits the scale gets exactly the
     crop size);
  2. pad at the bottom and right with the mean pixel up to the crop;
  3. model, then mask-wise merging (model/post_processor/mask_wise_merging.py)
     at the crop size;
  4. cut the maps to the resized image and resize them to the input size by
     nearest neighbour (corners aligned).

Outputs of serving_default and serving_bytes (serving_batch adds a leading
[B]); N = number of cluster centers, rows in rank order with the
`num_segments` segments first:

  panoptic, semantic, instance  int32 [H, W]  semantic_id * label_divisor +
                                instance id; void = ignore_label *
                                label_divisor; semantic ids; instance ids
  instance_scores, semantic_scores  float32 [H, W]
  num_segments       int32 []  segments present in `panoptic`
  segment_ids        int32 [N] panoptic label of each segment, -1 after
                               num_segments
  segment_classes    int32 [N] semantic id (-1 after num_segments)
  segment_category_ids int32 [N] source (official category) id, -1 after
  segment_scores     float32 [N] ranking score, 0 after num_segments
  segment_areas      int32 [N] pixels in `panoptic` (at the input size)
  segment_is_thing   bool [N]
  cluster_assignments int32 [L, h, w]  per kMaX layer, the argmax over the N
                               centers of that layer's mask logits, resized
                               (nearest) to stride 4 of the crop and cut to
                               the image: h = (resized height - 1) // 4 + 1
  cluster_confidence float32 [L, h, w]  the softmax over the N centers at
                               that argmax (CMT's soft assignment; for kMaX
                               how clear-cut its hard assignment is), same
                               grid
  CMT-DeepLab models also return their layers' reference masks (Gaussians,
  one per center, values in (0, 1]), on the same grid:
  reference_mask_centers int32 [L, h, w]  the center whose reference mask
                               is highest at the pixel
  reference_mask_values float32 [L, h, w]  that mask's value

Bad inputs fail with tf.errors.InvalidArgumentError from a tf.debugging
assertion whose message says what was expected: zero-size images, channel
counts other than 1, 3 or 4, images longer than `max_image_size`, bytes that
are not an image file.

LiteRT: `fixed_size_function(height, width)` is serving_default for one RGB
image of a fixed size, with every shape static and no checks or
conditionals; with the merging's loop of plain tensors and its histograms
as segment sums it converts with LiteRT builtin ops only (export.py,
--format=tflite).

The exporter (export.py) writes the class names, colors and ids and the
facts of this module (crop, layer strides, ...) beside the SavedModel.
"""
import base64
import dataclasses

import numpy as np
import tensorflow as tf

from deeplab2_kmax import config as config_lib
from deeplab2_kmax.data.augment import geometric
from deeplab2_kmax.model import outputs
from deeplab2_kmax.model.post_processor import mask_wise_merging

SERVING_DEFAULT = 'serving_default'
SERVING_BATCH = 'serving_batch'
SERVING_BYTES = 'serving_bytes'
SIGNATURES = (SERVING_DEFAULT, SERVING_BATCH, SERVING_BYTES)
# Input names of the signatures.
INPUT_NAMES = {SERVING_DEFAULT: 'image', SERVING_BATCH: 'images',
               SERVING_BYTES: 'image_bytes'}

DEFAULT_MAX_IMAGE_SIZE = 4096
_PAD_VALUE = 127.5  # the mean pixel, as data/augment/geometric.py pads
_MASK_STRIDE = 4  # stride of the final mask logits
# Magic numbers of the formats tf.io.decode_image reads.
_IMAGE_MAGIC = (b'\xff\xd8\xff', b'\x89PNG', b'GIF8', b'BM')


@dataclasses.dataclass(frozen=True)
class ServingOptions:
  """What the served function needs besides the model and the data set."""
  crop_size: tuple  # (height, width) of the model input
  resize_longer_side: int = 0  # 0: only shrink images larger than the crop
  max_image_size: int = DEFAULT_MAX_IMAGE_SIZE  # longest accepted side
  merging: mask_wise_merging.MergingOptions = (
      mask_wise_merging.MergingOptions())

  @classmethod
  def from_config(cls, config, max_image_size=DEFAULT_MAX_IMAGE_SIZE):
    """Crop, resize and merging thresholds of the config's evaluation."""
    options = config.eval_dataset_options
    if len(options.crop_size) != 2:
      raise config_lib.ConfigError(
          'eval_dataset_options.crop_size: the exported model pads images '
          'to this [height, width]; expected 2 values, found '
          f'{list(options.crop_size)}')
    if max_image_size < 1:
      raise ValueError(f'max_image_size must be at least 1; found '
                       f'{max_image_size}')
    return cls(crop_size=tuple(int(v) for v in options.crop_size),
               resize_longer_side=int(options.resize_longer_side),
               max_image_size=int(max_image_size),
               merging=mask_wise_merging.MergingOptions.from_config(
                   config.evaluator_options))


class _Untracked:
  """Holds Python objects that the SavedModel must not serialize."""

  def __init__(self, **values):
    self.__dict__.update(values)


class ServingModule(tf.Module):
  """tf.Module with the serving signatures of a kMaX-DeepLab model."""

  def __init__(self, model, dataset_info, options):
    """`model` must be built (called once); its weights are captured."""
    super().__init__(name='kmax_deeplab_serving')
    if not model.weights:
      raise ValueError('ServingModule: the model has no weights yet; call it '
                       'once (or restore a checkpoint) first')
    # The only tracked state: the variables the functions capture.
    self.model_variables = [v.value if hasattr(v, 'value') else v
                            for v in model.weights]
    source_ids = np.full([dataset_info.num_semantic_channels], -1, np.int32)
    for c in dataset_info.classes:
      source_ids[c.semantic_id] = c.source_id
    self._static = _Untracked(
        model=model, dataset_info=dataset_info, options=options,
        layer_strides=tuple(model.transformer_decoder.layer_strides),
        num_centers=int(model.transformer_decoder.num_centers),
        source_ids=source_ids)

  # Facts for callers and for export_info.json (not part of the SavedModel).
  @property
  def model(self):
    """The Keras model whose weights the signatures capture."""
    return self._static.model

  @property
  def dataset_info(self):
    return self._static.dataset_info

  @property
  def options(self):
    return self._static.options

  @property
  def layer_strides(self):
    return self._static.layer_strides

  @property
  def num_centers(self):
    return self._static.num_centers

  def signatures(self):
    """{name: concrete function} for tf.saved_model.save."""
    return {SERVING_DEFAULT: self.serve_image.get_concrete_function(),
            SERVING_BATCH: self.serve_batch.get_concrete_function(),
            SERVING_BYTES: self.serve_bytes.get_concrete_function()}

  # Signatures ----------------------------------------------------------
  @tf.function(input_signature=[
      tf.TensorSpec([None, None, None], tf.uint8, name='image')])
  def serve_image(self, image):
    """One uint8 [H, W, C] image -> outputs (module docstring)."""
    image = _to_rgb(image[tf.newaxis], SERVING_DEFAULT)
    return _unbatch(self._predict(image))

  @tf.function(input_signature=[
      tf.TensorSpec([None, None, None, None], tf.uint8, name='images')])
  def serve_batch(self, images):
    """uint8 [B, H, W, C] images of one size -> batched outputs."""
    return self._predict(_to_rgb(images, SERVING_BATCH))

  @tf.function(input_signature=[
      tf.TensorSpec([], tf.string, name='image_bytes')])
  def serve_bytes(self, image_bytes):
    """An encoded JPEG / PNG / GIF / BMP file -> outputs."""
    magic = tf.reduce_any(tf.stack([
        tf.equal(tf.strings.substr(image_bytes, 0, len(m)), m)
        for m in _IMAGE_MAGIC]))
    check = tf.debugging.Assert(magic, [
        f'{SERVING_BYTES}: image_bytes is not a JPEG, PNG, GIF or BMP file '
        '(its first bytes match none of their signatures); first bytes:',
        tf.strings.substr(image_bytes, 0, 8)])
    with tf.control_dependencies([check]):
      image = tf.io.decode_image(image_bytes, channels=3, dtype=tf.uint8,
                                 expand_animations=False)  # [H, W, 3]
    image.set_shape([None, None, 3])
    return _unbatch(self._predict(image[tf.newaxis]))

  def fixed_size_function(self, height, width):
    """Concrete function of one uint8 [height, width, 3] RGB image.

    The outputs are serving_default's for an image of that size, but every
    shape is static and there are no run-time checks or conditionals: the
    function LiteRT converts (export.py, --format=tflite).
    """
    options = self.options
    if not (0 < height <= options.max_image_size and
            0 < width <= options.max_image_size):
      raise ValueError(
          f'image size {height}x{width}: expected both sides between 1 and '
          f'max_image_size = {options.max_image_size}')
    with tf.init_scope():  # eager, even when called inside a tf.function
      size = tuple(int(v) for v in _model_input_size(
          tf.constant(height), tf.constant(width), options).numpy())

    @tf.function(input_signature=[
        tf.TensorSpec([height, width, 3], tf.uint8, name='image')])
    def serve_fixed_size(image):
      return _unbatch(self._outputs(image[tf.newaxis], size,
                                    (height, width)))

    return serve_fixed_size.get_concrete_function()

  # Implementation ------------------------------------------------------
  @tf.function(input_signature=[tf.TensorSpec([None, None, None, 3],
                                               tf.uint8)])
  def _predict(self, images):
    """uint8 [B, H, W, 3] -> batched outputs (one trace for all signatures)."""
    options = self.options
    shape = tf.shape(images)
    height, width = shape[1], shape[2]
    checks = [
        tf.debugging.assert_positive(
            shape[:3], message=(
                'input image is empty: the batch, height and width must be '
                'at least 1 (shape printed as [B, H, W])')),
        tf.debugging.assert_less_equal(
            tf.maximum(height, width), options.max_image_size, message=(
                f'input image is too large: its longer side must be at most '
                f'max_image_size = {options.max_image_size} (set when the '
                'model was exported with --max_image_size); resize it '
                'first')),
    ]
    with tf.control_dependencies(checks):
      images = tf.identity(images)
    size = _model_input_size(height, width, options)  # [2]: h, w
    return self._outputs(images, size, tf.stack([height, width]))

  def _outputs(self, images, size, original):
    """Outputs of uint8 [B, H, W, 3] images; `size` is the model input size
    (h, w) before padding and `original` (H, W), each a tensor [2] or a
    pair of Python ints."""
    static = self._static
    options = static.options
    crop_height, crop_width = options.crop_size
    resized = tf.compat.v1.image.resize(
        tf.cast(images, tf.float32), size, align_corners=True,
        method=tf.image.ResizeMethod.BILINEAR)  # [B, h, w, 3]
    padded = tf.pad(resized, [[0, 0], [0, crop_height - size[0]],
                              [0, crop_width - size[1]], [0, 0]],
                    constant_values=_PAD_VALUE)
    padded.set_shape([None, crop_height, crop_width, 3])
    result = static.model(padded, training=False)
    info = static.dataset_info
    merged = mask_wise_merging.merge(
        result[outputs.CLASS_LOGITS], result[outputs.MASK_LOGITS],
        (crop_height, crop_width),
        channel_to_semantic=info.channel_to_semantic(),
        num_things=info.num_things, label_divisor=info.label_divisor,
        ignore_label=info.ignore_label, options=options.merging)

    maps = {key: _to_input_size(merged[key], size, original)
            for key in ('panoptic', 'semantic', 'instance', 'instance_scores',
                        'semantic_scores')}  # each [B, H, W]
    segments = _segment_table(merged, maps['panoptic'], static.source_ids,
                              _num_labels(info, static.num_centers))
    layers = result[outputs.AUXILIARY_PREDICTIONS]
    clusters, confidence = _per_layer_argmax(
        [p[outputs.MASK_LOGITS] for p in layers], (crop_height, crop_width),
        size, softmax=True)
    extra = {}
    if all(outputs.REFERENCE_MASKS in p for p in layers):  # CMT-DeepLab
      extra['reference_mask_centers'], extra['reference_mask_values'] = (
          _per_layer_argmax([p[outputs.REFERENCE_MASKS] for p in layers],
                            (crop_height, crop_width), size, softmax=False))
    return {**maps, **segments, 'cluster_assignments': clusters,
            'cluster_confidence': confidence, **extra}


def _to_rgb(images, where):
  """uint8 [B, H, W, C] with C in {1, 3, 4} -> [B, H, W, 3]."""
  channels = tf.shape(images)[3]
  check = tf.debugging.Assert(
      tf.reduce_any(tf.equal(channels, [1, 3, 4])), [
          f'{where}: the image has an unsupported number of channels; '
          'expected 1 (gray), 3 (RGB) or 4 (RGBA); found shape',
          tf.shape(images)])
  with tf.control_dependencies([check]):
    rgb = tf.cond(channels == 1,
                  lambda: tf.tile(images[..., :1], [1, 1, 1, 3]),
                  lambda: images[..., :3])
  rgb.set_shape(images.shape[:3].concatenate([3]))
  return rgb


def _unbatch(result):
  return {key: value[0] for key, value in result.items()}


def _model_input_size(height, width, options):
  """int32 [2]: [h, w] of the image before padding to the crop."""
  if options.resize_longer_side > 0:
    size = geometric.resized_size(height, width,
                                  longer_side=options.resize_longer_side)
  else:
    size = tf.stack([height, width])
  size = tf.cast(size, tf.int64)
  crop = tf.constant(options.crop_size, tf.int64)
  # The scale min(crop_h / h, crop_w / w) as numerator / denominator.
  by_height = crop[0] * size[1] <= crop[1] * size[0]
  numerator = tf.where(by_height, crop[0], crop[1])
  denominator = tf.where(by_height, size[0], size[1])
  shrunk = tf.maximum(size * numerator // denominator, 1)
  size = tf.where(numerator < denominator, shrunk, size)
  return tf.cast(size, tf.int32)


def _resize_nearest(x, size):
  """Nearest-neighbour resize (corners aligned) of [B, h, w, C].

  Integer maps go through float32 (exact below 2^24: panoptic labels are
  far smaller), since LiteRT resizes no int32 tensor.
  """
  resized = tf.compat.v1.image.resize(
      tf.cast(x, tf.float32) if x.dtype.is_integer else x, size,
      method=tf.image.ResizeMethod.NEAREST_NEIGHBOR, align_corners=True)
  return tf.cast(resized, x.dtype)


def _to_input_size(x, size, original):
  """[B, crop_h, crop_w] map -> cut to `size`, nearest-resized to `original`."""
  x = x[:, :size[0], :size[1], tf.newaxis]  # [B, h, w, 1]
  return _resize_nearest(x, original)[..., 0]  # [B, H, W]


def _num_labels(info, num_centers):
  """1 + the largest panoptic label the merging can write."""
  largest_semantic = max(c.semantic_id for c in info.classes)
  return max(largest_semantic * info.label_divisor + num_centers,
             info.ignore_label * info.label_divisor) + 1


def _segment_table(merged, panoptic, source_ids, num_labels):
  """Per-segment outputs, areas recounted on `panoptic` [B, H, W].

  The merging's segment ids and classes are in range for every center
  (below `num_labels` and the length of `source_ids`), so no clipping.
  """
  ids = merged['segment_ids']  # [B, N]
  kept = merged['segment_areas'] > 0  # [B, N]
  # Pixels of every label 0 .. num_labels - 1 of each image.
  counts = mask_wise_merging.histogram(
      tf.reshape(panoptic, [tf.shape(panoptic)[0], -1]),
      num_labels)  # [B, num_labels]
  areas = tf.gather(counts, ids, batch_dims=1)  # [B, N]
  areas = tf.where(kept, areas, 0)
  present = areas > 0
  # Segments first, each group in rank order.
  order = tf.argsort(tf.cast(~present, tf.int32), axis=-1, stable=True)

  def ranked(x, padding):
    return tf.where(tf.gather(present, order, batch_dims=1),
                    tf.gather(x, order, batch_dims=1), padding)

  classes = merged['segment_classes']
  category_ids = tf.gather(tf.constant(source_ids), classes)  # [B, N]
  return {
      'num_segments': tf.reduce_sum(tf.cast(present, tf.int32), axis=-1),
      'segment_ids': ranked(ids, -1),
      'segment_classes': ranked(classes, -1),
      'segment_category_ids': ranked(category_ids, -1),
      'segment_scores': ranked(merged['segment_scores'], 0.0),
      'segment_areas': ranked(areas, 0),
      'segment_is_thing': ranked(merged['segment_is_thing'], False),
  }


def _per_layer_argmax(layer_maps, crop_size, size, *, softmax):
  """Per-layer argmax over the centers of [B, h_l, w_l, N] maps, int32
  [B, L, h4, w4], and the maximum, float32 [B, L, h4, w4] (of the softmax
  over the centers if `softmax`): at stride 4, cut to size."""
  full = [(s - 1) // _MASK_STRIDE + 1 for s in crop_size]
  valid = [(size[i] - 1) // _MASK_STRIDE + 1 for i in (0, 1)]
  centers, confidences = [], []
  for scores in layer_maps:  # [B, h_l, w_l, N]
    scores = tf.cast(scores, tf.float32)
    center = tf.argmax(scores, axis=-1, output_type=tf.int32)
    if softmax:
      scores = tf.nn.softmax(scores, axis=-1)
    confidence = tf.reduce_max(scores, axis=-1)
    center = _resize_nearest(center[..., tf.newaxis], full)[..., 0]
    confidence = _resize_nearest(confidence[..., tf.newaxis], full)[..., 0]
    centers.append(center[:, :valid[0], :valid[1]])  # [B, h4, w4]
    confidences.append(confidence[:, :valid[0], :valid[1]])
  return tf.stack(centers, axis=1), tf.stack(confidences, axis=1)


# TensorFlow Serving --------------------------------------------------------
def rest_request_body(signature_name, value):
  """JSON body of a TensorFlow Serving REST `:predict` request.

  serving_default: columnar format, {"inputs": {"image": [H][W][C]}} (the
  tensor as is); serving_batch: row format, {"instances": [image, ...]}
  (stacked along a new axis 0 by the server); serving_bytes: {"inputs":
  {"image_bytes": {"b64": ...}}} (binary strings are base64 objects).

  Args:
    signature_name: one of SIGNATURES.
    value: uint8 [H, W, C] (default), [B, H, W, C] (batch) or bytes.

  Returns:
    A dict to json.dumps and POST to /v1/models/<name>:predict.
  """
  if signature_name == SERVING_DEFAULT:
    inputs = {'inputs': {INPUT_NAMES[signature_name]:
                         np.asarray(value).tolist()}}
  elif signature_name == SERVING_BATCH:
    inputs = {'instances': [np.asarray(v).tolist() for v in value]}
  elif signature_name == SERVING_BYTES:
    inputs = {'inputs': {INPUT_NAMES[signature_name]: {
        'b64': base64.b64encode(bytes(value)).decode('ascii')}}}
  else:
    raise ValueError(f'unknown signature {signature_name!r}; expected one '
                     f'of {SIGNATURES}')
  return {'signature_name': signature_name, **inputs}
