"""The task: builds the model, inputs, losses and optimizer from a config.

The trainer and evaluator only loop (Orbit); everything that knows about
kMaX-DeepLab or the config lives here.
"""
import copy

import tensorflow as tf

from deeplab2_kmax import config as config_lib
from deeplab2_kmax.data import input_pipeline
from deeplab2_kmax.evaluation import evaluator_metrics
from deeplab2_kmax.model import builder
from deeplab2_kmax.model.loss import kmax_loss
from deeplab2_kmax.model.pixel_encoder import variants
from deeplab2_kmax.model.post_processor import mask_wise_merging
from deeplab2_kmax.trainer import optimizer as optimizer_lib
from deeplab2_kmax.trainer import trainer as trainer_lib


class KMaXTask:
  """Builds the parts of one experiment; holds no training state."""

  def __init__(self, config, seed=0):
    self.config = config
    self.seed = int(seed)
    self.dataset_info = config_lib.dataset_info_for(config)
    # Predictions (and ground truth) live at the pixel decoder's finest
    # stride: 4, or 2 with Cityscapes' extra stage (4 again on a ConvNeXt,
    # whose stage1 endpoint is at stride 4).
    self.output_stride = variants.output_stride(
        config.model_options.backbone.name,
        [s.stride for s in config.model_options.pixel_decoder.stages])

  def build_model(self):
    """The model with all its variables (built by one small forward pass:
    optimizers must be built on the complete variable list)."""
    model = builder.build_model(self.config)
    model(tf.zeros([1, 65, 65, 3]), training=False)
    return model

  def compiles_training_step(self, strategy):
    """Whether XLA compiles the training step: `trainer_options.jit_compile`,
    or a TPU (which compiles every step)."""
    return (bool(self.config.trainer_options.jit_compile) or
            trainer_lib.is_tpu_strategy(strategy))

  def build_loss(self, *, compiled=False):
    """The loss; `compiled`: it runs in an XLA-compiled step, so the
    Hungarian matching takes its TensorFlow path (else the matcher chooses,
    see `matcher.match`)."""
    model = self.config.model_options
    reference_mask_weight = 0.0
    if (model.WhichOneof('meta_architecture') == 'cmt_deeplab' and
        model.cmt_deeplab.reference_masks):
      reference_mask_weight = model.cmt_deeplab.reference_mask_loss_weight
    return kmax_loss.KMaXLoss.from_config(
        self.config.trainer_options.loss_options, self.dataset_info,
        reference_mask_weight=reference_mask_weight,
        use_host_matching=False if compiled else None)

  def training_picture_shapes(self):
    """Static shapes of the training picture (one example of a batch).

    {'image': [H, W, 3], 'panoptic': [H, W] at the training crop;
    'clusters': [h, w] at the output stride; 'classes': [N] per center}.
    """
    height, width = self.config.train_dataset_options.crop_size
    stride = self.output_stride
    # Crops are k * stride + 1 pixels; outputs on the align-corners grid.
    small = [(height - 1) // stride + 1, (width - 1) // stride + 1]
    centers = config_lib.transformer_decoder_options(
        self.config.model_options).num_cluster_centers
    return {'image': [height, width, 3], 'panoptic': [height, width],
            'clusters': small, 'classes': [centers]}

  def build_optimizer(self, variables, loss_scale=False):
    trainer = self.config.trainer_options
    return optimizer_lib.build_optimizer(
        trainer.solver_options, trainer.num_steps, variables,
        loss_scale=loss_scale)

  def _dataset_options(self, is_training):
    name = 'train_dataset_options' if is_training else 'eval_dataset_options'
    if not self.config.HasField(name):
      raise config_lib.ConfigError(f'the config has no {name}')
    return name, getattr(self.config, name)

  def check_inputs(self, strategy, *, is_training):
    """Raises before any work if data files are missing or the global batch
    does not divide across the replicas."""
    name, options = self._dataset_options(is_training)
    replicas = strategy.num_replicas_in_sync
    if options.batch_size % replicas:
      raise config_lib.ConfigError(
          f'{name}.batch_size: the global batch {options.batch_size} is not '
          f'divisible by the {replicas} replicas')
    input_pipeline.list_files(options, name)  # names a pattern with no file

  def build_inputs(self, strategy, *, is_training, skip_batches=0):
    """A distributed dataset of the train or eval split.

    The config's batch size is global; each replica gets an equal share.
    `skip_batches` global batches are skipped (a resumed run continues the
    exact input stream of an uninterrupted one).
    """
    self.check_inputs(strategy, is_training=is_training)
    _, options = self._dataset_options(is_training)

    loss_options = self.config.trainer_options.loss_options

    def dataset_fn(input_context=None):
      local = copy.deepcopy(options)
      if input_context is not None:
        local.batch_size = input_context.get_per_replica_batch_size(
            options.batch_size)
      return input_pipeline.build_dataset(
          local, dataset_info=self.dataset_info, is_training=is_training,
          output_stride=self.output_stride, seed=self.seed,
          max_thing_id=options.max_thing_id,
          small_instance_area=loss_options.small_instance_area,
          small_instance_weight=loss_options.small_instance_weight,
          input_context=input_context, skip_batches=skip_batches)

    if _splits_global_batches(strategy):
      # One worker: each global batch is split across the local replicas,
      # so a run on several devices sees exactly the batches of a run on
      # one device.
      return strategy.experimental_distribute_dataset(dataset_fn())
    # Several workers (or a TPU pod): each input pipeline reads its own
    # share of the shards and makes per-replica batches.
    return strategy.distribute_datasets_from_function(dataset_fn)

  def build_metrics(self, prediction_dir_fn=None):
    """(metrics, prediction_fn) for the evaluator; see evaluator.py.

    prediction_fn post-processes the model outputs (mask-wise merging at the
    padded crop size); the metrics compute PQ, mask AP and mIoU from them.
    """
    info = self.dataset_info
    options = mask_wise_merging.MergingOptions.from_config(
        self.config.evaluator_options)
    channel_to_semantic = info.channel_to_semantic()

    def prediction_fn(outputs, batch):
      result = mask_wise_merging.merge(
          outputs['class_logits'], outputs['mask_logits'],
          batch['image'].shape[1:3], channel_to_semantic=channel_to_semantic,
          num_things=info.num_things, label_divisor=info.label_divisor,
          ignore_label=info.ignore_label, options=options)
      return {k: result[k] for k in ('panoptic', 'semantic', 'segment_ids',
                                     'segment_scores', 'segment_areas')}

    metrics = evaluator_metrics.PanopticMetrics(
        info, prediction_dir_fn=prediction_dir_fn,
        cityscapes_predictions=(
            self.config.evaluator_options.cityscapes_predictions))
    return [metrics], prediction_fn



def _splits_global_batches(strategy):
  """One-worker strategies: split each global batch across local devices."""
  return isinstance(strategy, (tf.distribute.OneDeviceStrategy,
                               tf.distribute.MirroredStrategy))
