"""Matrix-free Gauss–Newton and Levenberg–Marquardt."""

import chex
import jax
import jax.numpy as jnp
import jax.test_util
import numpy as np
import optax
import pytest

from rahimi_jax import data as data_lib
from rahimi_jax import solvers
from rahimi_jax.solvers import least_squares


def _problem(condition_number, n=200, in_dim=4, out_dim=3):
  """A two-layer linear net on a linear target; loss = 0.5 ||r||^2.

  Returns the residual function, initial params and the optimal loss of the
  stored data (the net is realizable, width = in_dim: float64 rounding only
  under x64, float32 rounding otherwise).
  """
  d = data_lib.synthetic(n_train=n, n_test=10, in_dim=in_dim, out_dim=out_dim,
                         condition_number=condition_number,
                         dtype='float64' if jax.config.jax_enable_x64
                         else 'float32')
  x, y = jnp.asarray(d.x_train), jnp.asarray(d.y_train)

  def residual(p):
    return (x @ p['w1'] @ p['w2'] - y) / jnp.sqrt(n)

  x64, y64 = np.asarray(d.x_train, np.float64), np.asarray(d.y_train, np.float64)
  r = x64 @ np.linalg.lstsq(x64, y64, rcond=None)[0] - y64
  keys = jax.random.split(jax.random.key(0))
  params = {'w1': 0.5 * jax.random.normal(keys[0], (in_dim, in_dim)),
            'w2': 0.5 * jax.random.normal(keys[1], (in_dim, out_dim))}
  return residual, params, 0.5 * np.sum(r**2) / n


def _minimize(tx, residual, params, steps):
  state = tx.init(params)

  def step(carry, _):
    p, s = carry
    u, s = tx.update(None, s, p, residual_fn=residual)
    p = optax.apply_updates(p, u)
    r = residual(p)
    return (p, s), 0.5 * jnp.vdot(r, r)

  (params, state), losses = jax.lax.scan(step, (params, state), None, steps)
  return params, state, losses


@pytest.mark.parametrize('solver', ['dense', 'cg'])
def test_direction_solves_damped_normal_equations(solver):
  residual, params, _ = _problem(10.0, n=30)
  flat, unravel = jax.flatten_util.ravel_pytree(params)
  jac = jax.jacfwd(lambda f: residual(unravel(f)).ravel())(flat)
  r = residual(params).ravel()
  damping = 0.1
  explicit = -np.linalg.solve(jac.T @ jac + damping * np.eye(flat.size),
                              jac.T @ r)
  delta, r_out, jvp, grad = least_squares.gauss_newton_direction(
      residual, params, damping, solver=solver)
  chex.assert_trees_all_close(jax.flatten_util.ravel_pytree(delta)[0],
                              explicit, rtol=2e-3, atol=1e-5)
  chex.assert_trees_all_close(r_out, r, rtol=1e-6)
  chex.assert_trees_all_close(jax.flatten_util.ravel_pytree(grad)[0],
                              jac.T @ r, rtol=1e-4, atol=1e-6)
  v = jax.random.normal(jax.random.key(1), flat.shape)
  chex.assert_trees_all_close(jvp(unravel(v)), jac @ v, rtol=1e-4, atol=1e-6)


def test_levenberg_marquardt_step_derivatives(x64):
  # Through a training run the step is differentiated with respect to the
  # parameters and, inside residual_fn, to everything upstream (the data,
  # gates), the damping carried to the next step included.
  keys = jax.random.split(jax.random.key(2), 4)
  x = jax.random.normal(keys[0], (12, 3))
  y = jax.random.normal(keys[1], (12, 2))
  params = {'w1': 0.5 * jax.random.normal(keys[2], (3, 3)),
            'w2': 0.5 * jax.random.normal(keys[3], (3, 2))}
  tx = solvers.levenberg_marquardt(initial_damping=1.0)
  state = tx.init(params)

  @jax.jit
  def step(p, y):
    residual = lambda q: jnp.tanh(x @ q['w1']) @ q['w2'] - y
    updates, new = tx.update(None, state, p, residual_fn=residual)
    return updates, new.damping, new.accepted

  _, damping, accepted = step(params, y)
  assert bool(accepted) and float(damping) < 1.0  # a step taken, smoothly
  jax.test_util.check_grads(lambda p, y: step(p, y)[:2], (params, y), order=1,
                            modes=('fwd', 'rev'))


@pytest.mark.parametrize('condition_number', [1.0, 1e3])
def test_levenberg_marquardt_converges(condition_number, x64):
  residual, params, optimum = _problem(condition_number)
  params = jax.tree.map(lambda a: a.astype(jnp.float64), params)
  _, state, losses = jax.jit(
      lambda p: _minimize(solvers.levenberg_marquardt(), residual, p, 60))(
          params)
  assert losses[-1] <= 1e-26, (losses[-1], optimum)
  assert losses[0] > 1e-2
  assert np.all(np.diff(np.asarray(losses)) <= 0)  # never accepts an ascent
  chex.assert_tree_all_finite(state)


