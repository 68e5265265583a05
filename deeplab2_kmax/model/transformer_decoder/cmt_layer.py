"""One clustering layer of CMT-DeepLab (Yu et al., "CMT-DeepLab: Clustering
Mask Transformers for Panoptic Segmentation", CVPR 2022).

CMT-DeepLab never had public code. This layer is the definition of
../shared/docs/kmax_cmt_spec.md section 3.2: it follows every published
statement (object queries are cluster centers; pixel-to-cluster assignment
by feature affinity with a residual path across layers; the clustering
update combined with the original cross-attention; pixel update;
dynamic reference masks with coordinate convolution; mask-approximation
loss). The exact forms marked "ours" below are this project's choices.

Per layer, with pixel features F [B, h, w, Cp] (activated, the decoder's
feature at this stride or the previous layer's update of it) and centers
C [B, N, D]:
  1. Pb = proj(F ++ (x, y)) [B, P, D] (coordinates in [-1, 1] appended:
     CoordConv), Cb = proj(C), V = proj(Pb), as in the kMaX layer;
  2. L = this layer's mask logits [B, P, N] from (Pb, Cb) (its deeply
     supervised prediction); assignment logits
     L' = L + resize(L'_prev) (residual path; ours: bilinear, align
     corners) + log m_prev (the previous layer's reference masks);
  3. A = softmax over the N centers of L' (no stop-gradient; ours);
  4. center update: clustering term BN(conv(BN(A^T V))) plus the original
     multi-head spatial-softmax cross-attention from the centers to the
     pixels (ours: scaled dot product of projected Cb and Pb, values V),
     plus self-attention among the centers, then the FFN (as kMaX);
  5. pixel update: F' = F + BN_0(conv(A Vc)), Vc = proj(Cb) [B, N, D];
  6. reference masks (ours): a small MLP on the updated centers predicts a
     2-D Gaussian per center (center in [-1, 1]^2, log scales), evaluated
     on the next layer's grid; its log is added to the next layer's
     assignment logits, and the matched centers' masks are trained
     against their ground truth (the mask-approximation loss).
Each component has a switch (CMTComponents); all on is CMT-DeepLab.
"""
import dataclasses

import keras
import tensorflow as tf

from deeplab2_kmax.model import outputs
from deeplab2_kmax.model.layers import conv_bn
from deeplab2_kmax.model.layers import drop_path
from deeplab2_kmax.model.layers import resize
from deeplab2_kmax.model.transformer_decoder import kmax_layer

# Log-scales of the reference Gaussians are clipped to this range (a scale
# of e^-4 of the half image up to e^2 of it).
_LOG_SCALE_RANGE = (-4.0, 2.0)


@dataclasses.dataclass(frozen=True)
class CMTComponents:
  """Which parts of the CMT layer are on (all: CMT-DeepLab)."""
  assignment_residual: bool = True
  clustering_update: bool = True
  cross_attention_update: bool = True
  pixel_update: bool = True
  coordinates: bool = True
  reference_masks: bool = True


def coordinates(height, width):
  """[1, height, width, 2] (x, y) positions, each in [-1, 1]."""
  ys = tf.linspace(-1.0, 1.0, height) if height > 1 else tf.zeros([1])
  xs = tf.linspace(-1.0, 1.0, width) if width > 1 else tf.zeros([1])
  y, x = tf.meshgrid(ys, xs, indexing='ij')
  return tf.stack([x, y], axis=-1)[None]


def log_reference_masks(parameters, height, width):
  """[B, N, 4] (cx, cy, log sx, log sy) -> [B, h, w, N] log Gaussians."""
  parameters = tf.cast(parameters, tf.float32)
  grid = coordinates(height, width)  # [1, h, w, 2]
  center = parameters[:, None, None, :, 0:2]  # [B, 1, 1, N, 2]
  scale = tf.exp(tf.clip_by_value(parameters[:, None, None, :, 2:4],
                                  *_LOG_SCALE_RANGE))
  distance = (grid[:, :, :, None, :] - center) / scale  # [B, h, w, N, 2]
  return -0.5 * tf.reduce_sum(tf.square(distance), axis=-1)


