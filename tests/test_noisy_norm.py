"""Tests of noisy batch norm (components/norms.py) against NumPy references.

Batch norm's reference is written out in NumPy from its definition; the noise
(a per-unit scale ``m`` and shift ``n`` after batch norm) is recovered from
the output by solving ``z = y m + n`` per unit on the reference ``y``, and its
statistics are compared with the knobs.
"""

import re

import chex
import jax
from jax import test_util as jtu
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from rahimi_jax import cli
from rahimi_jax import components
from rahimi_jax import diagnostics
from rahimi_jax import engine
from rahimi_jax import grid as grid_lib
from rahimi_jax import models
from rahimi_jax import train as train_lib
from rahimi_jax.components import norms

NOISY = norms.NORMS['noisy_batch']
BATCH = norms.NORMS['batch']
EPS, MOMENTUM = norms.EPS, norms.BATCH_NORM_MOMENTUM
# Noise knobs away from the defaults, and the noise-free point.
HP = {'noise_shift_mean': -0.7, 'noise_shift_var': 2.0,
      'noise_scale_mean': 1.3, 'noise_scale_var': 0.5}
QUIET = {'noise_shift_mean': 0.0, 'noise_shift_var': 0.0,
         'noise_scale_mean': 1.0, 'noise_scale_var': 0.0}


def _x(shape=(6, 5), seed=0):
  rng = np.random.default_rng(seed)
  x = rng.standard_normal(shape) * rng.uniform(0.5, 3.0, shape[-1])
  return (x + rng.uniform(-2.0, 2.0, shape[-1])).astype(np.float32)


def _params(features, seed=1):
  scale = np.random.default_rng(seed).uniform(0.5, 1.5, features)
  return {'scale': scale.astype(np.float32)}


def _reference_batch_norm(params, state, x, train):
  """Batch norm from its definition, in float64: ``(y, new_state)``."""
  x = np.asarray(x, np.float64)
  if train:
    mean, var = x.mean(0), x.var(0)
    state = {'mean': MOMENTUM * np.asarray(state['mean'], np.float64)
                     + (1 - MOMENTUM) * mean,
             'var': MOMENTUM * np.asarray(state['var'], np.float64)
                    + (1 - MOMENTUM) * var}
  else:
    mean = np.asarray(state['mean'], np.float64)
    var = np.asarray(state['var'], np.float64)
  y = (x - mean) / np.sqrt(var + EPS) * np.asarray(params['scale'], np.float64)
  return y, state


def _recover_noise(x, params, z):
  """``(m, n, y)``: per unit, the least-squares fit of ``z = y m + n`` over
  the rows, ``y`` the reference batch norm of ``x``."""
  y, _ = _reference_batch_norm(params, _init_state(x.shape[-1]), x, True)
  z = np.asarray(z, np.float64)
  dy, dz = y - y.mean(0), z - z.mean(0)
  m = (dy * dz).sum(0) / (dy * dy).sum(0)
  return m, z.mean(0) - m * y.mean(0), y


def _init_state(features):
  return BATCH.init(features)[1]


@jax.jit
def _noisy_train(params, state, x, key, hp):
  return NOISY.apply(params, state, x, True, key, hp)


@jax.jit
def _noisy_eval(params, state, x, key, hp):
  return NOISY.apply(params, state, x, False, key, hp)


@jax.jit
def _batch_train(params, state, x):
  return BATCH.apply(params, state, x, True)


# Many units at once: [steps of keys] x [features], from one compiled program.
_STEPS, _FEATURES = 50, 400
_BIG_X = _x((8, _FEATURES), seed=3)
_BIG_PARAMS = _params(_FEATURES)


@jax.jit
def _noise_over_keys(keys, hp):
  return jax.vmap(lambda k: NOISY.apply(
      _BIG_PARAMS, _init_state(_FEATURES), _BIG_X, True, k, hp)[0])(keys)


