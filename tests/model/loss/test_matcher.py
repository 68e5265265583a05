"""Tests of the Hungarian matcher against scipy's linear_sum_assignment."""
import functools
import numpy as np
import pytest
import scipy.optimize
import tensorflow as tf

from deeplab2_kmax.model.loss import matcher

# One graph for every shape (the unknown-shape path); XLA traces per shape.
_graph_matching = tf.function(
    matcher.hungarian_matching,
    input_signature=[tf.TensorSpec([None, None, None], tf.float32)])
_xla_matching = tf.function(matcher.hungarian_matching, jit_compile=True)


def _optimal_cost(matrix):
  rows, cols = scipy.optimize.linear_sum_assignment(matrix.astype(np.float64))
  return matrix[rows, cols].astype(np.float64).sum()


def _assert_optimal(cost, assignment, atol=0.0, rtol=1e-4):
  """Checks a valid assignment of scipy's optimal cost for every matrix."""
  cost, assignment = np.asarray(cost), np.asarray(assignment)
  assert assignment.dtype == np.bool_
  assert assignment.shape == cost.shape
  for matrix, chosen in zip(cost, assignment):
    assert chosen.sum() == min(matrix.shape)
    assert chosen.sum(axis=0).max() <= 1 and chosen.sum(axis=1).max() <= 1
    optimum = _optimal_cost(matrix)
    found = matrix[chosen].astype(np.float64).sum()
    assert abs(found - optimum) <= atol + rtol * max(1.0, abs(optimum)), (
        found, optimum)


def _kmax_cost(rng, num_valid, rows, cols, padding):
  """-Dice * class probability for valid GT rows, a constant for the rest."""
  cost = np.full([rows, cols], padding, np.float32)
  dice = rng.random([num_valid, cols])
  prob = rng.random([num_valid, cols])
  cost[:num_valid] = -(dice * prob)
  return cost


@pytest.mark.parametrize('size', [1, 2, 5, 17, 64])
def test_square_matches_scipy(size):
  cost = np.random.default_rng(size).random([3, size, size], np.float32)
  _assert_optimal(cost, _graph_matching(cost))


def test_square_128_matches_scipy():
  cost = np.random.default_rng(128).random([2, 128, 128], np.float32)
  _assert_optimal(cost, _graph_matching(cost))


@pytest.mark.parametrize('shape', [(7, 13), (13, 7), (1, 9), (9, 1),
                                   (50, 128), (128, 50)])
def test_rectangular_matches_scipy(shape):
  cost = np.random.default_rng(sum(shape)).normal(size=(2,) + shape)
  cost = cost.astype(np.float32)
  _assert_optimal(cost, _graph_matching(cost))


@pytest.mark.parametrize('shape', [(5, 5), (17, 17), (9, 20), (20, 9),
                                   (64, 64)])
def test_integer_costs_with_many_ties(shape):
  cost = np.random.default_rng(7).integers(0, 4, (3,) + shape)
  cost = cost.astype(np.float32)
  _assert_optimal(cost, _graph_matching(cost), rtol=0.0)


def test_equal_rows_constant_matrix_and_equal_columns():
  row = np.arange(12, dtype=np.float32)[::-1]
  cost = np.stack([
      np.tile(row, [12, 1]),  # every row the same
      np.full([12, 12], 3.0, np.float32),  # every entry the same
      np.tile(row[:, None], [1, 12]),  # every column the same
  ])
  _assert_optimal(cost, _graph_matching(cost), rtol=0.0)


@pytest.mark.parametrize('num_valid,padding', [(0, -999.0), (3, -999.0),
                                               (20, -999.0), (20, 999.0),
                                               (31, 999.0)])
def test_kmax_padding_pattern(num_valid, padding):
  """Valid GT rows cost -Dice*prob in [-1, 0]; padded rows +-999."""
  rng = np.random.default_rng(num_valid)
  cost = np.stack([_kmax_cost(rng, num_valid, 32, 32, padding)
                   for _ in range(2)])
  assignment = _graph_matching(cost).numpy()
  # Absolute tolerance: the +-999 rows are a constant of the total.
  _assert_optimal(cost, assignment, atol=1e-4, rtol=0.0)
  assert assignment[:, :num_valid].sum() == 2 * num_valid


def test_kmax_padding_pattern_full_size():
  rng = np.random.default_rng(5)
  cost = np.stack([_kmax_cost(rng, 60, 128, 128, -999.0),
                   _kmax_cost(rng, 128, 128, 128, -999.0),
                   _kmax_cost(rng, 7, 128, 128, 999.0)])
  _assert_optimal(cost, _graph_matching(cost), atol=1e-4, rtol=0.0)


