"""The two-layer linear network experiment, shrunk."""

import re

import chex
import numpy as np
import pytest

import launchers

from rahimi_jax import results as results_lib
from rahimi_jax import storage
from rahimi_jax.studies import deep_linear

SMALL = dict(n_train=100, condition_number=1e3, steps=150, log_every=50,
             seeds=2, gd_lrs=(0.1, 0.3), methods=('gd', 'lm'),
             solver_steps=20)


def _optimal_loss(config):
  d = config.dataset()
  x = np.asarray(d.x_train, np.float64)
  y = np.asarray(d.y_train, np.float64)
  r = x @ np.linalg.lstsq(x, y, rcond=None)[0] - y
  return 0.5 * np.mean(np.sum(r**2, -1))


# Module fixtures here turn float64 on until the module ends (conftest).
USES_X64 = True


@pytest.fixture(scope='module')
def small_run():
  """The shrunk study (every method, float64), run once for the module."""
  import jax  # pylint: disable=g-import-not-at-top
  previous = jax.config.jax_enable_x64
  jax.config.update('jax_enable_x64', True)
  config = deep_linear.DeepLinearConfig(**SMALL)
  yield config, deep_linear.run(config)
  jax.config.update('jax_enable_x64', previous)


def test_gradient_descent_stalls_where_least_squares_converge(
    small_run, tmp_path):
  config, res = small_run
  grids = config.grids()
  # first-order: steps 0, 50, 100, 150; least squares: every step 0..20.
  assert len(res) == len(grids[False]) * 4 + len(grids[True]) * 21
  final = res.final()
  optimum = _optimal_loss(config)
  assert optimum < 1e-28  # float64 data: the target is realizable
  gd = final.where(optimizer='sgd').columns['train_loss']
  # (Gauss-Newton's machine precision: tests/test_solvers.py, against
  # optimistix.)
  for name in ('levenberg_marquardt',):
    rows = res.where(optimizer=name)
    for member in set(rows.columns['member']):
      traj = rows.where(member=member)
      below = traj.columns['step'][traj.columns['train_loss'] < 1e-20]
      # Machine precision within the talk's few dozen steps, on every seed.
      assert len(below) and below[0] <= 20, (member, traj.columns['train_loss'])
  assert np.all(gd > 1e-8), gd
  assert np.all(final.columns['grad_norm'][final.columns['optimizer'] == 'sgd']
                > 1e-6)
  text = deep_linear.report(config, res, str(tmp_path))
  assert 'condition number of the least-squares target 1e+03' in text
  # The gap in orders of magnitude, from the final losses: the best step
  # size's geometric mean against LM's, and from the optimal loss where LM
  # ends below its float64 rounding (the rest of the gap is rounding).
  geo = lambda v: 10 ** np.mean(np.log10(v))  # pylint: disable=unnecessary-lambda-assignment
  best_gd = min(geo(final.where(optimizer='sgd', learning_rate=lr).columns[
      'train_loss']) for lr in set(final.where(optimizer='sgd').columns[
          'learning_rate']))
  lm = geo(final.where(optimizer='levenberg_marquardt').columns['train_loss'])
  line = next(l for l in text.splitlines() if l.startswith('  lm: first'))
  printed = [float(v) for v in re.findall(r'([+-][\d.]+) (?:orders|counted)',
                                           line)]
  undercut = np.log10(optimum / lm) >= 0.05
  want = [np.log10(best_gd / lm)] + (
      [np.log10(best_gd / optimum)] if undercut else [])
  chex.assert_trees_all_close(printed, want, atol=0.051)
  assert ('which it undercuts: the rest is rounding' in line) == undercut
  assert 'first step within 1e-20 of the optimal loss per seed' in text
  assert 'every seed within 20 iterations' in text
  # The symmetry-aware reading: 2 x 6 x 6 tangents, 36 null GN eigenvalues.
  assert 'along 36 directions that change no prediction' in text
  assert 'Gauss-Newton J^T J: 36 null eigenvalues (the symmetry has 36)' in text
  assert 'steps per e-fold' in text or 'saddle region' in text
  for name in ('loss_depth1.png', 'loss_least_squares_depth1.png',
               'hessian_at_stall_depth1.png'):
    assert (tmp_path / name).stat().st_size > 1000