def test_noise_statistics_match_the_knobs():
  keys = jax.random.split(jax.random.key(7), _STEPS)
  zs = np.asarray(_noise_over_keys(keys, HP), np.float64)
  ms, ns = [], []
  for z in zs:
    m, n, y = _recover_noise(_BIG_X, _BIG_PARAMS, z)
    # Every row of the batch gets its unit's scale and shift (per unit, not
    # per sample): each row fits the line to float32 rounding.
    np.testing.assert_allclose(z, y * m + n, atol=1e-5, rtol=1e-5)
    ms.append(m)
    ns.append(n)
  ms, ns = np.concatenate(ms), np.concatenate(ns)
  count = ms.size  # 20,000 draws of each
  for draws, mean, var in ((ms, HP['noise_scale_mean'], HP['noise_scale_var']),
                           (ns, HP['noise_shift_mean'],
                            HP['noise_shift_var'])):
    # Five standard errors: a false alarm about once in 1.7 million per check
    # (normal draws; the variance's standard error is var sqrt(2 / (N - 1))).
    assert abs(draws.mean() - mean) < 5 * np.sqrt(var / count), draws.mean()
    assert abs(draws.var(ddof=1) - var) < 5 * var * np.sqrt(2 / (count - 1)), (
        draws.var(ddof=1))
    # And they are normal (Kolmogorov–Smirnov at the 0.1% level).
    standardized = (draws - mean) / np.sqrt(var)
    assert stats.kstest(standardized, 'norm').pvalue > 1e-3
  # Scale and shift are independent draws.
  assert abs(np.corrcoef(ms, ns)[0, 1]) < 5 / np.sqrt(count)


def test_zero_noise_is_batch_norm_exactly_in_training():
  x, params = _x(), _params(5)
  state = {'mean': np.linspace(-1, 1, 5, dtype=np.float32),
           'var': np.linspace(0.5, 2, 5, dtype=np.float32)}
  got = _noisy_train(params, state, x, jax.random.key(3), QUIET)
  chex.assert_trees_all_equal(got, _batch_train(params, state, x))
  y, new_state = _reference_batch_norm(params, state, x, True)
  np.testing.assert_allclose(got[0], y, rtol=1e-5, atol=1e-5)
  chex.assert_trees_all_close(jax.tree.map(np.asarray, got[1]), new_state,
                              rtol=1e-6, atol=1e-6)


def test_noise_leaves_the_running_statistics_batch_norms():
  x, params = _x(), _params(5)
  state = _init_state(5)
  y, new_state = _noisy_train(params, state, x, jax.random.key(3), HP)
  _, ref_state = _reference_batch_norm(params, state, x, True)
  chex.assert_trees_all_close(jax.tree.map(np.asarray, new_state), ref_state,
                              rtol=1e-6, atol=1e-6)
  assert not np.allclose(y, _batch_train(params, state, x)[0], atol=1e-2)


def test_eval_mode_is_batch_norms_eval_without_noise():
  x, params = _x(), _params(5)
  state = {'mean': np.linspace(-2, 2, 5, dtype=np.float32),
           'var': np.arange(1.0, 6.0, dtype=np.float32)}
  y, new_state = _noisy_eval(params, state, x, jax.random.key(3), HP)
  ref, _ = _reference_batch_norm(params, state, x, False)
  np.testing.assert_allclose(y, ref, rtol=1e-5, atol=1e-5)
  chex.assert_trees_all_equal(new_state, state)
  chex.assert_trees_all_equal(y, BATCH.apply(params, state, x, False)[0])
  # Deterministic: another key changes nothing.
  chex.assert_trees_all_equal(
      y, _noisy_eval(params, state, x, jax.random.key(4), HP)[0])


def test_without_a_key_there_is_no_noise():
  x, params, state = _x(), _params(5), _init_state(5)
  chex.assert_trees_all_equal(NOISY.apply(params, state, x, True, None, HP),
                              BATCH.apply(params, state, x, True))


def _layer_noise(seed_key, t, layer, hp):
  """The standardized draws (m, n) of ``layer`` at step ``t`` of a member."""
  key = components.component_key(train_lib.step_key(seed_key, t), 'norm',
                                 layer)
  x, params = _x(), _params(5)
  m, n, _ = _recover_noise(x, params, _noisy_train(
      params, _init_state(5), x, key, hp)[0])
  return np.concatenate([(m - hp['noise_scale_mean'])
                         / np.sqrt(hp['noise_scale_var']),
                         (n - hp['noise_shift_mean'])
                         / np.sqrt(hp['noise_shift_var'])])


