"""scripts/ablate_clustering.py: the variants' configs and a short run."""
import importlib.util
import json

import numpy as np
from PIL import Image
import pytest

from deeplab2_kmax import config as config_lib
from tests.conftest import REPO_ROOT
from tests.conftest import TINY_CONFIG

CMT_SMALL = REPO_ROOT / 'configs' / 'synthetic' / 'cmt_small.textproto'


def _script():
  path = REPO_ROOT / 'scripts' / 'ablate_clustering.py'
  spec = importlib.util.spec_from_file_location('ablate_clustering', path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


@pytest.mark.parametrize('base_file', [CMT_SMALL, TINY_CONFIG])
def test_variants_differ_only_in_the_transformer_decoders_layers(
    synthetic_env, base_file):
  ablate = _script()
  base = config_lib.load_config(base_file)
  decoder = config_lib.transformer_decoder_options(base.model_options)
  configs = {v: ablate.variant_config(base, v, 7) for v in ablate.VARIANTS}
  for variant, config in configs.items():
    config_lib.validate(config)
    assert config.trainer_options.num_steps == 7
    assert config.train_dataset_options == base.train_dataset_options
    assert config.model_options.backbone == base.model_options.backbone
    layers = config_lib.transformer_decoder_options(config.model_options)
    assert list(layers.stages) == list(decoder.stages)
    assert layers.num_cluster_centers == decoder.num_cluster_centers
    assert layers.center_width == decoder.center_width
    activation = ablate.VARIANTS[variant][1]
    if activation is None:
      options = config.model_options.cmt_deeplab
      assert all(getattr(options, switch) for switch in (
          'assignment_residual', 'clustering_update', 'cross_attention_update',
          'pixel_update', 'coordinates', 'reference_masks'))
    else:
      assert config.model_options.WhichOneof('meta_architecture') == (
          'kmax_deeplab')
      assert config_lib.config_pb2.CrossAttentionActivation.Name(
          layers.cross_attention_activation) == activation


def test_unknown_variant_is_a_usage_error(capsys):
  with pytest.raises(SystemExit):
    _script().parse_args(['--output_dir=x', '--variants=cmt,softmax'])
  assert "--variants: unknown ['softmax']" in capsys.readouterr().err


@pytest.mark.slow
def test_short_ablation_writes_the_table_and_the_figure(synthetic_env,
                                                        tmp_path):
  ablate = _script()
  args = [f'--output_dir={tmp_path}', f'--config_file={TINY_CONFIG}',
          '--steps=2', '--variants=cluster_argmax,cmt', '--num_images=2']
  assert ablate.main(args) == 0
  table = (tmp_path / 'ablation.md').read_text()
  rows = [line for line in table.splitlines() if line.startswith('| ')]
  assert rows[0].startswith('| variant | PQ | PQ things | PQ stuff | mIoU')
  assert [row.split(' | ')[0] for row in rows[1:]] == [
      '| cluster argmax (kMaX)', '| CMT-DeepLab']
  assert '2 training steps' in table
  for variant in ('cluster_argmax', 'cmt'):
    metrics = json.loads((tmp_path / variant / 'metrics.json').read_text())
    assert metrics['steps'] == 2
    assert all(np.isfinite(metrics[k])
               for k in ('PQ', 'PQ_thing', 'PQ_stuff', 'mIoU'))
  with Image.open(tmp_path / 'attention.png') as figure:
    width, height = figure.size
  assert width > 3 * 192 and height > 2 * 192  # 2 rows: image + 2 variants
  # A second run reuses the finished variants.
  before = (tmp_path / 'cmt' / 'metrics.json').stat().st_mtime_ns
  assert ablate.main(args) == 0
  assert (tmp_path / 'cmt' / 'metrics.json').stat().st_mtime_ns == before
  # Another budget in the same folder would mix runs: refused.
  assert ablate.main(args[:2] + ['--steps=3'] + args[3:]) == 1
  assert (tmp_path / 'cmt' / 'metrics.json').stat().st_mtime_ns == before
