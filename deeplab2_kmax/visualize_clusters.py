r"""Draws how kMaX-DeepLab's cluster centers group the pixels, layer by layer.

  python -m deeplab2_kmax.visualize_clusters --saved_model=/path/to/export/1 \
      --image=photo.jpg --output=clusters.png
  # or: --config_file=... --checkpoint=... instead of --saved_model

Every kMaX layer assigns each pixel to one of the N cluster centers (the
argmax over centers of that layer's mask logits, the hard assignment of the
k-means cross-attention; Yu et al., "k-means Mask Transformer", ECCV 2022).
The figure has one titled panel per step: "input", "layer 1 (stride 32)",
..., then "panoptic", the final result with class names. Each center keeps
its color (by center index) in every layer, so one sees the clusters sharpen
from the coarse to the fine layers; the color is as bright as the pixel's
assignment probability (softmax over the centers), so CMT-DeepLab's soft
assignments show where they are unsure. A CMT-DeepLab model adds one panel
per layer after "panoptic": its reference masks, each center's Gaussian in
the center's color, as bright as its value. The PNG is written to a
temporary name and renamed.
"""
import argparse
import sys

import tensorflow as tf

from deeplab2_kmax import export
from deeplab2_kmax import predict
from deeplab2_kmax import visualization


def cluster_picture(predictor, image, *, panel_size=256, columns=4):
  """uint8 [H', W', 3] figure of one image (uint8 [H, W, 3])."""
  result = predictor(image)
  references = None
  if 'reference_mask_centers' in result:  # CMT-DeepLab
    references = (result['reference_mask_centers'],
                  result['reference_mask_values'])
  return visualization.cluster_figure(
      image, result['cluster_assignments'], result['panoptic'],
      predictor.dataset_info, layer_strides=predictor.layer_strides,
      num_centers=predictor.num_centers, panel_size=panel_size,
      columns=columns, cluster_confidence=result.get('cluster_confidence'),
      reference_masks=references)


def parse_args(argv):
  parser = argparse.ArgumentParser(
      prog='python -m deeplab2_kmax.visualize_clusters',
      description='Per-layer pixel-to-center assignments of kMaX-DeepLab.')
  predict.add_model_args(parser)
  parser.add_argument('--image', required=True, help='Image file.')
  parser.add_argument('--output', required=True, help='PNG to write.')
  parser.add_argument('--panel_size', type=int, default=256,
                      help='Longer side of each panel in pixels.')
  parser.add_argument('--columns', type=int, default=4,
                      help='Panels per row.')
  return parser.parse_args(argv)


def main(argv=None):
  args = parse_args(argv)
  try:
    image = predict.read_image(args.image)
    predictor = predict.Predictor.from_args(args)
    figure = cluster_picture(predictor, image, panel_size=args.panel_size,
                             columns=args.columns)
  except (*export.USER_ERRORS, tf.errors.OpError) as e:
    print(f'error: {e}', file=sys.stderr)
    return 1
  visualization.save_png(args.output, figure)
  print(f'wrote {args.output} ({len(predictor.layer_strides)} kMaX layers)')
  return 0


if __name__ == '__main__':
  sys.exit(main())
