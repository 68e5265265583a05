"""Exact minimum-cost bipartite matching (the Hungarian step of the kMaX loss).

Given a batch of cost matrices c [B, R, C], `hungarian_matching` returns for
each one an assignment x in {0, 1}^{R x C} with exactly min(R, C) ones, at
most one per row and per column, that minimises sum_ij x_ij c_ij exactly
(the linear sum assignment problem). kMaX-DeepLab matches R ground-truth masks
to C = N mask slots with c = -Dice * class probability (spec section 5.2).

Algorithm: shortest augmenting paths with dual potentials, the O(n^3) form of
the Hungarian method (Kuhn 1955, Munkres 1957) used by Jonker & Volgenant
(1987), written with static shapes so that it runs in graph mode, under XLA
and on TPU:

1. Non-finite entries are made finite (see "Non-finite costs" below) and the
   matrix is padded to a square n x n, n = max(R, C), with dummy rows or
   columns of one constant cost. Every dummy row (column) costs the same
   whichever column (row) it takes, so the padding does not change which
   real pairs are optimal, and dropping the dummies afterwards leaves
   min(R, C) pairs. The constant is the largest finite cost, so that rows of
   kMaX's +999 padding (more GT rows than slots) stay constant rows.
   The square is transposed when it has more constant columns than constant
   rows: a constant row costs the same in every column and is placed by the
   greedy start of step 3 almost for free, whereas constant columns make the
   searches of step 4 long. Exactness does not depend on either choice; speed
   does (COCO's 181 x 128 kMaX cost, B = 8: 62 iterations; 470 in the other
   orientation; 12000 with zero padding).
2. Row and column reduction: each row's minimum, then each column's
   minimum is subtracted. Every permutation's total changes by the same
   constant, so the optimum is unchanged; the matrix becomes non-negative
   with a zero in every row and column, and float32 potentials stay near
   the scale of the cost differences (kMaX's +-999 padding rows become rows
   of zeros).
3. Greedy start: in each of two rounds every unmatched row proposes one of
   its zeros in an unmatched column (the first one at or after its own
   index, cyclically, so that rows of equal costs spread over different
   columns) and each column accepts its lowest proposer. With u = v = 0
   this partial matching is dual feasible (c_ij - u_i - v_j >= 0) and tight
   on every matched pair, the invariant of step 4.
4. Each free row is inserted by a Dijkstra search over columns on the
   reduced costs c_ij - u_i - v_j (Tomizawa 1971, Edmonds & Karp 1972): a
   virtual column 0 holds the new row; every step adds to the search tree
   the unvisited column with the smallest slack `minv`, shifts the potentials
   of the tree by that slack (which keeps feasibility and tightness), and
   stops at an unmatched column. The matching is then flipped along the tree
   path from that column back to column 0. Each column remembers its whole
   path as a mask `path` [n+1], so the flip is one vectorised step rather
   than a pointer chase.
5. The batch runs as one flat `tf.while_loop`: an iteration performs one
   search step for every batch element; an element that reaches a free
   column augments and starts its next free row in the same iteration, and
   a finished element idles. The loop stops when every element is done. A
   search adds one column per step, so there are at most n(n+1)/2
   iterations of O(n) work per element: O(n^3) in all. (tf.map_fn over the
   batch runs the sum instead of the maximum of the elements' iterations,
   one lane each: slower in graph mode and on parallel hardware; under XLA
   on a CPU it was 1.5x faster, but there `match` uses the host path.)

Exactness: in exact arithmetic the result is optimal. In float32 the
potentials carry rounding of about 1e-7 times the cost scale per step, so
the total cost matches an exact solver (scipy's linear_sum_assignment) to
about 1e-6 relative, and exactly for small integer costs. Among equally
cheap assignments (ties) the one returned is deterministic but may differ
from scipy's.

Non-finite costs: NaN and +inf are replaced by hi + m and -inf by lo - m,
where lo, hi are the matrix's smallest and largest finite costs and
m = (n + 1)(hi - lo) + |hi| + |lo| + 1 (lo = hi = 0 if nothing is finite).
One such entry outweighs any difference between assignments of finite
costs, so the matching stays a valid assignment, uses as few NaN/+inf pairs
as possible and as many -inf pairs as possible (each counted against the
other when both kinds are present). The host path sees the same replaced
matrix. Finite costs are assumed to be far inside the float32 range
(|c| < 1e30 / n, say) so that hi + m stays finite.

Host path: `host_hungarian_matching` gives the same contract through
`tf.numpy_function` and scipy (CPU/GPU only, not under XLA or on TPU);
`match` chooses between the two paths, see its docstring: an XLA-compiled
caller must ask for the TensorFlow path (use_host=False).
"""
import numpy as np
import scipy.optimize
import tensorflow as tf

