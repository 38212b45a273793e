"""Hessian diagnostics against explicit Hessians and finite differences."""

import chex
import jax
import jax.numpy as jnp
from jax.flatten_util import ravel_pytree
import jax.test_util
import numpy as np
import pytest

from rahimi_jax import diagnostics
from rahimi_jax import stats

_KEYS = jax.random.split(jax.random.key(0), 4)


def _problem():
  """A non-convex deep linear loss ``0.5 mean ||x a b - y||^2``, 21 params."""
  x = jax.random.normal(_KEYS[0], (40, 4), jnp.float64)
  y = jax.random.normal(_KEYS[1], (40, 3), jnp.float64)

  def loss(p):
    return 0.5 * jnp.mean(jnp.sum((x @ p['a'] @ p['b'] - y) ** 2, -1))

  def grad(p):  # by hand: residual r = (x a b - y) / n
    r = (x @ p['a'] @ p['b'] - y) / x.shape[0]
    return {'a': x.T @ r @ p['b'].T, 'b': (x @ p['a']).T @ r}

  params = {'a': jax.random.normal(_KEYS[2], (4, 3), jnp.float64),
            'b': jax.random.normal(_KEYS[3], (3, 3), jnp.float64)}
  return loss, grad, params


def _explicit_hessian(loss, params):
  flat, unravel = ravel_pytree(params)
  return jax.jit(jax.hessian(lambda f: loss(unravel(f))))(flat)


def test_hvp_is_the_derivative_of_the_gradient(x64):
  loss, grad, params = _problem()
  v = jax.tree.map(lambda a: jnp.full_like(a, 0.3), params)
  # hvp(p, t) is the JVP of the hand-written gradient: checked against its
  # central finite differences along random tangents ...
  jax.test_util.check_jvp(
      grad, lambda ps, ts: (grad(*ps), diagnostics.hvp(loss, ps[0], ts[0])),
      (params,))
  # ... and against the explicit Hessian along v.
  chex.assert_trees_all_close(
      ravel_pytree(diagnostics.hvp(loss, params, v))[0],
      _explicit_hessian(loss, params) @ ravel_pytree(v)[0], rtol=1e-10)
  # Its own derivatives (third derivatives of the loss, and linear in v).
  # (Jitted: op by op, the check took 3 s.)
  jax.test_util.check_grads(jax.jit(lambda p, t: diagnostics.hvp(loss, p, t)),
                            (params, v), order=1, modes=('fwd', 'rev'))


def test_gradient_norm_and_its_derivatives(x64):
  loss, grad, params = _problem()
  chex.assert_trees_all_close(diagnostics.gradient_norm(loss, params),
                              jnp.linalg.norm(ravel_pytree(grad(params))[0]),
                              rtol=1e-12)
  jax.test_util.check_grads(lambda p: diagnostics.gradient_norm(loss, p),
                            (params,), order=1, modes=('fwd', 'rev'))


@pytest.mark.parametrize('name', sorted(diagnostics.LOGGED))
def test_logged_diagnostics_write_declared_scalar_columns(name, x64):
  loss, _, params = _problem()
  x = jax.random.normal(_KEYS[0], (40, 4), jnp.float64)

  def logged(p):
    probe = diagnostics.Probe(
        params=p, key=jax.random.key(0), train_loss=loss,
        loss=lambda q, key: loss(q), keys=tuple(jax.random.split(_KEYS[1])),
        update=lambda q, g: jax.tree.map(lambda a, b: a - 0.1 * b, q, g),
        depth={'a': 0, 'b': 1}, preactivations=lambda q, key: [x @ q['a']],
        learning_rate=jnp.float32(0.1))
    return diagnostics.LOGGED[name](probe)

  out = jax.jit(logged)(params)
  assert out
  for column, value in out.items():
    stats.get_metric(column)  # declared
    chex.assert_shape(value, ())
    chex.assert_tree_all_finite(value)


def test_full_lanczos_gives_exact_eigenvalues(x64):
  loss, _, params = _problem()
  exact = np.linalg.eigvalsh(_explicit_hessian(loss, params))
  assert exact.min() < 0 < exact.max()  # an indefinite Hessian
  ritz = jax.jit(lambda p: diagnostics.hessian_eigenvalues(
      loss, p, jax.random.key(1), 21))(params)
  chex.assert_trees_all_close(ritz, exact, atol=1e-9)


@jax.jit
def _quadratic_lanczos(matrix, params):
  """Full Lanczos on ``0.5 x^T matrix x`` (one compile for every matrix)."""
  return diagnostics.lanczos(lambda p: 0.5 * p['x'] @ matrix @ p['x'], params,
                             jax.random.key(3), 6)


@pytest.mark.parametrize('spectrum', [
    (1.0,) * 6, (0.0,) * 6, (1.0, 1.0, 1.0, 3.0, 3.0, 0.0)])
