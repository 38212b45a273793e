"""Simple experiment 1: the two-layer linear network of Rahimi's talk.

Fit ``y = x W_1 W_2`` to a linear target of condition number 1e5. Gradient
descent falls fast, then crawls orders of magnitude above the optimum although
the gradient has not vanished; Gauss–Newton and Levenberg–Marquardt, better
directions on the same problem, reach float64's rounding floor in a few dozen
steps. The curvature where gradient descent stalls explains it, once the
network's symmetry ``W_1 -> W_1 G, W_2 -> G^{-1} W_2`` (which changes no
prediction) is quotiented out: along the directions that change the function,
the Hessian's eigenvalues span several decades (at the default study's
stalls 3.7-5.7, about the target's condition number; at 4 of its 16, one
seed of lr 0.01, two of 0.1, one of 0.3, the smallest is slightly negative,
-3.2e-6 at most: as slow to leave), so any stable step size moves along the
flattest of them at a crawl.

The first-order methods (step sizes, scales, seeds) run ``steps`` iterations
as one grid, the least-squares ones ``solver_steps`` as another (one program
per optimizer: ``engine.auto_partition``). Depth and initialization can be
varied to compare the plateau-then-drop dynamics of small initializations;
``saxe`` measures each mode's half-rise time from a balanced, aligned small
initialization against Saxe et al.'s (2013) solution.
"""

import dataclasses
import math
import os
from typing import Any

import jax
from jax.flatten_util import ravel_pytree
import jax.numpy as jnp
import numpy as np

from rahimi_jax import data as data_lib
from rahimi_jax import diagnostics
from rahimi_jax import engine
from rahimi_jax import program
from rahimi_jax import grid as grid_lib
from rahimi_jax import plots
from rahimi_jax import registry
from rahimi_jax import results as results_lib
from rahimi_jax import stats
from rahimi_jax import train as train_lib
from rahimi_jax import studies

# Method names of this study -> optimizer registry names.
METHODS = {'gd': 'sgd', 'adam': 'adam', 'lm': 'levenberg_marquardt',
           'gn': 'gauss_newton'}
LEAST_SQUARES = ('lm', 'gn')
NULL_TOLERANCE = 1e-12  # |lambda| <= this * lambda_max counts as null
# J's null space (the directions that change no prediction) is where its
# singular values are at rounding: at most max(J.shape) eps sigma_max (numpy's
# ``matrix_rank``). NULL_TOLERANCE on J^T J's eigenvalues (1e-6 sigma_max on
# J's) called 4 function-changing directions null at depth 3, init 0.03 after
# 2800 steps: GN eigenvalues 9.6e-13 lambda_max, where the null ones are
# 2e-31.
# "Machine precision" of a least-squares run: how far above the net's optimal
# loss it may end (plus 1e3 eps of the optimum, the rounding of a loss of
# that size; WORKSPACE.md, "The target measured from the optimum").
TARGET_LOSS = {'float64': 1e-20, 'float32': 1e-10}


