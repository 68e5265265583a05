r"""Fine-tuning to other classes against training from scratch, same budget.

  python scripts/benchmark_finetune.py --output_dir=DIR \
      --source_config=SOURCE.textproto --source_checkpoint=MODEL_DIR \
      [--steps=1200]

The "train on your own data" path of README on the synthetic data: a second
synthetic data set whose categories differ from the built-in ones (four
classes with other ids: disk, square, stripes, noise; other images) is
written in COCO panoptic format and converted with --dataset=custom. The
source config, pointed at that data set, is trained twice for --steps with
the same seed: once from --source_checkpoint (a model of the built-in six
classes) with initial_checkpoint_scope ALL_BUT_CLASS_LAYERS, once from
scratch. Both are evaluated on the new data set's held-out images; DIR gets
finetune.md (the table and the command) and one folder per run. Without
--source_checkpoint the source is first trained on the built-in data set
with the source config (--source_steps).
"""
import argparse
import contextlib
import io
import json
import os
import pathlib
import sys

CATEGORIES = [{'id': 11, 'name': 'disk', 'isthing': 1},
              {'id': 13, 'name': 'square', 'isthing': 1},
              {'id': 21, 'name': 'stripes', 'isthing': 0},
              {'id': 23, 'name': 'noise', 'isthing': 0}]
ROOT = pathlib.Path(__file__).resolve().parents[1]


def parse_args(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--output_dir', required=True)
  parser.add_argument('--source_config', default=str(
      ROOT / 'configs' / 'synthetic' / 'kmax_small.textproto'))
  parser.add_argument('--source_checkpoint', default=None)
  parser.add_argument('--source_steps', type=int, default=None)
  parser.add_argument('--steps', type=int, default=1200)
  parser.add_argument('--seed', type=int, default=0)
  parser.add_argument('--num_train', type=int, default=500,
                      help='training images of each synthetic data set')
  parser.add_argument('--num_val', type=int, default=100,
                      help='held-out images of each synthetic data set')
  return parser.parse_args(argv)


def _summary(result):
  get = lambda key: 100 * float(result[key])  # pylint: disable=unnecessary-lambda-assignment
  return {'PQ': get('panoptic/pq'), 'PQ_thing': get('panoptic/pq_thing'),
          'PQ_stuff': get('panoptic/pq_stuff'), 'mIoU': get('semantic/miou')}


def main(argv=None):
  args = parse_args(argv)
  out = pathlib.Path(args.output_dir).resolve()
  out.mkdir(parents=True, exist_ok=True)
  from google.protobuf import text_format  # pylint: disable=import-outside-toplevel
  from deeplab2_kmax import config as config_lib  # pylint: disable=import-outside-toplevel
  from deeplab2_kmax import io_utils  # pylint: disable=import-outside-toplevel
  from deeplab2_kmax.data import dataset_info  # pylint: disable=import-outside-toplevel
  from deeplab2_kmax.data import synthetic  # pylint: disable=import-outside-toplevel
  from deeplab2_kmax.trainer import runner  # pylint: disable=import-outside-toplevel

  quiet = lambda: contextlib.redirect_stdout(io.StringIO())  # pylint: disable=unnecessary-lambda-assignment
  source = args.source_checkpoint
  if source is None:
    os.environ.setdefault('SYNTHETIC_DATA', str(out / 'builtin'))
    synthetic.write_tfrecords(out / 'builtin', num_train=args.num_train,
                              num_val=args.num_val, seed=args.seed)
    source = str(out / 'source')
    overrides = ([f'trainer_options.num_steps={args.source_steps}']
                 if args.source_steps else [])
    print(f'training the source model -> {source}', flush=True)
    with quiet():
      runner.run_experiment(config_file=args.source_config, model_dir=source,
                            overrides=overrides, strategy='one_device',
                            seed=args.seed)

  own = out / 'own_data'
  own.mkdir(exist_ok=True)
  categories = own / 'categories.json'
  categories.write_text(json.dumps(CATEGORIES))
  print(f'own data set (4 classes) -> {own}', flush=True)
  raw = synthetic.write_tfrecords(
      own, num_train=args.num_train, num_val=args.num_val,
      seed=args.seed + 1,
      info=dataset_info.from_categories_json(categories))

  base = config_lib.load_config(args.source_config)
  results = {}
  for run in ('finetuned', 'scratch'):
    config = type(base)()
    config.CopyFrom(base)
    for options, split in ((config.train_dataset_options, 'train'),
                           (config.eval_dataset_options, 'val')):
      options.dataset = 'custom'
      options.categories_json = str(raw / 'annotations' /
                                    'panoptic_train.json')
      options.ClearField('file_pattern')
      options.file_pattern.append(str(own / f'{split}-*.tfrecord'))
    config.trainer_options.num_steps = args.steps
    # Only the source differs: no ImageNet weights for either run.
    config.model_options.ClearField('initial_checkpoint')
    config.model_options.ClearField('initial_checkpoint_scope')
    config.model_options.backbone.ClearField('pretrained_weights')
    if run == 'finetuned':
      config.model_options.initial_checkpoint = source
      config.model_options.initial_checkpoint_scope = (
          config_lib.config_pb2.ALL_BUT_CLASS_LAYERS)
    config_lib.validate(config, source=run)
    path = out / run / 'config.textproto'
    io_utils.write_text(path, text_format.MessageToString(config))
    print(f'{run}: {args.steps} steps', flush=True)
    with quiet():
      runner.run_experiment(config_file=path, model_dir=out / run / 'model',
                            strategy='one_device', seed=args.seed)
      results[run] = _summary(runner.run_experiment(
          config_file=path, model_dir=out / run / 'model', mode='eval',
          strategy='one_device', seed=args.seed))
    runner.write_json(out / run / 'metrics.json', results[run])

  lines = ['| start | PQ | PQ things | PQ stuff | mIoU |',
           '|---|---:|---:|---:|---:|']
  for run, title in (('finetuned', 'fine-tuned from the source '
                      '(ALL_BUT_CLASS_LAYERS)'), ('scratch', 'from scratch')):
    r = results[run]
    lines.append(f'| {title} | {r["PQ"]:.1f} | {r["PQ_thing"]:.1f} | '
                 f'{r["PQ_stuff"]:.1f} | {r["mIoU"]:.1f} |')
  text = '\n'.join([
      f'# Fine-tuning to other classes: {args.steps} steps, seed '
      f'{args.seed}', '', f'Config: `{args.source_config}`; source: '
      f'`{source}`.', '', *lines, '',
      'Command: `python scripts/benchmark_finetune.py '
      + ' '.join(sys.argv[1:] if argv is None else argv) + '`', ''])
  io_utils.write_text(out / 'finetune.md', text)
  print(text)
  return 0


if __name__ == '__main__':
  sys.exit(main())
