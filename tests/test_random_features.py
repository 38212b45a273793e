"""The random features study and its launcher:
``python -m experiments.random_features``."""

import numpy as np
import pytest

import launchers

from rahimi_jax import results as results_lib
from rahimi_jax import storage
from rahimi_jax.studies import kernel_data
from rahimi_jax.studies import random_features

_FLAGS = ['--features=8,32', '--seeds=2', '--train_size=200',
          '--approx_points=100']


@pytest.fixture(scope='module')
def study(tmp_path_factory):
  """The launcher run as a user would, beside bad input that must fail
  before anything runs."""
  def make(tmp):
    return tmp, launchers.launch_many('experiments.random_features', [
        [*_FLAGS, f'--out={tmp / "out"}'],
        ['--kernel=laplacian', '--features=8,128', '--seeds=2',
         '--train_size=200', '--approx_points=100', '--peers=false',
         f'--out={tmp / "laplacian"}'],
        ['--lam=0', f'--out={tmp / "bad"}']])

  tmp, (ok, laplacian, bad) = launchers.once(tmp_path_factory,
                                             'random_features', make)
  for proc in (ok, laplacian):
    assert proc.returncode == 0, proc.stderr[-3000:]
  return (storage.load(str(tmp / 'out')), ok, bad, tmp,
          storage.load(str(tmp / 'laplacian')))


def test_the_run_writes_tables_plots_and_slopes(study):
  res, ok, _, tmp, _ = study
  for name in ('approx_error.png', 'test_accuracy.png'):
    assert (tmp / 'out' / name).stat().st_size > 1000
  assert 'log-log slope of the approximation error' in ok.stdout
  # Random binning is the Laplacian kernel's (test_binning_... below).
  gaussian = set(random_features.METHODS) - {'binning'}
  assert set(res.columns['method']) == gaussian
  # 2 sizes x 2 seeds for 4 feature methods, plus the two exact fits.
  assert len(res) == 4 * 4 + 2
  slopes = res.metadata['slopes']
  assert all(s < -0.2 for s in slopes.values()), slopes
  acc = {m: res.where(method=m).columns['test_accuracy'] for m in gaussian}
  # Our exact kernel ridge is scikit-learn's (float32: up to 1 of 450).
  assert abs(acc['exact'][0] - acc['sklearn_exact'][0]) <= 1 / 450
  # More features, better fits; the peers at equal features are comparable.
  def rff_acc(features):
    return np.mean(res.where(method='rff', features=features).columns[
        'test_accuracy'])
  assert rff_acc(32) > rff_acc(8)
  assert abs(np.mean(acc['rff']) - np.mean(acc['sklearn_rff'])) < 0.1
  assert {'versions', 'git_commit', 'matmul_precision'} <= set(res.metadata)
  timings = {t['method'] for t in res.metadata['timings']}
  assert timings == gaussian
  # The timings say what BLAS threads both sides ran on.
  threads = res.metadata['blas_threads']
  assert threads >= 1 and f'on {threads} thread(s): small fits' in ok.stdout


def test_binning_joins_the_study_for_the_laplacian_kernel(study):
  res = study[4]
  binning = res.where(method='binning')
  assert len(binning) == 2 * 2
  # The bins' kernel estimate improves like 1 / sqrt(grids) (16x: ~4x).
  err = {f: np.mean(binning.where(features=f).columns['approx_error'])
         for f in (8, 128)}
  assert 2.5 < err[8] / err[128] < 6.5, err
  acc = {f: np.mean(binning.where(features=f).columns['test_accuracy'])
         for f in (8, 128)}
  exact = res.where(method='exact').columns['test_accuracy'][0]
  assert acc[8] < acc[128] <= exact + 0.02, (acc, exact)
  assert 'binning' in random_features.report(res)
  assert set(res.metadata['slopes']) == {'rff', 'nystrom', 'binning'}


def test_laplacian_bandwidth_and_binning_error_mean_what_they_say(study):
  import jax  # pylint: disable=g-import-not-at-top
  from scipy.spatial import distance  # pylint: disable=g-import-not-at-top
  from sklearn.metrics import pairwise  # pylint: disable=g-import-not-at-top
  from rahimi_jax import kernels  # pylint: disable=g-import-not-at-top
  res = study[4]
  config = random_features.RandomFeaturesConfig(
      kernel='laplacian', features=(8, 128), train_size=200,
      approx_points=100)
  d = config.data()
  x = np.asarray(d.x, np.float64)
  bandwidth = res.metadata['bandwidth']
  # The median heuristic in the Laplacian's own (L1) distance: the median
  # pair's kernel value is exp(-1), not ~0 (the Euclidean median's).
  np.testing.assert_allclose(
      bandwidth, np.median(distance.pdist(x, 'cityblock')), rtol=1e-6)
  k = pairwise.laplacian_kernel(x, gamma=1 / bandwidth)
  np.testing.assert_allclose(np.median(k[np.triu_indices(len(x), 1)]),
                             np.exp(-1), rtol=1e-6)
  # The binning error is that of the hashed features the ridge fits:
  # z z^T against scikit-learn's kernel, for the study's draw (key 0, seed 0).
  sub = x[:100]
  k_sub = pairwise.laplacian_kernel(sub, gamma=1 / bandwidth)
  key = jax.random.split(jax.random.key(0), 2)[0]
  draw = kernels.draw_binning(key, x.shape[1], 8)
  z = np.asarray(kernels.binning_features(
      draw, sub.astype(np.float32), bandwidth,
      buckets=random_features.BUCKETS), np.float64)
  want = np.linalg.norm(k_sub - z @ z.T) / np.linalg.norm(k_sub)
  got = res.where(method='binning', features=8, seed=0).columns[
      'approx_error'][0]
  np.testing.assert_allclose(got, want, rtol=1e-4)


def test_a_failed_fit_scores_nan_and_the_report_says_so(study):
  # The argmax of a NaN row is class 0: a failed Cholesky scored chance
  # (0.1 on digits) as if it were a fit.
  labels = np.array([0, 1, 2, 1])
  predictions = np.eye(3)[[0, 1, 2, 2]]
  assert kernel_data.score('classification', predictions, labels) == 0.75
  predictions[1] = np.nan
  assert np.isnan(kernel_data.score('classification', predictions, labels))
  assert np.isnan(kernel_data.score('regression', np.array([1.0, np.inf]),
                                    np.zeros(2)))
  res = study[0]
  accuracy = res.columns['test_accuracy'].copy()
  method, seed = res.columns['method'], res.columns['seed']
  accuracy[(method == 'exact') | ((method == 'rff') & (seed == 0))] = np.nan
  text = random_features.report(results_lib.Results(
      res.columns | dict(test_accuracy=accuracy), res.metadata))
  assert 'exact kernel ridge test_accuracy: Cholesky failed (NaN)' in text
  assert text.count('1/2 Cholesky failed') == 2, text  # rff at 8 and 32


def test_bad_input_is_one_error_line(study):
  launchers.assert_clean_error(study[2], 'lam=0.0')


def test_bad_config_fails_before_anything_runs():
  for kwargs, message in ((dict(features=(8, 4000)), 'M <= n'),
                          (dict(features=(8,)), 'at least two sizes'),
                          (dict(features=(32, 8)), 'increasing'),
                          (dict(bandwidth=-1.0), 'bandwidth=-1.0'),
                          (dict(dataset='cifar'), "'cifar'"),
                          (dict(train_size=10**5),
                           r'train_size=100000; .* to the 1347 training')):
    with pytest.raises(ValueError, match=message):
      random_features.RandomFeaturesConfig(**kwargs).data()
