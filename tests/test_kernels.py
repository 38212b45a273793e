"""Kernels, blocked products and random features against scikit-learn and
NumPy."""

import chex
import jax
from jax import test_util as jtu
import jax.numpy as jnp
import numpy as np
import pytest
from sklearn import kernel_approximation
from sklearn.metrics import pairwise

from rahimi_jax import kernels
from rahimi_jax.kernels import binning
from rahimi_jax.kernels import features

SKLEARN = {'gaussian': pairwise.rbf_kernel,
           'laplacian': pairwise.laplacian_kernel}
BANDWIDTH = 1.5
# Jitted once per kernel and shape: eager calls compile every operation.
_nystrom = jax.jit(kernels.nystrom_features, static_argnums=0,
                   static_argnames='block_size')


@pytest.fixture(scope='module')
def points():
  rng = np.random.default_rng(0)
  return (rng.normal(size=(30, 3)).astype(np.float32),
          rng.normal(size=(11, 3)).astype(np.float32))


def _exact(name, x, y, bandwidth=BANDWIDTH):
  return SKLEARN[name](np.float64(x), np.float64(y),
                       gamma=kernels.sklearn_gamma(name, bandwidth))


def test_registry_covers_the_peers_and_errors_name_the_accepted():
  assert set(kernels.KERNELS) == set(SKLEARN)
  with pytest.raises(ValueError, match="'rbf'.*gaussian, laplacian"):
    kernels.get_kernel('rbf')


@pytest.mark.parametrize('name', sorted(kernels.KERNELS))
def test_sklearn_name_and_gamma_name_the_same_kernel(name, points):
  # The one mapping the studies and benchmarks hand scikit-learn.
  x, y = points
  kernel = kernels.get_kernel(name)
  chex.assert_trees_all_close(
      pairwise.pairwise_kernels(np.float64(x), np.float64(y),
                                metric=kernel.sklearn_name,
                                gamma=kernel.gamma(BANDWIDTH)),
      np.float64(kernels.kernel_matrix(kernel, x, y, BANDWIDTH)), atol=2e-6)


@pytest.mark.parametrize('name', sorted(kernels.KERNELS))
def test_blocked_matrix_and_products_match_sklearn(name, points):
  x, y = points
  kernel = kernels.get_kernel(name)
  exact = _exact(name, x, y)
  # 30 rows in blocks of 7: four whole blocks and a padded one.
  np.testing.assert_allclose(
      kernels.kernel_matrix(kernel, x, y, BANDWIDTH, block_size=7), exact,
      atol=2e-6)
  v = np.random.default_rng(1).normal(size=(11, 2)).astype(np.float32)
  np.testing.assert_allclose(
      kernels.kernel_matvec(kernel, x, y, v, BANDWIDTH, block_size=7),
      exact @ v, atol=1e-5)
  w = np.random.default_rng(2).normal(size=(30, 2)).astype(np.float32)
  np.testing.assert_allclose(
      kernels.normal_matvec(kernel, x, y, v, w, BANDWIDTH, block_size=7),
      exact.T @ (exact @ v + w), rtol=1e-5, atol=1e-4)
  # Traced bandwidths: a sweep is one vmap.
  sweep = jax.vmap(lambda s: kernels.kernel_matrix(kernel, x, y, s))(
      jnp.array([0.5, 2.0]))
  np.testing.assert_allclose(sweep[1], _exact(name, x, y, 2.0), atol=2e-6)


