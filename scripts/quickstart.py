"""Quickstart: the whole system on the built-in synthetic data set, on a CPU.

  bash scripts/quickstart.sh [WORK_DIR]     (default ./quickstart_output)

1. Generates the synthetic panoptic data set in COCO panoptic format
   (WORK_DIR/data/raw) and converts it to TFRecords (WORK_DIR/data).
2. Trains the small kMaX-DeepLab of configs/synthetic/kmax_small.textproto
   (WORK_DIR/model: checkpoints, TensorBoard summaries).
3. Evaluates PQ / SQ / RQ, mask AP and mIoU on the held-out images and
   writes WORK_DIR/metrics.json.
4. Exports a SavedModel (WORK_DIR/saved_model), runs it on held-out images
   (WORK_DIR/predictions: COCO panoptic PNG + JSON and coloured overlays)
   and draws the clustering view of one image (WORK_DIR/clusters.png): the
   pixel-to-center assignment of each kMaX layer, then the panoptic result.

Each step prints where its output went. Re-running continues training from
the last checkpoint in WORK_DIR/model.
"""
import argparse
import os
import pathlib
import shutil
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
CONFIG = ROOT / 'configs' / 'synthetic' / 'kmax_small.textproto'


def _parse_args(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('work_dir', nargs='?', default='quickstart_output')
  parser.add_argument('--num_train', type=int, default=500)
  parser.add_argument('--num_val', type=int, default=100)
  parser.add_argument('--num_steps', type=int, default=None,
                      help='training steps (default: the config\'s)')
  parser.add_argument('--seed', type=int, default=0)
  return parser.parse_args(argv)


def _step(title):
  print(f'\n== {title}', flush=True)
  return time.perf_counter()


def _done(start, what):
  print(f'   {what} ({time.perf_counter() - start:.0f} s)', flush=True)


def main(argv=None):
  args = _parse_args(argv)
  work = pathlib.Path(args.work_dir).resolve()
  data = work / 'data'
  os.environ['SYNTHETIC_DATA'] = str(data)
  # Imported after the arguments so --help is instant.
  from deeplab2_kmax import export  # pylint: disable=import-outside-toplevel
  from deeplab2_kmax import predict  # pylint: disable=import-outside-toplevel
  from deeplab2_kmax import visualization  # pylint: disable=import-outside-toplevel
  from deeplab2_kmax import visualize_clusters  # pylint: disable=import-outside-toplevel
  from deeplab2_kmax.data import synthetic  # pylint: disable=import-outside-toplevel
  from deeplab2_kmax.trainer import runner  # pylint: disable=import-outside-toplevel

  total = time.perf_counter()
  start = _step('1/5 synthetic data set (COCO panoptic format) -> TFRecords')
  raw = synthetic.write_tfrecords(data, num_train=args.num_train,
                                 num_val=args.num_val, seed=args.seed)
  _done(start, f'{raw} -> {data}/{{train,val}}-*.tfrecord')

  start = _step(f'2/5 training {CONFIG.relative_to(ROOT)}')
  model_dir = work / 'model'
  overrides = []
  if args.num_steps:
    overrides.append(f'trainer_options.num_steps={args.num_steps}')
  runner.run_experiment(config_file=CONFIG, model_dir=model_dir,
                        mode='train', overrides=overrides,
                        strategy='one_device', seed=args.seed)
  _done(start, f'checkpoints and TensorBoard summaries in {model_dir}')

  start = _step('3/5 evaluation on the held-out images')
  result = runner.run_experiment(
      config_file=CONFIG, model_dir=model_dir, mode='eval',
      overrides=overrides, strategy='one_device', seed=args.seed)
  metrics = {key.split('/', 1)[1].upper() if key.startswith('panoptic/')
             else key: float(value) for key, value in result.items()}
  summary = {'PQ': 100 * metrics['PQ'], 'PQ_thing': 100 * metrics['PQ_THING'],
             'PQ_stuff': 100 * metrics['PQ_STUFF'],
             'SQ': 100 * metrics['SQ'], 'RQ': 100 * metrics['RQ'],
             'mIoU': 100 * metrics['semantic/miou'],
             'mask_AP': 100 * metrics['instance/AP'],
             'all': metrics}
  runner.write_json(work / 'metrics.json', summary)
  _done(start, f'PQ {summary["PQ"]:.1f} (things {summary["PQ_thing"]:.1f}, '
        f'stuff {summary["PQ_stuff"]:.1f}), mIoU {summary["mIoU"]:.1f}, '
        f'mask AP {summary["mask_AP"]:.1f} -> {work / "metrics.json"}')

  start = _step('4/5 SavedModel export and inference')
  saved_model = work / 'saved_model'
  export.export(CONFIG, model_dir, saved_model, overwrite=True)
  predictor = predict.Predictor.from_saved_model(saved_model)
  images = sorted((raw / 'images' / 'val').glob('*.jpg'))[:8]
  predictions = work / 'predictions'
  shutil.rmtree(predictions, ignore_errors=True)
  failures = predict.predict_files(predictor, images, predictions,
                                   progress=False)
  if failures:
    raise SystemExit(f'inference failed on {failures}')
  _done(start, f'{saved_model}; {len(images)} images -> {predictions}')

  start = _step('5/5 the clustering view')
  image = predict.read_image(images[0])
  figure = visualize_clusters.cluster_picture(predictor, image)
  visualization.save_png(work / 'clusters.png', figure)
  _done(start, f'{work / "clusters.png"}: input, each kMaX layer\'s '
        'pixel-to-center assignment, panoptic result')

  print(f'\nDone in {time.perf_counter() - total:.0f} s. Outputs in {work}:')
  for name in ('metrics.json', 'model', 'saved_model', 'predictions',
               'clusters.png'):
    print(f'  {work / name}')
  return 0


if __name__ == '__main__':
  sys.exit(main())
