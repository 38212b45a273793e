"""Tests of rahimi_jax.data: bundled digits, synthetic regression, checks."""

import dataclasses
import functools
import os
import sys
import tempfile
from unittest import mock

from absl.testing import absltest
from absl.testing import parameterized
import chex
import jax
import numpy as np

from rahimi_jax import data as data_lib
from rahimi_jax.data import Dataset


@functools.lru_cache(maxsize=None)
def _digits():
  return data_lib.digits()


def _lstsq(x, y):
  x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
  w, *_ = np.linalg.lstsq(x, y, rcond=None)
  return w


def _small_regression(**overrides):
  rng = np.random.default_rng(0)
  fields = dict(
      x_train=rng.standard_normal((8, 3)).astype(np.float32),
      y_train=rng.standard_normal((8, 2)).astype(np.float32),
      x_test=rng.standard_normal((4, 3)).astype(np.float32),
      y_test=rng.standard_normal((4, 2)).astype(np.float32),
      task='regression', num_outputs=2)
  return Dataset(**(fields | overrides))


def _small_classification(**overrides):
  rng = np.random.default_rng(0)
  fields = dict(
      x_train=rng.standard_normal((8, 3)).astype(np.float32),
      y_train=np.arange(8, dtype=np.int32) % 4,
      x_test=rng.standard_normal((4, 3)).astype(np.float32),
      y_test=np.arange(4, dtype=np.int32),
      task='classification', num_outputs=4)
  return Dataset(**(fields | overrides))