def test_stall_spectrum_quotients_the_symmetry(small_run):
  import jax  # pylint: disable=g-import-not-at-top
  import scipy.linalg  # pylint: disable=g-import-not-at-top
  config, res = small_run
  member = res.where(optimizer='sgd').columns['member'][0]
  spec = deep_linear.stall_spectrum(config, 1, member)
  params, x, y = deep_linear.stall_point(config, 1, member)
  w1, w2 = (np.asarray(w) for w in params)
  x, y = np.asarray(x), np.asarray(y)
  n = x.shape[0]

  def residual(f):
    a, b = f[:36].reshape(6, 6), f[36:].reshape(6, 10)
    return ((x @ a @ b - y) / np.sqrt(n)).ravel()

  def loss(f):
    return 0.5 * jax.numpy.sum(residual(f) ** 2)

  flat = np.concatenate([w1.ravel(), w2.ravel()])
  hessian = np.asarray(jax.jit(jax.hessian(loss))(flat))
  exact = np.linalg.eigvalsh(hessian)
  chex.assert_trees_all_close(np.sort(spec['eigenvalues']), exact,
                              atol=1e-9 * exact.max())
  # The symmetry, independently: the loss is constant along the orbit
  # (W1 e^{tA}, e^{-tA} W2) (scipy's expm, a random A), and the tangents at
  # t = 0, (W1 E, -E W2) for the 36 basis matrices E, span J's null space.
  a = np.random.default_rng(0).standard_normal((6, 6))
  for t in (0.1, 0.3):
    g = scipy.linalg.expm(t * a)
    moved = np.concatenate([(w1 @ g).ravel(), np.linalg.solve(g, w2).ravel()])
    chex.assert_trees_all_close(float(loss(moved)), float(loss(flat)),
                                rtol=1e-9)
  tangents = np.stack([np.concatenate([(w1 @ e).ravel(), (-e @ w2).ravel()])
                       for e in np.eye(36).reshape(36, 6, 6)])
  jac = np.asarray(jax.jit(jax.jacfwd(residual))(flat))
  chex.assert_trees_all_close(np.linalg.norm(jac @ tangents.T), 0.0,
                              atol=1e-9)
  complement = scipy.linalg.null_space(tangents)  # [96, 60]
  restricted = np.linalg.eigvalsh(complement.T @ hessian @ complement)
  chex.assert_trees_all_close(spec['restricted'], restricted,
                              atol=1e-9 * exact.max())
  gn = np.linalg.eigvalsh(jac.T @ jac)
  chex.assert_trees_all_close(spec['gauss_newton'], gn, atol=1e-9 * gn.max())
  assert spec['gn_null'] == spec['symmetry_dim'] == 36
  # final_state is the member's run: the same final loss as the grid logged.
  logged = res.where(member=member).final().columns['train_loss'][0]
  chex.assert_trees_all_close(spec['loss'], logged, rtol=1e-9)


def test_narrow_net_optimum_is_reduced_rank_regression(x64):
  # Width 3 < rank 6: the optimum is above the linear fit's. Reference:
  # scipy's Levenberg-Marquardt (MINPACK) on the net's weights from a random
  # start (every local minimum of a linear net is global).
  del x64
  import scipy.optimize  # pylint: disable=g-import-not-at-top
  config = deep_linear.DeepLinearConfig(**(SMALL | dict(width=3)))
  net, linear = deep_linear.optimal_loss(config)
  d = config.dataset()
  x, y = np.asarray(d.x_train), np.asarray(d.y_train)

  def residual(f):
    a, b = f[:18].reshape(6, 3), f[18:].reshape(3, 10)
    return ((x @ a @ b - y) / np.sqrt(len(x))).ravel()

  fit = scipy.optimize.least_squares(
      residual, np.random.default_rng(0).normal(size=48), method='lm',
      xtol=1e-15, ftol=1e-15, gtol=1e-15)
  chex.assert_trees_all_close(net, fit.cost, rtol=1e-9)
  assert linear < 1e-28 < 1e-5 < net, (linear, net)  # 1.1e-30, 1.3e-4
  chex.assert_trees_all_close(linear, _optimal_loss(config), atol=1e-30)


