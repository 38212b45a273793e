"""LAPACK-backed decompositions that are safe inside vmapped grid programs.

On CPU, jaxlib 0.10's batched LAPACK kernels (``geqrf``, ``syevd``, ...) split
their batch over XLA's intra-op thread pool and block until the pieces finish.
When two such kernels run at once (e.g. the orthogonal initializations of two
layers, vmapped over grid members) on a small pool (2 threads on a 2-core
machine), every pool thread can end up blocked waiting for work that no thread
is free to run: the program deadlocks, intermittently (seen here: ~10-30% of
runs of a vmapped orthogonal init; native stacks in ``lapack_sgeqrf_ffi`` ->
``jax::ParallelBatchMap`` -> ``BlockingCounter::Wait``). Under ``vmap`` these
wrappers loop over the batch instead (``jax.custom_batching.sequential_vmap``),
so each kernel sees a batch of one and never waits on the pool.
"""

import jax
import jax.numpy as jnp


@jax.custom_batching.sequential_vmap
def qr(a: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Reduced QR of a single matrix ``a: [m, n]``."""
  return jnp.linalg.qr(a)


@jax.custom_batching.sequential_vmap
def qr_r(a: jax.Array) -> jax.Array:
  """``r`` of the reduced QR of a single matrix ``a: [m, n]``; ``q`` is never
  formed (LAPACK's ``geqrf`` alone)."""
  return jnp.linalg.qr(a, mode='r')


@jax.custom_batching.sequential_vmap
def svd(a: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
  """Thin SVD ``(u, s, vt)`` of a single matrix ``a: [m, n]``."""
  return jnp.linalg.svd(a, full_matrices=False)


@jax.custom_batching.sequential_vmap
def eigh(a: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Eigenvalues (ascending) and eigenvectors of a symmetric ``a: [n, n]``."""
  return jnp.linalg.eigh(a)


@jax.custom_batching.sequential_vmap
def cholesky(a: jax.Array) -> jax.Array:
  """Upper Cholesky factor ``r`` of a symmetric positive definite ``a: [n, n]``
  (``r^T r = a``; NaN where ``a`` is not positive definite).

  Reads the upper triangle of ``a`` only; ``a`` is not symmetrized first
  (``jnp.linalg.cholesky``'s ``(a + a^T) / 2``): at n = 2000 in float32 on a
  2-core CPU that pass was 20% of the factorization (50 -> 40 ms).
  """
  return jax.lax.linalg.cholesky(a.T, symmetrize_input=False).T



@jax.custom_batching.sequential_vmap
def _solve_upper(a, b):
  return jax.scipy.linalg.solve_triangular(a, b, lower=False)


@jax.custom_batching.sequential_vmap
def _solve_upper_transposed(a, b):
  return jax.scipy.linalg.solve_triangular(a, b, trans='T', lower=False)


def solve_triangular(a: jax.Array, b: jax.Array, trans: str = 'N'
                     ) -> jax.Array:
  """``a^{-1} b`` (``trans='T'``: ``a^{-T} b``) for one upper triangular
  ``a: [n, n]``; ``b: [n]`` or ``[n, k]``."""
  return (_solve_upper_transposed if trans == 'T' else _solve_upper)(a, b)