def test_kmax_rectangular_gt_rows():
  """R padded GT rows by C slots, without padding to square outside."""
  rng = np.random.default_rng(11)
  fewer_rows = np.stack([_kmax_cost(rng, 9, 24, 40, -999.0),
                         _kmax_cost(rng, 24, 24, 40, -999.0)])
  _assert_optimal(fewer_rows, _graph_matching(fewer_rows), atol=1e-4,
                  rtol=0.0)
  # More GT rows than slots: padded rows cost +999 and stay unmatched.
  more_rows = np.stack([_kmax_cost(rng, 30, 40, 24, 999.0),
                        _kmax_cost(rng, 12, 40, 24, 999.0)])
  assignment = _graph_matching(more_rows).numpy()
  _assert_optimal(more_rows, assignment, atol=1e-4, rtol=0.0)
  assert assignment[0, :30].sum() == 24 and assignment[1, :12].sum() == 12


def test_negative_costs_and_large_constants():
  rng = np.random.default_rng(3)
  cost = rng.uniform(-1000.0, 1000.0, [2, 20, 20]).astype(np.float32)
  cost[0, ::3] = 999.0
  cost[1, :, ::4] = -999.0
  _assert_optimal(cost, _graph_matching(cost), rtol=1e-6)


def test_batch_of_mixed_matrices_matches_one_by_one():
  rng = np.random.default_rng(4)
  cost = rng.random([6, 11, 15], np.float32)
  cost[1] = np.round(cost[1] * 2)  # ties
  cost[2] = -cost[2]
  cost[3] = 5.0  # constant
  cost[4] *= 1000.0
  batched = _graph_matching(cost).numpy()
  _assert_optimal(cost, batched, rtol=1e-6)
  for index in (0, 2, 4):  # unique optima: the same pairs one by one
    single = _graph_matching(cost[index:index + 1]).numpy()
    np.testing.assert_array_equal(single[0], batched[index])


def test_eager_and_float64_input():
  cost = np.random.default_rng(8).random([2, 6, 4])  # float64
  assignment = matcher.hungarian_matching(tf.constant(cost))
  assert assignment.dtype == tf.bool
  _assert_optimal(cost, assignment)


def test_inside_tf_data():
  cost = np.random.default_rng(9).random([4, 1, 5, 7], np.float32)
  dataset = tf.data.Dataset.from_tensor_slices(cost).map(
      matcher.hungarian_matching)
  for matrix, assignment in zip(cost, dataset):
    _assert_optimal(matrix, assignment)


def test_xla_equals_graph_small():
  cost = np.random.default_rng(10).normal(size=[3, 7, 13]).astype(np.float32)
  np.testing.assert_array_equal(_xla_matching(cost), _graph_matching(cost))
  transposed = np.transpose(cost, [0, 2, 1])
  np.testing.assert_array_equal(_xla_matching(transposed),
                                _graph_matching(transposed))
  ties = np.random.default_rng(10).integers(0, 3, [3, 9, 9])
  _assert_optimal(ties, _xla_matching(ties.astype(np.float32)), rtol=0.0)


def test_xla_equals_graph_128():
  rng = np.random.default_rng(12)
  cost = np.stack([rng.random([128, 128], np.float32),
                   _kmax_cost(rng, 40, 128, 128, -999.0)])
  xla = _xla_matching(cost)
  _assert_optimal(cost, xla, atol=1e-4)
  np.testing.assert_array_equal(xla, _graph_matching(cost))


def test_nonfinite_costs_give_a_valid_assignment():
  rng = np.random.default_rng(13)
  cost = rng.random([4, 6, 6], np.float32)
  cost[0, 0, :5] = np.nan  # row 0 can avoid NaN only in column 5
  cost[1, :, 2] = np.inf  # a column of +inf must be used once
  cost[2, 3, 1] = -np.inf  # must be taken
  cost[3] = np.nan  # nothing finite
  assignment = _graph_matching(cost).numpy()
  for chosen in assignment:
    assert chosen.sum() == 6
    assert chosen.sum(axis=0).max() == 1 and chosen.sum(axis=1).max() == 1
  assert assignment[0, 0, 5]
  assert assignment[1, :, 2].sum() == 1
  assert assignment[2, 3, 1]
  # Away from the forced entries the rest is still optimal.
  finite = np.where(np.isfinite(cost[:3]), cost[:3], 1e6)
  finite[2, 3, 1] = -1e6
  _assert_optimal(finite, assignment[:3], rtol=1e-6)
  np.testing.assert_array_equal(
      matcher.host_hungarian_matching(cost)[:3].numpy().sum(axis=(1, 2)),
      [6, 6, 6])