from deeplab2_kmax.model.kernels import policy

# Proposal rounds of the greedy start (step 3): a second round matches most
# rows that lost the first one when costs tie; more rounds rarely help.
_GREEDY_ROUNDS = 2


def _validate(cost, caller):
  """Returns `cost` as a float32 tensor of rank 3, or raises."""
  cost = tf.convert_to_tensor(cost)
  if not cost.dtype.is_floating:
    raise TypeError(f'{caller}: cost must be a floating-point tensor '
                    f'[B, R, C]; found dtype {cost.dtype.name}.')
  if cost.shape.rank != 3:
    raise ValueError(f'{caller}: cost must have shape [B, R, C] (a batch of '
                     f'cost matrices); found shape {cost.shape}.')
  return tf.cast(cost, tf.float32)


def _make_finite(cost):
  """Replaces NaN/+inf and -inf as the module docstring says.

  Returns the finite cost [B, R, C] and its largest finite entry [B, 1, 1]
  (0 where nothing is finite).
  """
  finite = tf.math.is_finite(cost)  # [B, R, C]
  any_finite = tf.reduce_any(finite, axis=[1, 2], keepdims=True)  # [B, 1, 1]
  hi = tf.reduce_max(tf.where(finite, cost, -np.inf), axis=[1, 2],
                     keepdims=True)  # [B, 1, 1]
  lo = tf.reduce_min(tf.where(finite, cost, np.inf), axis=[1, 2],
                     keepdims=True)  # [B, 1, 1]
  hi = tf.where(any_finite, hi, 0.0)
  lo = tf.where(any_finite, lo, 0.0)
  n = tf.cast(tf.maximum(tf.shape(cost)[1], tf.shape(cost)[2]), tf.float32)
  margin = (n + 1.0) * (hi - lo) + tf.abs(hi) + tf.abs(lo) + 1.0  # [B, 1, 1]
  cost = tf.where(tf.math.is_nan(cost) | (cost == np.inf), hi + margin, cost)
  return tf.where(cost == -np.inf, lo - margin, cost), hi


def _pad_to_square(cost, value):
  """[B, R, C] -> [B, n, n], n = max(R, C), padded with `value` [B, 1, 1]."""
  rows, cols = tf.shape(cost)[1], tf.shape(cost)[2]
  n = tf.maximum(rows, cols)
  ids = tf.range(n)
  padding = (ids[:, None] >= rows) | (ids[None, :] >= cols)  # [n, n]
  cost = tf.pad(cost, [[0, 0], [0, n - rows], [0, n - cols]])  # [B, n, n]
  return tf.where(padding[None], value, cost)


def _more_constant_columns(cost):
  """[B, n, n] -> [B] bool: more constant columns than constant rows."""
  constant_rows = tf.reduce_max(cost, 2) == tf.reduce_min(cost, 2)  # [B, n]
  constant_cols = tf.reduce_max(cost, 1) == tf.reduce_min(cost, 1)  # [B, n]
  count = lambda lines: tf.reduce_sum(tf.cast(lines, tf.int32), axis=1)
  return count(constant_cols) > count(constant_rows)


def _transpose_where(flip, matrices):
  """Transposes the [B, n, n] matrices where flip [B] is True."""
  return tf.where(flip[:, None, None], tf.transpose(matrices, [0, 2, 1]),
                  matrices)


