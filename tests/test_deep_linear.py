"""The two-layer linear network experiment, shrunk."""


import chex
import numpy as np
import pytest

import launchers

from rahimi_jax import storage
from rahimi_jax.studies import deep_linear

SMALL = dict(n_train=100, condition_number=1e3, steps=150, log_every=50,
             seeds=2, gd_lrs=(0.1, 0.3), adam_lrs=(0.01,))


def _optimal_loss(config):
  d = config.dataset()
  x = np.asarray(d.x_train, np.float64)
  y = np.asarray(d.y_train, np.float64)
  r = x @ np.linalg.lstsq(x, y, rcond=None)[0] - y
  return 0.5 * np.mean(np.sum(r**2, -1))


def test_gradient_descent_stalls_where_levenberg_marquardt_converges(
    x64, tmp_path):
  config = deep_linear.DeepLinearConfig(**SMALL)
  res = deep_linear.run(config)
  assert len(res) == len(config.grid()) * 4  # steps 0, 50, 100, 150
  final = res.final()
  optimum = _optimal_loss(config)
  lm = final.where(optimizer='levenberg_marquardt').columns['train_loss']
  gd = final.where(optimizer='sgd').columns['train_loss']
  chex.assert_trees_all_close(lm, np.full_like(lm, optimum), rtol=1e-4)
  assert np.all(gd > 100 * optimum), (gd, optimum)
  assert np.all(final.columns['grad_norm'][final.columns['optimizer'] == 'sgd']
                > 1e-6)
  text = deep_linear.report(config, res, str(tmp_path))
  assert 'ratio lambda_max / smallest positive' in text
  assert 'condition number of the least-squares target 1e+03' in text
  assert 'orders of magnitude below gradient descent' in text
  for name in ('loss_depth1.png', 'hessian_at_stall_depth1.png'):
    assert (tmp_path / name).stat().st_size > 1000


def test_stall_spectrum_is_the_exact_hessian(x64):
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from rahimi_jax import train  # pylint: disable=g-import-not-at-top
  config = deep_linear.DeepLinearConfig(**{**SMALL, 'methods': ('gd',),
                                           'gd_lrs': (0.1,), 'seeds': 1})
  res = deep_linear.run(config)
  member = res.columns['member'][0]
  spec = deep_linear.stall_spectrum(config, 1, member)
  grid = config.grid()
  params, _ = train.final_state(config.train_config(1).for_grid(grid),
                                jax.tree.map(lambda a: a[0], grid.knobs([0])),
                                config.dataset())
  d = config.dataset()
  flat, unravel = jax.flatten_util.ravel_pytree(params)

  def loss(f):
    p = unravel(f)
    return 0.5 * jnp.mean(jnp.sum((d.x_train @ p[0] @ p[1] - d.y_train)**2, -1))

  exact = np.linalg.eigvalsh(jax.hessian(loss)(flat))
  chex.assert_trees_all_close(np.sort(spec['eigenvalues']), exact,
                              atol=1e-9 * exact.max())
  # final_state is the member's run: the same final loss as the grid logged.
  chex.assert_trees_all_close(spec['loss'], res.final().columns['train_loss'][0],
                              rtol=1e-9)


def test_depths_and_small_init(x64):
  config = deep_linear.DeepLinearConfig(**{
      **SMALL, 'methods': ('gd',), 'gd_lrs': (0.1,), 'depths': (1, 2),
      'init': 'gaussian', 'init_scales': (0.01, 0.3)})
  res = deep_linear.run(config)
  assert sorted(set(res.columns['depth'].tolist())) == [1, 2]
  start = res.where(step=0)
  # A smaller initialization starts closer to zero output: the loss at step 0
  # is the target's energy, the same for both depths.
  small = start.where(init_scale=0.01).columns['train_loss']
  chex.assert_trees_all_close(small, np.full_like(small, small[0]), rtol=1e-3)


@pytest.mark.parametrize('kwargs, match', [
    ({'methods': ('gd', 'newton')}, 'newton'),
    ({'gd_lrs': ()}, 'gd_lrs'),
    ({'gd_lrs': (0.1, -1.0)}, 'gd_lrs'),
    ({'depths': (0,)}, 'depths'),
    ({'condition_number': 0.5}, 'condition_number'),
    ({'noise': -1.0}, 'noise'),
    ({'init': 'zeros'}, 'zeros'),
    ({'steps': 0}, 'steps'),
])
def test_bad_config(kwargs, match, x64):
  with pytest.raises(ValueError, match=match):
    deep_linear.DeepLinearConfig(**kwargs)


def _launch(*flags):
  return launchers.launch('experiments.deep_linear', *flags)


def test_launcher_end_to_end(tmp_path):
  proc = _launch('--n_train=100', '--condition_number=1e3', '--steps=100',
                 '--log_every=50', '--seeds=2', '--gd_lrs=0.1',
                 f'--out={tmp_path}')
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert 'lm' in proc.stdout and 'ratio lambda_max' in proc.stdout
  res = storage.load(str(tmp_path))
  assert set(res.columns['optimizer']) == {'sgd', 'adam', 'levenberg_marquardt'}
  assert (tmp_path / 'loss_depth1.png').exists()


BAD_INPUTS = [
    ('--methods=gd,newton', 'newton'),
    ('--gd_lrs=0.1,abc', 'abc'),
    ('--depths=0', 'depths'),
]


def test_launcher_bad_input(tmp_path):
  """Every bad flag at once: one error line each, nothing written."""
  procs = launchers.launch_many(
      'experiments.deep_linear',
      [[flag, f'--out={tmp_path / str(i)}']
       for i, (flag, _) in enumerate(BAD_INPUTS)])
  for (_, bad), proc in zip(BAD_INPUTS, procs):
    launchers.assert_clean_error(proc, bad)
  assert not list(tmp_path.iterdir())
