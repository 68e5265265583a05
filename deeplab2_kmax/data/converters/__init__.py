"""Converters from official panoptic annotation formats to TFRecords.

`convert(...)` is the Python API (see `convert.py`); the command line is
`python -m deeplab2_kmax.data.build_tfrecords`. One module per format says
where its files live and how it differs from plain COCO panoptic;
`panoptic_format` reads the shared JSON + PNG format; `sharded_writer` writes
shards that appear only when complete.
"""
from deeplab2_kmax.data.converters.convert import ConversionReport
from deeplab2_kmax.data.converters.convert import convert
from deeplab2_kmax.data.converters.convert import FORMATS
from deeplab2_kmax.data.converters.panoptic_format import InvalidImageError