class DigitsTest(absltest.TestCase):

  def test_shapes(self):
    d = _digits()
    chex.assert_shape(d.x_train, (1347, 64))
    chex.assert_shape(d.x_test, (450, 64))
    chex.assert_shape(d.y_train, (1347,))
    chex.assert_shape(d.y_test, (450,))
    self.assertEqual((d.task, d.num_outputs, d.in_dim, d.n_train),
                     ('classification', 10, 64, 1347))

  def test_dtypes_and_labels(self):
    d = _digits()
    self.assertEqual(d.x_train.dtype, np.float32)
    self.assertEqual(d.x_test.dtype, np.float32)
    for y in (d.y_train, d.y_test):
      self.assertEqual(y.dtype, np.int32)
      self.assertGreaterEqual(int(y.min()), 0)
      self.assertLess(int(y.max()), 10)
    # Every class appears in both splits (a stratified split).
    np.testing.assert_array_equal(np.unique(d.y_train), np.arange(10))
    np.testing.assert_array_equal(np.unique(d.y_test), np.arange(10))

  def test_train_features_standardized(self):
    d = _digits()
    x = np.asarray(d.x_train, np.float64)
    std = x.std(0)
    varying = std > 0
    self.assertGreater(varying.sum(), 50)  # only a few pixels are constant
    np.testing.assert_allclose(x.mean(0), 0.0, atol=1e-5)
    np.testing.assert_allclose(std[varying], 1.0, rtol=1e-4)
    # Constant training features stay finite (0), not NaN.
    np.testing.assert_array_equal(x[:, ~varying], 0.0)
    self.assertTrue(np.all(np.isfinite(d.x_test)))

  def test_test_split_uses_train_statistics(self):
    # Test features are standardized with the training mean, not their own:
    # their mean is near, but not exactly, zero.
    x = np.asarray(_digits().x_test, np.float64)
    self.assertGreater(np.abs(x.mean(0)).max(), 1e-3)
    self.assertLess(np.abs(x.mean(0)).max(), 1.0)

  def test_deterministic(self):
    chex.assert_trees_all_equal(data_lib.digits(), _digits())

  def test_seed_changes_the_split(self):
    other = data_lib.digits(seed=1)
    chex.assert_shape(other.x_train, (1347, 64))
    self.assertFalse(np.array_equal(other.y_train, _digits().y_train))

  def test_cached_copy_is_scikit_learns_split_and_loads_without_it(self):
    from sklearn import datasets  # pylint: disable=g-import-not-at-top
    from sklearn import model_selection  # pylint: disable=g-import-not-at-top
    x, y = datasets.load_digits(return_X_y=True)
    x_train, x_test, y_train, y_test = model_selection.train_test_split(
        x, y, test_size=0.25, random_state=0, stratify=y)
    mu, sd = x_train.mean(0), x_train.std(0)
    sd[sd == 0] = 1
    want = ((x_train - mu) / sd, y_train, (x_test - mu) / sd, y_test)
    with tempfile.TemporaryDirectory() as cache, mock.patch.dict(
        os.environ, {'RAHIMI_JAX_CACHE': cache}):
      first = data_lib.digits()
      (name,) = os.listdir(cache)
      with mock.patch.dict(sys.modules, {'sklearn': None}):  # unimportable
        again = data_lib.digits()
      # A file whose splits disagree in rows is made again.
      np.savez(os.path.join(cache, name), x_train=want[0][:5].astype(
          np.float32), y_train=want[1][:6].astype(np.int32), x_test=want[2]
               .astype(np.float32), y_test=want[3].astype(np.int32))
      remade = data_lib.digits()
    for d in (first, again, remade):
      chex.assert_trees_all_equal(
          (d.x_train, d.y_train, d.x_test, d.y_test),
          tuple(a.astype(b.dtype) for a, b in zip(want, (
              d.x_train, d.y_train, d.x_test, d.y_test))))

  def test_a_cached_file_of_other_shapes_or_values_is_made_again(self):
    # A consistent file of 10 rows per split was read as the dataset, and
    # one with NaN features failed check_dataset instead of being remade.
    want = _digits()
    arrays = {k: np.asarray(getattr(want, k)) for k in data_lib.ARRAY_FIELDS}
    with tempfile.TemporaryDirectory() as cache, mock.patch.dict(
        os.environ, {'RAHIMI_JAX_CACHE': cache}):
      data_lib.digits()
      (name,) = os.listdir(cache)
      for bad in ({k: a[:10] for k, a in arrays.items()},
                  arrays | {'x_test': np.full_like(arrays['x_test'], np.nan)},
                  arrays | {'x_train': np.full_like(arrays['x_train'], np.nan)},
                  # float64 features: the dataset is float32 whatever the file.
                  arrays | {'x_train': arrays['x_train'].astype(np.float64)}):
        np.savez(os.path.join(cache, name), **bad)
        got = data_lib.digits()
        chex.assert_trees_all_equal(got, want)
        chex.assert_trees_all_equal_dtypes(got, want)
      # The generator's version is part of the key: a new one, a new file.
      with mock.patch.object(data_lib, '_DIGITS_VERSION', 2):
        data_lib.digits()
      self.assertLen(os.listdir(cache), 2)

  def test_a_numpy_seed_is_the_int_seed(self):
    chex.assert_trees_all_equal(data_lib.digits(seed=np.int64(0)), _digits())

  def test_bad_arguments(self):
    fraction = r'test_fraction must be a number in \(0, 1\) leaving .*; got '
    seed = r'seed must be an integer in \[0, 2\*\*32\); got '
    # 450 was read by scikit-learn as a count of test images.
    for kwargs, pattern in (
        ({'test_fraction': 450}, fraction + r'450\.'),
        ({'test_fraction': 1}, fraction + r'1\.'),
        ({'test_fraction': 0.0}, fraction + r'0\.0\.'),
        ({'test_fraction': 0.001}, fraction + r'0\.001\.'),  # 2 images
        ({'test_fraction': float('nan')}, fraction + 'nan'),
        ({'test_fraction': True}, fraction + 'True'),
        ({'seed': None}, seed + 'None'),
        ({'seed': -1}, seed + '-1'),
        ({'seed': 2**32}, seed + '4294967296'),
        ({'seed': True}, seed + 'True'),
        ({'seed': 1.0}, seed + r'1\.0')):
      with self.subTest(**kwargs):
        with self.assertRaisesRegex(ValueError, pattern):
          data_lib.digits(cache=False, **kwargs)

  def test_is_a_pytree_with_static_metadata(self):
    d = _digits()
    leaves, treedef = jax.tree.flatten(d)
    self.assertLen(leaves, 4)
    rebuilt = jax.tree.unflatten(treedef, leaves)
    self.assertEqual((rebuilt.task, rebuilt.num_outputs),
                     ('classification', 10))