def test_depths_and_small_init(x64):
  config = deep_linear.DeepLinearConfig(**{
      **SMALL, 'methods': ('gd',), 'gd_lrs': (0.1,), 'depths': (1, 2),
      'init': 'gaussian', 'init_scales': (0.01, 0.3)})
  res = deep_linear.run(config)
  assert sorted(set(res.columns['depth'].tolist())) == [1, 2]
  # One member per depth and grid member: the names held no depth, and each
  # (member, step) was three rows of results.csv.
  names = res.final().columns['member']
  assert len(set(names)) == len(names) == 8, names
  assert names[0].startswith('depth=1,optimizer=sgd'), names
  start = res.where(step=0)
  # A smaller initialization starts closer to zero output: the loss at step 0
  # is the target's energy, the same for both depths.
  small = start.where(init_scale=0.01).columns['train_loss']
  chex.assert_trees_all_close(small, np.full_like(small, small[0]), rtol=1e-3)
  # The init flag reaches the runs (a grid without an init axis used to
  # fall back to the registry's default, lecun_normal).
  options = dict(res.metadata['train_config']['options'])
  assert list(options['init']) == ['gaussian'], options


def test_log_interval_counts_zeros_instead_of_dropping_them():
  ci, zeros = deep_linear._log_interval([1e-4, 0.0, 1e-6, np.nan], 1e-300)
  assert zeros == 1 and ci.n == 3  # NaN (diverged) left out, 0 kept
  chex.assert_trees_all_close(ci.mean, 10 ** ((-4 - 300 - 6) / 3), rtol=1e-9)
  ci, zeros = deep_linear._log_interval([1e-4, 1e-6], 1e-300)
  assert zeros == 0
  chex.assert_trees_all_close(ci.mean, 1e-5, rtol=1e-12)
  with pytest.raises(ValueError, match='negative'):
    deep_linear._log_interval([1e-4, -1e-9], 1e-300)


def _half_rise(u0, s, lr):
  """Steps for a' = a + lr a (s - a^2) from sqrt(u0) to a^2 >= s/2 (numpy)."""
  a, t = np.sqrt(u0), 0
  while a * a < s / 2:
    previous, a, t = a * a, a + lr * a * (s - a * a), t + 1
  return t - 1 + (s / 2 - previous) / (a * a - previous)


def test_saxe_half_rise_times_match_theory(x64):
  config = deep_linear.DeepLinearConfig(
      methods=('gd',), gd_lrs=(0.05,), init_scales=(0.03,), steps=700,
      saxe=True, seeds=1)
  modes = deep_linear.saxe_modes(config, 0.05, 0.03)
  s = modes['s']
  expected = np.asarray([_half_rise(0.03**2, s[j], 0.05) for j in range(2)])
  chex.assert_trees_all_close(modes['discrete'][:2], expected, rtol=1e-9)
  # The logistic u(t) = s / (1 + (s/u0 - 1) e^(-2 s lr t)) is s/2 at
  # ln(s/u0 - 1) / (2 s lr).
  chex.assert_trees_all_close(
      modes['continuous'][:2],
      np.log(s[:2] / 0.03**2 - 1) / (2 * 0.05 * s[:2]), rtol=1e-12)
  # The project's own step from the balanced, aligned init: within 1% of the
  # decoupled theory (the sampled inputs couple the modes slightly), within
  # a few percent of the continuous-time form.
  chex.assert_trees_all_close(modes['measured'][:2], expected, rtol=0.01)
  chex.assert_trees_all_close(modes['measured'][:2], modes['continuous'][:2],
                              rtol=0.03)
  assert np.all(np.isnan(modes['measured'][2:]))  # not within 700 steps
  assert modes['u'].shape == (701, 6)


@pytest.mark.parametrize('kwargs, match', [
    ({'methods': ('gd', 'newton')}, 'newton'),
    ({'gd_lrs': ()}, 'gd_lrs'),
    ({'gd_lrs': (0.1, -1.0)}, 'gd_lrs'),
    ({'depths': (0,)}, 'depths'),
    ({'depths': (1.5,)}, r'depths must be whole numbers .*\[1\.5\]'),
    ({'condition_number': 0.5}, 'condition_number'),
    ({'noise': -1.0}, 'noise'),
    ({'init': 'zeros'}, 'zeros'),
    ({'steps': 0}, 'steps'),
    ({'solver_steps': 0}, 'solver_steps'),
    ({'dtype': 'float16'}, 'float16'),
    ({'saxe': True, 'methods': ('lm',)}, 'saxe'),
])
def test_bad_config(kwargs, match, x64):
  with pytest.raises(ValueError, match=match):
    deep_linear.DeepLinearConfig(**kwargs)


