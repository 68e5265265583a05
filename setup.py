"""Installs deeplab2_kmax and compiles its protobuf schemas.

The schemas in proto/ are compiled with grpcio-tools' protoc into
deeplab2_kmax/protos/ every time setup.py runs (wheel builds, `pip install .`
and `pip install -e .` alike), so generated code is never edited by hand and
never stale.
"""
import pathlib

import setuptools

ROOT = pathlib.Path(__file__).resolve().parent
PROTO_DIR = ROOT / 'proto'
OUT_DIR = ROOT / 'deeplab2_kmax' / 'protos'


def compile_protos():
  """Runs protoc on proto/*.proto; generated modules land in OUT_DIR."""
  from grpc_tools import protoc  # pylint: disable=import-outside-toplevel
  import grpc_tools  # pylint: disable=import-outside-toplevel

  include = pathlib.Path(grpc_tools.__file__).parent / '_proto'
  OUT_DIR.mkdir(parents=True, exist_ok=True)
  (OUT_DIR / '__init__.py').write_text(
      '"""Generated protobuf modules (built from proto/ by setup.py)."""\n')
  for proto in sorted(PROTO_DIR.glob('*.proto')):
    status = protoc.main([
        'grpc_tools.protoc', f'-I{PROTO_DIR}', f'-I{include}',
        f'--python_out={OUT_DIR}', str(proto)])
    if status != 0:
      raise RuntimeError(f'protoc failed on {proto} (exit status {status})')


compile_protos()

setuptools.setup(
    name='deeplab2_kmax',
    version='0.1.0',
    description=('kMaX-DeepLab and CMT-DeepLab clustering mask transformers '
                 'for panoptic segmentation, in TensorFlow 2 / Keras 3.'),
    python_requires='>=3.11,<3.12',
    packages=setuptools.find_packages(include=['deeplab2_kmax', 'deeplab2_kmax.*']),
    # The evaluation's PNG reader (evaluation/png_ids.py). Optional: without a
    # C compiler the package installs and the evaluation uses pyspng.
    ext_modules=[setuptools.Extension(
        'deeplab2_kmax.evaluation._png_ids',
        sources=['deeplab2_kmax/evaluation/_png_ids.c'],
        extra_compile_args=['-O3'], optional=True)],
    package_data={'deeplab2_kmax': ['data/*.json',
                                   'data/categories/*.json']},
    install_requires=[
        'tensorflow>=2.20,<2.21',
        'tf-models-official>=2.20,<2.21',
        'keras>=3.10,<4',
        'protobuf>=7.35.1,<8',
        'numpy>=1.26,<3',
        'scipy>=1.11,<2',
        'absl-py>=1.4,<3',
        'pycocotools>=2.0.7,<3',
        'tensorflow-datasets>=4.9,<5',
        'Pillow>=10,<14',
        'deflate>=0.7,<1',  # libdeflate, for the evaluation's PNG reader
        # PNG decoders of the COCO panoptic evaluation, used where the
        # package's own reader (libdeflate + evaluation/_png_ids.c) was not
        # built (it falls back to Pillow without them): libspng, and OpenCV,
        # which decodes without the GIL (threads).
        'pyspng>=0.1.2,<0.2',
        'opencv-python-headless>=4.8,<6',
        'tqdm>=4.60,<5',
    ],
    # Test-only references of the evaluation (tests/evaluation skip without
    # them). panopticapi-lite 0.2.0, the only release, pins numpy<2, which
    # TensorFlow 2.20 cannot use, so it is not listed here; its evaluation
    # module needs only numpy and Pillow:
    #   pip install --no-deps panopticapi-lite==0.2.0
    extras_require={'test': ['pytest>=8,<10', 'cityscapesscripts>=2.2,<3']},
)