def test_lanczos_finds_repeated_eigenvalues_with_their_multiplicity(
    x64, spectrum):
  """A Krylov space that closes before n steps (k distinct eigenvalues: k
  steps) restarts: matfree's Lanczos gave -0.80 ... 2.80 for I, NaN for 0."""
  q, _ = np.linalg.qr(np.random.default_rng(0).standard_normal((6, 6)))
  matrix = q @ np.diag(spectrum) @ q.T
  ritz, weights = _quadratic_lanczos(jnp.asarray(matrix), {'x': jnp.ones(6)})
  chex.assert_trees_all_close(ritz, np.linalg.eigvalsh(matrix), atol=1e-12)
  chex.assert_trees_all_close(weights.sum(), 1.0, rtol=1e-12)
  # The start vector's quadrature: its weight on each distinct eigenvalue
  # is its squared projection on that eigenspace.
  start = np.array(jax.random.normal(jax.random.split(jax.random.key(3))[0],
                                     (6,), jnp.float64))
  start /= np.linalg.norm(start)
  for value in set(spectrum):
    space = q[:, np.asarray(spectrum) == value]
    chex.assert_trees_all_close(
        float(weights[np.abs(ritz - value) < 1e-9].sum()),
        float(np.sum((space.T @ start) ** 2)), rtol=1e-9)


def test_few_lanczos_iterations_find_the_extremes(x64):
  loss, _, params = _problem()
  exact = np.linalg.eigvalsh(_explicit_hessian(loss, params))
  ritz = diagnostics.hessian_eigenvalues(loss, params, jax.random.key(1), 12)
  chex.assert_shape(ritz, (12,))
  chex.assert_trees_all_close(ritz[-1], exact[-1], rtol=1e-6)
  chex.assert_trees_all_close(ritz[0], exact[0], rtol=1e-2)
  assert np.all(ritz <= exact[-1] + 1e-9) and np.all(ritz >= exact[0] - 1e-9)


def test_density_integrates_to_one_and_peaks_at_eigenvalues(x64):
  loss, _, params = _problem()
  exact = np.linalg.eigvalsh(_explicit_hessian(loss, params))
  grid = jnp.linspace(exact.min() - 2, exact.max() + 2, 2000)
  density = diagnostics.hessian_density(loss, params, jax.random.key(2), grid,
                                        num_iters=21, num_probes=16,
                                        width=0.05)
  mass = float(jnp.sum(density) * (grid[1] - grid[0]))
  chex.assert_trees_all_close(mass, 1.0, atol=1e-3)
  # The largest eigenvalue is isolated: density there, little in gaps.
  top = int(jnp.argmin(jnp.abs(grid - exact[-1])))
  assert density[top] > 10 * jnp.median(density)


def test_vmaps_over_members(x64):
  loss, _, params = _problem()
  stacked = jax.tree.map(lambda a: jnp.stack([a, 2 * a]), params)
  ritz = jax.jit(jax.vmap(lambda p: diagnostics.hessian_eigenvalues(
      loss, p, jax.random.key(0), 21)))(stacked)
  for i, p in enumerate([params, jax.tree.map(lambda a: 2 * a, params)]):
    chex.assert_trees_all_close(
        ritz[i], np.linalg.eigvalsh(_explicit_hessian(loss, p)), atol=1e-8)


def test_condition_number(x64):
  u, _ = np.linalg.qr(np.random.default_rng(0).standard_normal((5, 5)))
  matrix = u @ np.diag([10.0, 3.0, 1.0, 0.5, 0.01])
  chex.assert_trees_all_close(diagnostics.condition_number(matrix), 1000.0,
                              rtol=1e-9)


def _hand_jacobian(params):
  """``d r / d (a, b)`` of ``r = (x a b - y) / sqrt(n)``, by hand (numpy)."""
  x = np.asarray(jax.random.normal(_KEYS[0], (40, 4), jnp.float64))
  a, b = np.asarray(params['a']), np.asarray(params['b'])
  n = x.shape[0]
  ja = np.einsum('si,jo->soij', x, b).reshape(n * 3, 12)
  jb = np.einsum('sj,ok->sojk', x @ a, np.eye(3)).reshape(n * 3, 9)
  return np.concatenate([ja, jb], 1) / np.sqrt(n)


def test_gauss_newton_eigenvalues(x64):
  loss, _, params = _problem()
  x = jax.random.normal(_KEYS[0], (40, 4), jnp.float64)
  y = jax.random.normal(_KEYS[1], (40, 3), jnp.float64)
  residual = lambda p: (x @ p['a'] @ p['b'] - y) / jnp.sqrt(40.0)
  chex.assert_trees_all_close(0.5 * jnp.sum(residual(params) ** 2),
                              loss(params), rtol=1e-12)
  jac = _hand_jacobian(params)
  got = jax.jit(lambda p: diagnostics.gauss_newton_eigenvalues(residual, p))(
      params)
  expected = np.linalg.eigvalsh(jac.T @ jac)
  chex.assert_trees_all_close(got, expected, atol=1e-10 * expected.max())
  # The 3x3 hidden layer's symmetry: 9 null directions.
  assert np.sum(np.asarray(got) <= 1e-12 * expected.max()) == 9