BAD_INPUTS = [
    ('--methods=gd,newton', 'newton'),
    ('--gd_lrs=0.1,abc', 'abc'),
    ('--depths=0', 'depths'),
    ('--switch=seed', "'seed' is not a switchable choice axis of the grid; "
     'accepted: optimizer'),
]


@pytest.fixture(scope='module')
def launched(tmp_path_factory):
  """The shrunk launcher run and every bad flag, launched at once."""
  def make(tmp):
    out, bad_dir = tmp / 'deep_linear', tmp / 'bad'
    bad_dir.mkdir()
    procs = launchers.launch_many('experiments.deep_linear', [
        ['--n_train=100', '--condition_number=1e3', '--steps=100',
         '--log_every=50', '--seeds=2', '--gd_lrs=0.1', '--methods=gd,lm',
         '--solver_steps=10', '--saxe', f'--out={out}'],
        *[[flag, f'--out={bad_dir / str(i)}']
          for i, (flag, _) in enumerate(BAD_INPUTS)]])
    return (procs[0], out), (procs[1:], bad_dir)

  return launchers.once(tmp_path_factory, 'deep_linear', make)


def test_launcher_end_to_end(launched):
  proc, out = launched[0]
  assert proc.returncode == 0, proc.stderr[-3000:]
  for text in ('lm: first step within', 'function-changing',
               'Saxe half-rise times',
               # One option per grid here: nothing to switch, per grid.
               'first-order grid: switched: none',
               'least-squares grid: switched: none',
               # Realizable: numpy's lstsq residual is rounding, not a floor
               # (LM ends below it), so it is not called the optimum.
               'realizable up to the rounding of the stored targets y = x '
               'W*, whose optimum is below this and not 0; this is float64 '
               'rounding',
               'calibrated to exponential skew]'):
    assert text in proc.stdout, proc.stdout
  res = storage.load(str(out))
  assert set(res.columns['optimizer']) == {'sgd', 'levenberg_marquardt'}
  assert res.metadata['flags']['solver_steps'] == 10  # --config=DIR re-runs
  for name in ('loss_depth1.png', 'saxe_modes_lr0.1_scale1.png'):
    assert (out / name).exists(), name


def test_launcher_bad_input(launched):
  """Every bad flag: one error line each, nothing written."""
  procs, bad_dir = launched[1]
  for (_, bad), proc in zip(BAD_INPUTS, procs, strict=True):
    launchers.assert_clean_error(proc, bad)
  assert not list(bad_dir.iterdir())


def test_notebook_reference_gradient_is_the_loss_derivative():
  # benchmarks.rahimi_notebook (the published notebook's recipe in NumPy):
  # its update is -lr x the gradient of its loss (central differences), and
  # small steps descend.
  from benchmarks import rahimi_notebook as nb  # pylint: disable=g-import-not-at-top
  w1, w2, a, c = nb.problem(0)
  e = w1 @ w2 - a
  grads = (2 * e @ c @ w2.T, 2 * w1.T @ e @ c)
  h = 1e-6
  for which, grad in enumerate(grads):
    for idx in ((0, 0), (3, 2), (5, 5)):
      up = [w1.copy(), w2.copy()]
      down = [w1.copy(), w2.copy()]
      up[which][idx] += h
      down[which][idx] -= h
      fd = (nb.loss(*up, a, c) - nb.loss(*down, a, c)) / (2 * h)
      np.testing.assert_allclose(grad[idx], fd, rtol=1e-6)
  start = nb.loss(w1, w2, a, c)
  assert nb.gradient_descent(0, 1e-6, 0) == start
  assert nb.gradient_descent(0, 1e-6, 50) < start
  assert np.isnan(nb.gradient_descent(0, 1e-2, 50))  # diverges