@dataclasses.dataclass(frozen=True)
class DeepLinearConfig:
  """The two-layer (or deeper) linear network experiment.

  Attributes:
    condition_number: of the target matrix W* (singular values log-spaced).
    noise: target noise std (0: realizable when the width is >= rank).
    n_train: samples (full batch).
    in_dim: input width (x in R^in_dim).
    out_dim: output width.
    width: hidden width of every layer.
    depths: hidden-layer counts to compare (1: the two-layer network).
    methods: of ``METHODS``.
    gd_lrs: gradient-descent step sizes.
    adam_lrs: Adam learning rates.
    init: initializer name (``orthogonal``, ``gaussian``, ...).
    init_scales: multipliers of the initializer (small: Saxe's plateaus).
    seeds: initialization seeds (the target is fixed by ``data_seed``).
    steps: iterations of the first-order methods (gd, adam).
    solver_steps: iterations of the least-squares methods (lm, gn), each
      logged.
    log_every: steps between the first-order methods' logged metrics.
    dtype: 'float64' resolves losses far below float32's resolution; the
      data are stored in it.
    data_seed: seed of the target and the samples.
    saxe: also measure each mode's half-rise time from a balanced, aligned
      initialization of scale ``init_scales`` (two-layer network, every
      ``gd_lrs``) against the theory.
  """
  condition_number: float = 1e5
  noise: float = 0.0
  n_train: int = 1000
  in_dim: int = 6
  out_dim: int = 10
  width: int = 6
  depths: tuple[int, ...] = (1,)
  methods: tuple[str, ...] = ('gd', 'adam', 'lm', 'gn')
  gd_lrs: tuple[float, ...] = (0.01, 0.03, 0.1, 0.3)
  adam_lrs: tuple[float, ...] = (0.01,)
  init: str = 'orthogonal'
  init_scales: tuple[float, ...] = (1.0,)
  seeds: int = 4
  steps: int = 100_000
  solver_steps: int = 30
  log_every: int | None = None  # None: steps // 100 (at least 1)
  dtype: str = 'float64'
  data_seed: int = 0
  saxe: bool = False

  def __post_init__(self):
    registry.check_options(METHODS, self.methods, 'methods')
    if self.log_every is None and isinstance(self.steps, int):
      object.__setattr__(self, 'log_every', max(1, self.steps // 100))
    registry.get_axis('init').get(self.init)
    for name in ('condition_number', 'n_train', 'in_dim', 'out_dim', 'width',
                 'seeds', 'steps', 'solver_steps', 'log_every'):
      value = getattr(self, name)
      if not (isinstance(value, (int, float)) and math.isfinite(value)
              and value >= 1):
        raise ValueError(f'{name} must be >= 1; got {value!r}.')
    for name in ('depths', 'gd_lrs', 'adam_lrs', 'init_scales'):
      values = tuple(getattr(self, name))
      if not values or any(not math.isfinite(v) or v <= 0 for v in values):
        raise ValueError(f'{name} must be a non-empty list of numbers > 0; '
                         f'got {list(values)}.')
      if len(set(values)) != len(values):
        raise ValueError(f'{name}: values listed twice in {list(values)}.')
      object.__setattr__(self, name, values)
    if any(not isinstance(d, int) or isinstance(d, bool) for d in self.depths):
      raise ValueError(f'depths must be whole numbers of hidden layers; got '
                       f'{list(self.depths)}.')
    if self.noise < 0 or not math.isfinite(self.noise):
      raise ValueError(f'noise must be >= 0; got {self.noise!r}.')
    studies.check_dtype(self.dtype, tuple(TARGET_LOSS))
    if self.saxe and 'gd' not in self.methods:
      raise ValueError(f'saxe measures gradient descent; methods '
                       f'{list(self.methods)} have no gd.')
    for depth in self.depths:
      for least_squares in (False, True):
        self.train_config(depth, least_squares)  # validates steps, log_every

  @property
  def target_loss(self) -> float:
    """How far above ``optimal_loss`` a converged run may end."""
    return TARGET_LOSS[self.dtype]

  def dataset(self) -> data_lib.Dataset:
    return data_lib.synthetic(
        n_train=self.n_train, n_test=self.n_train, in_dim=self.in_dim,
        out_dim=self.out_dim, condition_number=self.condition_number,
        noise=self.noise, seed=self.data_seed, dtype=self.dtype)

  def grids(self) -> dict[bool, grid_lib.Grid]:
    """``{least_squares: grid}``: the first-order and least-squares members.

    Each method with its own step sizes; Gauss–Newton/LM take none. The init
    is a one-option choice axis, so the results name it in a column.
    """
    lrs = {'gd': self.gd_lrs, 'adam': self.adam_lrs}
    out = {}
    for least_squares in (False, True):
      parts = [grid_lib.Grid(
          grid_lib.Choice('optimizer', (METHODS[m],)),
          grid_lib.Choice('init', (self.init,)),
          grid_lib.Values('learning_rate', lrs.get(m, (1.0,))),
          grid_lib.Values('init_scale', self.init_scales),
          grid_lib.Seeds(self.seeds)) for m in self.methods
               if (m in LEAST_SQUARES) == least_squares]
      if parts:
        out[least_squares] = grid_lib.Grid.union(*parts)
    return out

  def grid(self) -> grid_lib.Grid:
    """Every member (first-order, then least-squares), named uniquely."""
    return grid_lib.Grid.union(*self.grids().values())

  def train_config(self, depth: int,
                   least_squares: bool = False) -> train_lib.TrainConfig:
    return train_lib.TrainConfig(
        model='deep_linear', hidden=(self.width,) * int(depth),
        steps=self.solver_steps if least_squares else self.steps,
        batch_size=0, log_every=1 if least_squares else self.log_every,
        dtype=self.dtype, diagnostics=('grad_norm',),
        options=(('init', (self.init,)),))


def run(config: DeepLinearConfig) -> results_lib.Results:
  """Trains every method, step size, scale, depth and seed; tidy results."""
  dataset = config.dataset()
  grids = config.grids()
  total = sum(len(g) for g in grids.values()) * len(config.depths)
  parts = []

  def merged():
    meta = dict(parts[0].metadata)
    meta['axes'] = {**meta['axes'], 'depth': list(config.depths)}
    meta['engine'] = [p.metadata['engine'] for p in parts]
    meta['partition'] = [p.metadata['partition'] for p in parts]
    return results_lib.concat(parts, meta)

  def at_depth(part, depth):  # a member's name says its depth too
    part.columns['member'] = np.asarray(
        [member_name(depth, m) for m in part.columns['member']])
    part.columns['depth'] = np.full(len(part), depth)
    parts.append(part)

  done = 0
  for depth in config.depths:
    for least_squares, grid in grids.items():
      try:
        part = engine.run(
            config.train_config(depth, least_squares), grid, dataset,
            partition='auto',
            metadata={'config': dataclasses.asdict(config)})
      except KeyboardInterrupt as e:  # program.Interrupted, or in a compile
        last = getattr(e, 'results', None)
        if last is not None:
          at_depth(last, depth)
        raise program.Interrupted(merged() if parts else None,
                                  done + getattr(e, 'finished', 0),
                                  total) from None
      at_depth(part, depth)
      done += len(grid)
  return merged()


def member_name(depth: int, grid_member: str) -> str:
  """A member's name in the results: its depth, then its grid member's
  name (the grids of every depth name theirs alike)."""
  return f'depth={depth},{grid_member}'


def _log_interval(values, floor: float):
  """Geometric mean of ``values`` and its 95% interval; values >= 0.

  ``stats.mean_ci`` of the log10 values, mapped back:
  an interval for the geometric mean ``10**E[log10 x]`` (the median, for
  log-symmetric seeds), not for the arithmetic mean; its coverage is
  ``mean_ci``'s on the log values (at least nominal when they are
  normal, or skewed up to an exponential's). A loss of
  exactly 0 has no logarithm: it counts as ``floor`` (the dtype's smallest
  normal number), so a mean and interval with zeros are upper bounds; the
  count of zeros comes back with them. NaN (a diverged run) is left out.

  Returns:
    ``(interval, zeros)``.

  Raises:
    ValueError: a value is negative (no loss of this study is).
  """
  values = np.asarray(values, np.float64)
  values = values[~np.isnan(values)]
  if np.any(values < 0):
    raise ValueError(f'_log_interval: negative values {values[values < 0]}; '
                     'losses and norms are >= 0.')
  zeros = int(np.sum(values == 0))
  ci = stats.mean_ci(np.log10(np.maximum(values, floor)))
  with np.errstate(over='ignore'):  # a bound past float64's range: inf
    low, mean, high = (float(np.power(10.0, v))
                       for v in (ci.low, ci.mean, ci.high))
  return stats.Interval(mean, low, high, ci.n), zeros


def symmetry_tangents(weights) -> jax.Array:
  """``[k, n]``: the directions the network's symmetries move the weights.

  For ``W_{i+1} W_i``-adjacent layers, ``W_i -> W_i G``, ``W_{i+1} -> G^{-1}
  W_{i+1}`` (``G`` invertible, one per hidden layer) leaves the product, hence
  every prediction and the loss, unchanged. Its tangents at ``G = I + tA``:
  ``(W_i A, -A W_{i+1})`` for each basis matrix ``A`` of each hidden layer,
  flattened like ``ravel_pytree(weights)``; ``k`` = sum of the squared hidden
  widths. They span the symmetry's orbit directions (a basis where the
  weights are full rank).
  """
  weights = list(weights)
  rows = []
  for i, w in enumerate(weights[:-1]):
    h = w.shape[1]
    for a in jnp.eye(h * h, dtype=w.dtype).reshape(h * h, h, h):
      tangent = [jnp.zeros_like(v) for v in weights]
      tangent[i] = w @ a
      tangent[i + 1] = -a @ weights[i + 1]
      rows.append(ravel_pytree(tangent)[0])
  return jnp.stack(rows)


def stall_point(config: DeepLinearConfig, depth: int, member: str):
  """The weights at the end of ``member``'s run (``[W_1, ..., W_L]``), and
  the training data. ``member``: its name in the results (``member_name``)
  or its grid's."""
  member = member.removeprefix(member_name(depth, ''))
  for least_squares, grid in config.grids().items():
    names = [m.name for m in grid.members]
    if member in names:
      break
  else:
    raise ValueError(f'No member {member!r}; members: '
                     f'{", ".join(m.name for m in config.grid().members)}.')
  index = names.index(member)
  tc = config.train_config(depth, least_squares).for_grid(grid)
  knobs = jax.tree.map(lambda a: a[0], grid.knobs([index]))
  dataset = config.dataset()
  params, _ = jax.jit(train_lib.final_state, static_argnums=0)(tc, knobs,
                                                               dataset)
  dtype = jnp.dtype(config.dtype)
  return (params['w'], jnp.asarray(dataset.x_train, dtype),
          jnp.asarray(dataset.y_train, dtype))


def stall_spectrum(config: DeepLinearConfig, depth: int,
                   member: str) -> dict[str, Any]:
  """Curvature at the end of ``member``'s run, with the symmetry quotiented.

  Returns the exact Hessian spectrum (full Lanczos), the Gauss–Newton
  spectrum (``J^T J`` of the residuals), and the Hessian restricted to the
  row space of ``J``: the directions that change the network's function to
  first order. Where the hidden width is at most the input and output
  widths and the weights are full rank, that is the orthogonal complement
  of the symmetry tangents (``symmetry_dim`` of them); a wider net's
  tangents are dependent and miss null directions of ``J`` (width 12 on the
  talk's data: 144 tangents of rank 132; width 8: 68 null directions, 64
  tangents), and the complement of the tangents was not the
  function-changing space (its restricted minimum read -5.1e-2 where the
  row space's is -1.9e-2).

  Computed in float64 whatever the run's dtype (the end point of a float32
  run is cast exactly): formed in float32, ``J^T J``'s and the Hessian's
  eigenvalues below ~1e-7 lambda_max are rounding: a float32 run's report
  read 21 Gauss-Newton null eigenvalues, smallest nonzero 3.9e-9, where its
  point has 36 (the symmetry's dimension) and 3.06e-3 (WORKSPACE.md, "Stall
  spectra of a float32 run").
  """
  params, x, y = stall_point(config, depth, member)
  with jax.enable_x64(True):
    return _spectra(*jax.tree.map(lambda a: jnp.asarray(a, jnp.float64),
                                  (params, x, y)))


@jax.jit
def _spectra_program(params, x, y):
  """``_spectra``'s one program (module-level: a later call of the same
  shapes reuses it)."""
  n = x.shape[0]

  def predict(p):
    return jax.tree_util.tree_reduce(jnp.matmul, p, x)

  def loss(p):
    return train_lib.LOSSES['regression'](predict(p), y)

  def residual(p):  # loss = 0.5 ||residual||^2
    return (predict(p) - y) / jnp.sqrt(jnp.asarray(n, x.dtype))

  n_params = sum(p.size for p in jax.tree.leaves(params))
  flat, unravel = ravel_pytree(params)
  return (diagnostics.hessian_eigenvalues(loss, params, jax.random.key(0),
                                          n_params),
          jax.jacfwd(lambda f: jnp.ravel(residual(unravel(f))))(flat),
          jax.hessian(lambda f: loss(unravel(f)))(flat),
          diagnostics.gradient_norm(loss, params), loss(params))


def _spectra(params, x, y) -> dict[str, Any]:
  """``stall_spectrum``'s readings at ``params`` on ``(x, y)``."""
  n_params = sum(p.size for p in jax.tree.leaves(params))
  tangents = symmetry_tangents(params)

  # One program (evaluated op by op, the dense Hessian alone took 2.8 s).
  eigenvalues, jac, hessian, grad_norm, loss_value = jax.tree.map(
      np.asarray, _spectra_program(params, x, y))
  top = eigenvalues.max()
  null = np.abs(eigenvalues) <= NULL_TOLERANCE * top
  positive = eigenvalues[(eigenvalues > 0) & ~null]
  # J's singular values give J^T J's eigenvalues without forming it (which
  # squares the condition number: diagnostics.gauss_newton_eigenvalues), and
  # its right singular vectors the row space (the function-changing
  # directions) and null space (the directions that change no prediction).
  # Thin where J has at least as many rows as columns (its full U, 10000^2
  # for the talk's data, took 16 s of a 37 s run; vt is n x n either way).
  _, sv, vt = np.linalg.svd(jac, full_matrices=jac.shape[0] < jac.shape[1])
  gn = np.sort(np.concatenate([sv**2, np.zeros(n_params - sv.size)]))
  rank = int(np.sum(sv > max(jac.shape) * np.finfo(jac.dtype).eps * sv.max()))
  gn_null = np.arange(n_params) < n_params - rank  # gn ascending
  changing, unchanging = vt[:rank].T, vt[rank:].T
  restricted = np.linalg.eigvalsh(changing.T @ hessian @ changing)
  # Where the Hessian's negative curvature lives: the share of each negative
  # eigenvector in the directions that change no prediction.
  values, vecs = np.linalg.eigh(hessian)
  share = np.sum((unchanging.T @ vecs) ** 2, axis=0)
  negative = values < -NULL_TOLERANCE * top
  return {
      'eigenvalues': eigenvalues, 'lambda_max': float(top),
      'lambda_min': float(eigenvalues.min()),
      'n_null': int(null.sum()),
      # The null count at a threshold 10x either side: equal where a gap
      # separates the null eigenvalues from the rest.
      'n_null_range': tuple(
          int(np.sum(np.abs(eigenvalues) <= f * NULL_TOLERANCE * top))
          for f in (0.1, 10.0)),
      'weights_norm': float(np.linalg.norm(
          np.concatenate([np.ravel(w) for w in jax.tree.leaves(params)]))),
      'n_negative': int(np.sum((eigenvalues < 0) & ~null)),
      'lambda_min_positive': float(positive.min()),
      'negative_share_in_symmetry': float(np.min(share[negative],
                                                 initial=1.0)),
      'symmetry_dim': int(np.linalg.matrix_rank(np.asarray(tangents))),
      'unchanging_dim': n_params - rank,
      'restricted': restricted,
      'restricted_min': float(restricted.min()),
      'restricted_max': float(restricted.max()),
      'restricted_negative': int(np.sum(restricted < 0)),
      'gauss_newton': gn,
      'gn_null': int(gn_null.sum()),
      'gn_min_positive': float(gn[~gn_null].min()),
      'grad_norm': float(grad_norm),
      'loss': float(loss_value),
  }


def saxe_modes(config: DeepLinearConfig, lr: float, scale: float
               ) -> dict[str, np.ndarray]:
  """Mode strengths of gradient descent from a balanced, aligned small init.

  Saxe, McClelland & Ganguli (2013): with whitened inputs, the two-layer net
  started at ``W_1 = scale U``, ``W_2 = scale V^T`` (``U S V^T`` the SVD of
  the input-output correlation ``Sigma_xy = X^T Y / n``) keeps every mode
  ``u_a = U_a^T W_1 W_2 V_a`` on its own: gradient descent with step ``lr``
  on ``0.5 mean ||x W_1 W_2 - y||^2`` moves the balanced factor ``a`` (``u =
  a^2``) by ``a <- a + lr a (s - a^2)``, a sigmoid in time whose continuous
  limit rises to ``s/2`` at ``(tau / 2s) ln(s/u_0 - 1)`` with ``tau = 1/lr``
  steps, ``~(tau / 2s) ln(s/u_0)`` for small ``u_0 = scale^2``. Here the
  inputs are sampled (``X^T X / n`` is the identity only on average), so the
  modes couple weakly; the measurement says by how much.

  The run is the project's own training step (``train.make_loop``), from
  this init instead of the init axis's, for ``config.steps`` steps.

  Returns:
    ``s`` ``[m]`` (the modes' strengths, descending), ``u0``, ``u``
    ``[steps + 1, m]`` measured, ``theory`` ``[steps + 1, m]`` (the discrete
    recursion), and per mode ``measured``, ``discrete`` and ``continuous``
    half-rise times in steps (NaN where not reached within ``config.steps``
    or where the mode starts above ``s/2``).
  """
  dataset = config.dataset()
  dtype = jnp.dtype(config.dtype)
  x = np.asarray(dataset.x_train, np.float64)
  y = np.asarray(dataset.y_train, np.float64)
  u, s, vt = np.linalg.svd(x.T @ y / len(x), full_matrices=False)
  m = min(len(s), config.width)
  u, s, vt = u[:, :m], s[:m], vt[:m]
  w1 = scale * u @ np.eye(m, config.width)
  w2 = scale * np.eye(config.width, m) @ vt
  tc = dataclasses.replace(config.train_config(1), steps=config.steps,
                           log_every=config.steps)
  loop = train_lib.make_loop(tc)
  knobs = {'learning_rate': jnp.asarray(lr, jnp.float32),
           grid_lib.SEED: jax.random.key(0)}
  proj_u, proj_v = jnp.asarray(u, dtype), jnp.asarray(vt, dtype)

  @jax.jit
  def trajectory(w1, w2):
    carry = loop.init(knobs, dataset)._replace(params={'w': [w1, w2]})
    targets = loop.targets(dataset)

    def modes(carry):
      product = carry.params['w'][0] @ carry.params['w'][1]
      return jnp.einsum('im,io,mo->m', proj_u, product, proj_v)

    def step(carry, t):
      carry = loop.step(knobs, dataset, carry, t, targets)
      return carry, modes(carry)

    first = modes(carry)
    _, rest = jax.lax.scan(step, carry,
                           jnp.arange(1, config.steps + 1, dtype=jnp.int32))
    return jnp.concatenate([first[None], rest])

  measured = np.asarray(trajectory(jnp.asarray(w1, dtype),
                                   jnp.asarray(w2, dtype)), np.float64)
  u0 = scale**2
  a = np.full(m, scale, np.float64)
  theory = [a**2]
  for _ in range(config.steps):
    a = a + lr * a * (s - a**2)
    theory.append(a**2)
  theory = np.stack(theory)
  rises = s > 2 * u0
  with np.errstate(divide='ignore', invalid='ignore'):
    # The exact half-rise of the continuous limit (its small-u0 form
    # ln(s/u0) read 2.408 against 2.314 at u0 = 0.09, s = 1: 4% of error
    # that the comparison's column put on the theory).
    continuous = np.where(rises, np.log(s / u0 - 1) / (2 * s * lr), np.nan)
  return {'s': s, 'u0': u0, 'u': measured, 'theory': theory,
          'measured': _half_rise(measured, s, rises),
          'discrete': _half_rise(theory, s, rises),
          'continuous': continuous}


def _half_rise(u, s, rises):
  """First (interpolated) step at which each column of ``u`` reaches ``s/2``."""
  out = np.full(len(s), np.nan)
  for j in np.flatnonzero(rises):
    above = np.flatnonzero(u[:, j] >= s[j] / 2)
    if len(above) and above[0] > 0:
      t = above[0]
      lo, hi = u[t - 1, j], u[t, j]
      out[j] = t - 1 + (s[j] / 2 - lo) / (hi - lo)
  return out


def _saxe_report(config, lr, scale, out_dir):
  modes = saxe_modes(config, lr, scale)
  s, u0 = modes['s'], modes['u0']
  lines = [f'Saxe half-rise times: two-layer net, balanced aligned init (W1 = '
           f'{scale:g} U, W2 = {scale:g} V^T, u0 = {u0:.3g}), gd lr {lr:g} '
           f'(tau = {1 / lr:g} steps), modes of Sigma_xy = X^T Y / n; step at '
           'which u_a = U_a^T W1 W2 V_a first reaches s_a/2 (interpolated)']
  header = (f'{"mode":>4} {"s":>9} {"measured":>10} {"discrete":>10} '
            f'{"rel.err":>8} {"(tau/2s)ln(s/u0-1)":>19} {"rel.err":>8}')
  lines += [header, '-' * len(header)]
  for j in range(len(s)):
    meas, disc, cont = (modes[k][j] for k in ('measured', 'discrete',
                                              'continuous'))
    if s[j] <= 2 * u0:
      note = 'starts at u0 >= s/2: no rise'
    elif np.isnan(meas):
      note = (f'not within {config.steps} steps (discrete theory: '
              f'{disc:.0f})' if np.isfinite(disc) else
              f'not within {config.steps} steps (continuous theory: '
              f'{cont:.0f})')
    else:
      note = None
    if note:
      lines.append(f'{j + 1:>4} {s[j]:>9.3g} {note}')
    else:
      lines.append(f'{j + 1:>4} {s[j]:>9.3g} {meas:>10.1f} {disc:>10.1f} '
                   f'{(meas - disc) / disc:>+8.2%} {cont:>19.1f} '
                   f'{(meas - cont) / cont:>+8.2%}')
  if out_dir:
    import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
    fig, ax = plt.subplots(figsize=(7, 4.5))
    steps = np.arange(len(modes['u']))
    for j in range(len(s)):
      line, = ax.plot(steps, modes['u'][:, j] / s[j],
                      label=f'mode {j + 1} (s={s[j]:.3g})')
      ax.plot(steps, modes['theory'][:, j] / s[j], '--',
              color=line.get_color(), lw=1)
    ax.axhline(0.5, color='gray', lw=0.5)
    ax.set_xlabel('step')
    ax.set_ylabel('u_a / s_a')
    ax.set_ylim(-0.05, 1.2)
    ax.set_title(f'mode strengths, lr {lr:g}, u0 {u0:.3g} (dashed: '
                 'decoupled discrete theory)')
    ax.legend(fontsize=7, loc='best')
    plots.save_figure(fig, os.path.join(out_dir,
                                        f'saxe_modes_lr{lr:g}_scale{scale:g}.png'))
  return lines


def optimal_loss(config: DeepLinearConfig) -> tuple[float, float]:
  """The lowest loss of the net on the stored data, and of a linear map.

  In float64 by NumPy. The net's product of weights is a linear map of rank
  at most ``width``; the best such map is reduced-rank regression (Izenman,
  1975): with ``Y_hat = X W_ols`` the least-squares fit, the loss rises by
  ``Y_hat``'s squared singular values beyond the ``width`` largest
  (Eckart–Young; ``Y - Y_hat`` is orthogonal to every ``X W``). Every local
  minimum of a deep linear net is global (Baldi & Hornik, 1989; Kawaguchi,
  2016), so this is where a converged optimizer ends.

  Returns:
    ``(net, linear)``: ``0.5 mean_i ||x_i W - y_i||^2`` at the best
    rank-``width`` ``W`` and at the least-squares ``W_ols``.
  """
  d = config.dataset()
  net, linear, _ = _optimal_fits(np.asarray(d.x_train, np.float64),
                                 np.asarray(d.y_train, np.float64),
                                 config.width)
  return net, linear


def _optimal_fits(x, y, width):
  """``optimal_loss``'s ``(net, linear)`` on float64 ``x, y``, and
  ``W_ols``."""
  w = np.linalg.lstsq(x, y, rcond=None)[0]
  fitted = x @ w
  linear = 0.5 * np.mean(np.sum((fitted - y) ** 2, -1))
  dropped = np.linalg.svd(fitted, compute_uv=False)[width:]
  return linear + 0.5 * np.sum(dropped ** 2) / len(x), linear, w


def _optimum_meaning(config: DeepLinearConfig, linear: float) -> str:
  """What ``report``'s optimal loss is (``linear``: the least-squares fit's).

  Noiseless float64 data are realizable only up to the rounding of the
  stored targets ``y = fl(x W*)``, which is not in the span of ``x``: the
  default study's stored data have the exact optimum 3.9e-33 (rational
  arithmetic), numpy's least-squares loss reads 2.7e-31 and LM ends at
  5.7e-33..1.7e-32.
  """
  if config.width < min(config.in_dim, config.out_dim):
    return (f'the best rank-{config.width} map, numpy\'s SVD of the '
            f'least-squares fit; the fit itself {linear:.3g}')
  if config.noise == 0 and config.dtype == 'float64':
    return ('realizable up to the rounding of the stored targets y = x W*, '
            'whose optimum is below this and not 0; this is float64 '
            'rounding, which a solver may undercut')
  return 'the optimum of the stored data, to float64 rounding'


def _first_below(values, steps, target):
  below = np.flatnonzero(values < target)
  return int(steps[below[0]]) if len(below) else None


def report(config: DeepLinearConfig, results: results_lib.Results,
           out_dir: str | None = None) -> str:
  """The findings as text (and PNG curves and spectra in ``out_dir``)."""
  lines = []
  final = results.final()
  inverse = {v: k for k, v in METHODS.items()}
  floor = float(np.finfo(np.dtype(config.dtype)).tiny)
  d = config.dataset()
  x = np.asarray(d.x_train, np.float64)
  y = np.asarray(d.y_train, np.float64)
  optimum, linear, w = _optimal_fits(x, y, config.width)
  meaning = _optimum_meaning(config, linear)
  # A converged run ends within this of the optimum: the dtype's target
  # plus the rounding of a loss as large as the optimum.
  excess = config.target_loss + 1e3 * float(
      np.finfo(np.dtype(config.dtype)).eps) * optimum
  target = optimum + excess
  # NumPy's float64 SVD: under JAX without x64 (a float32 run) the
  # smallest singular value of a 1e8-conditioned W_ols is rounding, and the
  # ratio read 7.9e7 for 1.02e8.
  lines.append(f'problem: condition number of the least-squares target '
               f'{np.linalg.cond(w):.3g}, of the '
               f'inputs {np.linalg.cond(x):.3g}; '
               f'optimal loss on the stored {config.dtype} data '
               f'{optimum:.3g} ({meaning})')
  lines.append(f'target condition number {config.condition_number:g}; '
               f'full batch; final train loss, geometric mean over the seeds '
               f'that finished (of {config.seeds}) [95% interval of the '
               f'geometric mean: on log10, {stats.METHOD}]')
  header = (f'{"depth":>5} {"method":<6} {"lr":>8} {"init_scale":>10} '
            f'{"steps":>7} {"loss":>10} {"low":>10} {"high":>10} '
            f'{"grad_norm":>10} {"diverged":>8}')
  lines += [header, '-' * len(header)]
  best, ranks, per_seed, zero_notes = {}, {}, [], []
  for cfg, rows in final.configs().items():
    c = dict(cfg)
    method = inverse[c['optimizer']]
    alive = rows.columns['diverged_step'] < 0
    ci, zeros = _log_interval(rows.columns['train_loss'][alive], floor)
    grad, _ = _log_interval(rows.columns['grad_norm'][alive], floor)
    lr = '-' if method in LEAST_SQUARES else f'{c["learning_rate"]:g}'
    depth = int(rows.columns['depth'][0])
    steps = int(rows.columns['step'][0])
    lines.append(f'{depth:>5} {method:<6} {lr:>8} {c["init_scale"]:>10g} '
                 f'{steps:>7d} {ci.mean:>10.3e} '
                 f'{stats.number(ci.low, ".3e"):>10} '
                 f'{stats.number(ci.high, ".3e"):>10} {grad.mean:>10.3e} '
                 f'{int((~alive).sum()):>8d}')
    if zeros:
      zero_notes.append(f'  {method} lr {lr}: {zeros} seed(s) at exactly 0, '
                        f'counted as {floor:.3g}: the mean and interval are '
                        'upper bounds')
    key = (depth, method, c['init_scale'])
    # The best step size: fewest seeds diverged first, then the lowest
    # geometric mean over the others (a rate that lost 3 of 4 seeds was
    # crowned by its one survivor).
    order = (int((~alive).sum()), ci.mean)
    if ci.n and (key not in ranks or order < ranks[key]):
      best[key], ranks[key] = (ci.mean, rows), order
    cells = []
    for seed, member, loss in zip(rows.columns[grid_lib.SEED],
                                  rows.columns['member'],
                                  rows.columns['train_loss']):
      cell = f'{loss:.2e}'
      if method in LEAST_SQUARES:
        traj = results.where(member=member, depth=depth)
        first = _first_below(traj.columns['train_loss'], traj.columns['step'],
                             target)
        cell += f' ({first})' if first is not None else ' (-)'
      cells.append((int(seed), cell))
    per_seed.append((depth, method, lr, c['init_scale'], steps,
                     [cell for _, cell in sorted(cells)]))
  lines += zero_notes
  lines.append('')
  lines.append(f'per seed: final train loss (least squares: in parentheses '
               f'the first step within {excess:.2g} of the optimal loss; - '
               'never)')
  seeds = max(len(cells) for *_, cells in per_seed)
  header = (f'{"depth":>5} {"method":<6} {"lr":>8} {"init_scale":>10} '
            f'{"steps":>7} ' + ' '.join(f'{"seed " + str(i):>15}'
                                        for i in range(seeds)))
  lines += [header, '-' * len(header)]
  for depth, method, lr, scale, steps, cells in per_seed:
    lines.append(f'{depth:>5} {method:<6} {lr:>8} {scale:>10g} {steps:>7d} '
                 + ' '.join(f'{cell:>15}' for cell in cells))
  for depth in config.depths:
    for scale in config.init_scales:
      lines += _depth_summary(config, results, final, best, optimum, depth,
                              scale, target, excess, out_dir)
  if config.saxe:
    for lr in config.gd_lrs:
      for scale in config.init_scales:
        lines.append('')
        lines += _saxe_report(config, lr, scale, out_dir)
  if out_dir:
    for depth in config.depths:
      for least_squares in (False, True):
        rows = results.where(depth=depth)
        mask = np.isin(rows.columns['optimizer'],
                       [METHODS[m] for m in LEAST_SQUARES])
        if not least_squares:
          mask = ~mask
        if not mask.any():
          continue
        rows = results_lib.Results(
            {k: v[mask] for k, v in rows.columns.items()}, rows.metadata)
        kind = 'least_squares_' if least_squares else ''
        plots.curves(rows, 'train_loss',
                     os.path.join(out_dir, f'loss_{kind}depth{depth}.png'),
                     title=f'deep linear net, depth {depth}, condition number '
                     f'{config.condition_number:g}: train loss, '
                     + plots.mean_words(True))
  return '\n'.join(lines)


def _depth_summary(config, results, final, best, optimum, depth, scale,
                   target, excess, out_dir):
  """Side by side per seed, then the curvature at the gradient-descent stall."""
  lines = []
  if (depth, 'gd', scale) not in best:
    return lines
  gd = final.where(depth=depth, optimizer=METHODS['gd'], init_scale=scale)
  seeds = sorted(set(gd.columns[grid_lib.SEED].tolist()))
  lowest = [np.nanmin(gd.where(seed=s).columns['train_loss']) for s in seeds]
  lines.append('')
  lines.append(
      f'depth {depth}, init_scale {scale:g}: gradient descent after '
      f'{config.steps} steps, its lowest final loss over the step sizes, '
      'per seed: '
      + ', '.join(f'{v:.2e}' for v in lowest)
      + f' (lowest {min(lowest):.2e})')
  for method in LEAST_SQUARES:
    rows = final.where(depth=depth, optimizer=METHODS[method],
                       init_scale=scale)
    if not len(rows):
      continue
    firsts = []
    for member in rows.columns['member']:
      traj = results.where(member=member, depth=depth)
      firsts.append(_first_below(traj.columns['train_loss'],
                                 traj.columns['step'], target))
    reached = [f for f in firsts if f is not None]
    verdict = (f'every seed within {config.solver_steps} iterations'
               if len(reached) == len(firsts) else
               f'{len(firsts) - len(reached)} of {len(firsts)} seeds never')
    diverged = rows.columns['diverged_step']
    if np.any(diverged >= 0):  # a seed may diverge after reaching it
      verdict += (f'; {int(np.sum(diverged >= 0))} of {len(firsts)} diverged '
                  f'(step {", ".join(str(d) for d in diverged if d >= 0)}), '
                  'left out of the final loss')
    finished = rows.columns['train_loss'][diverged < 0]
    if (depth, method, scale) in best and len(finished):
      gd_loss, ls_loss = best[(depth, 'gd', scale)][0], best[(depth, method,
                                                               scale)][0]
      orders = math.log10(gd_loss / max(ls_loss, 1e-300))
      below = (f'{orders:+.1f} orders of magnitude below gradient descent '
               '(geometric means')
      # Past the optimum's own rounding, by at least what the text shows.
      if 0 < ls_loss < optimum and math.log10(optimum / ls_loss) >= 0.05:
        below += (f'; {math.log10(gd_loss / optimum):+.1f} counted from the '
                  f'optimal loss {optimum:.3g}, which it undercuts: the rest '
                  'is rounding')
      final_loss = (f'final loss {np.min(finished):.2e}..'
                    f'{np.max(finished):.2e}, {below})')
    else:
      final_loss = 'no seed finished'
    lines.append(
        f'  {method}: first step within {excess:.2g} of the optimal loss '
        'per seed: '
        + ', '.join('-' if f is None else str(f) for f in firsts)
        + f' ({verdict}); {final_loss}')
  loss, rows = best[(depth, 'gd', scale)]
  alive = rows.columns['diverged_step'] < 0  # the stall of a run that ended
  seed = rows.columns[grid_lib.SEED][np.argmax(alive)]
  member = rows.where(seed=seed).columns['member'][0]
  traj = results.where(member=member, depth=depth)
  losses, steps = traj.columns['train_loss'], traj.columns['step']
  h, m = len(traj) // 2, (len(traj) // 2 + len(traj) - 1) // 2
  half, last = losses[h], losses[-1]
  lr = float(rows.columns['learning_rate'][0])
  span = config.steps - int(steps[h])
  pace = ''
  if half > last > 0 and not h < m < len(traj) - 1:
    # Two readings (3 or 4 logged): a drop onto a plateau reads the same.
    pace = ' (two readings: too few to tell a steady pace)'
  elif half > last > 0:
    # A sigmoid drop onto a plateau (a small init's next mode) is no pace:
    # the same factor e per step in both halves of the span, within 1.5x.
    steady, halves = False, 'a loss of 0 mid-span'  # (0 has no log)
    if losses[m] > 0:
      rates = [math.log(losses[m] / half) / (int(steps[h]) - int(steps[m])),
               math.log(last / losses[m]) / (int(steps[m]) - int(steps[-1]))]
      steady = min(rates) > 0 and max(rates) <= 1.5 * min(rates)
      halves = (f'{losses[h] / losses[m]:.3g}x, then {losses[m] / last:.3g}x '
                'over its halves')
    pace = (f' ({halves}: a factor e every {span / math.log(half / last):.3g}'
            ' steps at that pace)' if steady else
            f' ({halves}: not a steady pace)')
  fell = (f'fell {half / last:.3g}x' if last > 0 else
          f'fell from {half:.3g} to 0' if half > 0 else 'stayed at 0')
  lines.append(
      f'  best gradient descent (lr {lr:g}) ends at {loss:.3e} (geometric '
      f'mean); seed {seed}\'s loss {fell} over its last {span} steps{pace}.')
  spec = stall_spectrum(config, depth, member)
  k = spec['symmetry_dim']
  null_dim = spec['unchanging_dim']
  n_params = len(spec['eigenvalues'])
  flat = spec['restricted_min']
  # The gradient that rounding the weights to the run's dtype alone could
  # leave at a critical point: eps x lambda_max x ||w||.
  rounding = (float(np.finfo(np.dtype(config.dtype)).eps)
              * spec['lambda_max'] * spec['weights_norm'])
  critical = (f'{spec["grad_norm"] / rounding:.2g}x what rounding the weights '
              f'to {config.dtype} could leave: not a critical point'
              if spec['grad_norm'] > 10 * rounding else
              f'within 10x of what rounding the weights to {config.dtype} '
              'could leave: critical to that precision')
  low, high = spec['n_null_range']
  continuum = ('a gap separates them: the count is the same at thresholds '
               '10x either side' if low == high else
               f'the small eigenvalues form a continuum here: {low} at a '
               f'threshold 10x lower, {high} at 10x higher')
  lines.append(
      f'  at its last step (seed {seed}): gradient norm '
      f'{spec["grad_norm"]:.2e} ({critical}). Hessian '
      f'({n_params} eigenvalues, exact): lambda_max {spec["lambda_max"]:.3e}, '
      f'{spec["n_negative"]} negative (down to {spec["lambda_min"]:.2e}), '
      f'{spec["n_null"]} |lambda| <= {NULL_TOLERANCE:g} lambda_max, smallest '
      f'positive above that {spec["lambda_min_positive"]:.2e} ({continuum}).')
  share = spec['negative_share_in_symmetry']
  negative = (
      f'; each negative eigenvector lies >= {math.floor(100 * share)}% in '
      'them'
      + (' (curvature along the orbit, where the loss is constant only to '
         'first order away from a critical point: not a saddle of the '
         'function)' if share >= 0.9 else '')
      if spec['n_negative'] else '')
  lines.append(
      f'  The weights can move along {null_dim} directions that change no '
      f'prediction (J\'s null space; the symmetry W_i -> W_i G, W_i+1 -> '
      f'G^-1 W_i+1 spans {k} of them){negative}. Quotiented out:')
  lines.append(
      f'  Hessian on the {n_params - null_dim} function-changing directions '
      f'(the row space of the residuals\' Jacobian J): eigenvalues '
      f'{flat:.3e} .. {spec["restricted_max"]:.3e}, '
      f'{spec["restricted_negative"]} negative; Gauss-Newton J^T J: '
      f'{spec["gn_null"]} null eigenvalues (the symmetry has {k}), smallest '
      f'nonzero {spec["gn_min_positive"]:.3e}.')
  if flat > 0:
    ratio = spec['restricted_max'] / flat
    efold = 1 / (lr * flat)
    lines.append(
        f'  Ratio of the largest to the smallest function-changing curvature: '
        f'{ratio:.2e}. In steps of gradient descent: at this run\'s step '
        f'{lr:g} the error along the flattest function-changing direction '
        f'shrinks by (1 - {lr:g} x {flat:.2e}) per step, a factor e every '
        f'{efold:.2e} steps (the loss, quadratic in it, every '
        f'{efold / 2:.2e}; {config.steps / efold:.1e} e-folds in the whole '
        f'run); even the largest stable step (2/lambda_max = '
        f'{2 / spec["lambda_max"]:.3g}) needs lambda_max / (2 x that '
        f'curvature) = {spec["lambda_max"] / (2 * flat):.2e} steps per e-fold.')
  else:
    lines.append(
        f'  The smallest function-changing curvature is {flat:.3e} <= 0: '
        f'the loss curves down along {spec["restricted_negative"]} '
        'directions that change the function; gradient descent is passing a '
        'saddle region (as on a small-init plateau), not only crawling along '
        'a flat valley.')
  if out_dir:
    plots.spectrum(spec['restricted'],
                   os.path.join(out_dir, f'hessian_at_stall_depth{depth}.png'),
                   title=f'Hessian on function-changing directions at the '
                   f'gradient-descent stall (depth {depth})')
  return lines
