"""Writing files whole or not at all.

Every file the package writes (metrics, configs, predictions, PNGs) goes to
a temporary file beside its destination and is renamed into place once
complete, so an interrupted run never leaves a half-written file under the
final name.
"""
import contextlib
import json
import os
import tempfile


@contextlib.contextmanager
def replacing(path, mode='w'):
  """A temporary file beside `path`, renamed to `path` on success.

  The folder is created if needed. On an exception the temporary file is
  removed and `path` keeps its previous content (if any).
  """
  path = os.fspath(path)
  folder = os.path.dirname(os.path.abspath(path))
  os.makedirs(folder, exist_ok=True)
  f = tempfile.NamedTemporaryFile(
      mode, dir=folder, prefix=f'.{os.path.basename(path)}.', suffix='.tmp',
      delete=False, encoding=None if 'b' in mode else 'utf-8')
  try:
    with f:
      yield f
    os.chmod(f.name, 0o644)
    os.replace(f.name, path)
  except BaseException:
    os.remove(f.name)
    raise


def write_json(path, data, *, indent=None, sort_keys=False):
  """Writes `data` as JSON to `path` (temporary file, then rename)."""
  with replacing(path, 'w') as f:
    json.dump(data, f, indent=indent, sort_keys=sort_keys)
    if indent is not None:
      f.write('\n')


def write_text(path, text):
  """Writes `text` to `path` (temporary file, then rename)."""
  with replacing(path, 'w') as f:
    f.write(text)


def write_bytes(path, data):
  """Writes `data` to `path` (temporary file, then rename)."""
  with replacing(path, 'wb') as f:
    f.write(data)