def test_float32_stall_spectrum_is_computed_in_float64():
  # Formed in float32, J^T J's small eigenvalues are rounding: at the
  # default problem's stall the null count read 21 of the symmetry's 36.
  import jax  # pylint: disable=g-import-not-at-top
  config = deep_linear.DeepLinearConfig(**(SMALL | dict(
      dtype='float32', methods=('gd',), gd_lrs=(0.3,), seeds=1)))
  member = config.grids()[False].members[0].name  # gd, lr 0.3, seed 0
  with jax.enable_x64(False):
    spec = deep_linear.stall_spectrum(config, 1, member)
    (w1, w2), x, y = jax.tree.map(
        lambda a: np.asarray(a, np.float64),
        deep_linear.stall_point(config, 1, member))
  assert w1.dtype == np.float64 and (w1 == w1.astype(np.float32)).all()
  # The residuals' Jacobian by hand (NumPy, float64): r = (x W1 W2 - y) /
  # sqrt(n), d r[i, c] / d W1[a, b] = x[i, a] W2[b, c], d r[i, c] / d W2[b,
  # d] = (x W1)[i, b] [c == d].
  n, out = y.shape
  jac = np.concatenate([
      np.einsum('ia,bc->icab', x, w2).reshape(n * out, -1),
      np.einsum('ib,cd->icbd', x @ w1, np.eye(out)).reshape(n * out, -1)],
                       1) / np.sqrt(n)
  gn = np.linalg.eigvalsh(jac.T @ jac)
  chex.assert_trees_all_close(spec['gauss_newton'], gn, atol=1e-9 * gn.max())
  assert spec['gn_null'] == spec['symmetry_dim'] == 36, spec['gn_null']
  chex.assert_trees_all_close(spec['gn_min_positive'], gn[36], rtol=1e-6)


def test_a_wide_nets_function_changing_directions_are_js_row_space(x64):
  """Hidden width 5 over 4 inputs and 3 outputs: the symmetry's 25 tangents
  are dependent and J's null space has 23 dimensions, so the complement of
  the tangents (10 dimensions) was not the 12 that change the function.
  Against J by central differences in NumPy and scipy's orthonormal basis
  of its row space."""
  import jax  # pylint: disable=g-import-not-at-top
  import scipy.linalg  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(0)
  x, y = rng.standard_normal((20, 4)), rng.standard_normal((20, 3))
  w1, w2 = rng.standard_normal((4, 5)), rng.standard_normal((5, 3))
  spec = deep_linear._spectra([w1, w2], x, y)  # pylint: disable=protected-access

  def residual(f):
    return ((x @ f[:20].reshape(4, 5) @ f[20:].reshape(5, 3) - y)
            / np.sqrt(20)).ravel()

  flat = np.concatenate([w1.ravel(), w2.ravel()])
  jac = np.stack([(residual(flat + 1e-6 * e) - residual(flat - 1e-6 * e))
                  / 2e-6 for e in np.eye(35)], axis=1)
  changing = scipy.linalg.orth(jac.T, rcond=1e-6)
  assert changing.shape[1] == 12 and spec['unchanging_dim'] == 23
  hessian = np.asarray(jax.jit(jax.hessian(
      lambda f: 0.5 * jax.numpy.sum(
          ((x @ f[:20].reshape(4, 5) @ f[20:].reshape(5, 3) - y) ** 2))
      / 20))(flat))
  chex.assert_trees_all_close(
      spec['restricted'],
      np.linalg.eigvalsh(changing.T @ hessian @ changing), atol=1e-6)