def test_restricted_hessian_quotients_directions(x64):
  import scipy.linalg  # pylint: disable=g-import-not-at-top
  loss, _, params = _problem()
  a, b = np.asarray(params['a']), np.asarray(params['b'])
  # The symmetry tangents (a E, -E b), E the 9 basis matrices of R^{3x3}.
  tangents = np.stack([np.concatenate([(a @ e).ravel(), (-e @ b).ravel()])
                       for e in np.eye(9).reshape(9, 3, 3)])
  got = jax.jit(lambda p, t: diagnostics.restricted_hessian(loss, p, t))(
      params, jnp.asarray(tangents))
  chex.assert_shape(got, (12,))
  complement = scipy.linalg.null_space(tangents)
  hessian = np.asarray(_explicit_hessian(loss, params))
  expected = np.linalg.eigvalsh(complement.T @ hessian @ complement)
  chex.assert_trees_all_close(got, expected, atol=1e-9)
  # Every one of those directions changes the function: J is injective there.
  jac = _hand_jacobian(params)
  assert np.linalg.svd(jac @ complement, compute_uv=False).min() > 1e-6


def test_gauss_newton_eigenvalues_keep_a_float32_jacobians_small_ones():
  """From ``J``'s singular values: ``eigh(J^T J)`` squared the condition
  number (singular values 1 ... 1e-4: smallest eigenvalue 4.99e-8 for 1e-8),
  and a Jacobian with fewer rows than columns has zero eigenvalues."""
  rng = np.random.default_rng(0)
  u, _ = np.linalg.qr(rng.standard_normal((20, 8)))
  v, _ = np.linalg.qr(rng.standard_normal((8, 8)))
  for jac in ((u * np.logspace(0, -4, 8)) @ v.T, rng.standard_normal((3, 5))):
    jac = jnp.asarray(jac, jnp.float32)
    n = jac.shape[1]
    got = jax.jit(lambda j: diagnostics.gauss_newton_eigenvalues(
        lambda p: j @ p['w'] - 1.0, {'w': jnp.zeros(n, jnp.float32)}))(jac)
    s = np.linalg.svd(np.asarray(jac, np.float64), compute_uv=False)
    want = np.sort(np.concatenate([s**2, np.zeros(n - s.size)]))
    chex.assert_trees_all_close(got, want, rtol=1e-3, atol=1e-12)


def _restricted_quadratic(directions, n=8):
  """``restricted_hessian`` of ``0.5 w^T H w`` (float32) and the numpy
  reference: H's eigenvalues 1 ... n on the SVD complement, in float64."""
  q, _ = np.linalg.qr(np.random.default_rng(1).standard_normal((n, n)))
  hessian = q @ np.diag(np.arange(1.0, n + 1)) @ q.T
  d = directions(q)
  got = jax.jit(lambda h, t: diagnostics.restricted_hessian(
      lambda p: 0.5 * p['w'] @ h @ p['w'], {'w': jnp.zeros(n, jnp.float32)},
      t))(jnp.asarray(hessian, jnp.float32), jnp.asarray(d, jnp.float32))
  complement = np.linalg.svd(d)[2][len(d):].T
  return got, np.linalg.eigvalsh(complement.T @ hessian @ complement)


def test_restricted_hessian_rows_of_different_scales():
  # The eigenvectors of eigenvalues 1 and 2, scaled 1 and 1e-4: the
  # complement from eigh(D^T D) mixed the second in ([2.116, 3.004, ...]).
  got, want = _restricted_quadratic(lambda q: np.stack([q[:, 0],
                                                        1e-4 * q[:, 1]]))
  chex.assert_trees_all_close(want, np.arange(3.0, 9.0), atol=1e-12)
  chex.assert_trees_all_close(got, want, atol=1e-4)
  # Scales 1 and 1e-6 at n = 16: unnormalized, the second singular value is
  # below the default rtol (16 eps) and the rows read as dependent (NaN).
  got, want = _restricted_quadratic(
      lambda q: np.stack([q[:, 0], 1e-6 * q[:, 1]]), n=16)
  chex.assert_trees_all_close(got, want, atol=1e-4)


def test_restricted_hessian_of_dependent_rows_is_nan():
  got, _ = _restricted_quadratic(lambda q: np.stack([q[:, 0], 2 * q[:, 0]]))
  chex.assert_shape(got, (6,))
  assert np.all(np.isnan(got)), got
  with pytest.raises(ValueError, match='directions has 9 rows of 8 entries'):
    _restricted_quadratic(lambda q: np.concatenate([q, q[:1]]))


