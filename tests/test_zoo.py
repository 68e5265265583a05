"""Zoo checkpoints by name, fetched from a loopback HTTP server."""
import http.server
import io
import pathlib
import subprocess
import sys
import tarfile
import threading

import numpy as np
import pytest
import tensorflow as tf

import deeplab2_kmax
from deeplab2_kmax import zoo
from deeplab2_kmax import zoo_registry
from deeplab2_kmax.checkpoints import deeplab2_import
from deeplab2_kmax.checkpoints import initial_checkpoint
from deeplab2_kmax.tools import fetch as fetch_tool
from tests import conftest

KMAX_NAME = 'kmax_resnet50_coco_train'
IMAGENET_NAME = 'resnet50_imagenet1k'


class _Handler(http.server.BaseHTTPRequestHandler):
  """Serves server.files; honours Range; server.cut[path] = n sends only n
  bytes of the next response and drops the connection."""

  def do_GET(self):  # pylint: disable=invalid-name
    server = self.server
    server.requests.append((self.path, self.headers.get('Range')))
    data = server.files.get(self.path)
    if data is None:
      self.send_error(404)
      return
    start = 0
    if self.headers.get('Range'):
      start = int(self.headers['Range'].split('=')[1].split('-')[0])
      self.send_response(206)
      self.send_header('Content-Range',
                       f'bytes {start}-{len(data) - 1}/{len(data)}')
    else:
      self.send_response(200)
    body = data[start:]
    self.send_header('Content-Length', str(len(body)))
    self.end_headers()
    cut = server.cut.pop(self.path, None)
    self.wfile.write(body if cut is None else body[:cut])
    if cut is not None:
      self.wfile.flush()
      self.close_connection = True

  def log_message(self, *args):  # quiet
    pass


@pytest.fixture
def server(monkeypatch, tmp_path):
  httpd = http.server.ThreadingHTTPServer(('127.0.0.1', 0), _Handler)
  httpd.files, httpd.cut, httpd.requests = {}, {}, []
  thread = threading.Thread(target=httpd.serve_forever, daemon=True)
  thread.start()
  monkeypatch.setenv('DEEPLAB2_KMAX_ZOO_URL',
                     f'http://127.0.0.1:{httpd.server_port}/ckpt')
  monkeypatch.setenv('DEEPLAB2_KMAX_CACHE', str(tmp_path / 'cache'))
  yield httpd
  httpd.shutdown()


def _archive(folder_name, files):
  """tar.gz bytes of one folder holding {name: bytes}."""
  buffer = io.BytesIO()
  with tarfile.open(fileobj=buffer, mode='w:gz') as tar:
    for name, data in files.items():
      info = tarfile.TarInfo(f'{folder_name}/{name}')
      info.size = len(data)
      tar.addfile(info, io.BytesIO(data))
  return buffer.getvalue()


def _checkpoint_files(prefix):
  prefix = pathlib.Path(prefix)
  return {p.name: p.read_bytes()
          for p in prefix.parent.glob(prefix.name + '.*')}


def test_registry_names_are_unique_and_configs_exist():
  names = [e.name for e in zoo_registry.ENTRIES]
  assert len(names) == len(set(names)) == 24
  for item in zoo_registry.ENTRIES:
    assert item.url == (f'https://storage.googleapis.com/gresearch/'
                        f'tf-deeplab/checkpoint/{item.name}.tar.gz')
    if item.kind == zoo_registry.KMAX:
      config = deeplab2_kmax.load_config(conftest.REPO_ROOT / item.config)
      assert config.model_options.backbone.name == item.backbone
      assert config.train_dataset_options.dataset == item.dataset
      assert dict(item.metrics)['PQ'] > 40


def test_unknown_name_lists_the_valid_ones(server, capsys):
  assert fetch_tool.main(['--name=kmax_resnet51_coco_train',
                          '--no_progress']) == 1
  error = capsys.readouterr().err
  assert error.count('\n') == 1 and error.startswith('error: unknown zoo')
  assert KMAX_NAME in error and IMAGENET_NAME in error
  assert not server.requests  # nothing was asked of the server