def _summary(monkeypatch, lm_all_diverged=False,
             gd0=(1, 1e-2, 1e-3, 3e-4, 1e-4), gd_steps=(0, 25, 50, 75, 100),
             **spec):
  """``_depth_summary`` of made-up runs (GD on 2 seeds, seed 0's losses
  ``gd0`` at ``gd_steps``, 0, 25, ..., 100 unless given; LM seed 0 reaches 1e-25 at step 2, then
  diverges at step 3; seed 1 too where ``lm_all_diverged``) and a made-up
  spectrum."""
  config = deep_linear.DeepLinearConfig(
      condition_number=10.0, steps=100, solver_steps=4, methods=('gd', 'lm'),
      gd_lrs=(0.1,), seeds=2)
  spec = dict(symmetry_dim=36, unchanging_dim=36, eigenvalues=np.ones(96),
              restricted_min=1e-3, restricted_max=1.0, lambda_max=2.0,
              lambda_min=0.0, n_null=36, n_null_range=(36, 36),
              lambda_min_positive=1e-3, negative_share_in_symmetry=1.0,
              restricted_negative=0, gn_null=36, gn_min_positive=1e-3,
              restricted=np.ones(60), weights_norm=5.0) | spec
  monkeypatch.setattr(deep_linear, 'stall_spectrum', lambda *a: spec)
  columns = {k: [] for k in ('member', 'step', 'seed', 'optimizer',
                             'learning_rate', 'init_scale', 'depth',
                             'train_loss', 'diverged_step')}
  for name, opt, seed, losses, diverged in (
      ('gd0', 'sgd', 0, list(gd0), -1),
      ('gd1', 'sgd', 1, [1, 2e-2, 2e-3, 6e-4, 2e-4], -1),
      ('lm0', 'levenberg_marquardt', 0, [1, 1e-5, 1e-25, np.nan, np.nan], 3),
      ('lm1', 'levenberg_marquardt', 1, [1, 1e-5, 1e-25] + (
          [np.nan] * 2 if lm_all_diverged else [1e-26] * 2),
       3 if lm_all_diverged else -1)):
    steps = list(gd_steps) if opt == 'sgd' else list(range(5))
    for step, loss in zip(steps, losses):
      for k, v in zip(columns, (name, step, seed, opt, 0.1, 1.0, 1, loss,
                                diverged)):
        columns[k].append(v)
  res = results_lib.Results({k: np.asarray(v) for k, v in columns.items()}, {
      'axes': {'optimizer': ['sgd', 'levenberg_marquardt'],
               'learning_rate': [0.1], 'init_scale': [1.0], 'seed': [0, 1],
               'depth': [1]}})
  final = res.final()
  best = {(1, 'gd', 1.0): (1.4e-4, final.where(optimizer='sgd'))}
  if not lm_all_diverged:  # as the report leaves it (no finished seed)
    best[(1, 'lm', 1.0)] = (1e-26, final.where(
        optimizer='levenberg_marquardt'))
  return '\n'.join(deep_linear._depth_summary(config, res, final, best, 0.0,
                                              1, 1.0, 1e-20, 1e-20, None))


def test_the_stall_text_says_only_what_its_readings_show(monkeypatch, x64):
  # Each phrase was printed whatever the numbers: "not zero: not a critical
  # point" at the least-squares optimum, "a continuum" across a 15-decade
  # gap, a share of the negative eigenvectors when there were none, and
  # "every seed within 4 iterations" with a seed diverged after.
  text = _summary(monkeypatch, grad_norm=1e-15, n_negative=0)
  assert 'critical to that precision' in text, text
  assert 'not a critical point' not in text, text
  assert 'a gap separates them' in text and 'continuum' not in text, text
  assert 'negative eigenvector' not in text, text
  assert ('every seed within 4 iterations; 1 of 2 diverged (step 3), left '
          'out of the final loss') in text, text
  assert "seed 0's loss fell 10x over its last 50 steps" in text, text
  # Every least-squares seed diverged: said, where it raised a KeyError.
  text = _summary(monkeypatch, lm_all_diverged=True, grad_norm=1e-15,
                  n_negative=0)
  assert '2 of 2 diverged (step 3, 3), left out of the final loss); no seed ' \
      'finished' in text, text
  text = _summary(monkeypatch, grad_norm=1e-3, n_negative=3,
                  n_null_range=(30, 40))
  # 1e-3 / (float64 eps x 2 x 5 = 2.2e-15) = 4.5e11
  assert '4.5e+11x what rounding the weights to float64 could leave: not a ' \
      'critical point' in text, text
  assert 'continuum here: 30 at a threshold 10x lower, 40 at 10x higher' \
      in text, text
  assert 'each negative eigenvector lies >= 100% in them' in text, text


def test_the_pace_is_read_only_where_the_loss_fell_steadily(monkeypatch,
                                                            x64):
  # The Saxe command's depth 3, init 0.03, seed 0: 0.5019 at step 2000,
  # 0.005005 from step 2800 to 4000 (its next plateau), read "fell 100x over
  # its last 2000 steps (a factor e every 434 steps at that pace)".
  text = _summary(monkeypatch, gd0=(1, 0.9, 0.5, 5e-3, 5e-3),
                  grad_norm=1e-15, n_negative=0)
  assert ("seed 0's loss fell 100x over its last 50 steps (100x, then 1x "
          'over its halves: not a steady pace)') in text, text
  assert 'at that pace' not in text, text
  text = _summary(monkeypatch, grad_norm=1e-15, n_negative=0)
  assert ("fell 10x over its last 50 steps (3.33x, then 3x over its halves: "
          'a factor e every 21.7 steps at that pace)') in text, text