def test_levenberg_marquardt_beats_gradient_descent_on_ill_conditioned(x64):
  residual, params, optimum = _problem(1e4)
  params = jax.tree.map(lambda a: a.astype(jnp.float64), params)
  _, _, lm = jax.jit(lambda p: _minimize(solvers.levenberg_marquardt(),
                                         residual, p, 50))(params)
  gd = optax.sgd(0.2)

  def gd_run(p):
    def step(p, _):
      loss, g = jax.value_and_grad(
          lambda q: 0.5 * jnp.sum(residual(q) ** 2))(p)
      u, _ = gd.update(g, gd.init(p), p)
      return optax.apply_updates(p, u), loss
    return jax.lax.scan(step, p, None, 500)[1]

  gd_losses = jax.jit(gd_run)(params)
  assert lm[-1] <= 1e-26, (lm[-1], optimum)
  # 500 steps of the best-tuned-looking step leave gradient descent >= 10
  # orders of magnitude above (the flat directions).
  assert gd_losses[-1] > 1e10 * max(lm[-1], 1e-30), (gd_losses[-1], lm[-1])


def test_rejected_step_keeps_params_and_raises_damping():
  residual, params, _ = _problem(10.0, n=30)
  # Any move away from `params` adds a jump the linear model cannot see, so
  # the actual reduction is negative and every step must be rejected.
  jumpy = lambda p: residual(p) + 10.0 * jnp.any(p['w1'] != params['w1'])
  tx = solvers.levenberg_marquardt(initial_damping=1e-3)
  state = tx.init(params)
  dampings = []
  for _ in range(3):
    updates, state = tx.update(None, state, params, residual_fn=jumpy)
    assert not bool(state.accepted)
    chex.assert_trees_all_equal(updates, jax.tree.map(jnp.zeros_like, params))
    dampings.append(float(state.damping))
  # Marquardt: the damping grows 10x per rejection.
  chex.assert_trees_all_close(np.asarray(dampings),
                              1e-3 * np.array([10, 100, 1000]), rtol=1e-5)
  # Accepted steps shrink it again.
  _, state = tx.update(None, state, params, residual_fn=residual)
  assert bool(state.accepted) and float(state.damping) < dampings[-1]



@pytest.mark.parametrize('solver', ['dense', 'cg'])
def test_levenberg_marquardt_step_is_the_relatively_damped_solve(solver, x64):
  """Against NumPy: the first step solves ``(J^T J + tau s I) delta = -J^T
  r`` with ``tau = initial_damping`` and ``s`` the largest eigenvalue of ``J^T
  J`` ('dense') or the Rayleigh quotient ``||J g||^2 / ||g||^2`` at the
  gradient ``g = J^T r`` ('cg'); the step lowers the loss, so it is taken
  and the damping divided by exactly 10 (Marquardt)."""
  residual, params, _ = _problem(10.0, n=30)
  params = jax.tree.map(lambda a: a.astype(jnp.float64), params)
  flat, unravel = jax.flatten_util.ravel_pytree(params)
  jac = np.asarray(jax.jacfwd(lambda f: residual(unravel(f)).ravel())(flat),
                   np.float64)
  g = jac.T @ np.asarray(residual(params), np.float64).ravel()
  jtj = jac.T @ jac
  scale = (np.linalg.eigvalsh(jtj)[-1] if solver == 'dense'
           else np.sum((jac @ g) ** 2) / (g @ g))
  assert scale > 2.0  # relative and absolute damping differ here
  tau = 0.3
  want = np.linalg.solve(jtj + tau * scale * np.eye(flat.size), -g)
  tx = solvers.levenberg_marquardt(initial_damping=tau, solver=solver)
  state = tx.init(params)
  assert float(state.damping) == tau
  updates, state = jax.jit(lambda s, p: tx.update(None, s, p,
                                                  residual_fn=residual))(
                                                      state, params)
  chex.assert_trees_all_close(jax.flatten_util.ravel_pytree(updates)[0],
                              want, rtol=1e-7, atol=1e-12)
  assert bool(state.accepted)
  np.testing.assert_allclose(float(state.damping), tau / 10, rtol=1e-12)


