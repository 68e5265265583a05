"""Times DeepLab2's own kMaX-DeepLab training step, the baseline of issue #4.

What is timed is what benchmark_train.py times for this project: one call
of DeepLab2's `Trainer.train` with one step (forward in training mode, its
MaX-DeepLab loss with deep supervision over the six auxiliary outputs,
backward, its AdamW with the backbone learning-rate multiplier) on a fixed
batch. DeepLab2's own input pipeline reads one synthetic record (the label
recipe of benchmark_train.py, in DeepLab2's COCO format) and its first
batch is cached and repeated, so the pipeline is not timed. The model is
built as DeepLab2's train_lib builds it (one inference call on a
`tf.keras.Input` of the crop size).

Needs, besides TensorFlow:
  - a DeepLab2 checkout (https://github.com/google-research/deeplab2) in a
    folder named `deeplab2` inside --deeplab2_parent, with its protos
    compiled there: `cd PARENT && protoc deeplab2/*.proto --python_out=.`
    (or `python -m grpc_tools.protoc -I. --python_out=. deeplab2/*.proto`);
  - tf_keras (`pip install tf_keras==2.20.*`): DeepLab2 is written for
    Keras 2, so this process sets TF_USE_LEGACY_KERAS=1 and never imports
    deeplab2_kmax (Keras 3).

DeepLab2's kMaX configs sample 4096 pixels of the stride-4 map per image,
so --crop must be at least 257 (at 161 its loss fails).

Prints one JSON line: seconds per step (median / min / max over --steps
steps after --warmup steps), peak_rss_mib (ru_maxrss of this process),
trainable parameters, TF version.

Example (DeepLab2's COCO kMaX R50 config at the benchmark's crop):
  python scripts/benchmark_deeplab2_train.py --deeplab2_parent=$HOME/src \\
      --config_file=$HOME/src/deeplab2/configs/coco/kmax_deeplab/kmax_meta_r50_os32.textproto \\
      --crop=641 --batch_size=1 --steps=7 --warmup=2
"""
import argparse
import importlib.util
import json
import os
import pathlib
import sys
import tempfile

# The label recipe and the step timing are benchmark_train's (its imports
# at module level are the standard library's only).
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import benchmark_train  # pylint: disable=wrong-import-position


def _parse_args(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--deeplab2_parent', required=True,
                      help='folder that holds the DeepLab2 checkout '
                      '(as PARENT/deeplab2)')
  parser.add_argument('--config_file', required=True,
                      help="DeepLab2's experiment textproto")
  parser.add_argument('--crop', type=int, default=641)
  parser.add_argument('--batch_size', type=int, default=1)
  parser.add_argument('--steps', type=int, default=7)
  parser.add_argument('--warmup', type=int, default=2)
  return parser.parse_args(argv)


def _check_setup(args):
  """Raises SystemExit naming what is missing, before TensorFlow loads."""
  parent = pathlib.Path(args.deeplab2_parent)
  package = parent / 'deeplab2'
  if not (package / 'trainer' / 'trainer.py').is_file():
    raise SystemExit(f'--deeplab2_parent={parent}: no DeepLab2 checkout at '
                     f'{package} (expected {package}/trainer/trainer.py)')
  if not (package / 'config_pb2.py').is_file():
    raise SystemExit(f'{package}: its protos are not compiled (no '
                     f'config_pb2.py); run `cd {parent} && protoc '
                     'deeplab2/*.proto --python_out=.`')
  if not pathlib.Path(args.config_file).is_file():
    raise SystemExit(f'--config_file={args.config_file}: no such file')
  if importlib.util.find_spec('tf_keras') is None:
    raise SystemExit('tf_keras is not installed; DeepLab2 needs Keras 2: '
                     '`pip install tf_keras==2.20.*`')