class SyntheticTest(parameterized.TestCase):

  def test_default_shapes(self):
    d = data_lib.synthetic()
    chex.assert_shape(d.x_train, (1000, 6))
    chex.assert_shape(d.y_train, (1000, 10))
    chex.assert_shape(d.x_test, (1000, 6))
    chex.assert_shape(d.y_test, (1000, 10))
    self.assertEqual((d.task, d.num_outputs, d.in_dim), ('regression', 10, 6))
    for a in (d.x_train, d.y_train, d.x_test, d.y_test):
      self.assertEqual(a.dtype, np.float32)

  def test_custom_shapes(self):
    d = data_lib.synthetic(n_train=20, n_test=7, in_dim=3, out_dim=2)
    chex.assert_shape([d.x_train, d.y_train, d.x_test, d.y_test],
                      [(20, 3), (20, 2), (7, 3), (7, 2)])

  def test_realizable_without_noise(self):
    d = data_lib.synthetic(condition_number=1e3)
    w = _lstsq(d.x_train, d.y_train)
    chex.assert_shape(w, (6, 10))
    residual = np.asarray(d.y_train, np.float64) - d.x_train @ w
    # Only float32 rounding of the stored arrays remains.
    self.assertLess(np.abs(residual).max(), 1e-5)
    # The same W explains the test split.
    test_residual = np.asarray(d.y_test, np.float64) - d.x_test @ w
    self.assertLess(np.abs(test_residual).max(), 1e-5)

  def test_float64_storage_is_realizable_to_float64_rounding(self):
    d64 = data_lib.synthetic(n_train=200, n_test=10, condition_number=1e5,
                             dtype='float64')
    for a in (d64.x_train, d64.y_train, d64.x_test, d64.y_test):
      self.assertEqual(a.dtype, np.float64)
    x, y = d64.x_train, d64.y_train
    # The least-squares optimum 0.5 mean ||x w - y||^2 of the stored data:
    # float64 rounding only (~1e-31 here); stored as float32 the same draws
    # leave ~1e-15, which is what a float64 fit of them bottoms out at.
    loss64 = 0.5 * np.mean(np.sum((x @ _lstsq(x, y) - y) ** 2, -1))
    self.assertLess(loss64, 1e-28)
    d32 = data_lib.synthetic(n_train=200, n_test=10, condition_number=1e5)
    x32, y32 = (np.asarray(a, np.float64) for a in (d32.x_train, d32.y_train))
    loss32 = 0.5 * np.mean(np.sum((x32 @ _lstsq(x32, y32) - y32) ** 2, -1))
    self.assertGreater(loss32, 1e-18)
    # The same draws: float32 storage is the float64 data rounded.
    chex.assert_trees_all_equal(d32.x_train, x.astype(np.float32))
    chex.assert_trees_all_equal(d32.y_test, d64.y_test.astype(np.float32))

  def test_bad_dtype(self):
    with self.assertRaisesRegex(ValueError, "'float16'.*float32, float64"):
      data_lib.synthetic(dtype='float16')
    for name, value in (('in_dim', 0), ('n_train', -1), ('out_dim', 2.0),
                        ('n_test', True)):
      with self.assertRaisesRegex(
          ValueError, f'{name} must be an integer >= 1; got {value!r}'):
        data_lib.synthetic(**{name: value})
    for name, value, least in (('condition_number', True, 1),
                               ('noise', True, 0), ('noise', -0.5, 0)):
      with self.assertRaisesRegex(
          ValueError, f'{name} must be a finite number >= {least}; got '
          f'{value!r}'):
        data_lib.synthetic(**{name: value})
    for value in (True, -1, None):
      with self.assertRaisesRegex(ValueError, r'seed must be an integer in '
                                  rf'\[0, 2\*\*32\); got {value!r}'):
        data_lib.synthetic(seed=value)

  def test_noise_is_not_realizable(self):
    d = data_lib.synthetic(condition_number=1e3, noise=0.1)
    residual = d.y_train - d.x_train @ _lstsq(d.x_train, d.y_train)
    self.assertGreater(residual.std(), 0.05)
    self.assertLess(residual.std(), 0.15)

  @parameterized.parameters(1.0, 10.0, 1e3)
  def test_condition_number(self, cond):
    d = data_lib.synthetic(condition_number=cond)
    s = np.linalg.svd(_lstsq(d.x_train, d.y_train), compute_uv=False)
    self.assertLen(s, 6)
    np.testing.assert_allclose(s[0] / s[-1], cond, rtol=0.01)
    np.testing.assert_allclose(s[0], 1.0, rtol=0.01)
    # Log-spaced between 1/cond and 1.
    np.testing.assert_allclose(s, np.logspace(0, -np.log10(cond), 6),
                               rtol=0.01)

  def test_a_single_output_has_no_condition_number_to_set(self):
    # One singular value: a requested 1e5 came out 1, reported as 1e5.
    with self.assertRaisesRegex(ValueError, r'condition_number 100000\.0: a '
                                r'6 x 1 matrix has one singular value'):
      data_lib.synthetic(out_dim=1)
    data_lib.synthetic(out_dim=1, condition_number=1.0)  # what it has

  def test_deterministic_and_seeded(self):
    chex.assert_trees_all_equal(data_lib.synthetic(n_train=10, n_test=5),
                                data_lib.synthetic(n_train=10, n_test=5))
    a = data_lib.synthetic(n_train=10, n_test=5, seed=0)
    b = data_lib.synthetic(n_train=10, n_test=5, seed=1)
    self.assertFalse(np.allclose(a.x_train, b.x_train))

  def test_the_test_set_does_not_depend_on_the_training_set_size(self):
    # Runs that differ in n_train are scored on the same test samples.
    small = data_lib.synthetic(n_train=10, n_test=5, noise=0.1)
    large = data_lib.synthetic(n_train=40, n_test=5, noise=0.1)
    chex.assert_trees_all_equal((small.x_test, small.y_test),
                                (large.x_test, large.y_test))
    # and the training set not on n_test: W* and the training samples, in
    # order, from the seed's stream (a numpy reference of the construction).
    rng = np.random.default_rng(0)
    u, _ = np.linalg.qr(rng.standard_normal((6, 6)))
    v, _ = np.linalg.qr(rng.standard_normal((10, 6)))
    w = (u * np.logspace(0, -5, 6)) @ v.T
    x = rng.standard_normal((10, 6))
    y = x @ w + 0.1 * rng.standard_normal((10, 10))
    other = data_lib.synthetic(n_train=10, n_test=50, noise=0.1)
    for d in (small, other):
      chex.assert_trees_all_close((d.x_train, d.y_train),
                                  (x.astype(np.float32), y.astype(np.float32)),
                                  rtol=1e-6)

  @parameterized.parameters(0.5, 0.0, -10.0, float('nan'), float('inf'))
  def test_invalid_condition_number(self, cond):
    with self.assertRaisesRegex(ValueError, f'condition_number.*{cond}'):
      data_lib.synthetic(condition_number=cond)