def _greedy_zero_matching(reduced, rounds=_GREEDY_ROUNDS):
  """Matches rows to zero-cost columns; [B, n, n] -> [B, n] 1-based rows.

  Entry j of the result is the 1-based row matched to column j, 0 if none.
  In each round every unmatched row proposes one zero among the unmatched
  columns and every such column accepts its lowest proposing row.
  """
  batch, n = tf.shape(reduced)[0], tf.shape(reduced)[1]
  ids = tf.range(n)
  offset = tf.math.floormod(ids[None, :] - ids[:, None], n)  # [n, n] (j-i)%n
  zero = reduced == 0.0  # [B, n, n]
  rows = tf.broadcast_to(ids, [batch, n])  # [B, n] row ids
  row_of_col = tf.zeros([batch, n], tf.int32)  # [B, n]
  row_free = tf.ones([batch, n], tf.bool)  # [B, n]
  for _ in range(rounds):
    open_zero = zero & row_free[:, :, None] & (row_of_col == 0)[:, None, :]
    key = tf.where(open_zero, offset[None], n)  # [B, n, n]
    choice = tf.argmin(key, axis=2, output_type=tf.int32)  # [B, n] per row
    proposing = tf.reduce_min(key, axis=2) < n  # [B, n]
    # Each column is won by its lowest proposing row; segment n of every
    # matrix collects the rows without a proposal.
    segment = (tf.where(proposing, choice, n)
               + (n + 1) * tf.range(batch)[:, None])  # [B, n]
    winner = tf.math.unsorted_segment_min(rows, segment, batch * (n + 1))
    winner = tf.reshape(winner, [batch, n + 1])[:, :n]  # [B, n] per column
    won = winner < n  # empty segments hold the int32 maximum
    row_of_col = tf.where(won, winner + 1, row_of_col)
    accepted = proposing & (tf.gather(winner, choice, batch_dims=1) == rows)
    row_free &= ~accepted
  return row_of_col


def _first_free_row(row_free):
  """[B, n+1] bool -> ([B] int32 first free row, [B] bool any free)."""
  first = tf.argmax(tf.cast(row_free, tf.int32), axis=1, output_type=tf.int32)
  return first, tf.reduce_any(row_free, axis=1)


