"""Export: SavedModel signatures, preprocessing, errors, files, isolation,
portability (no XLA kernels, no custom gradients) and the LiteRT model.

The module exports the tiny synthetic model once (random weights, written
as a trainer-style checkpoint and restored by the exporter). Its mask-logit
scale is raised and the class thresholds lowered so that random weights
still produce segments to compare.
"""
import base64
import contextlib
import functools
import io
import json
import os
import subprocess
import sys
import sysconfig
import textwrap

from google.protobuf import text_format
import keras
import numpy as np
from PIL import Image
import pytest
import tensorflow as tf
from tensorflow.core.protobuf import saved_model_pb2

import deeplab2_kmax
from deeplab2_kmax import config as config_lib
from deeplab2_kmax import export
from deeplab2_kmax import serving
from deeplab2_kmax.checkpoints import deeplab2_import
from deeplab2_kmax.model import kernels
from deeplab2_kmax.model import outputs
from deeplab2_kmax.model.post_processor import mask_wise_merging
from tests import conftest

CROP = 161  # eval crop of the tiny config
COCO_IMAGES = conftest.SHARED / 'testdata' / 'coco_panoptic_sample' / (
    'input_images')


# Shared with test_predict.py and test_visualize_clusters.py -----------------
def write_test_config(folder):
  """The tiny config with thresholds that let random weights make segments."""
  config = deeplab2_kmax.load_config(conftest.TINY_CONFIG)
  options = config.evaluator_options
  options.thing_class_threshold = 0.0
  options.stuff_class_threshold = 0.0
  options.overlap_threshold = 0.5
  options.thing_area_limit = 0
  options.stuff_area_limit = 0
  path = os.path.join(folder, 'tiny_test.textproto')
  with open(path, 'w', encoding='utf-8') as f:
    f.write(text_format.MessageToString(config))
  return path


def write_test_checkpoint(config, model_dir):
  """A built random model with peaked masks, saved as model_dir/ckpt-1."""
  keras.utils.set_random_seed(7)  # the same weights in every run
  model = deeplab2_kmax.build_model(config)
  deeplab2_import.ensure_built(model)
  for variable in model.weights:
    if 'pixel_space_mask_batch_norm/gamma' in variable.path:
      variable.assign(variable * 300.0)
  prefix = tf.train.Checkpoint(model=model).save(
      os.path.join(model_dir, 'ckpt'))
  return model, prefix


class Exported:
  """An export of the test model: its files, the loaded SavedModel and (on
  demand) the in-process model restored from the same checkpoint."""

  def __init__(self, folder):
    self.config_file = os.path.join(folder, 'tiny_test.textproto')
    self.config = deeplab2_kmax.load_config(self.config_file)
    self.model_dir = os.path.join(folder, 'model_dir')
    self.prefix = tf.train.latest_checkpoint(self.model_dir)
    self.saved_model = os.path.join(folder, 'export', '1')
    self.loaded = tf.saved_model.load(self.saved_model)

  @functools.cached_property
  def model(self):
    model = deeplab2_kmax.build_model(self.config)
    export.restore_checkpoint(model, self.prefix)
    return model

  def signature(self, name=serving.SERVING_DEFAULT):
    return self.loaded.signatures[name]

  def serve(self, image):
    """NumPy outputs of serving_default."""
    result = self.signature()(image=tf.constant(image, tf.uint8))
    return {k: v.numpy() for k, v in result.items()}


def export_tiny(folder):
  """Writes config, checkpoint and export of the test model under `folder`."""
  config_file = write_test_config(folder)
  config = deeplab2_kmax.load_config(config_file)
  model_dir = os.path.join(folder, 'model_dir')
  _, prefix = write_test_checkpoint(config, model_dir)
  used = export.export(config_file, model_dir,
                       os.path.join(folder, 'export', '1'))
  assert used == prefix  # the latest checkpoint of the model_dir
  return Exported(folder)


