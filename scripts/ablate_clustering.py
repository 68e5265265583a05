r"""How the cluster centers read the pixels: the seed's ablation in one command.

  python scripts/ablate_clustering.py --output_dir=DIR \
      [--config_file=configs/synthetic/cmt_small.textproto] [--steps=N] \
      [--variants=spatial_softmax,cluster_softmax,cluster_argmax,cmt]

Trains one model per variant from the same config, seed, data and step
budget, differing only in the transformer decoder's layers:

  spatial_softmax  kMaX layers whose cross-attention is a softmax over the
                   pixels, per center (MaX-DeepLab's)
  cluster_softmax  kMaX layers with a softmax over the centers, per pixel
  cluster_argmax   kMaX layers with the hard argmax over the centers
                   (kMaX-DeepLab's k-means step)
  cmt              CMT-DeepLab's layers, every component on (spec section 3)

All four keep the config's layout, centers and widths
(`transformer_decoder` of whichever meta-architecture it sets). Each model is
evaluated on the held-out images (PQ, PQ things, PQ stuff, mIoU). Writes:

  DIR/<variant>/config.textproto, model/ (checkpoints), metrics.json
  DIR/ablation.md     the table, with the budget and the command
  DIR/attention.png   each variant's last-layer assignment (argmax over the
                      centers, as bright as its softmax probability) on the
                      same held-out images

With the synthetic configs (`${SYNTHETIC_DATA}`) and no SYNTHETIC_DATA in
the environment, the built-in data set is generated in DIR/data. A variant
whose metrics.json records the same steps is not trained again; an
interrupted one continues from its last checkpoint.
"""
import argparse
import contextlib
import io
import json
import os
import pathlib
import platform
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
DEFAULT_CONFIG = ROOT / 'configs' / 'synthetic' / 'cmt_small.textproto'
# name: (title, kMaX cross-attention activation or None for CMT)
VARIANTS = {
    'spatial_softmax': ('spatial softmax (MaX)', 'SPATIAL_SOFTMAX'),
    'cluster_softmax': ('cluster softmax', 'CLUSTER_SOFTMAX'),
    'cluster_argmax': ('cluster argmax (kMaX)', 'CLUSTER_ARGMAX'),
    'cmt': ('CMT-DeepLab', None),
}
CONFIDENCE_IMAGES = 50  # held-out images the table's confidence averages