def test_noise_is_redrawn_every_step_and_paired_across_members():
  seed = jax.random.key(0)
  first = _layer_noise(seed, 1, 0, HP)
  # The same member, step and layer: the same draws (to the rounding of the
  # recovery); members sharing the seed but not the noise knobs draw the
  # same standard normals (common random numbers).
  other_hp = {'noise_shift_mean': 2.0, 'noise_shift_var': 0.25,
              'noise_scale_mean': 0.5, 'noise_scale_var': 3.0}
  np.testing.assert_allclose(_layer_noise(seed, 1, 0, other_hp), first,
                             atol=1e-3)
  # Another step, layer or seed: other draws.
  for draws in (_layer_noise(seed, 2, 0, HP), _layer_noise(seed, 1, 1, HP),
                _layer_noise(jax.random.key(1), 1, 0, HP)):
    assert np.min(np.abs(draws - first)) > 1e-3, (draws, first)


def test_gradients_match_finite_differences():
  x, params, state = _x((8, 3)), _params(3), _init_state(3)
  key = jax.random.key(5)

  def f(x, scale, hp):
    y, _ = NOISY.apply({'scale': scale}, state, x, True, key, hp)
    return jnp.sin(y)  # a nonlinear read-out

  hp = {k: np.float32(v) for k, v in HP.items()}
  jtu.check_grads(f, (x, params['scale'], hp), order=1, modes=('fwd', 'rev'),
                  atol=2e-2, rtol=2e-2)


def test_gradient_at_zero_variance_is_finite():
  # sqrt(var) has an infinite derivative at 0; the knob's derivative is taken
  # as 0 there, so the noise-free point does not poison the others.
  x, params, state = _x(), _params(5), _init_state(5)

  def loss(hp):
    y, _ = NOISY.apply(params, state, x, True, jax.random.key(1), hp)
    return jnp.sum(y ** 2)

  grads = jax.grad(loss)({k: jnp.float32(v) for k, v in QUIET.items()})
  chex.assert_tree_all_finite(grads)
  assert grads['noise_shift_var'] == 0 and grads['noise_scale_var'] == 0
  assert grads['noise_shift_mean'] != 0 and grads['noise_scale_mean'] != 0


_MIXED_INIT, _MIXED_APPLY = components.relaxed_norm(('batch', 'noisy_batch'))
# Noise that overflows float32: scale ~ N(3e38, ...) times y of order 1.
_HUGE = {'noise_shift_mean': 3e38, 'noise_shift_var': 1e38,
         'noise_scale_mean': 3e38, 'noise_scale_var': 1e38}


@jax.jit
def _mixed_loss_and_grads(params, x, weights, key, hp):
  def loss(params, x, weights):
    y, _ = _MIXED_APPLY(params, _MIXED_INIT(5)[1], x, weights, True, key, hp)
    return jnp.sum(jnp.tanh(y) * _x(seed=9))
  return jax.value_and_grad(loss, argnums=(0, 1, 2))(params, x, weights)


def test_an_overflowing_noisy_option_of_weight_0_poisons_nothing():
  params, _ = _MIXED_INIT(5)
  x, w, key = _x(), np.asarray([1.0, 0.0], np.float32), jax.random.key(2)
  # The noise really overflows where it is selected.
  y, _ = _noisy_train(params['noisy_batch'], _init_state(5), x, key, _HUGE)
  assert not np.all(np.isfinite(y))
  value, (g_params, g_x, g_w) = _mixed_loss_and_grads(params, x, w, key,
                                                      _HUGE)

  def alone(scale, x):
    y, _ = BATCH.apply({'scale': scale}, _init_state(5), x, True)
    return jnp.sum(jnp.tanh(y) * _x(seed=9))

  ref_value, (ref_scale, ref_x) = jax.jit(jax.value_and_grad(
      alone, argnums=(0, 1)))(params['batch']['scale'], x)
  chex.assert_trees_all_close((value, g_params['batch']['scale'], g_x),
                              (ref_value, ref_scale, ref_x), rtol=1e-5,
                              atol=1e-6)
  chex.assert_tree_all_finite((g_params, g_x, g_w[0]))
  chex.assert_trees_all_equal(g_params['noisy_batch']['scale'],
                              np.zeros(5, np.float32))