def _write_record(path, crop, dataset_info, data_utils):
  """One synthetic image and panoptic label as a DeepLab2 TFRecord."""
  import io  # pylint: disable=import-outside-toplevel
  import numpy as np  # pylint: disable=import-outside-toplevel
  from PIL import Image  # pylint: disable=import-outside-toplevel
  import tensorflow as tf  # pylint: disable=import-outside-toplevel

  things = list(dataset_info.class_has_instances_list)
  stuff = [c for c in range(dataset_info.num_classes)
           if c not in things and c != dataset_info.ignore_label]
  rng = np.random.default_rng(0)
  label = benchmark_train.draw_label(
      rng, crop, stuff, things, dataset_info.panoptic_label_divisor,
      dataset_info.ignore_label)
  image = io.BytesIO()
  Image.fromarray(
      rng.uniform(0, 255, [crop, crop, 3]).astype(np.uint8)).save(
          image, format='png')
  example = data_utils.create_tfexample(
      image.getvalue(), 'png', 'synthetic_0', label.tobytes(), 'raw')
  with tf.io.TFRecordWriter(str(path)) as writer:
    writer.write(example.SerializeToString())


def run(args, work_dir):
  """Builds DeepLab2's model, loss and trainer; times the steps."""
  sys.path.insert(0, str(pathlib.Path(args.deeplab2_parent).resolve()))
  # pylint: disable=import-outside-toplevel
  import orbit
  import tensorflow as tf
  from google.protobuf import text_format
  from deeplab2 import config_pb2
  from deeplab2.data import data_utils
  from deeplab2.data import dataset
  from deeplab2.model import kmax_deeplab
  from deeplab2.model.loss import loss_builder
  from deeplab2.trainer import runner_utils
  from deeplab2.trainer import trainer as trainer_lib
  # pylint: enable=import-outside-toplevel

  config = text_format.Parse(
      pathlib.Path(args.config_file).read_text(),
      config_pb2.ExperimentOptions())
  info = dataset.MAP_NAME_TO_DATASET_INFO[config.train_dataset_options.dataset]
  record = pathlib.Path(work_dir) / 'train-00000-of-00001.tfrecord'
  _write_record(record, args.crop, info, data_utils)
  config.model_options.ClearField('initial_checkpoint')
  for options in (config.train_dataset_options, config.eval_dataset_options):
    options.ClearField('file_pattern')
    options.file_pattern.append(str(record))
    for field in ('crop_size', 'min_resize_value', 'max_resize_value'):
      options.ClearField(field)
      getattr(options, field).extend([args.crop, args.crop])
  config.train_dataset_options.batch_size = args.batch_size

  create_dataset = runner_utils.create_dataset

  def first_batch_repeated(*a, **kw):
    return create_dataset(*a, **kw).take(1).cache().repeat()

  runner_utils.create_dataset = first_batch_repeated
  strategy = tf.distribute.OneDeviceStrategy('/cpu:0')
  with strategy.scope():
    model = kmax_deeplab.KMaXDeepLab(config, info)
    loss = loss_builder.DeepLabFamilyLoss(
        loss_options=config.trainer_options.loss_options,
        deeplab_options=config.model_options, num_classes=info.num_classes,
        ignore_label=info.ignore_label, ignore_depth=info.ignore_depth,
        thing_class_ids=info.class_has_instances_list,
        auxiliary_output_number=model.auxiliary_output_number)
    global_step = orbit.utils.create_global_step()
    trainer = trainer_lib.Trainer(config, model, loss, global_step)
    model(tf.keras.Input([args.crop, args.crop, 3]), training=False)
  one = tf.constant(1)

  def step():
    trainer.train(one)
    int(global_step.numpy())  # waits for the step

  times = benchmark_train.time_steps(step, args.warmup, args.steps)
  return {
      'code': 'DeepLab2', 'config': args.config_file, 'crop': args.crop,
      'batch': args.batch_size,
      'trainable_parameters': sum(
          int(tf.size(v)) for v in model.trainable_variables),
      **benchmark_train.step_record(times),
      'cpu_count': os.cpu_count(), 'tensorflow': tf.__version__,
      'threads': 'default',
  }


def main(argv=None):
  args = _parse_args(argv)
  _check_setup(args)
  # Before TensorFlow is first imported: tf.keras is then tf_keras.
  os.environ['TF_USE_LEGACY_KERAS'] = '1'
  with tempfile.TemporaryDirectory() as work_dir:
    print(json.dumps(run(args, work_dir)), flush=True)
  return 0


if __name__ == '__main__':
  sys.exit(main())