def parse_args(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--output_dir', required=True)
  parser.add_argument('--config_file', default=str(DEFAULT_CONFIG),
                      help='kMaX or CMT config whose layout all variants '
                           'share (default: %(default)s)')
  parser.add_argument('--steps', type=int, default=None,
                      help="training steps per variant (default: the "
                           "config's num_steps)")
  parser.add_argument('--variants', default=','.join(VARIANTS),
                      help='comma-separated subset of: ' + ', '.join(VARIANTS))
  parser.add_argument('--seed', type=int, default=0)
  parser.add_argument('--num_images', type=int, default=4,
                      help='held-out images in attention.png')
  parser.add_argument('--num_train', type=int, default=500,
                      help='synthetic training images (when generated)')
  parser.add_argument('--num_val', type=int, default=100,
                      help='synthetic held-out images (when generated)')
  args = parser.parse_args(argv)
  args.variants = [v.strip() for v in args.variants.split(',') if v.strip()]
  unknown = [v for v in args.variants if v not in VARIANTS]
  if unknown or not args.variants:
    parser.error(f'--variants: unknown {unknown}; expected a comma-separated '
                 f'subset of {", ".join(VARIANTS)}')
  if args.steps is not None and args.steps < 1:
    parser.error(f'--steps={args.steps}: expected at least 1')
  if args.num_images < 1:
    parser.error(f'--num_images={args.num_images}: expected at least 1')
  return args


def variant_config(base, variant, steps):
  """A copy of config `base` with the variant's transformer decoder layers."""
  from deeplab2_kmax import config as config_lib  # pylint: disable=import-outside-toplevel
  from deeplab2_kmax.protos import config_pb2  # pylint: disable=import-outside-toplevel
  config = type(base)()
  config.CopyFrom(base)
  decoder = type(config_lib.transformer_decoder_options(base.model_options))()
  decoder.CopyFrom(config_lib.transformer_decoder_options(base.model_options))
  activation = VARIANTS[variant][1]
  model_options = config.model_options
  if activation is None:
    weight = (base.model_options.cmt_deeplab.reference_mask_loss_weight
              if base.model_options.HasField('cmt_deeplab') else None)
    model_options.ClearField('cmt_deeplab')  # every switch at its default: on
    decoder.ClearField('cross_attention_activation')
    model_options.cmt_deeplab.transformer_decoder.CopyFrom(decoder)
    if weight is not None:
      model_options.cmt_deeplab.reference_mask_loss_weight = weight
  else:
    decoder.cross_attention_activation = (
        config_pb2.CrossAttentionActivation.Value(activation))
    model_options.kmax_deeplab.transformer_decoder.CopyFrom(decoder)
  config.experiment_name = f'{base.experiment_name or "ablation"}_{variant}'
  if steps is not None:
    config.trainer_options.num_steps = steps
  return config


def _summary(result):
  """Evaluator result -> {metric: percent}."""
  metrics = {key.split('/', 1)[-1].upper(): float(value)
             for key, value in result.items()}
  return {'PQ': 100 * metrics['PQ'], 'PQ_thing': 100 * metrics['PQ_THING'],
          'PQ_stuff': 100 * metrics['PQ_STUFF'],
          'mIoU': 100 * metrics['MIOU']}


def _held_out_images(config, count):
  """The first `count` images of the evaluation data, uint8 [H, W, 3]."""
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  files = sorted(tf.io.gfile.glob(config.eval_dataset_options.file_pattern))
  dataset = tf.data.TFRecordDataset(files).take(count)
  images = []
  for record in dataset:
    example = tf.io.parse_single_example(
        record, {'image/encoded': tf.io.FixedLenFeature([], tf.string)})
    images.append(tf.io.decode_image(example['image/encoded'], channels=3,
                                     expand_animations=False).numpy())
  return images


def _table(rows, args, base_config, steps, machine, num_images):
  """ablation.md: the table, the budget and the command."""
  train = base_config.train_dataset_options
  lines = [
      '# Clustering ablation',
      '',
      f'Config `{args.config_file}` (layout of every variant), {steps} '
      f'training steps of batch {train.batch_size} at '
      f'{"x".join(str(s) for s in train.crop_size)}, seed {args.seed}; '
      'evaluated on the held-out images of '
      f'`{", ".join(base_config.eval_dataset_options.file_pattern)}`. '
      'Confidence: mean over the pixels of the first '
      f'{num_images} held-out images of the last layer\'s softmax '
      'probability of its chosen center.',
      '',
      '| variant | PQ | PQ things | PQ stuff | mIoU | confidence | '
      'parameters |',
      '|---|---:|---:|---:|---:|---:|---:|',
  ]
  for row in rows:
    lines.append(
        f'| {row["title"]} | {row["PQ"]:.1f} | {row["PQ_thing"]:.1f} | '
        f'{row["PQ_stuff"]:.1f} | {row["mIoU"]:.1f} | '
        f'{row["confidence"]:.2f} | {row["parameters"] / 1e6:.2f} M |')
  lines += ['', f'Machine: {machine}.', '',
            'Command: `python scripts/ablate_clustering.py '
            + ' '.join(sys.argv[1:]) + '`', '']
  return '\n'.join(lines)


def _cpu_name():
  try:
    with open('/proc/cpuinfo') as f:
      for line in f:
        if line.startswith('model name'):
          return line.split(':', 1)[1].strip()
  except OSError:
    pass
  return platform.processor() or platform.machine()


def main(argv=None):
  args = parse_args(argv)
  output_dir = pathlib.Path(args.output_dir).resolve()
  config_text = pathlib.Path(args.config_file).read_text() if os.path.isfile(
      args.config_file) else None
  if config_text is None:
    print(f'error: --config_file={args.config_file}: no such file',
          file=sys.stderr)
    return 1
  if '${SYNTHETIC_DATA}' in config_text and 'SYNTHETIC_DATA' not in os.environ:
    os.environ['SYNTHETIC_DATA'] = str(output_dir / 'data')
    generate_data = True
  else:
    generate_data = False

  # Imported after the arguments so --help is instant.
  import numpy as np  # pylint: disable=import-outside-toplevel
  from absl import logging  # pylint: disable=import-outside-toplevel
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  from google.protobuf import text_format  # pylint: disable=import-outside-toplevel
  from tqdm import tqdm  # pylint: disable=import-outside-toplevel
  from deeplab2_kmax import config as config_lib  # pylint: disable=import-outside-toplevel
  from deeplab2_kmax import export  # pylint: disable=import-outside-toplevel
  from deeplab2_kmax import io_utils  # pylint: disable=import-outside-toplevel
  from deeplab2_kmax import visualization  # pylint: disable=import-outside-toplevel
  from deeplab2_kmax.data import synthetic  # pylint: disable=import-outside-toplevel
  from deeplab2_kmax.trainer import runner  # pylint: disable=import-outside-toplevel

  logging.set_verbosity(logging.WARNING)  # the progress bar says enough
  try:
    base = config_lib.load_config(args.config_file)
    if config_lib.transformer_decoder_options(base.model_options) is None:
      raise config_lib.ConfigError(
          f'{args.config_file}: model_options sets neither kmax_deeplab nor '
          'cmt_deeplab; expected a kMaX or CMT config')
  except config_lib.ConfigError as e:
    print(f'error: {e}', file=sys.stderr)
    return 1
  steps = args.steps or base.trainer_options.num_steps
  output_dir.mkdir(parents=True, exist_ok=True)
  if generate_data:
    print(f'synthetic data set -> {output_dir / "data"}', flush=True)
    synthetic.write_tfrecords(output_dir / 'data', num_train=args.num_train,
                              num_val=args.num_val, seed=args.seed)

  configs = {}
  try:
    for variant in args.variants:
      config = variant_config(base, variant, steps)
      config_lib.validate(config, source=f'{variant} of {args.config_file}')
      configs[variant] = config
  except config_lib.ConfigError as e:
    print(f'error: {e}', file=sys.stderr)
    return 1
  for variant, config in configs.items():
    path = output_dir / variant / 'config.textproto'
    text = text_format.MessageToString(config)
    if path.exists() and path.read_text() != text:
      # Its checkpoints and metrics belong to another config.
      print(f'error: {output_dir / variant} holds a run of another config '
            f'or step budget than this command\'s; choose another '
            '--output_dir or delete that folder', file=sys.stderr)
      return 1
    io_utils.write_text(path, text)
    configs[variant] = path

  def done(variant):
    path = output_dir / variant / 'metrics.json'
    if not path.exists():
      return None
    result = json.loads(path.read_text())
    return result if result.get('steps') == steps else None

  pending = [v for v in args.variants if done(v) is None]
  bar = tqdm(total=steps * len(pending), unit='step', dynamic_ncols=True,
             disable=not pending)
  for index, variant in enumerate(pending):
    bar.set_description(f'{variant} ({index + 1}/{len(pending)})')
    model_dir = output_dir / variant / 'model'
    offset = bar.n
    start = time.perf_counter()
    # Orbit prints every loop's outputs; the bar and the table say enough.
    with contextlib.redirect_stdout(io.StringIO()):
      runner.run_experiment(
          config_file=configs[variant], model_dir=model_dir, mode='train',
          strategy='one_device', seed=args.seed,
          progress=lambda step, offset=offset: bar.update(
              offset + step - bar.n))
      seconds = time.perf_counter() - start
      bar.set_description(f'{variant}: evaluating')
      result = runner.run_experiment(
          config_file=configs[variant], model_dir=model_dir, mode='eval',
          strategy='one_device', seed=args.seed)
    runner.write_json(output_dir / variant / 'metrics.json',
                      {'steps': steps, 'train_seconds': seconds,
                       **_summary(result)})
    bar.update(offset + steps - bar.n)
  bar.close()

  # Last-layer assignments of every variant on the same held-out images.
  # (The confidence is averaged over more of them than the figure shows.)
  images = _held_out_images(config_lib.load_config(configs[args.variants[0]]),
                            max(args.num_images, CONFIDENCE_IMAGES))
  rows, columns = [], {}
  for variant in args.variants:
    module, _ = export.build_serving_module(configs[variant],
                                            output_dir / variant / 'model')
    results = [{k: v.numpy() for k, v in
                module.serve_image(tf.constant(image)).items()}
               for image in images]
    columns[variant] = (module.num_centers, results)
    rows.append({'title': VARIANTS[variant][0], **done(variant),
                 'parameters': module.model.count_params(),
                 'confidence': float(np.mean(
                     [r['cluster_confidence'][-1].mean() for r in results]))})
  panels = []
  for i, image in enumerate(images[:args.num_images]):
    shown = visualization.resize_panel(
        image, visualization.fit(*image.shape[:2], 192))
    panels.append((f'image {i + 1}', shown))
    for variant in args.variants:
      num_centers, results = columns[variant]
      panels.append((VARIANTS[variant][0], visualization.assignment_overlay(
          shown, results[i]['cluster_assignments'][-1],
          visualization.center_colors(num_centers),
          confidence=results[i]['cluster_confidence'][-1])))
  visualization.save_png(output_dir / 'attention.png', visualization.grid(
      panels, columns=1 + len(args.variants)))

  machine = (f'{_cpu_name()}, '
             f'{os.cpu_count()} cores, Python {platform.python_version()}, '
             f'TensorFlow {tf.__version__}')
  table = _table(rows, args, base, steps, machine, len(images))
  io_utils.write_text(output_dir / 'ablation.md', table)
  print(table)
  print(f'wrote {output_dir / "ablation.md"} and '
        f'{output_dir / "attention.png"}')
  return 0


if __name__ == '__main__':
  sys.exit(main())