def shared_export(tmp_path_factory):
  """The session's export of the test model, made by the first module that
  asks (the export is renamed into place, so one that exists is complete);
  other modules only load it."""
  folder = tmp_path_factory.getbasetemp() / 'tiny_export'
  if (folder / 'export' / '1' / 'saved_model.pb').exists():
    return Exported(str(folder))
  folder.mkdir(exist_ok=True)
  return export_tiny(str(folder))


def make_image(height=100, width=120, seed=0):
  """uint8 [H, W, 3]: a red box on grey noise."""
  rng = np.random.default_rng(seed)
  image = rng.integers(40, 90, [height, width, 3]).astype(np.uint8)
  image[height // 5:height // 2, width // 4:3 * width // 4] = (220, 30, 50)
  return image


# Fixture ----------------------------------------------------------------------
@pytest.fixture(scope='module')
def exported(tmp_path_factory):
  return shared_export(tmp_path_factory)


def _reference(exported, image, policy='AUTO'):
  """In-process model (kernels of `policy`) + merging on the padded image,
  cut to the image."""
  config = exported.config
  info = config_lib.dataset_info_for(config)
  height, width = image.shape[:2]
  padded = np.full([1, CROP, CROP, 3], 127.5, np.float32)
  padded[0, :height, :width] = image
  with kernels.policy_scope(policy):
    result = exported.model(tf.constant(padded), training=False)
  merged = mask_wise_merging.merge(
      result[outputs.CLASS_LOGITS], result[outputs.MASK_LOGITS],
      (CROP, CROP), channel_to_semantic=info.channel_to_semantic(),
      num_things=info.num_things, label_divisor=info.label_divisor,
      ignore_label=info.ignore_label,
      options=mask_wise_merging.MergingOptions.from_config(
          config.evaluator_options))
  maps = {k: merged[k][0, :height, :width].numpy()
          for k in ('panoptic', 'semantic', 'instance', 'instance_scores',
                    'semantic_scores')}
  aux = [p[outputs.MASK_LOGITS][0].numpy()
         for p in result[outputs.AUXILIARY_PREDICTIONS]]
  return maps, merged, aux


def _segments(served):
  count = int(served['num_segments'])
  return {int(i): (int(c), int(a), bool(t)) for i, c, a, t in zip(
      served['segment_ids'][:count], served['segment_classes'][:count],
      served['segment_areas'][:count], served['segment_is_thing'][:count])}


# Tests ------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize('policy', ['REFERENCE', 'CPU_OPTIMIZED'])
def test_saved_model_equals_in_process_model_and_merging(exported, policy):
  # The SavedModel is traced with the REFERENCE kernels; the in-process
  # model gives the same maps with either policy.
  image = make_image()
  served = exported.serve(image)
  maps, merged, aux = _reference(exported, image, policy)
  for key in ('panoptic', 'semantic', 'instance'):
    np.testing.assert_array_equal(served[key], maps[key], err_msg=key)
  for key in ('instance_scores', 'semantic_scores'):
    # Graph and eager runs round differently; the masks are peaked.
    np.testing.assert_allclose(served[key], maps[key], atol=1e-4)

  # Segments: exactly the labels of the map, areas counted at its size.
  panoptic = maps['panoptic']
  labels, areas = np.unique(panoptic[panoptic != 0], return_counts=True)
  segments = _segments(served)
  assert len(segments) >= 2
  assert sorted(segments) == labels.tolist()
  assert [segments[l][1] for l in labels] == areas.tolist()
  for label, (semantic, _, is_thing) in segments.items():
    assert semantic == label // 256
    assert is_thing == (semantic <= 3)  # disk, triangle, square
  count = int(served['num_segments'])
  # Source ids of the synthetic set equal the semantic ids; -1 padding.
  np.testing.assert_array_equal(served['segment_category_ids'][:count],
                                served['segment_classes'][:count])
  assert (served['segment_ids'][count:] == -1).all()
  assert (served['segment_areas'][count:] == 0).all()
  ranked = {int(i): float(s) for i, s, a in zip(
      merged['segment_ids'][0].numpy(), merged['segment_scores'][0].numpy(),
      merged['segment_areas'][0].numpy()) if a > 0}
  for i, s in zip(served['segment_ids'][:count],
                  served['segment_scores'][:count]):
    assert ranked[int(i)] == pytest.approx(float(s), rel=1e-5)

  # Cluster assignments at stride 4, cut to the image: [3, 25, 30]. The
  # stride-8 layer (21 x 21) lands exactly on the even stride-4 pixels.
  clusters = served['cluster_assignments']
  assert clusters.shape == (3, 25, 30)
  np.testing.assert_array_equal(clusters[2, ::2, ::2],
                                aux[2].argmax(axis=-1)[:13, :15])
  assert clusters.min() >= 0 and clusters.max() < 16
  # Their probability: the softmax over the centers at the argmax.
  confidence = served['cluster_confidence']
  assert confidence.shape == (3, 25, 30) and confidence.dtype == np.float32
  probabilities = tf.nn.softmax(aux[2]).numpy().max(axis=-1)[:13, :15]
  np.testing.assert_allclose(confidence[2, ::2, ::2], probabilities,
                             rtol=1e-3, atol=1e-5)  # kernels may differ
  assert confidence.min() >= 1 / 16 - 1e-6 and confidence.max() <= 1


@pytest.mark.slow
def test_images_larger_than_the_crop_are_shrunk_and_mapped_back(exported):
  image = make_image(200, 150, seed=1)
  served = exported.serve(image)
  assert served['panoptic'].shape == (200, 150)
  # Shrunk to 161 x 120 (150 * 161 / 200 = 120.75): stride-4 grid 41 x 30.
  assert served['cluster_assignments'].shape == (3, 41, 30)
  panoptic = served['panoptic']
  labels, areas = np.unique(panoptic[panoptic != 0], return_counts=True)
  segments = _segments(served)
  assert sorted(segments) == labels.tolist()
  assert [segments[l][1] for l in labels] == areas.tolist()

  small = tf.compat.v1.image.resize(
      tf.constant(image, tf.float32)[None], (161, 120), align_corners=True)
  reference = _reference(exported, np.asarray(small[0]))[0]['panoptic']
  back = tf.compat.v1.image.resize(
      reference[None, :, :, None], (200, 150), align_corners=True,
      method=tf.image.ResizeMethod.NEAREST_NEIGHBOR)[0, :, :, 0]
  np.testing.assert_array_equal(served['panoptic'], back.numpy())


@pytest.mark.slow
def test_batch_and_bytes_signatures_agree_with_default(exported):
  images = np.stack([make_image(seed=2), make_image(seed=3)])
  batch = exported.signature(serving.SERVING_BATCH)(
      images=tf.constant(images))
  for i in range(2):
    single = exported.serve(images[i])
    for key, value in single.items():
      if value.dtype.kind == 'f':  # batch 2 vs 1: float rounding differs
        np.testing.assert_allclose(batch[key][i].numpy(), value, rtol=1e-5,
                                   atol=1e-6, err_msg=key)
      else:
        np.testing.assert_array_equal(batch[key][i].numpy(), value,
                                      err_msg=key)

  png = io.BytesIO()
  Image.fromarray(images[0]).save(png, format='PNG')
  from_bytes = exported.signature(serving.SERVING_BYTES)(
      image_bytes=tf.constant(png.getvalue()))
  np.testing.assert_array_equal(from_bytes['panoptic'],
                                exported.serve(images[0])['panoptic'])


@pytest.mark.slow
def test_gray_and_rgba_inputs_are_converted(exported):
  gray = make_image(60, 70)[..., :1]
  rgb = np.repeat(gray, 3, axis=-1)
  expected = exported.serve(rgb)['panoptic']
  np.testing.assert_array_equal(exported.serve(gray)['panoptic'], expected)
  alpha = np.full_like(gray, 7)
  rgba = np.concatenate([rgb, alpha], axis=-1)
  np.testing.assert_array_equal(exported.serve(rgba)['panoptic'], expected)
  png = io.BytesIO()
  Image.fromarray(gray[..., 0]).save(png, format='PNG')  # mode L
  from_bytes = exported.signature(serving.SERVING_BYTES)(
      image_bytes=tf.constant(png.getvalue()))
  np.testing.assert_array_equal(from_bytes['panoptic'], expected)


@pytest.mark.slow
@pytest.mark.parametrize('shape, message', [
    ((0, 10, 3), 'input image is empty'),
    ((10, 0, 3), 'input image is empty'),
    ((8, 8, 2), 'expected 1 \\(gray\\), 3 \\(RGB\\) or 4 \\(RGBA\\)'),
    ((8, 8, 5), 'expected 1 \\(gray\\), 3 \\(RGB\\) or 4 \\(RGBA\\)'),
    ((2, 4097, 3), 'max_image_size = 4096'),
])
def test_bad_images_raise_invalid_argument_with_a_message(exported, shape,
                                                          message):
  with pytest.raises(tf.errors.InvalidArgumentError, match=message):
    exported.signature()(image=tf.zeros(shape, tf.uint8))


@pytest.mark.slow
def test_non_image_bytes_raise_invalid_argument(exported):
  for data in (b'', b'hello, world: not an image'):
    with pytest.raises(tf.errors.InvalidArgumentError,
                       match='not a JPEG, PNG, GIF or BMP file'):
      exported.signature(serving.SERVING_BYTES)(image_bytes=tf.constant(data))


def _decode_rest_body(body, signature):
  """What TensorFlow Serving feeds a signature for a REST predict body.

  Written from the REST API documentation (tensorflow.org/tfx/serving/
  api_rest): "instances" (row format) stacks the instances along a new
  axis 0; "inputs" (columnar) holds each named tensor as it is; a
  {"b64": ...} object is a base64-encoded binary string.
  """
  (name, spec), = signature.structured_input_signature[1].items()

  def tensor(value):
    if isinstance(value, dict) and set(value) == {'b64'}:
      return tf.constant(base64.b64decode(value['b64']))
    return tf.constant(np.array(value, dtype=spec.dtype.as_numpy_dtype))

  if 'instances' in body:
    return {name: tensor(body['instances'])}
  inputs = body['inputs']
  if isinstance(inputs, dict) and set(inputs) <= {'b64'} and inputs:
    return {name: tensor(inputs)}
  return {key: tensor(value) for key, value in inputs.items()}


@pytest.mark.slow
def test_rest_request_bodies_feed_the_signatures(exported):
  image = make_image(40, 52, seed=4)
  png = io.BytesIO()
  Image.fromarray(image).save(png, format='PNG')
  expected = exported.serve(image)['panoptic']
  for name, value, batched in (
      (serving.SERVING_DEFAULT, image, False),
      (serving.SERVING_BATCH, image[None], True),
      (serving.SERVING_BYTES, png.getvalue(), False)):
    body = json.loads(json.dumps(serving.rest_request_body(name, value)))
    assert body['signature_name'] == name
    signature = exported.signature(body['signature_name'])
    result = signature(**_decode_rest_body(body, signature))
    got = result['panoptic'][0] if batched else result['panoptic']
    np.testing.assert_array_equal(got, expected, err_msg=name)
  with pytest.raises(ValueError, match='unknown signature'):
    serving.rest_request_body('serving_other', image)


@pytest.mark.slow
def test_info_files_describe_classes_and_layers(exported):
  info = export.read_dataset_info(exported.saved_model)
  assert info == config_lib.dataset_info_for(exported.config)
  export_info = export.read_export_info(exported.saved_model)
  assert export_info['layer_strides'] == [32, 16, 8]
  assert export_info['crop_size'] == [CROP, CROP]
  assert export_info['max_image_size'] == 4096
  assert export_info['num_cluster_centers'] == 16
  assert export_info['checkpoint'] == exported.prefix
  assert export_info['signatures'] == serving.INPUT_NAMES
  assert export_info['formats'] == {
      'saved_model': {'kernel_policy': 'REFERENCE'}}
  # Nothing but the export is left in its folder (no staging folders).
  assert os.listdir(os.path.dirname(exported.saved_model)) == ['1']


_ISOLATED = textwrap.dedent("""
    import sys
    sys.path.extend(sys.argv[1:3])  # site-packages; no .pth files were run

    class Refuse:  # also hides a non-editable install of the package
      def find_spec(self, name, *unused):
        if name.split('.')[0] == 'deeplab2_kmax':
          raise ModuleNotFoundError(f'{name} is hidden from this process')

    sys.meta_path.insert(0, Refuse())
    try:
      import deeplab2_kmax
    except ImportError:
      pass
    else:
      raise SystemExit('deeplab2_kmax is importable in the isolated process')
    import numpy as np
    import tensorflow as tf
    loaded = tf.saved_model.load(sys.argv[3])
    image = np.load(sys.argv[4])
    result = loaded.signatures['serving_default'](image=tf.constant(image))
    assert not any(m.startswith('deeplab2_kmax') for m in sys.modules)
    np.savez(sys.argv[5], **{k: v.numpy() for k, v in result.items()})
""")


@pytest.mark.slow
def test_saved_model_runs_without_the_package(exported, tmp_path):
  image = make_image(seed=5)
  np.save(tmp_path / 'image.npy', image)
  paths = sysconfig.get_paths()
  # -I: no PYTHONPATH, no user site, no script folder; -S: no site module,
  # so the editable install's import hook is not installed either.
  result = subprocess.run(
      [sys.executable, '-I', '-S', '-c', _ISOLATED, paths['purelib'],
       paths['platlib'], exported.saved_model, str(tmp_path / 'image.npy'),
       str(tmp_path / 'out.npz')],
      cwd=tmp_path, capture_output=True, text=True, check=False,
      env={'TF_CPP_MIN_LOG_LEVEL': '2', 'PATH': os.environ.get('PATH', '')})
  assert result.returncode == 0, result.stderr[-3000:]
  isolated = np.load(tmp_path / 'out.npz')
  expected = exported.serve(image)
  for key, value in expected.items():
    np.testing.assert_array_equal(isolated[key], value, err_msg=key)


def test_non_empty_output_dir_is_refused_before_any_work(tmp_path, capsys):
  output = tmp_path / 'out'
  output.mkdir()
  (output / 'keep.txt').write_text('previous export')
  code = export.main([f'--config_file={conftest.TINY_CONFIG}',
                      f'--checkpoint={tmp_path / "missing"}',
                      f'--output_dir={output}'])
  assert code == 1
  assert 'not empty; pass --overwrite' in capsys.readouterr().err
  assert os.listdir(output) == ['keep.txt']


def test_publish_dir_replaces_only_with_overwrite(tmp_path):
  output = tmp_path / 'out'
  output.mkdir()
  (output / 'old.txt').write_text('old')
  staging = tmp_path / 'staging'
  staging.mkdir()
  (staging / 'new.txt').write_text('new')
  with pytest.raises(FileExistsError, match='--overwrite'):
    export.publish_dir(str(staging), str(output))
  export.publish_dir(str(staging), str(output), overwrite=True)
  assert os.listdir(output) == ['new.txt']
  assert sorted(os.listdir(tmp_path)) == ['out']  # no staging, no trash
  empty = tmp_path / 'empty'
  empty.mkdir()
  export.publish_dir(str(output), str(empty))  # an empty folder is replaced
  assert os.listdir(empty) == ['new.txt']


def test_output_dir_that_is_a_file_is_refused(tmp_path):
  (tmp_path / 'file').write_text('x')
  with pytest.raises(FileExistsError, match='is a file'):
    export.check_output_dir(str(tmp_path / 'file'), overwrite=True)


@pytest.mark.slow
def test_command_line_reports_a_folder_without_checkpoint(tmp_path):
  (tmp_path / 'model_dir').mkdir()
  result = subprocess.run(
      [sys.executable, '-m', 'deeplab2_kmax.export',
       f'--config_file={conftest.TINY_CONFIG}',
       f'--checkpoint={tmp_path / "model_dir"}',
       f'--output_dir={tmp_path / "out"}'],
      capture_output=True, text=True, check=False, cwd=conftest.REPO_ROOT)
  assert result.returncode == 1
  assert 'the folder holds no checkpoint' in result.stderr
  assert not (tmp_path / 'out').exists()


@pytest.mark.slow
def test_checkpoint_of_another_model_is_reported(exported, tmp_path):
  # A checkpoint with no weight in common: nothing of the model changes.
  wrong = tf.train.Checkpoint(model=tf.Module()).write(str(tmp_path / 'x'))
  with pytest.raises(deeplab2_import.CheckpointMismatchError,
                     match='does not match the model'):
    export.restore_checkpoint(exported.model, wrong)


# Portability: stock TensorFlow Serving and LiteRT ---------------------------
def _portability_problems(graph_def):
  """What a runtime without XLA JIT (or a converter) would trip on: nested
  `_XlaMustCompile` functions or calls, and custom-gradient leftovers."""
  problems = []

  def check_nodes(where, nodes):
    for node in nodes:
      if node.attr['_XlaMustCompile'].b:
        problems.append(f'{where}: node {node.name} ({node.op}) has '
                        '_XlaMustCompile')
      if '_gradient_op_type' in node.attr:
        problems.append(f'{where}: node {node.name} ({node.op}) has a '
                        'custom gradient (_gradient_op_type)')

  check_nodes('graph', graph_def.node)
  for function in graph_def.library.function:
    name = function.signature.name
    if function.attr['_XlaMustCompile'].b:
      problems.append(f'function {name} has _XlaMustCompile')
    if 'customgradient' in name.lower().replace('_', ''):
      problems.append(f'function {name} is a custom gradient')
    check_nodes(f'function {name}', function.node_def)
  problems.extend(f'registered gradient {g.registered_op_type}'
                  for g in graph_def.library.registered_gradients)
  return problems


@pytest.mark.slow
def test_saved_model_has_no_xla_kernels_or_custom_gradients(exported):
  proto = saved_model_pb2.SavedModel()
  with open(os.path.join(exported.saved_model, 'saved_model.pb'), 'rb') as f:
    proto.ParseFromString(f.read())
  graph_def = proto.meta_graphs[0].graph_def
  assert len(graph_def.library.function) > 10  # the check sees the model
  problems = _portability_problems(graph_def)
  assert not problems, '\n'.join(problems[:20])


def test_portability_check_finds_xla_kernels_and_custom_gradients():
  @tf.custom_gradient
  def double(x):
    return 2 * x, lambda dy: 2 * dy

  @tf.function(jit_compile=True)
  def kernel(x):
    return x + 1

  @tf.function
  def outer(x):
    return kernel(double(x))

  graph_def = outer.get_concrete_function(
      tf.TensorSpec([2], tf.float32)).graph.as_graph_def()
  problems = '\n'.join(_portability_problems(graph_def))
  assert '_XlaMustCompile' in problems
  assert '_gradient_op_type' in problems


def _tflite_ops(model):
  """The op lines of the LiteRT analyzer's report of `model` (bytes)."""
  report = io.StringIO()
  with contextlib.redirect_stdout(report):
    tf.lite.experimental.Analyzer.analyze(model_content=model)
  return [line.split('(')[0].split()[-1]
          for line in report.getvalue().splitlines()
          if line.strip().startswith('Op#')]


def _coco_images(height, width):
  """The two real COCO images, RGB, resized to [height, width, 3]."""
  paths = sorted(COCO_IMAGES.glob('*.jpg'))
  if len(paths) != 2:
    pytest.skip(f'COCO sample images not found in {COCO_IMAGES}')
  return [np.asarray(Image.open(p).convert('RGB').resize(
      (width, height), Image.BILINEAR)) for p in paths]


# TensorFlow 2.20 announces that tf.lite.Interpreter moves to ai_edge_litert.
_INTERPRETER_DEPRECATION = 'ignore:.*tf.lite.Interpreter is deprecated'
TFLITE_SIZE = (180, 240)  # larger than the crop: shrunk to 120 x 161


@pytest.fixture(scope='module')
def exported_all(exported, tmp_path_factory):
  """--format=all export of the test model: SavedModel and model.tflite."""
  output = tmp_path_factory.mktemp('export_all') / '1'
  code = export.main([f'--config_file={exported.config_file}',
                      f'--checkpoint={exported.model_dir}',
                      f'--output_dir={output}', '--format=all',
                      '--tflite_image_size=%d,%d' % TFLITE_SIZE])
  assert code == 0
  return output


@pytest.mark.slow
@pytest.mark.filterwarnings(_INTERPRETER_DEPRECATION)
def test_tflite_model_has_builtin_ops_only_and_serving_outputs(exported_all):
  with open(exported_all / export.TFLITE_FILE, 'rb') as f:
    model = f.read()
  ops = _tflite_ops(model)
  assert 'CONV_2D' in ops and 'WHILE' in ops  # the merging's paste loop
  assert not [op for op in ops if op.startswith('Flex') or op == 'CUSTOM']
  interpreter = tf.lite.Interpreter(model_content=model)
  signature = interpreter.get_signature_list()[serving.SERVING_DEFAULT]
  loaded = tf.saved_model.load(str(exported_all))
  served = loaded.signatures[serving.SERVING_DEFAULT]
  assert signature['inputs'] == ['image']
  assert sorted(signature['outputs']) == sorted(served.structured_outputs)
  info = export.read_export_info(str(exported_all))
  assert info['formats']['tflite']['image_size'] == list(TFLITE_SIZE)
  assert info['formats']['saved_model'] == {'kernel_policy': 'REFERENCE'}


@pytest.mark.slow
@pytest.mark.filterwarnings(_INTERPRETER_DEPRECATION)
def test_tflite_model_equals_saved_model_on_real_images(exported_all):
  interpreter = tf.lite.Interpreter(
      model_path=str(exported_all / export.TFLITE_FILE))
  run = interpreter.get_signature_runner(serving.SERVING_DEFAULT)
  served = tf.saved_model.load(str(exported_all)).signatures[
      serving.SERVING_DEFAULT]
  for image in _coco_images(*TFLITE_SIZE):
    lite = run(image=image)
    expected = {k: v.numpy() for k, v in served(image=tf.constant(image))
                .items()}
    for key, value in expected.items():
      assert lite[key].shape == value.shape, key
      assert lite[key].dtype == value.dtype, key
    assert expected['num_segments'] >= 2
    for key in ('panoptic', 'semantic', 'instance'):
      agreement = np.mean(lite[key] == expected[key])
      assert agreement >= 0.99, (key, agreement)


def test_tflite_conversion_names_ops_without_builtin():
  class WithInverse(tf.Module):
    """Duck-typed ServingModule whose function has no LiteRT builtin."""
    options = serving.ServingOptions(crop_size=(4, 4))

    def fixed_size_function(self, height, width):
      @tf.function(input_signature=[
          tf.TensorSpec([height, width, 3], tf.uint8, name='image')])
      def invert(image):
        return {'inverse': tf.linalg.inv(
            tf.cast(image[:2, :2, 0], tf.float32))}
      return invert.get_concrete_function()

  with pytest.raises(ValueError, match='no builtin op for tf.MatrixInverse; '
                     'pass --tflite_select_tf_ops'):
    export.convert_to_tflite(WithInverse())
  model = export.convert_to_tflite(
      WithInverse(), export.TfliteOptions(select_tf_ops=True))
  assert 'FlexMatrixInverse' in _tflite_ops(model)


@pytest.mark.parametrize('flag, message', [
    ('--format=onnx', '--format=onnx: expected one of saved_model, tflite, '
     'all'),
    ('--kernel_policy=fast', '--kernel_policy: kernel policy \'fast\': '
     'expected one of AUTO, REFERENCE, CPU_OPTIMIZED'),
    ('--tflite_image_size=641', '--tflite_image_size=641: expected '
     'HEIGHT,WIDTH'),
])
def test_bad_flags_are_reported_in_one_line(tmp_path, capsys, flag, message):
  code = export.main([f'--config_file={conftest.TINY_CONFIG}',
                      f'--checkpoint={tmp_path / "missing"}',
                      f'--output_dir={tmp_path / "out"}', flag])
  assert code == 1
  err = capsys.readouterr().err
  assert err.startswith(f'error: {message}') and err.count('\n') == 1
  assert not (tmp_path / 'out').exists()
