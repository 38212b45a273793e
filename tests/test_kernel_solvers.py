"""Kernel ridge solvers against scikit-learn and numpy.linalg.solve."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from sklearn import kernel_approximation
from sklearn import kernel_ridge as sk_kernel_ridge
from sklearn import linear_model
from sklearn.metrics import pairwise

from rahimi_jax import kernels
from rahimi_jax.solvers import kernel_ridge as kr

BANDWIDTH, LAM = 2.0, 1e-3
# Jitted (the kernel and sizes static): eager calls compile every operation.
_exact_fit = jax.jit(kr.exact_fit, static_argnums=0,
                     static_argnames='block_size')
_nystrom_fit = jax.jit(kr.nystrom_fit, static_argnums=0, static_argnames=(
    'preconditioner', 'tol', 'maxiter', 'checkpoints', 'block_size'))
_matvec = jax.jit(kernels.kernel_matvec, static_argnums=0)


def _problem(n, n_test=40, seed=0, dtype=np.float64):
  rng = np.random.default_rng(seed)
  x = rng.uniform(-2, 2, size=(n + n_test, 3))
  y = np.stack([np.sin(x.sum(1)), np.cos(x[:, 0] * x[:, 1])], 1)
  y = y + 0.1 * rng.normal(size=y.shape)
  return (x[:n].astype(dtype), y[:n].astype(dtype), x[n:].astype(dtype),
          y[n:].astype(dtype))


def test_cg_matches_numpy_solve(x64):
  del x64
  rng = np.random.default_rng(0)
  q = np.linalg.qr(rng.normal(size=(30, 30)))[0]
  a = (q * np.logspace(0, 4, 30)) @ q.T
  b = rng.normal(size=(30, 2))
  expected = np.linalg.solve(a, b)
  plain = kr.conjugate_gradient(lambda v: a @ v, b, tol=1e-10, maxiter=200)
  jacobi = kr.conjugate_gradient(lambda v: a @ v, b, tol=1e-10, maxiter=200,
                                 preconditioner=lambda r: r / np.diag(a)[:, None])
  for res in (plain, jacobi):
    np.testing.assert_allclose(res.x, expected, rtol=1e-7)
    i = int(res.iterations)
    assert res.converged and res.residuals[i] <= 1e-10
    assert np.isnan(res.residuals[i + 1:]).all()
    assert res.residuals[0] == 1
    np.testing.assert_allclose(res.residual, np.max(
        np.linalg.norm(b - a @ res.x, axis=0) / np.linalg.norm(b, axis=0)),
                               rtol=1e-3)
  # One right-hand side, flat; maxiter caps the loop.
  capped = kr.conjugate_gradient(lambda v: a @ v, b[:, 0], tol=1e-12,
                                 maxiter=3)
  assert capped.x.shape == (30,) and int(capped.iterations) == 3
  assert not capped.converged


def test_cg_converged_is_read_from_the_recomputed_residual():
  # float32, condition number 1e4: the recurrence's residual falls below
  # tol (8.4e-7 after 443 iterations) while ||b - A x|| / ||b|| of the
  # result, evaluated in float64 by NumPy, stays at 2.6e-4.
  rng = np.random.default_rng(0)
  q = np.linalg.qr(rng.normal(size=(100, 100)))[0]
  a = (q * np.logspace(0, 4, 100)) @ q.T
  b = rng.normal(size=100)
  a32 = jnp.asarray(a, jnp.float32)
  res = kr.conjugate_gradient(lambda v: a32 @ v, jnp.asarray(b, jnp.float32),
                              tol=1e-6, maxiter=2000)
  i = int(res.iterations)
  assert i < 2000 and res.residuals[i] <= 1e-6
  truth = np.linalg.norm(b - a @ np.asarray(res.x, np.float64)) / np.linalg.norm(b)
  assert truth > 1e-5, truth
  np.testing.assert_allclose(res.residual, truth, rtol=0.05)
  assert not res.converged


@pytest.mark.parametrize('name', sorted(kernels.KERNELS))
def test_exact_krr_matches_sklearn_kernel_ridge(name, x64):
  del x64
  x, y, x_test, _ = _problem(80)
  kernel = kernels.get_kernel(name)
  coef = _exact_fit(name, x, y, BANDWIDTH, LAM, block_size=32)  # or by name
  ours = _matvec(kernel, x_test, x, coef, BANDWIDTH)
  peer = sk_kernel_ridge.KernelRidge(
      alpha=80 * LAM, kernel='rbf' if name == 'gaussian' else name,
      gamma=kernels.sklearn_gamma(name, BANDWIDTH)).fit(x, y)
  np.testing.assert_allclose(ours, peer.predict(x_test), rtol=1e-9,
                             atol=1e-10)


def test_falkon_with_every_point_a_centre_is_exact_krr(x64):
  del x64
  x, y, x_test, _ = _problem(60)
  kernel = kernels.get_kernel('gaussian')
  exact = _matvec(kernel, x_test, x, _exact_fit(kernel, x, y, BANDWIDTH, LAM),
                  BANDWIDTH)
  res = _nystrom_fit(kernel, x, y, x, BANDWIDTH, LAM, tol=1e-11, maxiter=200,
                     block_size=16)
  assert res.converged
  np.testing.assert_allclose(_matvec(kernel, x_test, x, res.coef, BANDWIDTH),
                             exact, rtol=1e-6, atol=1e-7)


def _numpy_cg(h, b, steps, prec):
  """The iterates of CG from 0 on ``h x = b`` preconditioned by ``r -> prec
  @ r``, in float64: ``[steps + 1, m]``."""
  x, r = np.zeros_like(b), b
  z = prec @ r
  p, iterates = z, [x]
  for _ in range(steps):
    hp = h @ p
    alpha = (r @ z) / (p @ hp)
    x, r_new = x + alpha * p, r - alpha * hp
    z_new = prec @ r_new
    p = z_new + (r_new @ z_new) / (r @ z) * p
    r, z = r_new, z_new
    iterates.append(x)
  return np.stack(iterates)


@pytest.mark.parametrize('preconditioner', kr.PRECONDITIONERS)
def test_nystrom_solution_and_checked_residuals_match_numpy(preconditioner,
                                                            x64):
  del x64
  x, y, _, _ = _problem(70)
  kernel = kernels.get_kernel('laplacian')
  c = x[np.asarray(kernels.choose_centres(jax.random.key(1), 70, 12))]
  gamma = kernels.sklearn_gamma('laplacian', BANDWIDTH)
  k_nm = pairwise.laplacian_kernel(x, c, gamma=gamma)
  k_mm = pairwise.laplacian_kernel(c, c, gamma=gamma)
  h = k_nm.T @ k_nm / 70 + LAM * k_mm
  rhs = k_nm.T @ y[:, 0] / 70
  expected = np.linalg.solve(h, rhs)
  checkpoints = (0, 1, 2, 4, 300)
  res = _nystrom_fit(kernel, x, y[:, 0], c, BANDWIDTH, LAM, tol=1e-12,
                     maxiter=300, preconditioner=preconditioner,
                     checkpoints=checkpoints, block_size=16)
  assert res.coef.shape == (12,)
  np.testing.assert_allclose(k_nm @ res.coef, k_nm @ expected, rtol=1e-6,
                             atol=1e-8)
  # The Nyström residual at the checkpoints, ||rhs - H a_i|| / ||rhs||, of
  # the iterates of NumPy's CG on H preconditioned by FALKON's B B^T (the
  # same iterates in exact arithmetic) or by nothing; NaN past the stop.
  prec = np.eye(12)
  if preconditioner == 'falkon':
    t = np.linalg.cholesky(k_mm + 12 * np.finfo(float).eps * np.eye(12)).T
    a = np.linalg.cholesky(t @ t.T / 12 + LAM * np.eye(12)).T
    b = np.linalg.inv(t) @ np.linalg.inv(a)
    prec = b @ b.T
  iterates = _numpy_cg(h, rhs, 4, prec)[list(checkpoints[:-1])]
  want = np.linalg.norm(rhs - iterates @ h, axis=1) / np.linalg.norm(rhs)
  assert int(res.iterations) < 300
  chex.assert_trees_all_close(res.checked, np.append(want, np.nan),
                              rtol=1e-6)


def test_falkon_cuts_iterations_by_a_large_factor():
  x, y, x_test, y_test = _problem(600, dtype=np.float32)
  kernel = kernels.get_kernel('gaussian')
  c = x[np.asarray(kernels.choose_centres(jax.random.key(0), 600, 60))]
  fit = jax.jit(lambda p: kr.nystrom_fit(
      kernel, x, y, c, BANDWIDTH, 1e-5, tol=1e-4, maxiter=500,
      preconditioner=p, block_size=256), static_argnums=0)
  falkon, plain = fit('falkon'), fit('none')
  assert int(falkon.iterations) < 500  # its recurrence reached tol
  # The residual each returns is the Nyström system's, evaluated by NumPy
  # in float64 here (to float32's rounding of it).
  gamma = kernels.sklearn_gamma('gaussian', BANDWIDTH)
  k_nm = pairwise.rbf_kernel(x.astype(np.float64), c.astype(np.float64),
                             gamma=gamma)
  h = k_nm.T @ k_nm / 600 + 1e-5 * pairwise.rbf_kernel(
      c.astype(np.float64), c.astype(np.float64), gamma=gamma)
  rhs = k_nm.T @ y / 600
  for res in (falkon, plain):
    truth = np.max(np.linalg.norm(rhs - h @ np.asarray(res.coef, np.float64),
                                  axis=0) / np.linalg.norm(rhs, axis=0))
    np.testing.assert_allclose(res.residual, truth, rtol=0.3)
    assert bool(res.converged) == (truth <= 1e-4), (res.residual, truth)
  assert 4 * int(falkon.iterations) < int(plain.iterations), (
      falkon.iterations, plain.iterations)
  mse = np.mean((_matvec(kernel, x_test, c, falkon.coef, BANDWIDTH)
                 - y_test)**2)
  assert mse < 0.03  # noise variance 0.01


def test_feature_ridge_is_the_normal_equations_and_matches_the_peers():
  x, y, x_test, y_test = _problem(200, n_test=200, dtype=np.float32)
  xj = jnp.asarray(x)
  gaussian = kernels.get_kernel('gaussian')
  gamma = kernels.sklearn_gamma('gaussian', BANDWIDTH)

  @jax.jit
  def ours(key):
    rff = kernels.draw_rff(key, gaussian, 3, 64)
    w = kr.ridge_fit(kernels.rff_features(rff, x, BANDWIDTH), y, LAM)
    c = xj[kernels.choose_centres(key, 200, 64)]
    v = kr.ridge_fit(kernels.nystrom_features(gaussian, x, c, BANDWIDTH), y,
                     LAM)
    return (jnp.mean((kernels.rff_features(rff, x_test, BANDWIDTH) @ w
                      - y_test)**2),
            jnp.mean((kernels.nystrom_features(gaussian, x_test, c, BANDWIDTH)
                      @ v - y_test)**2),
            kernels.rff_features(rff, x, BANDWIDTH), w)

  rff_mse, nys_mse, phi, w = jax.vmap(ours)(jax.random.split(jax.random.key(0),
                                                             4))
  phi, w = np.float64(phi[0]), np.float64(w[0])
  np.testing.assert_allclose(w, np.linalg.solve(
      phi.T @ phi + 200 * LAM * np.eye(64), phi.T @ y), rtol=2e-3, atol=2e-3)
  peers = {}
  for name, sampler in (('rff', kernel_approximation.RBFSampler),
                        ('nystrom', kernel_approximation.Nystroem)):
    errors = []
    for seed in range(4):
      f = sampler(gamma=gamma, n_components=64, random_state=seed).fit(x)
      model = linear_model.Ridge(alpha=200 * LAM, fit_intercept=False).fit(
          f.transform(x), y)
      errors.append(np.mean((model.predict(f.transform(x_test)) - y_test)**2))
    peers[name] = np.mean(errors)
  assert 0.7 < np.mean(rff_mse) / peers['rff'] < 1.4, (rff_mse, peers)
  assert 0.7 < np.mean(nys_mse) / peers['nystrom'] < 1.4, (nys_mse, peers)


def test_ridge_with_more_features_than_rows_is_scikit_learns_ridge(x64):
  # D > n goes through the n x n (dual) system; the weights are the primal's.
  del x64
  rng = np.random.default_rng(3)
  phi, y = rng.normal(size=(30, 80)), rng.normal(size=(30, 2))
  phi[:, 70:] = 0  # masked columns: weight exactly 0
  w = kr.ridge_fit(phi, y, LAM)
  peer = linear_model.Ridge(alpha=30 * LAM, fit_intercept=False).fit(phi, y)
  np.testing.assert_allclose(w, peer.coef_.T, rtol=1e-8, atol=1e-10)
  assert not np.asarray(w)[70:].any()


def test_ridge_checks_its_targets_before_tracing():
  # NaN targets gave NaN weights; too few rows an XLA dot_general error.
  phi = np.ones((50, 4), np.float32)
  y = np.ones((50, 1), np.float32)
  y[[3, 7]] = np.nan
  with pytest.raises(ValueError, match=r'y has 2 non-finite entries; '
                     'accepted: finite data'):
    kr.ridge_fit(phi, y, LAM)
  with pytest.raises(ValueError, match=r'features has 50 rows but y has 40; '
                     'accepted: one target row per input row'):
    kr.ridge_fit(phi, np.ones(40, np.float32), LAM)
  with pytest.raises(ValueError, match=r'lam=True \(bool\)'):
    kr.ridge_fit(phi, np.ones(50, np.float32), True)


def test_a_sweep_of_lam_and_bandwidth_is_one_vmap():
  x, y, x_test, _ = _problem(50, dtype=np.float32)
  kernel = kernels.get_kernel('gaussian')
  lams, bws = jnp.array([1e-3, 1e-2, 1e-3]), jnp.array([1.0, 2.0, 3.0])

  def predict(lam, bw):
    return kernels.kernel_matvec(kernel, x_test, x, kr.exact_fit(
        kernel, x, y, bw, lam), bw)

  swept = jax.jit(jax.vmap(predict))(lams, bws)
  alone = jax.jit(predict)
  for i in (0, 2):
    np.testing.assert_allclose(swept[i], alone(lams[i], bws[i]), rtol=1e-4,
                               atol=1e-5)


def test_exact_sweep_fits_every_pair_as_scikit_learn_does(x64):
  del x64
  x, y, x_test, _ = _problem(60)
  kernel = kernels.get_kernel('laplacian')
  bws, lams = np.array([0.7, 2.0]), np.array([1e-4, 1e-2, 1e-1])
  coefs = jax.jit(kr.exact_sweep, static_argnums=0, static_argnames=(
      'block_size',))(kernel, x, y, bws, lams, block_size=32)
  assert coefs.shape == (2, 3, 60, 2)
  for i, bw in enumerate(bws):
    for j, lam in enumerate(lams):
      peer = sk_kernel_ridge.KernelRidge(
          alpha=60 * lam, kernel='laplacian',
          gamma=kernels.sklearn_gamma('laplacian', bw)).fit(x, y)
      np.testing.assert_allclose(_matvec(kernel, x_test, x, coefs[i, j], bw),
                                 peer.predict(x_test), rtol=1e-9, atol=1e-10)
  with pytest.raises(ValueError, match=r'lam=-1\.0'):
    kr.exact_sweep(kernel, x, y, bws, np.array([1e-3, -1.0]))
  two_axes = jax.sharding.Mesh(np.asarray(jax.devices()[:1]).reshape(1, 1),
                               ('a', 'b'))
  with pytest.raises(ValueError, match=r"axes \('a', 'b'\); accepted: a one"):
    kr.exact_sweep(kernel, x, y, bws, lams, mesh=two_axes)


def test_bad_input_is_one_line_errors_before_tracing():
  x, y, _, _ = _problem(20, dtype=np.float32)
  kernel = kernels.get_kernel('gaussian')
  for kwargs, message in (
      (dict(lam=0.0), r'lam=0\.0; accepted: a finite number > 0'),
      (dict(lam=np.array([1e-3, -1.0])), r'lam=-1\.0'),
      (dict(bandwidth=-2.0), r'bandwidth=-2\.0; accepted'),
      (dict(centres=np.zeros((21, 3), np.float32)),
       r'M=21 centres for n=20 rows; accepted: M <= n'),
      (dict(x=np.where(np.eye(20, 3) > 0, np.nan, x)),
       r'x has 3 non-finite entries; accepted: finite data'),
      (dict(preconditioner='jacobi'),
       r"preconditioner='jacobi'; accepted: falkon, none")):
    args = dict(x=x, y=y, centres=x[:5], bandwidth=1.0, lam=1e-3)
    args.update(kwargs)
    with pytest.raises(ValueError, match=message):
      kr.nystrom_fit(kernel, **args)
  with pytest.raises(ValueError, match='lam=0'):
    kr.exact_fit(kernel, x, y, 1.0, 0)
