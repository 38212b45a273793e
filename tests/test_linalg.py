"""Decompositions that loop over a vmapped batch (no pooled LAPACK batches)."""

import chex
import jax
import jax.numpy as jnp
import numpy as np

from rahimi_jax import linalg
from rahimi_jax.components import inits


def _batched_lapack_shapes(fn, *args):
  """Operand shapes of every LAPACK custom call in ``fn``'s lowered program."""
  text = jax.jit(fn).lower(*args).as_text()
  return [line for line in text.splitlines()
          if 'lapack' in line and 'custom_call' in line]


def test_vmapped_decompositions_call_lapack_one_matrix_at_a_time():
  a = jax.random.normal(jax.random.key(0), (5, 6, 4))
  calls = _batched_lapack_shapes(jax.vmap(linalg.qr), a)
  assert calls and all('5x6x4' not in c for c in calls), calls
  plain = _batched_lapack_shapes(jax.vmap(jnp.linalg.qr), a)
  assert any('5x6x4' in c for c in plain), plain  # the pattern that deadlocks
  s = a[:, :4] @ jnp.swapaxes(a[:, :4], 1, 2)
  calls = _batched_lapack_shapes(jax.vmap(linalg.eigh), s)
  assert calls and all('5x4x4' not in c for c in calls), calls
  for fn in (linalg.qr_r, linalg.svd):
    calls = _batched_lapack_shapes(jax.vmap(fn), a)
    assert calls and all('5x6x4' not in c for c in calls), (fn, calls)


def test_values_match_numpy():
  a = jax.random.normal(jax.random.key(1), (3, 6, 4))
  q, r = jax.jit(jax.vmap(linalg.qr))(a)
  chex.assert_trees_all_close(q @ r, a, atol=1e-5)
  chex.assert_trees_all_close(jnp.swapaxes(q, 1, 2) @ q,
                              jnp.broadcast_to(jnp.eye(4), (3, 4, 4)), atol=1e-5)
  s = a[:, :4] @ jnp.swapaxes(a[:, :4], 1, 2)
  w, _ = jax.jit(jax.vmap(linalg.eigh))(s)
  chex.assert_trees_all_close(w, np.linalg.eigvalsh(np.asarray(s)), rtol=1e-4,
                              atol=1e-5)
  # R alone: NumPy's R up to the signs of its rows.
  r_only = jax.jit(jax.vmap(linalg.qr_r))(a)
  chex.assert_shape(r_only, (3, 4, 4))
  numpy_r = [np.linalg.qr(m, mode='r') for m in np.asarray(a)]
  chex.assert_trees_all_close(jnp.abs(r_only), np.abs(numpy_r), atol=1e-5)
  u, sv, vt = jax.jit(jax.vmap(linalg.svd))(a)
  chex.assert_shape((u, sv, vt), ((3, 6, 4), (3, 4), (3, 4, 4)))
  chex.assert_trees_all_close(
      sv, np.linalg.svd(np.asarray(a), compute_uv=False), rtol=1e-5)
  chex.assert_trees_all_close((u * sv[:, None]) @ vt, a, atol=1e-5)


def test_orthogonal_init_equals_jax_initializer():
  key = jax.random.key(3)
  # And conv kernels [*window, in, out]: the [prod(window) * in, out] matrix.
  for shape in [(64, 10), (10, 64), (6, 6), (3, 4, 5), (2, 2, 3, 4)]:
    chex.assert_trees_all_equal(
        inits.INITS['orthogonal'](key, shape),
        jax.nn.initializers.orthogonal()(key, shape))
