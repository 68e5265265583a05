"""Builds a model from an ExperimentOptions config.

The only place that reads the protobuf config: every layer below takes plain
typed arguments.
"""
import dataclasses

from deeplab2_kmax import config as config_lib
from deeplab2_kmax.model import kmax_deeplab
from deeplab2_kmax.model.heads import mask_prediction_head
from deeplab2_kmax.model.heads import semantic_head
from deeplab2_kmax.model.pixel_decoder import kmax_pixel_decoder
from deeplab2_kmax.model.pixel_encoder import convnext
from deeplab2_kmax.model.pixel_encoder import resnet
from deeplab2_kmax.model.pixel_encoder import variants
from deeplab2_kmax.model.transformer_decoder import cmt_layer
from deeplab2_kmax.model.transformer_decoder import cmt_transformer_decoder
from deeplab2_kmax.model.transformer_decoder import cross_attention
from deeplab2_kmax.model.transformer_decoder import kmax_transformer_decoder
from deeplab2_kmax.protos import config_pb2

_BLOCK_TYPES = {
    config_pb2.PixelDecoderStage.AXIAL: kmax_pixel_decoder.AXIAL,
    config_pb2.PixelDecoderStage.BOTTLENECK: kmax_pixel_decoder.BOTTLENECK,
}
_ACTIVATIONS = {
    config_pb2.SPATIAL_SOFTMAX:
        cross_attention.CrossAttentionActivation.SPATIAL_SOFTMAX.value,
    config_pb2.CLUSTER_SOFTMAX:
        cross_attention.CrossAttentionActivation.CLUSTER_SOFTMAX.value,
    config_pb2.CLUSTER_ARGMAX:
        cross_attention.CrossAttentionActivation.CLUSTER_ARGMAX.value,
}


def build_model(config):
  """Returns an (unbuilt) KMaXDeepLab for `config` (an ExperimentOptions)."""
  config_lib.validate(config)
  options = config.model_options
  which = options.WhichOneof('meta_architecture')
  info = config_lib.dataset_info_for(config)
  decoder = getattr(options, which).transformer_decoder
  head = options.prediction_head
  num_class_logits = info.num_classes + 1  # things, stuff, void

  encoder = build_pixel_encoder(options.backbone.name,
                                options.backbone.drop_path_keep_prob)
  pixel_decoder = kmax_pixel_decoder.KMaXPixelDecoder(
      [kmax_pixel_decoder.DecoderStageSpec(
          stride=s.stride, block_type=_BLOCK_TYPES[s.block_type],
          num_blocks=s.num_blocks, filters=s.filters)
       for s in options.pixel_decoder.stages],
      backbone_channels=encoder.output_channels,
      num_heads=options.pixel_decoder.num_heads, name='pixel_decoder')
  decoder_args = dict(
      layout=[kmax_transformer_decoder.DecoderLayout(s.stride, s.num_layers)
              for s in decoder.stages],
      num_class_logits=num_class_logits,
      num_centers=decoder.num_cluster_centers,
      center_width=decoder.center_width, num_heads=decoder.num_heads,
      ffn_width=decoder.ffn_width, embedding_dim=head.embedding_dim,
      head_width=head.pixel_head_width,
      drop_path_keep_prob=decoder.drop_path_keep_prob,
      name='transformer_decoder')
  if which == 'cmt_deeplab':
    transformer_decoder = cmt_transformer_decoder.CMTTransformerDecoder(
        components=cmt_components(options.cmt_deeplab), **decoder_args)
  else:
    transformer_decoder = kmax_transformer_decoder.KMaXTransformerDecoder(
        cross_attention_activation=_ACTIVATIONS[
            decoder.cross_attention_activation], **decoder_args)
  prediction_head = mask_prediction_head.MaskPredictionHead(
      num_class_logits, head.embedding_dim, head.pixel_head_width,
      name='prediction_head')
  semantic = options.semantic_head
  semantic_head_layer = semantic_head.SemanticHead(
      info.num_semantic_channels, use_decoder=semantic.use_decoder,
      aspp_channels=semantic.aspp_channels,
      atrous_rates=tuple(semantic.atrous_rates) or (6, 12, 18),
      aspp_dropout=semantic.aspp_dropout,
      low_level=[semantic_head.LowLevelSkip(s.stride, s.channels)
                 for s in semantic.low_level],
      decoder_channels=semantic.decoder_channels,
      head_channels=semantic.head_channels,
      backbone_activation=encoder.activation,
      name='semantic_head')
  return kmax_deeplab.KMaXDeepLab(
      encoder, pixel_decoder, transformer_decoder, prediction_head,
      semantic_head_layer, name='kmax_deeplab')


def build_pixel_encoder(name, drop_path_keep_prob=1.0):
  """The pixel encoder `name` of the variants table (a ResNet or ConvNeXt)."""
  if name in variants.CONVNEXT_VARIANTS:
    return convnext.ConvNeXtEncoder(
        name, drop_path_keep_prob=drop_path_keep_prob, name='pixel_encoder')
  return resnet.ResNetEncoder(name, drop_path_keep_prob=drop_path_keep_prob,
                              name='pixel_encoder')


def cmt_components(options):
  """The CMTComponents switched on in a CMTDeepLabOptions."""
  return cmt_layer.CMTComponents(**{
      field.name: getattr(options, field.name)
      for field in dataclasses.fields(cmt_layer.CMTComponents)})