class CheckDatasetTest(parameterized.TestCase):

  def test_valid_datasets_pass_through(self):
    for d in (_small_regression(), _small_classification()):
      self.assertIs(data_lib.check_dataset(d), d)

  @parameterized.named_parameters(
      ('nan_in_x_train', _small_regression, 'x_train', np.nan,
       'x_train has 1 non-finite'),
      ('inf_in_x_test', _small_classification, 'x_test', np.inf,
       'x_test has 1 non-finite'),
      ('nan_in_y_train', _small_regression, 'y_train', np.nan,
       'y_train has non-finite'),
      ('inf_in_last_row', _small_regression, 'x_train', -np.inf,
       'x_train has 1 non-finite', -1),
  )
  def test_rejects_non_finite(self, make, field, value, pattern, row=1):
    d = make()
    bad = np.array(getattr(d, field))
    bad[row, 0] = value
    with self.assertRaisesRegex(ValueError, pattern):
      data_lib.check_dataset(dataclasses.replace(d, **{field: bad}))

  @parameterized.named_parameters(
      ('too_large', 'y_train', 4, r'y_train labels must lie in \[0, 4\)'),
      ('negative', 'y_test', -1, r'y_test labels must lie in \[0, 4\)'),
  )
  def test_rejects_label_out_of_range(self, field, label, pattern):
    d = _small_classification()
    bad = np.array(getattr(d, field))
    bad[0] = label
    with self.assertRaisesRegex(ValueError, pattern):
      data_lib.check_dataset(dataclasses.replace(d, **{field: bad}))

  @parameterized.named_parameters(
      ('regression_train', _small_regression, 'y_train', 'x_train has 8 rows '
       'but y_train has 7'),
      ('classification_test', _small_classification, 'y_test',
       'x_test has 4 rows but y_test has 3'),
      # A scalar label raised IndexError (tuple index out of range).
      ('scalar_label', _small_classification, 'y_train',
       r'x_train has 8 rows but y_train has none \(a scalar\)', 0),
  )
  def test_rejects_row_count_mismatch(self, make, field, pattern, row=None):
    d = make()
    bad = getattr(d, field)[:-1] if row is None else getattr(d, field)[row]
    with self.assertRaisesRegex(ValueError, pattern):
      data_lib.check_dataset(dataclasses.replace(d, **{field: bad}))

  def test_rejects_bad_shapes_and_types(self):
    d = _small_classification()
    cases = [
        (dataclasses.replace(d, task='ranking'), "Unknown task 'ranking'"),
        (dataclasses.replace(d, x_train=d.x_train[:, 0]), r'x_train must be'),
        (dataclasses.replace(d, x_train=d.x_train[:0], y_train=d.y_train[:0]),
         r'x_train must be \[n > 0'),
        (dataclasses.replace(d, x_train=d.x_train[:, :0],
                             x_test=d.x_test[:, :0]),
         r'x_train must be \[n > 0, features > 0\]'),
        (dataclasses.replace(d, y_train=d.y_train.astype(np.float32)),
         'y_train must be integer labels'),
        # [n, 1] labels broadcast a classification loss to [n, n].
        (dataclasses.replace(d, y_test=d.y_test[:, None]),
         r'y_test must be integer labels \[n\]; got int32\[4, 1\]'),
        (dataclasses.replace(d, x_test=d.x_test[:, :2]),
         'different feature counts'),
        (dataclasses.replace(_small_regression(), num_outputs=3),
         r'y_train must be \[n, 3\]'),
    ]
    for bad, pattern in cases:
      with self.subTest(pattern=pattern):
        with self.assertRaisesRegex(ValueError, pattern):
          data_lib.check_dataset(bad)


  def test_takes_nested_lists_and_rejects_what_is_no_dataset(self):
    d = _small_classification()
    listed = dataclasses.replace(d, x_train=d.x_train.tolist(),
                                 y_test=d.y_test.tolist())
    checked = data_lib.check_dataset(listed)
    chex.assert_trees_all_equal((checked.x_train, checked.y_test),
                                (d.x_train, d.y_test.astype(np.int64)))
    for bad in ((d.x_train, d.y_train, d.x_test, d.y_test),
                {'x_train': d.x_train}):
      with self.assertRaisesRegex(
          TypeError, 'data must be a rahimi_jax.data.Dataset.*; got '
          + type(bad).__name__):
        data_lib.check_dataset(bad)

  def test_rejects_non_float_data_and_a_bool_num_outputs(self):
    reg = _small_regression()
    cases = [
        (_small_classification(x_train=np.ones((8, 3), np.int32)),
         'x_train must be floating point; got int32'),
        (_small_regression(x_test=np.ones((4, 3), bool)),
         'x_test must be floating point; got bool'),
        (_small_regression(y_test=np.ones((4, 2), np.int64)),
         r'y_test \(regression targets\) must be floating point; got int64'),
        (_small_regression(y_train=reg.y_train[:, :1],
                           y_test=reg.y_test[:, :1], num_outputs=True),
         'num_outputs=True; accepted'),
    ]
    for bad, pattern in cases:
      with self.subTest(pattern=pattern):
        with self.assertRaisesRegex(ValueError, pattern):
          data_lib.check_dataset(bad)

  def test_the_engine_checks_a_users_data_before_anything_runs(self):
    # A label out of range ran, then read as every member diverging at
    # step 0; [n] regression targets broadcast the loss to [n, n].
    import rahimi_jax as rj  # pylint: disable=g-import-not-at-top
    config, grid = rj.TrainConfig(hidden=(4,), steps=2), rj.Grid(rj.Seeds(1))
    d = _small_classification()
    y = np.array(d.y_train)
    y[0] = 12
    for bad, pattern in (
        (dataclasses.replace(d, y_train=y),
         r'y_train labels must lie in \[0, 4\) \(num_outputs\); got 12\.'),
        (dataclasses.replace(d, num_outputs=0), 'num_outputs=0; accepted'),
        (_small_regression(y_train=np.zeros(8, np.float32)),
         r'y_train must be \[n, 2\] \(num_outputs columns\); got \[8\]')):
      with self.subTest(pattern=pattern):
        with self.assertRaisesRegex(ValueError, pattern):
          rj.run(config, grid, bad)