def test_no_gradient_through_the_assignment():
  cost = tf.constant(np.random.default_rng(14).random([2, 5, 8], np.float32))
  with tf.GradientTape(persistent=True) as tape:
    tape.watch(cost)
    assignment = tf.cast(matcher.hungarian_matching(cost), tf.float32)
    matched_cost = tf.reduce_sum(cost * tf.stop_gradient(assignment))
  assert tape.gradient(assignment, cost) is None
  np.testing.assert_array_equal(tape.gradient(matched_cost, cost), assignment)


def test_host_path_matches_scipy_eager_and_in_graph():
  cost = np.random.default_rng(15).normal(size=[3, 9, 5]).astype(np.float32)
  eager = matcher.host_hungarian_matching(cost)
  graph = tf.function(matcher.host_hungarian_matching)(cost)
  assert graph.shape == (3, 9, 5) and graph.dtype == tf.bool
  _assert_optimal(cost, eager)
  np.testing.assert_array_equal(eager, graph)
  np.testing.assert_array_equal(eager, _graph_matching(cost))


def _op_types(fn, cost):
  """The op types of `fn` traced as a plain tf.function on `cost`."""
  graph = tf.function(fn).get_concrete_function(
      tf.TensorSpec(cost.shape, tf.float32)).graph
  return {op.type for op in graph.get_operations()}


def test_match_chooses_host_by_default_and_tf_path_when_asked():
  cost = np.random.default_rng(16).random([2, 4, 6], np.float32)
  expected = _graph_matching(cost)
  np.testing.assert_array_equal(matcher.match(cost), expected)  # eagerly
  np.testing.assert_array_equal(tf.function(matcher.match)(cost), expected)
  host_ops = {'PyFunc', 'PyFuncStateless'}
  assert _op_types(matcher.match, cost) & host_ops
  tf_path = functools.partial(matcher.match, use_host=False)
  assert not _op_types(tf_path, cost) & host_ops
  # A compiled caller passes use_host=False.
  np.testing.assert_array_equal(
      tf.function(tf_path, jit_compile=True)(cost), expected)


def test_match_takes_tf_path_on_tpu(monkeypatch):
  monkeypatch.setattr(matcher.policy, 'is_tpu_strategy', lambda: True)
  cost = np.random.default_rng(18).random([2, 5, 3], np.float32)
  assert not _op_types(matcher.match, cost) & {'PyFunc', 'PyFuncStateless'}
  np.testing.assert_array_equal(matcher.match(cost), _graph_matching(cost))
  with pytest.raises(ValueError, match='use_host'):
    matcher.match(cost, use_host=True)


def test_host_path_cannot_be_compiled():
  # What `match` documents: under XLA the caller must ask for use_host=False.
  forced = tf.function(lambda x: matcher.match(x, use_host=True),
                       jit_compile=True)
  with pytest.raises(tf.errors.InvalidArgumentError):
    forced(tf.zeros([1, 2, 2]))


def test_empty_and_invalid_inputs():
  assert matcher.hungarian_matching(tf.zeros([2, 0, 5])).shape == (2, 0, 5)
  assert _graph_matching(tf.zeros([2, 4, 0])).shape == (2, 4, 0)  # unknown
  assert _graph_matching(tf.zeros([0, 3, 3])).shape == (0, 3, 3)
  with pytest.raises(ValueError, match=r'\[B, R, C\]'):
    matcher.hungarian_matching(tf.zeros([3, 3]))
  with pytest.raises(TypeError, match='floating'):
    matcher.hungarian_matching(tf.zeros([1, 3, 3], tf.int32))


def test_kmax_coco_shape_needs_few_iterations():
  """181 GT rows (128 things + 53 stuff, +999 padding) by 128 slots."""
  rng = np.random.default_rng(17)
  cost = np.stack([_kmax_cost(rng, num_valid, 181, 128, 999.0)
                   for num_valid in (5, 25)])
  with_steps = matcher._match_with_steps  # pylint: disable=protected-access
  assignment, steps = tf.function(with_steps)(cost)
  _assert_optimal(cost, assignment, atol=1e-4, rtol=0.0)
  # About 30; the other orientation or zero padding take 10 to 400 times more.
  assert steps < 100
