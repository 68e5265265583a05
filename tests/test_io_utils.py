"""Files are written whole or not at all."""
import json

import pytest

from deeplab2_kmax import io_utils


def test_writes_and_leaves_no_temporary_file(tmp_path):
  path = tmp_path / 'new' / 'folder' / 'a.json'
  io_utils.write_json(path, {'b': 1, 'a': [1, 2]}, indent=2, sort_keys=True)
  assert json.loads(path.read_text()) == {'a': [1, 2], 'b': 1}
  assert path.read_text().endswith('\n')
  io_utils.write_text(tmp_path / 't.txt', 'text')
  io_utils.write_bytes(tmp_path / 'b.bin', b'\x00\x01')
  assert (tmp_path / 't.txt').read_text() == 'text'
  assert (tmp_path / 'b.bin').read_bytes() == b'\x00\x01'
  assert sorted(p.name for p in tmp_path.rglob('*') if p.is_file()) == [
      'a.json', 'b.bin', 't.txt']


def test_a_failed_write_keeps_the_old_file(tmp_path):
  path = tmp_path / 'metrics.json'
  io_utils.write_json(path, {'pq': 1.0})
  with pytest.raises(TypeError):
    io_utils.write_json(path, {'pq': object()})  # not serialisable
  assert json.loads(path.read_text()) == {'pq': 1.0}
  assert [p.name for p in tmp_path.iterdir()] == ['metrics.json']