def test_blocks_fill_half_an_l2_cache_and_tiles_sum_as_blocks(points,
                                                              monkeypatch):
  from rahimi_jax.kernels import kernels as kernels_module  # pylint: disable=g-import-not-at-top
  monkeypatch.setattr(kernels_module, 'l2_cache_bytes', lambda: 2 << 20)
  # Half of 2 MiB over 4-byte rows of M entries, a power of two in [8, 1024].
  assert [kernels.default_block_size(m) for m in (10, 2000, 10000, 10**6)] == [
      1024, 128, 16, 8]
  # A block computed in tiles (blocks of 8 rows, tiles of 4) is the same
  # product.
  x, y = points
  kernel = kernels.get_kernel('gaussian')
  exact = _exact('gaussian', x, y)
  v = np.random.default_rng(1).normal(size=(11, 2)).astype(np.float32)
  w = np.random.default_rng(2).normal(size=(30, 2)).astype(np.float32)
  monkeypatch.setattr(kernels_module, 'default_block_size', lambda m: 4)
  np.testing.assert_allclose(
      kernels.normal_matvec(kernel, x, y, v, w, BANDWIDTH, block_size=8),
      exact.T @ (exact @ v + w), rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize('name', sorted(kernels.KERNELS))
def test_rff_error_falls_like_one_over_sqrt_features(name, points):
  x = points[0]
  exact = _exact(name, x, x)
  kernel = kernels.get_kernel(name)
  sizes = jnp.array([64, 256, 1024, 4096])

  def errors(key):
    rff = kernels.draw_rff(key, kernel, 3, 4096)
    return jax.vmap(lambda d: kernels.relative_frobenius_error(
        exact, kernels.rff_kernel(rff, x, x, BANDWIDTH, d)))(sizes)

  err = jax.jit(jax.vmap(errors))(jax.random.split(jax.random.key(0), 8)
                                  ).mean(0)
  slope = np.polyfit(np.log(sizes), np.log(err), 1)[0]
  assert -0.62 < slope < -0.38, (slope, err)
  if name == 'gaussian':
    # scikit-learn's RBFSampler at equal features: the same error, up to
    # seed noise.
    peer = np.mean([kernels.relative_frobenius_error(exact, f @ f.T) for f in (
        kernel_approximation.RBFSampler(
            gamma=kernels.sklearn_gamma(name, BANDWIDTH), n_components=256,
            random_state=s).fit_transform(x) for s in range(8))])
    assert 0.75 < err[1] / peer < 1.33, (err[1], peer)


def test_masked_features_are_the_prefix_of_the_draw(points):
  x = points[0]
  rff = kernels.draw_rff(jax.random.key(3), kernels.get_kernel('gaussian'), 3,
                         16)
  phi = jax.jit(kernels.rff_features)(rff, x, BANDWIDTH, 5)
  np.testing.assert_array_equal(phi[:, 5:], 0)
  direct = np.sqrt(2 / 5) * np.cos(
      x @ (np.asarray(rff.frequencies[:, :5]) / BANDWIDTH) + rff.phases[:5])
  np.testing.assert_allclose(phi[:, :5], direct, atol=1e-6)


def test_rff_kernel_gradient_in_bandwidth(points):
  x, y = points
  rff = kernels.draw_rff(jax.random.key(4), kernels.get_kernel('laplacian'),
                         3, 32)
  jtu.check_grads(jax.jit(lambda s: kernels.rff_kernel(rff, x[:4], y[:3], s)),
                  (jnp.float32(1.3),), order=1, modes=['fwd', 'rev'],
                  atol=2e-2, rtol=2e-2)


@pytest.mark.parametrize('name', sorted(kernels.KERNELS))
def test_nystrom_features_match_the_pseudoinverse_formula(name, points):
  x = points[0]
  kernel = kernels.get_kernel(name)
  idx = kernels.choose_centres(jax.random.key(5), 30, 10)
  assert len(np.unique(idx)) == 10
  phi = _nystrom(kernel, x, x[np.asarray(idx)], BANDWIDTH, block_size=8)
  k_nc = _exact(name, x, x[np.asarray(idx)])
  expected = k_nc @ np.linalg.pinv(k_nc[np.asarray(idx)]) @ k_nc.T
  np.testing.assert_allclose(phi @ phi.T, expected, atol=1e-4)
  # All points as centres: the exact kernel.
  phi = _nystrom(kernel, x, x, BANDWIDTH)
  np.testing.assert_allclose(phi @ phi.T, _exact(name, x, x), atol=1e-4)


def test_nystrom_error_matches_sklearn_at_equal_centres(points):
  x = points[0]
  exact = _exact('gaussian', x, x)
  kernel = kernels.get_kernel('gaussian')
  @jax.jit
  @jax.vmap
  def ours(key):
    f = kernels.nystrom_features(
        kernel, x, jnp.asarray(x)[kernels.choose_centres(key, 30, 8)],
        BANDWIDTH)
    return kernels.relative_frobenius_error(exact, f @ f.T)
  ours = np.mean(ours(jax.random.split(jax.random.key(0), 8)))
  peer = np.mean([kernels.relative_frobenius_error(exact, f @ f.T) for f in (
      kernel_approximation.Nystroem(
          gamma=kernels.sklearn_gamma('gaussian', BANDWIDTH), n_components=8,
          random_state=s).fit_transform(x) for s in range(8))])
  assert 0.7 < ours / peer < 1.4, (ours, peer)


def test_bad_hyperparameters_are_one_line_errors(points):
  x = points[0]
  kernel = kernels.get_kernel('gaussian')
  rff = kernels.draw_rff(jax.random.key(0), kernel, 3, 8)
  for bad in (0.0, -1.0, float('nan')):
    with pytest.raises(ValueError, match=r'bandwidth=.*accepted: a finite '
                       r'number > 0'):
      kernels.rff_features(rff, x, bad)
  with pytest.raises(ValueError, match=r'num_features=\[4, 9\].*1\.\.8'):
    kernels.rff_features(rff, x, 1.0, jnp.array([4, 9]))
  with pytest.raises(ValueError, match=r'num_centres \(M\)=31 with n=30'):
    kernels.choose_centres(jax.random.key(0), 30, 31)
  with pytest.raises(ValueError, match='block_size=0'):
    kernels.kernel_matrix(kernel, x, x, 1.0, block_size=0)


def test_fractional_sizes_bools_and_non_finite_inputs_are_refused(points):
  # 2.5 features kept 3 columns scaled by sqrt(2 / 2.5): a kernel 1.2x too
  # large; NaN inputs gave NaN features; lam=True passed as 1. Every check
  # runs before anything is computed (the draws here are NumPy's).
  x = points[0]
  kernel = kernels.get_kernel('gaussian')
  rng = np.random.default_rng(0)
  rff = kernels.RFF(rng.normal(size=(3, 8)), rng.uniform(0, 6, 8))
  with pytest.raises(ValueError, match=r'num_features=2\.5; accepted: '
                     r'integers in 1\.\.8'):
    kernels.rff_features(rff, x, 1.0, 2.5)
  with pytest.raises(ValueError, match=r'num_centres=6\.5; accepted: '
                     r'integers in 1\.\.10 \(the centres given\)'):
    kernels.nystrom(kernel, x[:10], 1.0, 6.5)
  features.check_num_features(np.float32(3.0), 8)  # whole: accepted
  bad = np.where(np.eye(30, 3) > 0, np.nan, x)  # 3 NaNs
  for call, message in (
      (lambda: kernels.rff_features(rff, bad, 1.0), 'x has 3 non-finite'),
      (lambda: kernels.nystrom(kernel, bad[:10], 1.0),
       'centres has 3 non-finite'),
      (lambda: kernels.nystrom_apply(kernel, kernels.Nystrom(
          x[:5], np.ones(5), np.eye(5)), bad, 1.0), 'x has 3 non-finite')):
    with pytest.raises(ValueError, match=message):
      call()
  for value in (True, np.bool_(True), '1e-3'):
    with pytest.raises(ValueError, match=rf'lam={value!r} \(.*\); accepted: '
                       'a finite number > 0'):
      kernels.check_positive('lam', value)


def test_binning_refuses_bins_past_int32_and_traced_calls_pass(points):
  # |x| / (bandwidth * pitch) past 2^31: the int32 bins saturate and far
  # points share one (at bandwidth 1e-8 the estimate put the two most
  # distant points in one bin).
  x = np.concatenate([points[0][:4], [[1e3, -1e3, 0]]]).astype(np.float32)
  rng = np.random.default_rng(0)
  draw = binning.Binning(rng.gamma(2.0, size=(16, 3)).astype(np.float32),
                         rng.uniform(size=(16, 3)).astype(np.float32),
                         rng.integers(0, 2**32, (3, 16, 3), np.uint32) | 1)
  with pytest.raises(ValueError, match=r'bandwidth=1e-08 with \|x\| up to '
                     r'1e\+03: bin indices up to .*; accepted: a bandwidth '
                     r'>= '):
    binning.binning_kernel(draw, x, x, 1e-8)
  binning.check_cells(draw, x, 1.0)  # well inside: accepted
  # Traced bandwidths are not checked (a vmapped sweep still traces).
  chex.assert_shape(jax.eval_shape(
      lambda s: binning.binning_kernel(draw, x, x, s), 1e-8), (5, 5))


def test_masked_nystrom_is_the_nystrom_kernel_of_the_prefix(points):
  x = points[0]
  kernel = kernels.get_kernel('gaussian')
  masked = _nystrom(kernel, x, x[:12], BANDWIDTH, 5)
  prefix = _nystrom(kernel, x, x[:5], BANDWIDTH)
  np.testing.assert_allclose(masked @ masked.T, prefix @ prefix.T, atol=1e-5)


def test_random_binning_estimates_the_laplacian_kernel(points):
  # Rahimi & Recht's Algorithm 2 against scikit-learn's laplacian_kernel: the
  # fraction of shared bins is unbiased (mean over 8 draws of 4096 grids) and
  # its error falls like 1 / sqrt(grids).
  x, y = points
  exact = _exact('laplacian', x, y)
  sizes = jnp.array([64, 256, 1024, 4096])

  def draw(key):
    b = binning.draw_binning(key, 3, 4096)
    k = jax.vmap(lambda p: binning.binning_kernel(b, x, y, BANDWIDTH, p))(sizes)
    return k, jax.vmap(lambda kk: kernels.relative_frobenius_error(exact, kk))(k)

  k, err = jax.jit(jax.vmap(draw))(jax.random.split(jax.random.key(0), 8))
  slope = np.polyfit(np.log(sizes), np.log(err.mean(0)), 1)[0]
  assert -0.62 < slope < -0.38, (slope, err.mean(0))
  # 8 x 4096 grids: each entry's standard deviation is <= 0.5 / sqrt(32768).
  np.testing.assert_allclose(k[:, -1].mean(0), exact, atol=5 * 0.5 / 181)
  assert 0 <= float(k.min()) and float(k.max()) <= 1


def test_random_binning_features_hash_one_signed_column_per_grid(points):
  x, y = points
  b = binning.draw_binning(jax.random.key(1), 3, 2048)
  features = jax.jit(binning.binning_features,
                     static_argnames='buckets')
  z = np.asarray(features(b, x, BANDWIDTH, 1500, buckets=8))
  assert z.shape == (30, 2048 * 8)
  per_grid = np.abs(z).reshape(30, 2048, 8)
  # One nonzero +-1/sqrt(1500) per kept grid; masked grids are exactly 0.
  np.testing.assert_array_equal((per_grid[:, :1500] > 0).sum(-1), 1)
  np.testing.assert_allclose(per_grid[:, :1500].max(-1), 1 / np.sqrt(1500),
                             rtol=1e-6)
  assert not per_grid[:, 1500:].any()
  zy = np.asarray(features(b, y, BANDWIDTH, 1500, buckets=8))
  exact = _exact('laplacian', x, y)
  # Unbiased: the hashed features' kernel is as close as the bins' own.
  assert np.linalg.norm(z @ zy.T - exact) / np.linalg.norm(exact) < 0.1
  for bad, message in ((dict(bandwidth=-1.0), 'bandwidth=-1.0'),
                       (dict(num_grids=4096),
                        r'num_grids=4096; accepted: integers in 1\.\.2048 '
                        r'\(max_grids\)')):
    args = dict(bandwidth=BANDWIDTH, num_grids=10) | bad
    with pytest.raises(ValueError, match=message):
      binning.binning_features(b, x, **args)
  with pytest.raises(ValueError, match='max_grids=0'):
    binning.draw_binning(jax.random.key(0), 3, 0)


def test_nystrom_cutoff_drops_rounding_noise_and_only_that():
  # Nyström's kernel K(x, C) K_CC^+ K(C, x) is a projection of k(x, .):
  # never above k(x, x) = 1. Rank-deficient K_CC (100 centres in 2-d): with
  # every positive eigenvalue kept (the cutoff s > 0), float32's rounding
  # noise eigenvalues blew a diagonal up to 1.43. Well-conditioned K_CC (150
  # centres in 6-d, smallest eigenvalue far above rounding): the cutoff M eps
  # s_max dropped real eigenvalues, 1.5e-2 from scikit-learn's float64
  # Nystroem (which keeps them), where the kept ones give 2e-4.
  kernel = kernels.get_kernel('gaussian')
  for (m, d, bandwidth, seeds), check in (
      ((100, 2, 2.0, (1, 2)), 'bounded'), ((150, 6, 2.0, (0,)), 'sklearn')):
    for seed in seeds:
      rng = np.random.default_rng(seed)
      x = rng.normal(size=(60, d)).astype(np.float32)
      c = rng.normal(size=(m, d)).astype(np.float32)
      phi = np.float64(_nystrom(kernel, x, c, bandwidth))
      ours = phi @ phi.T
      if check == 'bounded':
        assert np.diag(ours).max() <= 1 + 1e-4, np.diag(ours).max()
      else:
        f = kernel_approximation.Nystroem(
            gamma=kernels.sklearn_gamma('gaussian', bandwidth),
            n_components=m).fit(np.float64(c)).transform(np.float64(x))
        chex.assert_trees_all_close(ours, f @ f.T, atol=1e-3)