class BatchIndicesTest(absltest.TestCase):

  def test_a_batch_size_outside_1_to_n_is_a_clear_error(self):
    # batch_size > n raised ZeroDivisionError (no full batch per epoch).
    for batch_size in (20, 0):
      with self.assertRaisesRegex(
          ValueError, r'batch_size must be an integer in \[1, n=10\] .*; '
          f'got {batch_size}'):
        data_lib.batch_indices(jax.random.key(0), n=10,
                               batch_size=batch_size, steps=3)

  def test_a_full_batch_is_a_fresh_permutation_each_step(self):
    # batch_size == n is accepted (one batch per epoch): each step's indices
    # are all n samples, in a new order each epoch.
    idx = np.asarray(jax.jit(data_lib.batch_indices, static_argnums=(1, 2, 3))(
        jax.random.key(0), 10, 10, 4))
    chex.assert_shape(idx, (4, 10))
    chex.assert_trees_all_equal(np.sort(idx, axis=1),
                                np.tile(np.arange(10, dtype=np.int32), (4, 1)))
    self.assertLen({tuple(row) for row in idx.tolist()}, 4)

  def test_numpy_integer_sizes_are_the_int_sizes(self):
    # n from a NumPy shape or count: permutation raised AttributeError
    # ('numpy.int64' object has no attribute 'bit_length').
    key = jax.random.key(1)
    idx = np.asarray(jax.jit(data_lib.batch_indices, static_argnums=(1, 2, 3))(
        key, np.int64(10), np.int32(5), np.int64(2)))
    chex.assert_trees_all_equal(np.sort(idx.ravel()),
                                np.arange(10, dtype=np.int32))
    chex.assert_trees_all_equal(data_lib.permutation(key, np.int64(7)),
                                data_lib.permutation(key, 7))
    with self.assertRaisesRegex(ValueError, 'n must be an integer >= 0; got '
                                '2.5'):
      data_lib.permutation(key, 2.5)