@pytest.mark.parametrize('increase', [0.0, 1e-5])
def test_a_step_that_does_not_lower_the_loss_is_rejected(increase):
  """A step is taken iff the loss falls: a trial point whose loss is the
  same, or higher by a relative 2e-5 (far below the linear model's
  predicted decrease), is rejected."""
  residual, params, _ = _problem(10.0, n=30)
  r0 = residual(params)
  flat0 = jax.flatten_util.ravel_pytree(params)[0]

  def no_better(p):  # the residual near params; any move: (1 + increase) r0
    moved = jnp.any(jax.flatten_util.ravel_pytree(p)[0] != flat0)
    return jnp.where(moved, (1 + increase) * r0, residual(p))

  tx = solvers.levenberg_marquardt(initial_damping=1e-3)
  updates, state = tx.update(None, tx.init(params), params,
                             residual_fn=no_better)
  assert not bool(state.accepted)
  chex.assert_trees_all_equal(updates, jax.tree.map(jnp.zeros_like, params))
  np.testing.assert_allclose(float(state.damping), 1e-2, rtol=1e-5)


def test_levenberg_marquardt_damping_is_clipped_to_eps_and_one_over_eps():
  """The relative damping stays in ``[eps, 1 / eps]`` of the params' dtype
  by default: divided below eps after an accepted step it is eps; multiplied
  past 1 / eps after a rejected one it is 1 / eps."""
  residual, params, _ = _problem(10.0, n=30)
  eps = float(np.finfo(jax.tree.leaves(params)[0].dtype).eps)
  tx = solvers.levenberg_marquardt(initial_damping=0.5 * eps)
  _, state = tx.update(None, tx.init(params), params, residual_fn=residual)
  assert bool(state.accepted)
  np.testing.assert_allclose(float(state.damping), eps, rtol=1e-6)
  jumpy = lambda p: residual(p) + 10.0 * jnp.any(p['w1'] != params['w1'])
  tx = solvers.levenberg_marquardt(initial_damping=0.5 / eps)
  _, state = tx.update(None, tx.init(params), params, residual_fn=jumpy)
  assert not bool(state.accepted)
  np.testing.assert_allclose(float(state.damping), 1 / eps, rtol=1e-6)


@pytest.mark.parametrize('solver', ['dense', 'cg'])
def test_gauss_newton_cutoff_is_relative_to_the_largest_singular_value(
    solver, x64):
  """The step is the minimum-norm ``-J^+ r`` with singular values below
  ``n eps s_max`` dropped (NumPy's ``pinv`` rcond, relative): on residuals
  scaled by 1e4, the rounding-level singular values of the network's null
  space (its GL(4) symmetry) are far above an absolute ``n eps`` and must
  still count as zero (dense); CG from zero stays in J's row space, so it
  finds the same minimum-norm step."""
  residual, params, _ = _problem(10.0, n=30)
  params = jax.tree.map(lambda a: a.astype(jnp.float64), params)
  scaled = lambda p: 1e4 * residual(p)
  flat, unravel = jax.flatten_util.ravel_pytree(params)
  jac = np.asarray(jax.jacfwd(lambda f: scaled(unravel(f)).ravel())(flat),
                   np.float64)
  r = np.asarray(scaled(params), np.float64).ravel()
  want = -np.linalg.pinv(jac, rcond=flat.size * np.finfo(np.float64).eps) @ r
  tx = solvers.gauss_newton(solver=solver)
  updates, _ = jax.jit(lambda s, p: tx.update(None, s, p, residual_fn=scaled))(
      tx.init(params), params)
  chex.assert_trees_all_close(jax.flatten_util.ravel_pytree(updates)[0],
                              want, rtol=1e-6, atol=1e-9)

@pytest.mark.parametrize('solver', ['dense', 'cg'])
def test_gauss_newton_takes_full_steps(solver, x64):
  residual, params, _ = _problem(10.0)
  params = jax.tree.map(lambda a: a.astype(jnp.float64), params)
  _, _, losses = jax.jit(lambda p: _minimize(
      solvers.gauss_newton(solver=solver), residual, p, 30))(params)
  assert losses[-1] <= 1e-26, losses


def test_needs_residual_fn():
  tx = solvers.levenberg_marquardt()
  params = {'w': jnp.ones(3)}
  with pytest.raises(ValueError, match='residual_fn'):
    tx.update(params, tx.init(params), params)


# Module fixtures here turn float64 on until the module ends (conftest).
USES_X64 = True


@pytest.fixture(scope='module')
def rahimi_small():
  """A shrunk talk problem: x in R^4, hidden 4, y in R^6, 60 samples, float64.

  Condition number 1e5, orthogonal-like start (the project's init for seed
  0 of the deep linear study is replaced by a fixed QR here, so the test
  does not depend on the init registry).
  """
  previous = jax.config.jax_enable_x64
  jax.config.update('jax_enable_x64', True)
  d = data_lib.synthetic(n_train=60, n_test=10, in_dim=4, out_dim=6,
                         condition_number=1e5, seed=3, dtype='float64')
  x, y = jnp.asarray(d.x_train), jnp.asarray(d.y_train)

  def residual(p):
    return (x @ p[0] @ p[1] - y) / jnp.sqrt(60.0)

  rng = np.random.default_rng(0)
  params = [jnp.asarray(np.linalg.qr(rng.standard_normal((4, 4)))[0]),
            jnp.asarray(0.5 * rng.standard_normal((4, 6)))]
  yield residual, params
  jax.config.update('jax_enable_x64', previous)