@keras.saving.register_keras_serializable(package='deeplab2_kmax')
class CMTLayer(kmax_layer.KMaXLayer):
  """(pixels, centers, previous state) -> (centers, pixels, prediction,
  state); `state` carries the assignment logits and reference masks to the
  next layer."""

  def __init__(self, num_class_logits, components=None, update_pixels=None,
               **kwargs):
    """`update_pixels` False skips the pixel update (the decoder sets it for
    the last layer at each stride, whose updated pixels nobody reads);
    None follows components.pixel_update."""
    kwargs.pop('cross_attention_activation', None)
    super().__init__(num_class_logits,
                     cross_attention_activation='cluster_softmax', **kwargs)
    if isinstance(components, dict):
      components = CMTComponents(**components)
    self.components = components or CMTComponents()
    c = self.components
    self.update_pixels = (c.pixel_update if update_pixels is None
                          else bool(update_pixels and c.pixel_update))
    width = self.center_width
    qk_init = keras.initializers.TruncatedNormal(stddev=width**-0.5)
    if c.cross_attention_update:
      self.cross_query = conv_bn.DenseBN(
          self.key_depth, kernel_initializer=qk_init,
          name='cross_attention_query_conv_bn')
      self.cross_key = conv_bn.DenseBN(
          self.key_depth, kernel_initializer=qk_init,
          name='cross_attention_key_conv_bn')
      self.cross_bn = conv_bn.batch_norm(
          'cross_attention_batch_norm_retrieved_value')
      self.cross_conv3 = conv_bn.DenseBN(
          width, bn_gamma_initializer='zeros', name='cross_attention_conv3_bn')
      self.drop_cross = drop_path.DropPath(self.drop_path_keep_prob)
    if self.update_pixels:
      self.center_value = conv_bn.DenseBN(
          width, kernel_initializer=qk_init, name='center_value_conv_bn')
      self.drop_pixel = drop_path.DropPath(self.drop_path_keep_prob)
    if c.reference_masks:
      self.reference_hidden = keras.layers.Dense(
          width, activation='gelu', name='reference_mask_hidden')
      # Zeros: every center starts with a broad mask centred on the image.
      self.reference_output = keras.layers.Dense(
          4, kernel_initializer='zeros', name='reference_mask_output')

  def build(self, input_shape):
    if self.update_pixels:
      channels = input_shape[-1]
      self.pixel_update_conv = conv_bn.DenseBN(
          channels, bn_gamma_initializer='zeros',
          name='pixel_update_conv_bn')
      self.pixel_update_conv.build((None, None, self.center_width))
    self.built = True

  def call(self, pixels, centers, state=None, training=False):
    """pixels [B, h, w, Cp] (activated), centers [B, N, D], state of the
    previous layer or None -> (centers, pixels, prediction, state)."""
    c = self.components
    b, h, w = tf.shape(pixels)[0], pixels.shape[1], pixels.shape[2]
    n, width = centers.shape[1], self.center_width
    x = pixels
    if c.coordinates:
      grid = tf.cast(coordinates(h, w), x.dtype)
      x = tf.concat([x, tf.tile(grid, [b, 1, 1, 1])], axis=-1)
    x = tf.reshape(x, [b, h * w, x.shape[-1]])
    pixel_b = self.pixel_conv1(x, training=training)  # [B, P, D]
    center_b = self.memory_conv1(centers, training=training)  # [B, N, D]
    prediction = self.predictor(tf.reshape(pixel_b, [b, h, w, width]),
                                center_b, center_b, training=training)

    logits = tf.cast(prediction[outputs.MASK_LOGITS], tf.float32)
    if state is not None and c.assignment_residual:
      # Keras casts layer inputs to the compute dtype: back to float32.
      logits += resize.resize_align_corners(
          tf.cast(state['logits'], tf.float32), (h, w))
    if state is not None and c.reference_masks:
      logits += log_reference_masks(state['reference'], h, w)
    weights = tf.nn.softmax(logits, axis=-1)  # [B, h, w, N], over centers
    weights = tf.reshape(weights, [b, h * w, n])

    values = self.pixel_v(pixel_b, training=training)  # [B, P, D]
    branches = []
    if c.clustering_update:
      update = tf.einsum('bpn,bpd->bnd', weights,
                         tf.cast(values, tf.float32))  # soft sums [B, N, D]
      update = self.kmeans_bn(update, training=training)
      update = self.kmeans_conv3(update, training=training)
      branches.append(self.drop_kmeans(update, training=training))
    if c.cross_attention_update:
      branches.append(self.drop_cross(self._cross_attention(
          center_b, pixel_b, values, training), training=training))
    branches.append(self.drop_attention(
        self.self_attention(center_b, training), training=training))
    new_centers = self.update_centers(centers, branches, training)

    if self.update_pixels:
      center_values = self.center_value(center_b, training=training)
      gathered = tf.einsum('bpn,bnd->bpd', weights,
                           tf.cast(center_values, tf.float32))  # [B, P, D]
      gathered = tf.cast(gathered, center_values.dtype)
      update = self.pixel_update_conv(gathered, training=training)
      update = tf.reshape(update, [b, h, w, pixels.shape[-1]])
      pixels = pixels + tf.cast(self.drop_pixel(update, training=training),
                                pixels.dtype)

    next_state = {'logits': tf.reshape(logits, [b, h, w, n])}
    if c.reference_masks:
      reference = self.reference_output(self.reference_hidden(new_centers))
      next_state['reference'] = reference  # [B, N, 4]
      prediction[outputs.REFERENCE_MASKS] = tf.exp(
          log_reference_masks(reference, h, w))  # [B, h, w, N]
    return new_centers, pixels, prediction, next_state

  def _cross_attention(self, center_b, pixel_b, values, training):
    """MaX-DeepLab's cross-attention: softmax over pixels per center and
    head, scaled dot products of projected centers and pixels."""
    b, n = tf.shape(center_b)[0], center_b.shape[1]
    heads = self.num_heads
    q = self.cross_query(center_b, training=training)  # [B, N, Dk]
    k = self.cross_key(pixel_b, training=training)  # [B, P, Dk]
    q = tf.reshape(q, [b, n, heads, -1])
    k = tf.reshape(k, [b, -1, heads, self.key_depth // heads])
    v = tf.reshape(values, [b, -1, heads, self.center_width // heads])
    similarity = tf.einsum('bnhd,bphd->bhnp', q, k) * (
        (self.key_depth // heads) ** -0.5)
    attention = tf.nn.softmax(tf.cast(similarity, tf.float32), axis=-1)
    retrieved = tf.einsum('bhnp,bphd->bnhd', attention,
                          tf.cast(v, tf.float32))  # [B, N, h, dv]
    retrieved = tf.reshape(retrieved, [b, n, self.center_width])
    retrieved = self.cross_bn(retrieved, training=training)
    return self.cross_conv3(retrieved, training=training)  # [B, N, D]

  def get_config(self):
    config = super().get_config()
    config.pop('cross_attention_activation')
    return {**config, 'components': dataclasses.asdict(self.components),
            'update_pixels': self.update_pixels}
