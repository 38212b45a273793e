"""Hessian diagnostics against explicit Hessians."""

import chex
import jax
import jax.numpy as jnp
from jax.flatten_util import ravel_pytree
import jax.test_util
import numpy as np

from rahimi_jax import diagnostics


def _problem():
  keys = jax.random.split(jax.random.key(0), 4)
  x = jax.random.normal(keys[0], (40, 4), jnp.float64)
  y = jax.random.normal(keys[1], (40, 3), jnp.float64)

  def loss(p):  # a non-convex deep linear loss
    return 0.5 * jnp.mean(jnp.sum((x @ p['a'] @ p['b'] - y) ** 2, -1))

  params = {'a': jax.random.normal(keys[2], (4, 3), jnp.float64),
            'b': jax.random.normal(keys[3], (3, 3), jnp.float64)}
  return loss, params


def _explicit_hessian(loss, params):
  flat, unravel = ravel_pytree(params)
  return jax.hessian(lambda f: loss(unravel(f)))(flat)


def test_hvp_matches_explicit_hessian(x64):
  loss, params = _problem()
  hessian = _explicit_hessian(loss, params)
  v = jax.tree.map(lambda a: jnp.ones_like(a) * 0.3, params)
  chex.assert_trees_all_close(ravel_pytree(diagnostics.hvp(loss, params, v))[0],
                              hessian @ ravel_pytree(v)[0], rtol=1e-10)


def test_full_lanczos_gives_exact_eigenvalues(x64):
  loss, params = _problem()
  exact = np.linalg.eigvalsh(_explicit_hessian(loss, params))
  assert exact.min() < 0 < exact.max()  # an indefinite Hessian
  ritz = jax.jit(lambda p: diagnostics.hessian_eigenvalues(
      loss, p, jax.random.key(1), 21))(params)
  chex.assert_trees_all_close(ritz, exact, atol=1e-9)


def test_few_lanczos_iterations_find_the_extremes(x64):
  loss, params = _problem()
  exact = np.linalg.eigvalsh(_explicit_hessian(loss, params))
  ritz = diagnostics.hessian_eigenvalues(loss, params, jax.random.key(1), 12)
  chex.assert_shape(ritz, (12,))
  chex.assert_trees_all_close(ritz[-1], exact[-1], rtol=1e-6)
  chex.assert_trees_all_close(ritz[0], exact[0], rtol=1e-2)
  assert np.all(ritz <= exact[-1] + 1e-9) and np.all(ritz >= exact[0] - 1e-9)


def test_density_integrates_to_one_and_peaks_at_eigenvalues(x64):
  loss, params = _problem()
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


def test_gradient_norm_and_its_derivative(x64):
  loss, params = _problem()
  flat, unravel = ravel_pytree(params)
  expected = jnp.linalg.norm(jax.grad(lambda f: loss(unravel(f)))(flat))
  chex.assert_trees_all_close(diagnostics.gradient_norm(loss, params), expected,
                              rtol=1e-12)
  jax.test_util.check_grads(lambda p: diagnostics.gradient_norm(loss, p),
                            (params,), order=1, modes=('rev',))


def test_vmaps_over_members(x64):
  loss, params = _problem()
  stacked = jax.tree.map(lambda a: jnp.stack([a, 2 * a]), params)
  ritz = jax.jit(jax.vmap(lambda p: diagnostics.hessian_eigenvalues(
      loss, p, jax.random.key(0), 21)))(stacked)
  for i, p in enumerate([params, jax.tree.map(lambda a: 2 * a, params)]):
    chex.assert_trees_all_close(
        ritz[i], np.linalg.eigvalsh(_explicit_hessian(loss, p)), atol=1e-8)


def test_logged_diagnostics_registry(x64):
  loss, params = _problem()
  out = diagnostics.LOGGED['hessian'](loss, params, jax.random.key(0), 21)
  exact = np.linalg.eigvalsh(_explicit_hessian(loss, params))
  chex.assert_trees_all_close((out['hessian_min'], out['hessian_max']),
                              (exact[0], exact[-1]), atol=1e-9)
  assert set(diagnostics.LOGGED['grad_norm'](loss, params, None, 1)) == {
      'grad_norm'}


def test_condition_number(x64):
  u, _ = np.linalg.qr(np.random.default_rng(0).standard_normal((5, 5)))
  matrix = u @ np.diag([10.0, 3.0, 1.0, 0.5, 0.01])
  chex.assert_trees_all_close(diagnostics.condition_number(matrix), 1000.0,
                              rtol=1e-9)