def test_two_readings_read_no_pace(monkeypatch, x64):
  # Three logged points (--log_every=50 of 100 steps): the span holds two
  # readings, 0.5 then 5e-3, which a sigmoid drop onto a plateau gives as
  # well as a steady pace; it read "a factor e every 10.9 steps at that
  # pace", the reading the halves' check exists to withhold.
  text = _summary(monkeypatch, gd0=(1, 0.5, 5e-3), gd_steps=(0, 50, 100),
                  grad_norm=1e-15, n_negative=0)
  assert ("seed 0's loss fell 100x over its last 50 steps (two readings: "
          'too few to tell a steady pace)') in text, text
  assert 'at that pace' not in text, text
  # Four logged points: again two readings in the span's last half.
  text = _summary(monkeypatch, gd0=(1, 0.9, 0.5, 5e-3),
                  gd_steps=(0, 34, 67, 100), grad_norm=1e-15, n_negative=0)
  assert 'fell 100x over its last 33 steps (two readings: too few' in text, text
  # A loss of exactly 0 at the end (math.log(0) raised a ValueError; the
  # ratio read "infx").
  text = _summary(monkeypatch, gd0=(1, 0.9, 0.5, 5e-3, 0.0), grad_norm=1e-15,
                  n_negative=0)
  assert 'at that pace' not in text, text
  assert "seed 0's loss fell from 0.5 to 0 over its last 50 steps." in text, text


def test_the_stall_text_rounds_bounds_the_safe_way(monkeypatch, x64):
  # A share of 94.79% (the default study's stall) read ">= 95%"; the
  # curvature's e-fold is the error's, the loss's (its square) half of it.
  text = _summary(monkeypatch, grad_norm=1e-3, n_negative=3,
                  negative_share_in_symmetry=0.9479)
  assert 'each negative eigenvector lies >= 94% in them' in text, text
  # flattest curvature 1e-3 at lr 0.1: the error e-folds every 1e4 steps.
  assert ('a factor e every 1.00e+04 steps (the loss, quadratic in it, every '
          '5.00e+03;') in text, text
  assert 'The weights can move along 36 directions' in text, text


def test_a_small_function_changing_curvature_is_not_null(x64):
  """Both factors with a singular value 1e-7 along one hidden direction (an
  unlearned mode of a small init): J has singular values ~1e-7 of its
  largest (J^T J ~1e-14 lambda_max, far above float64's rounding of J's
  SVD), and its null space is still the symmetry's 9 tangents (hidden 3 <=
  in 4, out 3; full-rank factors). A null threshold of 1e-12 lambda_max
  on J^T J called them null (at depth 3, init 0.03, 2800 steps of the Saxe
  command: 112 null where the symmetry has 108)."""
  import scipy.linalg  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(0)
  n = 20
  x, y = rng.standard_normal((n, 4)), rng.standard_normal((n, 3))
  u, _, q = np.linalg.svd(rng.standard_normal((4, 3)), full_matrices=False)
  v = np.linalg.qr(rng.standard_normal((3, 3)))[0]
  w1 = (u * np.asarray([1.0, 0.5, 1e-7])) @ q
  w2 = (q.T * np.asarray([1.0, 0.7, 1e-7])) @ v.T
  spec = deep_linear._spectra([w1, w2], x, y)  # pylint: disable=protected-access
  # NumPy: J by hand (r = (x W1 W2 - y) / sqrt(n)), the Hessian by central
  # differences of the gradient J^T r, the null space from the tangents.
  def jac_at(f):
    a, b = f[:12].reshape(4, 3), f[12:].reshape(3, 3)
    return np.concatenate([
        np.einsum('ia,bc->icab', x, b).reshape(3 * n, -1),
        np.einsum('ib,cd->icbd', x @ a, np.eye(3)).reshape(3 * n, -1)],
                          1) / np.sqrt(n)

  def grad(f):
    r = (x @ f[:12].reshape(4, 3) @ f[12:].reshape(3, 3) - y) / np.sqrt(n)
    return jac_at(f).T @ r.ravel()

  flat = np.concatenate([w1.ravel(), w2.ravel()])
  hessian = np.stack([(grad(flat + 1e-6 * e) - grad(flat - 1e-6 * e)) / 2e-6
                      for e in np.eye(21)], 1)
  sv = np.linalg.svd(jac_at(flat), compute_uv=False)
  tangents = np.stack([np.concatenate([(w1 @ e).ravel(), (-e @ w2).ravel()])
                       for e in np.eye(9).reshape(9, 3, 3)])
  chex.assert_trees_all_close(
      np.linalg.norm(jac_at(flat) @ tangents.T), 0.0, atol=1e-12)
  assert sv[11] ** 2 < 1e-13 * sv[0] ** 2 and sv[11] > 1e-9 * sv[0], sv
  assert spec['gn_null'] == spec['unchanging_dim'] == 9, spec['gn_null']
  chex.assert_trees_all_close(spec['gn_min_positive'], sv[11] ** 2,
                              rtol=1e-6)
  complement = scipy.linalg.null_space(tangents)  # [21, 12]
  chex.assert_trees_all_close(
      spec['restricted'],
      np.linalg.eigvalsh(complement.T @ hessian @ complement), atol=1e-8)