def test_non_vertex_weights_mix_the_noisy_output():
  params, _ = _MIXED_INIT(5)
  x, key = _x(), jax.random.key(2)
  w = np.asarray([0.25, 0.75], np.float32)
  y, _ = _MIXED_APPLY(params, _MIXED_INIT(5)[1], x, w, True, key, HP)
  noisy, _ = _noisy_train(params['noisy_batch'], _init_state(5), x, key, HP)
  batch, _ = _batch_train(params['batch'], _init_state(5), x)
  np.testing.assert_allclose(y, 0.25 * np.asarray(batch) + 0.75 * np.asarray(
      noisy), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize('name', sorted(set(norms.NORMS) - {'noisy_batch'}))
def test_other_norms_ignore_the_noise_knobs(name):
  norm = norms.NORMS[name]
  x, key = _x(), jax.random.key(2)
  mixed_init, mixed_apply = components.relaxed_norm((name, 'noisy_batch'))
  params, state = mixed_init(5)
  w = np.asarray([1.0, 0.0], np.float32)
  for train in (True, False):
    chex.assert_trees_all_equal(
        mixed_apply(params, state, x, w, train, key, _HUGE)[0],
        norm.apply(params[name], state[name], x, train, key)[0])


def test_the_axis_declares_the_knobs_read_by_noisy_batch_only():
  declared = {k.name: k for k in norms.AXIS.knobs}
  assert sorted(declared) == sorted(HP)
  for knob in declared.values():
    assert knob.read_by == ('noisy_batch',)
  # Unset knobs take the declared defaults.
  chex.assert_trees_all_equal(
      norms.knob_values({'noise_shift_var': 3.0, 'unrelated': 1.0}),
      {k: np.float32(3.0 if k == 'noise_shift_var' else v.default)
       for k, v in declared.items()})


def test_mlp_reads_the_noise_knobs_from_its_knobs():
  """The model passes a grid's knobs to the norm (not only the defaults)."""
  options = {'norm': ('noisy_batch',), 'activation': ('relu',),
             'init': ('lecun_normal',)}
  model = models.get_model('mlp')((4,), options)
  knobs = {'norm': np.ones(1, np.float32), 'activation': np.ones(1, np.float32),
           'init': np.ones(1, np.float32), 'init_scale': np.float32(1.0)}
  params, state = model.init(jax.random.key(0), 5, 3, knobs)
  apply = jax.jit(model.apply, static_argnames='train')
  key = jax.random.key(1)
  quiet, _ = apply(params, state, _x(), knobs | QUIET, train=True, key=key)
  noisy, _ = apply(params, state, _x(), knobs | HP, train=True, key=key)
  plain, _ = apply(params, state, _x(), knobs, train=True, key=key)  # defaults
  defaults = {k.name: k.default for k in norms.AXIS.knobs}
  chex.assert_trees_all_equal(
      plain, apply(params, state, _x(), knobs | defaults, train=True,
                   key=key)[0])
  assert not np.allclose(quiet, noisy, atol=1e-3)
  # At zero noise it is the MLP with batch norm (same weights): y * 1 + 0 is
  # y in IEEE arithmetic, but this compiled program and batch norm run op by
  # op may round batch norm's own arithmetic differently (1 ulp, 6e-8, with
  # XLA CPU's loop emitters, which the suite compiles with); the training
  # loop's bit-exact check is test_a_grid_varies_the_noise_and_zero_noise_...
  batch_model = models.get_model('mlp')((4,), options | {'norm': ('batch',)})
  rename = lambda tree: tree | {'norm': [{'batch': layer['noisy_batch']}
                                         for layer in tree['norm']]}
  chex.assert_trees_all_close(
      quiet, batch_model.apply(rename(params), rename(state), _x(), knobs,
                               True, key)[0], rtol=2e-7, atol=1e-7)


def test_a_grid_varies_the_noise_and_zero_noise_is_batch_norm(tiny_digits):
  """Through the training loop: a Values axis of a noise knob reaches the
  norm; noisy batch norm at zero noise trains exactly as batch norm."""
  grid = grid_lib.Grid(grid_lib.Choice('norm', ['batch', 'noisy_batch']),
                       grid_lib.Values('noise_shift_var', [0.0, 1.0]),
                       grid_lib.Values('noise_shift_mean', [0.0]),
                       grid_lib.Values('noise_scale_var', [0.0]),
                       grid_lib.Seeds(1))
  config = train_lib.TrainConfig(hidden=(8,), steps=6, log_every=3,
                                 batch_size=32).for_grid(grid)
  res = engine.run(config, grid, tiny_digits)
  loss = {(m['norm'], m['noise_shift_var']): res.where(**m).columns[
      'train_loss'] for m in ({'norm': n, 'noise_shift_var': v}
                              for n in ('batch', 'noisy_batch')
                              for v in (0.0, 1.0))}
  chex.assert_trees_all_equal(loss['noisy_batch', 0.0], loss['batch', 0.0])
  chex.assert_trees_all_equal(loss['batch', 1.0], loss['batch', 0.0])
  assert np.all(np.isfinite(loss['noisy_batch', 1.0]))
  assert np.abs(loss['noisy_batch', 1.0][-1] - loss['batch', 0.0][-1]) > 1e-4


@pytest.mark.parametrize('name, value, bound', [
    ('noise_shift_var', '-1', '>= 0'), ('noise_scale_var', '-0.5', '>= 0'),
    ('noise_scale_mean', '0', '> 0'), ('noise_shift_mean', 'inf', 'finite'),
])
def test_out_of_range_knobs_are_one_line_errors(name, value, bound):
  with pytest.raises(ValueError) as e:
    cli.parse_knob(name, f'0.5,{value}')
  message = str(e.value)
  assert f"{name}: '{value}'" in message and bound in message, message
  assert '\n' not in message


def test_in_range_knobs_parse():
  assert cli.parse_knob('noise_shift_mean', '-3,0,2') == (-3.0, 0.0, 2.0)
  assert cli.parse_knob('noise_shift_var', '0,1') == (0.0, 1.0)


def test_out_of_range_noise_is_one_error_line_before_compiling():
  """What the ablate launcher's flags go through (its subprocess run of a
  bad noise flag is in tests/test_ablate.py's batch of bad inputs)."""
  for name, items, bad in [('noise_shift_var', '-1', "noise_shift_var: '-1'"),
                           ('noise_scale_mean', '0,1', "noise_scale_mean: '0'")]:
    with pytest.raises(ValueError, match=re.escape(bad)):
      cli.parse_knob(name, items)


def test_covariate_shift_redraws_only_the_noise_below_the_layer():
  # A step of size 0: G'_i differs from G_i only by the noise that the
  # layers below i redraw at the next step. Layer 0 has nothing below it
  # (shift 0 exactly; it read the noise of its own norm and those above when
  # every layer took the next step's key), and every norm is below the
  # readout (its G' is the gradient with the next step's key throughout).
  # The CNN: a flax module through the adapter (``layer_keys``), its layers'
  # keys drawn by ``component_key`` as the built-in MLP's are.
  options = {'norm': ('noisy_batch',), 'activation': ('relu',),
             'init': ('lecun_normal',)}
  model = models.get_model('cnn')((4, 4), options)  # layers 0, 1; readout 2
  knobs = {'norm': np.ones(1, np.float32), 'activation': np.ones(1, np.float32),
           'init': np.ones(1, np.float32), 'init_scale': np.float32(1.0)} | HP
  params, state = jax.jit(model.init, static_argnums=(1, 2))(
      jax.random.key(0), 12, 3, knobs)
  x = np.random.default_rng(0).standard_normal((6, 12)).astype(np.float32)

  def loss(p, key):
    return jnp.mean(model.apply(p, state, x, knobs, True, key)[0] ** 2)

  keys = (jax.random.key(1), jax.random.key(2))
  depth = model.depth(params)
  assert model.layer_keys
  l2, _ = jax.jit(lambda p, k: diagnostics.covariate_shift(
      loss, p, lambda p, g: p, depth, k, layer_keys=True))(params, keys)
  chex.assert_shape(l2, (3,))
  assert l2[0] == 0, l2
  grad = jax.jit(jax.grad(loss))
  now, after = (grad(params, k) for k in keys)

  def full_redraw(layer):  # the layer's shift with every layer's noise new
    return np.sqrt(sum(np.sum((np.asarray(a, np.float64) - b) ** 2)
                       for d, a, b in zip(jax.tree.leaves(depth),
                                          jax.tree.leaves(now),
                                          jax.tree.leaves(after))
                       if d == layer))

  np.testing.assert_allclose(l2[2], full_redraw(2), rtol=1e-5)
  # Layer 1: the noise of layer 0's norm, below it, and not its own.
  assert l2[1] > 1e-3 * full_redraw(2), l2
  assert not np.isclose(l2[1], full_redraw(1), rtol=1e-3), (l2, full_redraw(1))