class PermutationTest(absltest.TestCase):

  def test_fixed_points_are_poisson_as_a_uniform_permutations(self):
    # A uniform permutation's fixed points are Poisson(1) (scipy's law; numpy's
    # rng.permutation shows the same). At 1347 (the digits training set) the
    # shuffle runs 2 sorting rounds: a round that reused the first round's
    # key squared its permutation (mean 2 fixed points), which the mean
    # position of one element does not show.
    from scipy import stats  # pylint: disable=g-import-not-at-top
    n, draws = 1347, 500
    perms = np.asarray(jax.jit(jax.vmap(lambda k: data_lib.permutation(k, n)))(
        jax.random.split(jax.random.key(4), draws)))
    fixed = np.sum(perms == np.arange(n), axis=1)
    observed = np.bincount(np.minimum(fixed, 3), minlength=4)
    p = stats.poisson.pmf(np.arange(3), 1.0)
    expected = draws * np.append(p, 1 - p.sum())
    self.assertGreater(stats.chisquare(observed, expected).pvalue, 1e-3)
    rng = np.random.default_rng(0)
    reference = np.sum(np.stack([rng.permutation(n) for _ in range(draws)])
                       == np.arange(n), axis=1)
    self.assertGreater(stats.chisquare(
        np.bincount(np.minimum(reference, 3), minlength=4),
        expected).pvalue, 1e-3)


class RegistryTest(parameterized.TestCase):

  def test_unknown_dataset_lists_accepted(self):
    with self.assertRaisesRegex(ValueError, r"'nope'.*digits.*synthetic"):
      data_lib.get_dataset('nope')

  @parameterized.parameters(sorted(data_lib.DATASETS))
  def test_registry_entries_build_checked_datasets(self, name):
    make = data_lib.get_dataset(name)
    self.assertIs(make, data_lib.DATASETS[name])
    d = _digits() if name == 'digits' else make()
    self.assertIs(data_lib.check_dataset(d), d)
    self.assertIn(d.task, data_lib.TASKS)



class TaskTest(parameterized.TestCase):

  @parameterized.parameters(sorted(data_lib.DATASETS))
  def test_declared_task_is_the_loaded_one(self, name):
    # What flags are checked against before any data is loaded.
    self.assertEqual(data_lib.task_of(name), data_lib.get_dataset(name)().task)

  def test_unknown_dataset_names_the_accepted_ones(self):
    with self.assertRaisesRegex(ValueError, "'bogus'.*digits"):
      data_lib.task_of('bogus')


if __name__ == '__main__':
  absltest.main()