def test_noiseless_float64_data_are_realizable_only_to_rounding(x64):
  # The stored y = fl(x W*) is not in the span of x: the exact optimum
  # (rational arithmetic on the stored floats) is above 0, and the text
  # said "the optimum is 0".
  from fractions import Fraction  # pylint: disable=g-import-not-at-top
  config = deep_linear.DeepLinearConfig(**SMALL)
  d = config.dataset()
  x = [[Fraction(v) for v in row] for row in np.asarray(d.x_train)]
  y = [[Fraction(v) for v in row] for row in np.asarray(d.y_train)]
  # Normal equations x^T x w = x^T y, solved exactly (Gauss-Jordan).
  rows = [[sum(r[i] * r[j] for r in x) for j in range(6)]
          + [sum(r[i] * t[j] for r, t in zip(x, y)) for j in range(10)]
          for i in range(6)]
  for c in range(6):
    rows[c] = [v / rows[c][c] for v in rows[c]]
    for r in range(6):
      if r != c:
        rows[r] = [a - rows[r][c] * b for a, b in zip(rows[r], rows[c])]
  w = [row[6:] for row in rows]
  exact = sum((sum(r[i] * w[i][j] for i in range(6)) - t[j]) ** 2
              for r, t in zip(x, y) for j in range(10)) / (2 * len(x))
  assert 0 < exact < 1e-30, float(exact)
  meaning = deep_linear._optimum_meaning(config, 0.0)  # pylint: disable=protected-access
  assert 'the optimum is 0' not in meaning, meaning
  assert meaning.startswith('realizable up to the rounding of the stored '
                            'targets'), meaning


def test_the_problem_line_reads_condition_numbers_in_float64(monkeypatch):
  # A float32 run leaves x64 off; JAX's float32 SVD then read the target's
  # condition number 7.89e+07 where numpy's float64 reads 1.02e+08.
  import jax  # pylint: disable=g-import-not-at-top
  config = deep_linear.DeepLinearConfig(
      condition_number=1e8, n_train=100, dtype='float32', methods=('gd',),
      gd_lrs=(0.1,), seeds=1, steps=10)
  columns = {'member': ['gd0'] * 2, 'step': [0, 10], 'seed': [0, 0],
             'optimizer': ['sgd'] * 2, 'learning_rate': [0.1] * 2,
             'init_scale': [1.0] * 2, 'depth': [1, 1],
             'train_loss': [1.0, 0.5], 'grad_norm': [1.0, 0.5],
             'diverged_step': [-1, -1]}
  res = results_lib.Results(
      {k: np.asarray(v) for k, v in columns.items()},
      {'axes': {'optimizer': ['sgd'], 'learning_rate': [0.1],
                'init_scale': [1.0], 'seed': [0], 'depth': [1]}})
  monkeypatch.setattr(deep_linear, '_depth_summary', lambda *a: [])
  previous = jax.config.jax_enable_x64
  jax.config.update('jax_enable_x64', False)  # (module fixtures set it)
  try:
    text = deep_linear.report(config, res)
  finally:
    jax.config.update('jax_enable_x64', previous)
  d = config.dataset()
  x = np.asarray(d.x_train, np.float64)
  w = np.linalg.lstsq(x, np.asarray(d.y_train, np.float64), rcond=None)[0]
  s_w, s_x = (np.linalg.svd(a, compute_uv=False) for a in (w, x))
  assert (f'condition number of the least-squares target '
          f'{s_w[0] / s_w[-1]:.3g}, of the inputs {s_x[0] / s_x[-1]:.3g};'
          ) in text, text