def _solve_square(cost):
  """Optimal permutation of [B, n, n] finite costs.

  Returns p [B, n+1] int32, where p[:, j] is the 1-based row matched to
  column j (j >= 1) and p[:, 0] belongs to the virtual column of step 4, and
  the number of loop iterations (a scalar, for benchmarks).
  """
  batch, n = tf.shape(cost)[0], tf.shape(cost)[1]
  cost -= tf.reduce_min(cost, axis=2, keepdims=True)  # [B, n, n] row minima 0
  cost -= tf.reduce_min(cost, axis=1, keepdims=True)  # column minima 0 too
  # Row and column 0 are the virtual ones: never read, so their cost is 0.
  cost = tf.pad(cost, [[0, 0], [1, 0], [1, 0]])  # [B, n+1, n+1]
  ids = tf.range(n + 1)  # [n+1] row / column ids
  col_ids = ids[None, :]  # [1, n+1]
  p = tf.pad(_greedy_zero_matching(cost[:, 1:, 1:]), [[0, 0], [1, 0]])
  # A row is free if no column holds it; id 0 (not a row) is held by p[:, 0].
  row_free = ~tf.reduce_any(p[:, :, None] == ids[None, None, :], axis=1)
  row, active = _first_free_row(row_free)  # [B], [B]
  p = tf.concat([row[:, None], p[:, 1:]], axis=1)  # [B, n+1]

  inf = tf.constant(np.inf, tf.float32)
  zeros_f = tf.zeros([batch, n + 1], tf.float32)
  zeros_b = tf.zeros([batch, n + 1], tf.bool)
  state = dict(
      p=p,  # [B, n+1] row held by each column (0 = free column)
      way=tf.zeros([batch, n + 1], tf.int32),  # [B, n+1] tree parent column
      u=zeros_f,  # [B, n+1] row potentials (index 0 unused)
      v=zeros_f,  # [B, n+1] column potentials
      minv=zeros_f + inf,  # [B, n+1] slack of each column to the tree
      used=zeros_b,  # [B, n+1] columns in the search tree
      tree_rows=zeros_b,  # [B, n+1] rows in the search tree
      path=tf.zeros([batch, n + 1, n + 1], tf.bool),  # columns root..j
      j0=tf.zeros([batch], tf.int32),  # [B] column added last
      row_free=row_free,  # [B, n+1]
      active=active)  # [B] element still has free rows

  def step(s):
    active = s['active']  # [B]
    at_j0 = col_ids == s['j0'][:, None]  # [B, n+1]
    used = s['used'] | at_j0
    i0 = tf.gather(s['p'], s['j0'], batch_dims=1)  # [B] row entering tree
    tree_rows = s['tree_rows'] | (col_ids == i0[:, None])  # [B, n+1]
    u_i0 = tf.gather(s['u'], i0, batch_dims=1)  # [B]
    reduced = (tf.gather(cost, i0, batch_dims=1) - u_i0[:, None]
               - s['v'])  # [B, n+1]
    better = ~used & (reduced < s['minv'])
    minv = tf.where(better, reduced, s['minv'])
    way = tf.where(better, s['j0'][:, None], s['way'])
    slack = tf.where(used, inf, minv)  # [B, n+1]
    delta = tf.reduce_min(slack, axis=1)  # [B]
    closest = slack == delta[:, None]  # [B, n+1]
    # Among the closest columns prefer a free one: the search ends sooner.
    closest_free = closest & (s['p'] == 0)
    j1 = tf.where(
        tf.reduce_any(closest_free, axis=1),
        tf.argmax(tf.cast(closest_free, tf.int32), 1, output_type=tf.int32),
        tf.argmax(tf.cast(closest, tf.int32), 1, output_type=tf.int32))  # [B]
    u = s['u'] + tf.where(tree_rows, delta[:, None], 0.0)
    v = s['v'] - tf.where(used, delta[:, None], 0.0)
    minv = tf.where(used, minv, minv - delta[:, None])
    at_j1 = col_ids == j1[:, None]  # [B, n+1]
    parent = tf.gather(way, j1, batch_dims=1)  # [B]
    path_j1 = tf.gather(s['path'], parent, batch_dims=1) | at_j1  # [B, n+1]
    path = tf.tensor_scatter_nd_update(
        s['path'], tf.stack([tf.range(batch), j1], axis=1), path_j1)
    found = tf.gather(s['p'], j1, batch_dims=1) == 0  # [B] free column
    augment = active & found  # [B]
    search = active & ~found  # [B]

    # Flip the matching along root..j1: column j takes the row of way[j].
    flip = path_j1 & (col_ids > 0)  # [B, n+1]
    p_flipped = tf.where(flip, tf.gather(s['p'], way, batch_dims=1), s['p'])
    row_free = s['row_free'] & ~(col_ids == s['p'][:, :1])  # row 0 now held
    row_free = tf.where(augment[:, None], row_free, s['row_free'])
    next_row, has_next = _first_free_row(row_free)  # [B], [B]
    p_next = tf.concat([next_row[:, None], p_flipped[:, 1:]], axis=1)

    # A finished element runs the step too, but only p and row_free, which
    # it keeps, are read after the loop.
    restart = augment[:, None]  # [B, 1] start the next row from column 0
    return dict(
        p=tf.where(restart, p_next, s['p']),
        way=way,
        u=u,
        v=v,
        minv=tf.where(restart, inf, minv),
        used=used & ~restart,
        tree_rows=tree_rows & ~restart,
        path=path,  # stale rows are never read
        j0=tf.where(augment, 0, j1),
        row_free=row_free,
        active=search | (augment & has_next))

  steps, state = tf.while_loop(
      lambda _, s: tf.reduce_any(s['active']),
      lambda k, s: (k + 1, step(s)), (tf.constant(0), state),
      maximum_iterations=n * (n + 1))
  return state['p'], steps