def _first_below(losses, target):
  below = np.flatnonzero(np.asarray(losses) < target)
  return int(below[0]) + 1 if len(below) else None


def test_minimum_norm_gauss_newton_matches_optimistix(rahimi_small):
  # The undamped minimum-norm step is unique, so two independent
  # implementations follow the same trajectory: optimistix's GaussNewton with
  # lineax's SVD solve (its default QR assumes full column rank, which the
  # network's GL(4) symmetry denies: 16 null directions).
  import equinox as eqx  # pylint: disable=g-import-not-at-top
  import lineax as lx  # pylint: disable=g-import-not-at-top
  import optimistix as optx  # pylint: disable=g-import-not-at-top
  residual, params = rahimi_small
  _, _, ours = jax.jit(lambda p: _minimize(solvers.gauss_newton(), residual,
                                           p, 30))(params)
  solver = optx.GaussNewton(rtol=1e-30, atol=1e-30, linear_solver=lx.SVD())
  fn = lambda p, _: (residual(p), None)
  state = solver.init(fn, params, None, {}, jax.eval_shape(residual, params),
                      None, frozenset())
  # Its state holds the linearized function as a jaxpr (not an array), so
  # it is stepped under equinox.filter_jit, outside any scan.
  step = eqx.filter_jit(
      lambda p, s: solver.step(fn, p, None, {}, s, frozenset())[:2])
  theirs, p = [], params
  for _ in range(31):  # optimistix accepts each step one call later
    p, state = step(p, state)
    theirs.append(float(0.5 * jnp.sum(residual(p) ** 2)))
  theirs = np.asarray(theirs[1:])
  ours = np.asarray(ours)
  first = _first_below(ours, 1e-20)
  assert first is not None and first <= 30, ours
  assert _first_below(theirs, 1e-20) == first, (ours, theirs)
  # Step for step until both reach rounding level.
  above = ours > 1e-18
  chex.assert_trees_all_close(np.log10(ours[above]), np.log10(theirs[above]),
                              atol=0.05)


def test_levenberg_marquardt_reaches_machine_precision(rahimi_small):
  residual, params = rahimi_small
  _, state, losses = jax.jit(lambda p: _minimize(
      solvers.levenberg_marquardt(), residual, p, 30))(params)
  first = _first_below(losses, 1e-20)
  assert first is not None and first <= 30, losses
  assert state.damping.dtype == jnp.float64


@pytest.mark.parametrize('kwargs, match', [
    ({'solver': 'qr'}, "'qr'.*auto, dense, cg"),
    ({'factor': 1.0}, 'factor'),
    ({'initial_damping': -1.0}, 'initial_damping'),
    ({'min_damping': 1.0, 'max_damping': 0.1},
     'min_damping 1.0 > max_damping 0.1'),
])
def test_bad_options(kwargs, match):
  with pytest.raises(ValueError, match=match):
    solvers.levenberg_marquardt(**kwargs)


@pytest.mark.parametrize('kwargs, match', [
    ({'rcond': -1.0}, r'rcond .* must be a finite number >= 0; got -1\.0'),
    ({'rcond': float('nan')}, r'rcond .* >= 0; got nan'),
    ({'solver': 'cg', 'tol': -1.0}, r'tol .* must be a finite number > 0; '
     r'got -1\.0'),
    ({'solver': 'cg', 'tol': 0.0}, r'tol .* > 0; got 0\.0'),
    ({'solver': 'cg', 'maxiter': 0}, r'maxiter .* must be an integer >= 1; '
     r'got 0'),
    ({'solver': 'cg', 'maxiter': 2.5}, r'maxiter .* >= 1; got 2\.5'),
])
def test_bad_solver_options_fail_before_compiling(kwargs, match):
  # They ran: rcond=-1 kept every singular value (a step of norm 1e8), tol
  # <= 0 or maxiter=0 returned a zero step.
  for make in (solvers.gauss_newton, solvers.levenberg_marquardt):
    with pytest.raises(ValueError, match=match):
      make(**kwargs)
  with pytest.raises(ValueError, match=match):
    least_squares.gauss_newton_direction(lambda p: p['w'], {'w': jnp.ones(2)},
                                         0.0, **kwargs)
