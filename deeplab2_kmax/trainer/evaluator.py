"""Orbit evaluator: losses on the evaluation split, plus pluggable metrics.

Every replica runs the model (inference mode) and the loss on its share of a
batch. Metrics that need host-side accumulation (panoptic quality, mask AP,
mIoU) are `metrics` objects with `update(per_replica_outputs, batch)` taking
NumPy arrays and `result()` returning a flat dict of floats. The first
examples' input, ground truth and prediction go to TensorBoard as pictures
(image_summaries.py).
"""
import orbit
import tensorflow as tf

from deeplab2_kmax.model.loss import kmax_loss
from deeplab2_kmax.trainer import image_summaries


class KMaXEvaluator(orbit.StandardEvaluator):
  """Evaluates the model on a (finite) distributed dataset."""

  def __init__(self, *, task, strategy, model, loss, eval_dataset,
               metrics=(), prediction_fn=None, global_step=None):
    self.task = task
    self.global_step = global_step  # for the pictures' summary step
    self.strategy = strategy
    self.model = model
    self.loss = loss
    self.metrics = list(metrics)
    # prediction_fn(model_outputs, batch) -> dict of tensors to hand to the
    # metrics (e.g. post-processed panoptic maps); None = losses only.
    self.prediction_fn = prediction_fn
    self.term_names = tuple(kmax_loss.TERMS) + (kmax_loss.TOTAL,)
    self._pictures = None
    with strategy.scope():
      def counter(name):
        return tf.Variable(
            0.0, trainable=False, name=name,
            synchronization=tf.VariableSynchronization.ON_READ,
            aggregation=tf.VariableAggregation.SUM)
      self._sums = {n: counter(f'eval_sum_{n}') for n in self.term_names}
      self._count = counter('eval_count')
    super().__init__(eval_dataset, options=orbit.StandardEvaluatorOptions(
        use_tf_function=True))

  def eval_begin(self):
    for v in list(self._sums.values()) + [self._count]:
      v.assign(0.0)
    for metric in self.metrics:
      metric.reset()
    self._pictures = None  # (images, gt, prediction) of the first examples

  def eval_step(self, iterator):
    batch = next(iterator)
    return self.strategy.run(self._step_fn, args=(batch,))

  def _step_fn(self, batch):
    outputs = self.model(batch['image'], training=False)
    seed = tf.constant([self.task.seed, 0], tf.int64)
    losses = self.loss(outputs, batch, seed)
    for name in self.term_names:
      self._sums[name].assign_add(tf.cast(losses[name], tf.float32))
    self._count.assign_add(1.0)
    if self.prediction_fn is None:
      return {}
    return {'predictions': self.prediction_fn(outputs, batch),
            'batch': batch}

  def eval_reduce(self, state=None, step_outputs=None):
    if step_outputs and self.metrics:
      for replica in _local_results(self.strategy, step_outputs):
        numpy_values = tf.nest.map_structure(lambda t: t.numpy(), replica)
        if self._pictures is None:
          keep = slice(0, image_summaries.MAX_IMAGES)
          self._pictures = (numpy_values['batch']['image'][keep],
                            numpy_values['batch']['panoptic'][keep],
                            numpy_values['predictions']['panoptic'][keep])
        for metric in self.metrics:
          metric.update(numpy_values['predictions'], numpy_values['batch'])
    return state

  def eval_end(self, *args):
    count = max(float(self._count.numpy()), 1.0)
    result = {f'loss/{n}': float(v.numpy()) / count
              for n, v in self._sums.items()}
    for metric in self.metrics:
      result.update(metric.result())
    if self._pictures is not None and self.global_step is not None:
      image_summaries.write('eval/input_groundtruth_prediction',
                            *self._pictures, self.task.dataset_info,
                            step=self.global_step)
    return result


def _local_results(strategy, structure):
  """Per-replica values of a strategy.run result, one structure each."""
  flat = tf.nest.flatten(structure)
  per_value = [strategy.experimental_local_results(v) for v in flat]
  return [tf.nest.pack_sequence_as(structure, [v[i] for v in per_value])
          for i in range(len(per_value[0]) if per_value else 0)]