def test_corrupt_archive_is_refused_and_deleted(server, tmp_path, capsys):
  server.files[f'/ckpt/{IMAGENET_NAME}.tar.gz'] = b'\x1f\x8b' + bytes(500)
  assert fetch_tool.main([f'--name={IMAGENET_NAME}', '--no_progress']) == 1
  error = capsys.readouterr().err
  assert 'not a complete .tar.gz archive' in error and 'deleted' in error
  cache = tmp_path / 'cache'
  assert not (cache / IMAGENET_NAME).exists()
  assert not list((cache / 'downloads').iterdir())
  assert not [p for p in cache.iterdir() if p.name.startswith('.')]


def test_archive_without_a_checkpoint_is_refused(server, capsys):
  server.files[f'/ckpt/{IMAGENET_NAME}.tar.gz'] = _archive(
      IMAGENET_NAME, {'README': b'no checkpoint here'})
  assert fetch_tool.main([f'--name={IMAGENET_NAME}', '--no_progress']) == 1
  assert 'expected one ckpt-<step>.index' in capsys.readouterr().err


def test_interrupted_download_resumes(server, tmp_path):
  data = _archive(IMAGENET_NAME, {'ckpt-5.index': b'i' * 3000,
                                  'ckpt-5.data-00000-of-00001': b'd' * 5000})
  path = f'/ckpt/{IMAGENET_NAME}.tar.gz'
  server.files[path] = data
  server.cut[path] = len(data) // 2
  with pytest.raises(zoo.ZooError, match='broke off'):
    zoo.fetch(IMAGENET_NAME, progress=False)
  partial = tmp_path / 'cache' / 'downloads' / f'{IMAGENET_NAME}.tar.gz.part'
  assert partial.stat().st_size == len(data) // 2
  prefix = zoo.fetch(IMAGENET_NAME, progress=False)
  assert server.requests[-1] == (path, f'bytes={len(data) // 2}-')
  assert prefix == tmp_path / 'cache' / IMAGENET_NAME / 'ckpt-5'
  assert (prefix.parent / 'ckpt-5.index').read_bytes() == b'i' * 3000
  assert not partial.exists()
  # Cached: no request the second time.
  count = len(server.requests)
  assert zoo.fetch(IMAGENET_NAME, progress=False) == prefix
  assert len(server.requests) == count


@pytest.mark.slow
def test_kmax_checkpoint_is_converted_once_and_loads_by_name(server,
                                                             tmp_path,
                                                             capsys):
  parity = conftest.require_parity_fixture()
  source = tmp_path / 'deeplab2' / 'ckpt-150000'
  subprocess.run(
      [sys.executable, str(parity / 'make_reference_checkpoint.py'),
       str(parity / 'deeplab2_kmax_r50' / 'variables.tsv'), str(source)],
      check=True, capture_output=True)
  server.files[f'/ckpt/{KMAX_NAME}.tar.gz'] = _archive(
      KMAX_NAME, _checkpoint_files(source))  # no `checkpoint` file
  assert fetch_tool.main([f'--name={KMAX_NAME}']) == 0
  printed = capsys.readouterr().out.strip()
  assert printed == str(tmp_path / 'cache' / KMAX_NAME / 'ckpt-150000')
  keys = [k for k, _ in tf.train.list_variables(printed)]
  assert any(k.startswith('model/') for k in keys)  # our layout
  config = deeplab2_kmax.load_config(
      conftest.REPO_ROOT / zoo_registry.REGISTRY[KMAX_NAME].config)
  direct = deeplab2_kmax.build_model(config)
  deeplab2_kmax.load_deeplab2_checkpoint(direct, str(source))
  by_name = deeplab2_kmax.build_model(config)
  initial_checkpoint.restore_model(by_name, f'zoo:{KMAX_NAME}', where='test')
  for a, b in zip(direct.weights, by_name.weights):
    np.testing.assert_array_equal(a.numpy(), b.numpy())
  assert len(server.requests) == 1  # downloaded once, then the cache


def test_zoo_errors_reach_the_caller_as_checkpoint_errors(server, tiny_config):
  model = deeplab2_kmax.build_model(tiny_config)
  with pytest.raises(deeplab2_import.CheckpointMismatchError,
                     match=r"--checkpoint=zoo:nope: unknown zoo checkpoint"):
    initial_checkpoint.restore_model(model, 'zoo:nope',
                                     where='--checkpoint=zoo:nope')