def hungarian_matching(cost):
  """Exact minimum-cost assignment in TensorFlow ops (graph, XLA, TPU).

  Args:
    cost: float tensor [B, R, C] (R < C, R = C and R > C all allowed; any
      float dtype, solved in float32). Non-finite entries are handled as the
      module docstring says.

  Returns:
    bool tensor [B, R, C] with exactly min(R, C) True entries per matrix, at
    most one per row and column, of minimum total cost. It has no gradient
    (use it under tf.stop_gradient / as a constant weight).
  """
  cost = _validate(cost, 'hungarian_matching')
  if cost.shape[1] == 0 or cost.shape[2] == 0:
    return tf.zeros_like(cost, tf.bool)
  return _match_with_steps(cost)[0]


def _match_with_steps(cost):
  """Steps 1-5 of the module docstring on float32 cost [B, R, C].

  Returns the assignment [B, R, C] bool and the number of loop iterations
  (for benchmarks).
  """
  rows, cols = tf.shape(cost)[1], tf.shape(cost)[2]
  cost, largest = _make_finite(tf.stop_gradient(cost))  # [B, R, C]
  square = _pad_to_square(cost, largest)  # [B, n, n]
  flip = _more_constant_columns(square)  # [B]
  p, steps = _solve_square(_transpose_where(flip, square))  # [B, n+1]
  n = tf.shape(square)[1]
  assignment = tf.equal(p[:, None, 1:],
                        tf.range(1, n + 1)[None, :, None])  # [B, n, n]
  assignment = _transpose_where(flip, assignment)
  return assignment[:, :rows, :cols], steps


def _scipy_assignment(cost):
  """numpy [B, R, C] finite costs -> bool [B, R, C] optimal assignment."""
  assignment = np.zeros(cost.shape, np.bool_)
  for index, matrix in enumerate(cost):
    rows, cols = scipy.optimize.linear_sum_assignment(matrix.astype(np.float64))
    assignment[index, rows, cols] = True
  return assignment


def host_hungarian_matching(cost):
  """Same contract as `hungarian_matching`, solved by scipy on the host.

  Runs scipy.optimize.linear_sum_assignment through tf.numpy_function, so it
  works eagerly and in tf.function graphs on CPU and GPU but not under XLA
  (jit_compile=True) nor on TPU.
  """
  cost = _validate(cost, 'host_hungarian_matching')
  cost, _ = _make_finite(tf.stop_gradient(cost))  # [B, R, C]
  assignment = tf.numpy_function(_scipy_assignment, [cost], tf.bool,
                                 stateful=False)
  assignment.set_shape(cost.shape)
  return assignment  # [B, R, C]


def match(cost, *, use_host=None):
  """Optimal assignment [B, R, C] bool, on the host or in TensorFlow.

  No public TensorFlow API tells whether a function is being compiled by
  XLA, so the caller says so: code that runs under
  `tf.function(jit_compile=True)` (or inside any XLA-compiled function)
  must pass use_host=False; the trainer does when `trainer_options.
  jit_compile` is set or on a TPU.

  Rule for use_host=None: the host (scipy) path, eagerly or in a plain
  tf.function, unless the current strategy is a TPUStrategy (then the
  TensorFlow path). Measured by scripts/benchmark_matcher.py on a 2-core
  x86 CPU (ms per batch, COCO kMaX cost 181 x 128 / uniform 128 x 128):

    B    host         TF graph       TF XLA
    8    3.9 / 6.1    16 / 158       7.7 / 30
    64   24 / 41      88 / 405       49 / 174

  The GPU was not measured (none available); there the TF path is a loop of
  50 to 800 sequential iterations of small kernels per batch, so the host
  path is chosen as well.

  Args:
    cost: float tensor [B, R, C].
    use_host: True forces the host path (raises under a TPUStrategy; fails
      when XLA compiles it), False the TensorFlow path, None chooses by the
      rule above.
  """
  tpu = policy.is_tpu_strategy()  # the host path cannot run there
  if use_host is None:
    use_host = not tpu
  if use_host and tpu:
    raise ValueError('match(use_host=True): the scipy host path cannot run '
                     'on a TPU; pass use_host=None or False to use the '
                     'TensorFlow path.')
  if use_host:
    return host_hungarian_matching(cost)
  return hungarian_matching(cost)