def test_bad_lanczos_and_density_arguments():
  params = {'x': jnp.ones(3)}
  loss = lambda p: 0.5 * jnp.sum(p['x'] ** 2)
  key = jax.random.key(0)
  grid = jnp.linspace(-1.0, 2.0, 5)
  for num_iters in (0, -3, 2.0):
    with pytest.raises(ValueError, match='num_iters must be an integer >= 1; '
                       f'got {num_iters!r}'):
      diagnostics.hessian_eigenvalues(loss, params, key, num_iters)
  cases = [
      ({'grid': grid[::-1]}, r'grid must be a strictly increasing \[m >= 2\] '
       r'array; got shape \(5,\), from \[2\.\] to \[-1\.\]'),
      ({'grid': grid[:1]}, r'got shape \(1,\)'),
      ({'width': 0.0}, r'width must be a finite number > 0; got 0\.0'),
      ({'width': -0.1}, r'got -0\.1'),
      ({'num_probes': 0}, 'num_probes must be an integer >= 1; got 0'),
  ]
  for kwargs, match in cases:
    with pytest.raises(ValueError, match=match):
      diagnostics.hessian_density(loss, params, key, **({'grid': grid}
                                                         | kwargs))


def test_lanczos_depth_past_the_parameter_count_is_capped(x64):
  """``num_iters`` above the number of parameters (4) stops at 4: the exact
  spectrum (numpy's ``eigvalsh``), not extra Ritz values from a Krylov
  space that has no room left."""
  q, _ = np.linalg.qr(np.random.default_rng(2).standard_normal((4, 4)))
  matrix = q @ np.diag([-1.0, 0.5, 2.0, 3.0]) @ q.T
  ritz = jax.jit(lambda m: diagnostics.hessian_eigenvalues(
      lambda p: 0.5 * p['x'] @ m @ p['x'], {'x': jnp.ones(4, jnp.float64)},
      jax.random.key(1), 9))(jnp.asarray(matrix))
  chex.assert_shape(ritz, (4,))
  chex.assert_trees_all_close(ritz, np.linalg.eigvalsh(matrix), atol=1e-12)


def test_density_default_width_is_two_percent_of_the_grid(x64):
  """For ``H = 2 I`` every probe's quadrature puts weight 1 on 2, so the
  density is one Gaussian at 2 of standard deviation 2% of the grid's span
  (here 0.1), whatever the probes (scipy's normal pdf)."""
  from scipy import stats as scipy_stats  # pylint: disable=g-import-not-at-top
  grid = np.linspace(0.0, 5.0, 51)
  density = jax.jit(lambda g: diagnostics.hessian_density(
      lambda p: jnp.sum(p['x'] ** 2), {'x': jnp.ones(2, jnp.float64)},
      jax.random.key(0), g, num_iters=1, num_probes=1))(jnp.asarray(grid))
  chex.assert_trees_all_close(density,
                              scipy_stats.norm.pdf(grid, 2.0, 0.1),
                              rtol=1e-9, atol=1e-12)


def test_density_grid_with_a_repeated_point_is_refused():
  grid = jnp.asarray([0.0, 1.0, 1.0, 2.0])
  with pytest.raises(ValueError, match=r'grid must be a strictly increasing '
                     r'\[m >= 2\] array; got shape \(4,\)'):
    diagnostics.hessian_density(lambda p: jnp.sum(p['x'] ** 2),
                                {'x': jnp.ones(3)}, jax.random.key(0), grid)


def test_restricted_hessian_default_rtol_is_numpys_matrix_rank():
  """Rows ``q0`` and ``q0 + 1.4e-6 q1`` (n = 16, float32): their second
  singular value over the first, ~7e-7, is below numpy's ``matrix_rank``
  tolerance ``max(k, n) eps`` = 1.9e-6, so numpy counts rank 1 and the rows
  read as dependent (NaN); ``min(k, n) eps`` = 2.4e-7 would pass them."""
  def directions(q):
    return np.stack([q[:, 0], q[:, 0] + 1.4e-6 * q[:, 1]]).astype(np.float32)

  q, _ = np.linalg.qr(np.random.default_rng(1).standard_normal((16, 16)))
  rows = directions(q)
  rows = rows / np.linalg.norm(rows, axis=1, keepdims=True)
  assert np.linalg.matrix_rank(rows) == 1
  s = np.linalg.svd(rows.astype(np.float64), compute_uv=False)
  assert 2 * np.finfo(np.float32).eps < s[1] / s[0] < 16 * np.finfo(
      np.float32).eps
  got, _ = _restricted_quadratic(directions, n=16)
  assert np.all(np.isnan(got)), got
