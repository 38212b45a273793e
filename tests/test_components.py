"""Tests of rahimi_jax.components: registries, relaxed mixtures, `mix`.

Expected values are computed with NumPy (eager jnp ops would each compile a
tiny program), and every jitted function under test is built once at module
level, so one compiled program serves all the parametrized cases.
"""

import functools
import re
from unittest import mock

from absl.testing import absltest
from absl.testing import parameterized
import chex
import jax
from jax import test_util as jtu
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from scipy import stats as scipy_stats

from rahimi_jax import components
from rahimi_jax.components import optimizers
from rahimi_jax.components import relaxed

NORM_NAMES = sorted(components.NORMS)
INIT_NAMES = sorted(components.INITS)
ACT_NAMES = sorted(components.ACTIVATIONS)
OPT_NAMES = sorted(components.OPTIMIZERS)

# Each axis: its registry, its `get_` lookup, and a constructor of the relaxed
# mixture from a list of names (the optimizer also takes weights and hp).
AXES = {
    'norm': (components.NORMS, components.norms.AXIS.get,
             components.relaxed_norm),
    'init': (components.INITS, components.inits.AXIS.get,
             components.relaxed_init),
    'activation': (components.ACTIVATIONS, components.activations.AXIS.get,
                   components.relaxed_activation),
    'optimizer': (
        components.OPTIMIZERS, components.optimizers.AXIS.get,
        lambda names: components.relaxed_optimizer(
            names, np.ones(len(names), np.float32),
            components.optimizers.AXIS.knob_defaults())),
}

HP = {'learning_rate': 0.1, 'momentum': 0.8, 'weight_decay': 0.05}
# The optimizers that read each hyperparameter, as the optimizer axis declares
# (and its --help says); every other option must ignore it.
READS = {k.name: k.readers(components.OPTIMIZERS)
         for k in components.optimizers.AXIS.knobs}


def _onehot(names, name):
  return np.asarray([n == name for n in names], np.float32)


def _x(shape=(6, 5), seed=0):
  """Inputs with per-feature offsets and scales (so norms have work to do)."""
  rng = np.random.default_rng(seed)
  x = rng.standard_normal(shape) * rng.uniform(0.5, 3.0, shape[-1])
  return (x + rng.uniform(-2.0, 2.0, shape[-1])).astype(np.float32)


def _pairs(names):
  """Each name with the next one (cyclically): every option is in a pair."""
  return [(f'{a}_{b}', a, b) for a, b in zip(names, names[1:] + names[:1])]


def _np(tree):
  return jax.tree.map(lambda a: np.asarray(a, np.float64), tree)


def _opt_params():
  return {'w': (np.arange(6.0).reshape(2, 3) / 7 - 0.3).astype(np.float32),
          'b': np.asarray([0.5, -1.0, 2.0], np.float32)}


def _opt_grads(step):
  rng = np.random.default_rng(100 + step)
  return jax.tree.map(
      lambda p: rng.standard_normal(p.shape).astype(np.float32), _opt_params())


_RNG = np.random.default_rng(7)
_LSQ_X = _RNG.standard_normal((4, 2)).astype(np.float32)
_LSQ_Y = _RNG.standard_normal((4, 3)).astype(np.float32)


def _residual(params):
  """A small nonlinear least-squares problem on the optimizer test params.

  Every update gets it as ``residual_fn=`` (the Gauss–Newton-type options step
  from it; the others ignore it and use the fixed gradients).
  """
  z = _LSQ_X @ params['w'] + params['b']
  return z + 0.1 * z * z - _LSQ_Y


def _opt(name, hp):
  """An option alone, accepting ``residual_fn=`` like the relaxed mixture."""
  return optax.with_extra_args_support(components.OPTIMIZERS[name](
      {**components.optimizers.CONSTANTS, **hp}))


# The relaxed mixture of every registry entry, and every plain option computed
# in one function per axis.
_NORM_INIT, _NORM_APPLY = components.relaxed_norm(NORM_NAMES)
_INIT = components.relaxed_init(INIT_NAMES)
_ACT = components.relaxed_activation(ACT_NAMES)


def _plain_norms(params, state, x, train):
  return {n: components.NORMS[n].apply(params[n], state[n], x, train)
          for n in NORM_NAMES}


def _plain_inits(key, shape, dtype):
  return {n: components.INITS[n](key, shape, dtype) for n in INIT_NAMES}


def _plain_acts(x):
  return {n: components.ACTIVATIONS[n](x) for n in ACT_NAMES}


def _relaxed_opt_step(weights, grads, state, params, hp):
  """The mixture, built inside the program from traced weights and ``hp``."""
  tx = components.relaxed_optimizer(OPT_NAMES, weights, hp)
  return tx.update(grads, state, params, residual_fn=_residual)


# Every call passes the same shapes and dtypes (``hp`` of Python floats), so
# one trace serves every option, weight and hyperparameter value. (The
# switched program below traces the step uncounted: in the same worker it
# counted as this one's second trace.)
_relaxed_opt_update = chex.assert_max_traces(n=1)(_relaxed_opt_step)


def _plain_opt_updates(grads, states, params, hp):
  """Every option alone: ``{name: (updates, state)}``."""
  return {n: _opt(n, hp).update(grads, states[n], params[n],
                                residual_fn=_residual)
          for n in OPT_NAMES}


# Jitted as the `with_jit` variants jit them (so they share compiled programs).
_norm_apply_jit = jax.jit(_NORM_APPLY, static_argnums=4)
_plain_norms_jit = jax.jit(_plain_norms, static_argnums=3)
_init_jit = jax.jit(_INIT, static_argnums=(2, 3))
_plain_inits_jit = jax.jit(_plain_inits, static_argnums=(1, 2))
_act_jit = jax.jit(_ACT)
_plain_acts_jit = jax.jit(_plain_acts)
_relaxed_opt_update_jit = jax.jit(_relaxed_opt_update)
_plain_opt_updates_jit = jax.jit(_plain_opt_updates)


class NormTest(chex.TestCase):

  @chex.variants(with_jit=True, without_jit=True)
  @parameterized.product(name=NORM_NAMES, train=(True, False))
  def test_onehot_mixture_is_exactly_the_option(self, name, train):
    params, state = _NORM_INIT(5)
    # Make every option's parameters and state non-trivial.
    leaves, treedef = jax.tree.flatten((params, state))
    leaves = [np.asarray(l) + 0.1 * (i + 1) for i, l in enumerate(leaves)]
    params, state = jax.tree.unflatten(treedef, leaves)
    x = _x()

    relaxed_fn = self.variant(_NORM_APPLY, static_argnums=4)
    plain_fn = self.variant(_plain_norms, static_argnums=3)
    y, new_state = relaxed_fn(params, state, x, _onehot(NORM_NAMES, name),
                              train)
    y_ref, state_ref = plain_fn(params, state, x, train)[name]

    chex.assert_shape(y, x.shape)
    chex.assert_trees_all_equal(y, y_ref)
    chex.assert_trees_all_equal(new_state[name], state_ref)

  @parameterized.named_parameters(*_pairs(NORM_NAMES))
  def test_non_vertex_weights_interpolate(self, a, b):
    params, state = _NORM_INIT(5)
    x = _x()
    w = np.zeros(len(NORM_NAMES), np.float32)
    w[NORM_NAMES.index(a)], w[NORM_NAMES.index(b)] = 0.3, 0.7
    y, new_state = _norm_apply_jit(params, state, x, w, True)
    outs = _plain_norms_jit(params, state, x, True)
    np.testing.assert_allclose(
        y, 0.3 * _np(outs[a][0]) + 0.7 * _np(outs[b][0]), rtol=1e-5, atol=1e-6)
    # Each option keeps its own state, whatever the weights.
    chex.assert_trees_all_equal(new_state, {n: s for n, (_, s) in outs.items()})

  @parameterized.parameters(NORM_NAMES)
  def test_init_matches_the_plain_option(self, name):
    params, state = _NORM_INIT(4)
    chex.assert_trees_all_equal((params[name], state[name]),
                                components.NORMS[name].init(4))

  @chex.variants(with_jit=True, without_jit=True)
  def test_batch_norm_train_normalizes_features_and_updates_running_stats(self):
    norm = components.norms.AXIS.get('batch')
    params, state = norm.init(5)
    x = _x()
    apply = self.variant(norm.apply, static_argnums=3)
    y, new_state = apply(params, state, x, True)
    np.testing.assert_allclose(np.mean(y, axis=0), np.zeros(5), atol=1e-5)
    np.testing.assert_allclose(np.var(y, axis=0), np.ones(5), atol=1e-4)
    x64 = x.astype(np.float64)
    expected = {'mean': 0.9 * 0.0 + 0.1 * x64.mean(0),
                'var': 0.9 * 1.0 + 0.1 * x64.var(0)}
    chex.assert_trees_all_close(_np(new_state), expected, rtol=1e-5, atol=1e-6)
    # A second step moves the running averages by momentum 0.9 again.
    _, state2 = apply(params, new_state, 2.0 * x, True)
    expected = {'mean': 0.9 * expected['mean'] + 0.1 * 2.0 * x64.mean(0),
                'var': 0.9 * expected['var'] + 0.1 * 4.0 * x64.var(0)}
    chex.assert_trees_all_close(_np(state2), expected, rtol=1e-5, atol=1e-6)

  @chex.variants(with_jit=True, without_jit=True)
  def test_batch_norm_eval_uses_running_stats(self):
    norm = components.norms.AXIS.get('batch')
    params, _ = norm.init(5)
    # Non-trivial learned parameters (the scale, and a bias if there is one).
    params = jax.tree.map(lambda p: p + np.linspace(0.5, 1.5, 5), params)
    state = {'mean': np.linspace(-2.0, 2.0, 5, dtype=np.float32),
             'var': np.arange(1.0, 6.0, dtype=np.float32)}
    x = _x()
    apply = self.variant(norm.apply, static_argnums=3)
    y, new_state = apply(params, state, x, False)
    p, s = _np(params), _np(state)
    expected = ((x - s['mean']) / np.sqrt(s['var'] + 1e-5) * p['scale']
                + p.get('bias', 0.0))
    np.testing.assert_allclose(y, expected, rtol=1e-5, atol=1e-5)
    chex.assert_trees_all_equal(new_state, state)
    # In eval mode a row's output does not depend on the other rows.
    y_first, _ = apply(params, state, x[::-1], False)
    np.testing.assert_allclose(y_first[::-1], y, rtol=1e-6)

  @chex.variants(with_jit=True, without_jit=True)
  @parameterized.parameters('layer', 'rms')
  def test_row_norms_normalize_each_row(self, name):
    norm = components.norms.AXIS.get(name)
    params, state = norm.init(5)
    x = _x()
    apply = self.variant(norm.apply, static_argnums=3)
    y, new_state = apply(params, state, x, True)
    y = np.asarray(y, np.float64)
    chex.assert_trees_all_equal(new_state, state)
    if name == 'layer':
      np.testing.assert_allclose(y.mean(-1), np.zeros(6), atol=1e-5)
      np.testing.assert_allclose(y.var(-1), np.ones(6), atol=1e-4)
    else:
      np.testing.assert_allclose((y * y).mean(-1), np.ones(6), atol=1e-4)
      # RMS norm does not center: each row's mean survives, rescaled.
      rms = np.sqrt((x.astype(np.float64) ** 2).mean(-1))
      np.testing.assert_allclose(y.mean(-1), x.mean(-1) / rms, rtol=1e-4)
    # Rows are independent: permuting the rows permutes the outputs.
    y_rev, _ = apply(params, state, x[::-1], True)
    np.testing.assert_allclose(np.asarray(y_rev)[::-1], y, rtol=1e-6)

  def test_norms_of_conv_maps_against_numpy(self):
    """[batch, length, channels]: batch norm per channel over (batch,
    length); layer and RMS norm over each position's channels; noisy batch
    norm's noise per channel, shared by rows and positions."""
    rng = np.random.default_rng(3)
    x = (rng.standard_normal((3, 4, 5)) * np.linspace(0.5, 2.0, 5)
         + np.linspace(-1.0, 1.0, 5)).astype(np.float32)
    x64, scale = x.astype(np.float64), np.linspace(0.5, 1.5, 5)
    params = {'scale': scale.astype(np.float32)}
    state = {'mean': np.full(5, 0.5, np.float32),
             'var': np.full(5, 2.0, np.float32)}
    norms = components.NORMS
    ys = {}
    for name in ('batch', 'layer', 'rms', 'noisy_batch'):
      y, new_state = jax.jit(norms[name].apply, static_argnums=3)(
          params, state, x, True, jax.random.key(0))
      chex.assert_shape(y, x.shape)
      ys[name] = (np.asarray(y, np.float64), _np(new_state))
    mean, var = x64.mean((0, 1)), x64.var((0, 1))
    np.testing.assert_allclose(
        ys['batch'][0], (x64 - mean) / np.sqrt(var + 1e-5) * scale,
        rtol=1e-5, atol=1e-5)
    chex.assert_trees_all_close(
        ys['batch'][1], {'mean': 0.9 * 0.5 + 0.1 * mean,
                         'var': 0.9 * 2.0 + 0.1 * var}, rtol=1e-5)
    mean, var = x64.mean(-1, keepdims=True), x64.var(-1, keepdims=True)
    np.testing.assert_allclose(
        ys['layer'][0], (x64 - mean) / np.sqrt(var + 1e-5) * scale,
        rtol=1e-5, atol=1e-5)
    rms = np.sqrt((x64 ** 2).mean(-1, keepdims=True) + 1e-5)
    np.testing.assert_allclose(ys['rms'][0], x64 / rms * scale, rtol=1e-5,
                               atol=1e-5)
    # Noisy: z = y m + n with one (m, n) per channel: the fit over every row
    # and position leaves no residual.
    y, z = ys['batch'][0].reshape(-1, 5), ys['noisy_batch'][0].reshape(-1, 5)
    dy, dz = y - y.mean(0), z - z.mean(0)
    m = (dy * dz).sum(0) / (dy * dy).sum(0)
    np.testing.assert_allclose(z, y * m + (z.mean(0) - m * y.mean(0)),
                               atol=1e-4)
    self.assertGreater(np.abs(m - 1.0).max(), 1e-3)  # the noise is there
    chex.assert_trees_all_close(ys['noisy_batch'][1], ys['batch'][1])

  def test_eps_is_added_to_the_variance_inside_the_square_root(self):
    """At feature/row variances comparable to eps = 1e-5 the placement of eps
    decides the output (a factor ~sqrt(2) here): y = (x - mu) / sqrt(var +
    eps) for batch and layer norm (as flax.linen's BatchNorm/LayerNorm) and
    x / sqrt(mean(x^2) + eps) for RMS norm (flax's RMSNorm); and an
    all-constant (variance 0) feature or row gives 0, not NaN."""
    rng = np.random.default_rng(5)
    x64 = 3e-3 * rng.standard_normal((6, 5))  # variances ~1e-5 ~ eps
    x64[:, 2] = 0.7  # a constant feature (batch norm: variance 0)
    x64[4] = 0.0     # an all-zero row (layer and RMS norm: variance 0)
    x = x64.astype(np.float32)
    x64 = x.astype(np.float64)
    scale = np.linspace(0.5, 1.5, 5)
    params = {'scale': scale.astype(np.float32)}
    state = {'mean': np.full(5, 1e-3, np.float32),
             'var': np.full(5, 2e-5, np.float32)}
    eps = 1e-5
    ys = {}
    for name in ('batch', 'layer', 'rms'):
      for train in (True, False):
        ys[name, train] = np.asarray(jax.jit(
            components.NORMS[name].apply, static_argnums=3)(
                params, state, x, train)[0], np.float64)
    m, v = x64.mean(0), x64.var(0)
    want = {('batch', True): (x64 - m) / np.sqrt(v + eps) * scale,
            ('batch', False): (x64 - 1e-3) / np.sqrt(2e-5 + eps) * scale}
    m, v = x64.mean(-1, keepdims=True), x64.var(-1, keepdims=True)
    want['layer', True] = want['layer', False] = (
        (x64 - m) / np.sqrt(v + eps) * scale)
    want['rms', True] = want['rms', False] = (
        x64 / np.sqrt((x64**2).mean(-1, keepdims=True) + eps) * scale)
    chex.assert_tree_all_finite(ys)
    chex.assert_trees_all_close(ys, want, rtol=1e-4, atol=1e-6)

  def test_none_is_the_identity(self):
    norm = components.norms.AXIS.get('none')
    params, state = norm.init(5)
    x = _x()
    y, new_state = norm.apply(params, state, x, True)
    chex.assert_trees_all_equal((y, new_state), (x, state))


class InitTest(chex.TestCase):

  @chex.variants(with_jit=True, without_jit=True)
  @parameterized.parameters(INIT_NAMES)
  def test_onehot_mixture_is_exactly_the_option(self, name):
    shape = (5, 4)
    relaxed_fn = self.variant(_INIT, static_argnums=(2, 3))
    plain_fn = self.variant(_plain_inits, static_argnums=(1, 2))
    key = jax.random.key(3)
    w = relaxed_fn(_onehot(INIT_NAMES, name), key, shape, jnp.float32)
    refs = plain_fn(key, shape, jnp.float32)
    chex.assert_shape(w, shape)
    chex.assert_trees_all_equal(w, refs[name])
    # The key alone determines the draw.
    chex.assert_trees_all_equal(refs, plain_fn(key, shape, jnp.float32))
    other = plain_fn(jax.random.fold_in(key, 1), shape, jnp.float32)[name]
    self.assertFalse(np.allclose(refs[name], other))

  @parameterized.named_parameters(*_pairs(INIT_NAMES))
  def test_non_vertex_weights_interpolate(self, a, b):
    key = jax.random.key(3)
    w = np.zeros(len(INIT_NAMES), np.float32)
    w[INIT_NAMES.index(a)], w[INIT_NAMES.index(b)] = 0.3, 0.7
    mixed = _init_jit(w, key, (5, 4), jnp.float32)
    refs = _np(_plain_inits_jit(key, (5, 4), jnp.float32))
    np.testing.assert_allclose(mixed, 0.3 * refs[a] + 0.7 * refs[b],
                               rtol=1e-5, atol=1e-6)


  def test_draws_are_the_published_distributions(self):
    """Each option's draw against scipy, on a conv kernel ``[window, in,
    out]`` whose fans count the window (fan_in = 3 * 40, fan_out = 3 * 160):
    lecun/he/glorot normal are normals of variance 1/fan_in, 2/fan_in and
    2/(fan_in + fan_out), truncated at two standard deviations of the normal
    before its rescaling (as ``jax.nn.initializers`` documents them);
    gaussian is N(0, 1) (orthogonal: tests/test_linalg.py). A
    Kolmogorov-Smirnov distance of 0.012 over 57600 draws refuses a fan off
    by any factor (distance >= 0.09), the untruncated normal (0.022) and the
    uniform of the same variance (0.045)."""
    shape, fan_in, fan_out = (3, 40, 160), 120, 480
    truncated_std = scipy_stats.truncnorm(-2, 2).std()  # 0.8796
    variance = {'lecun_normal': 1 / fan_in, 'he_normal': 2 / fan_in,
                'glorot_normal': 2 / (fan_in + fan_out)}
    want = {n: scipy_stats.truncnorm(-2, 2, scale=np.sqrt(v) / truncated_std)
            for n, v in variance.items()} | {'gaussian': scipy_stats.norm()}
    self.assertEqual(set(want) | {'orthogonal'}, set(INIT_NAMES))
    draws = _np(jax.jit(lambda key: {n: components.INITS[n](
        key, shape, jnp.float32) for n in want})(jax.random.key(7)))
    for name, dist in want.items():
      chex.assert_shape(draws[name], shape)
      distance = scipy_stats.kstest(draws[name].ravel(), dist.cdf).statistic
      self.assertLess(distance, 0.012, name)


class ActivationTest(chex.TestCase):

  @chex.variants(with_jit=True, without_jit=True)
  @parameterized.parameters(ACT_NAMES)
  def test_onehot_mixture_is_exactly_the_option(self, name):
    x = _x()
    y = self.variant(_ACT)(_onehot(ACT_NAMES, name), x)
    ref = self.variant(_plain_acts)(x)[name]
    chex.assert_shape(y, x.shape)
    chex.assert_trees_all_equal(y, ref)

  @parameterized.named_parameters(*_pairs(ACT_NAMES))
  def test_non_vertex_weights_interpolate(self, a, b):
    x = _x()
    w = np.zeros(len(ACT_NAMES), np.float32)
    w[ACT_NAMES.index(a)], w[ACT_NAMES.index(b)] = 0.3, 0.7
    refs = _np(_plain_acts_jit(x))
    np.testing.assert_allclose(_act_jit(w, x), 0.3 * refs[a] + 0.7 * refs[b],
                               rtol=1e-5, atol=1e-6)

  def test_values_are_the_published_formulas(self):
    """Each option against NumPy: gelu is the tanh approximation (Hendrycks
    & Gimpel 2016, eq. in section 2), as the axis's help says; silu is x
    sigmoid(x)."""
    x = np.linspace(-4.0, 4.0, 33).astype(np.float32)
    x64 = x.astype(np.float64)
    want = {'relu': np.maximum(x64, 0), 'tanh': np.tanh(x64),
            'gelu': 0.5 * x64 * (1 + np.tanh(np.sqrt(2 / np.pi)
                                             * (x64 + 0.044715 * x64**3))),
            'silu': x64 / (1 + np.exp(-x64)), 'identity': x64}
    got = {n: _act_jit(_onehot(ACT_NAMES, n), x) for n in ACT_NAMES}
    chex.assert_trees_all_close(_np(got), want, rtol=1e-5, atol=1e-6)


class OptimizerTest(chex.TestCase):

  # Under jit only: op-by-op, the Gauss–Newton-type options retrace their CG
  # loop on every call (seconds per test), and optax's own tests run jitted.
  @chex.variants(with_jit=True)
  @parameterized.parameters(OPT_NAMES)
  def test_onehot_mixture_is_exactly_the_option(self, name):
    w = _onehot(OPT_NAMES, name)
    relaxed_update = self.variant(_relaxed_opt_update)
    plain_updates = self.variant(_plain_opt_updates)
    params_r = _opt_params()
    params_p = {n: _opt_params() for n in OPT_NAMES}  # each option alone
    state_r = components.relaxed_optimizer(OPT_NAMES, w, HP).init(params_r)
    state_p = {n: _opt(n, HP).init(params_p[n])
               for n in OPT_NAMES}
    for step in range(3):
      grads = _opt_grads(step)
      upd_r, state_r = relaxed_update(w, grads, state_r, params_r, HP)
      outs = plain_updates(grads, state_p, params_p, HP)
      state_p = {n: s for n, (_, s) in outs.items()}
      chex.assert_trees_all_equal(upd_r, outs[name][0])
      params_r = jax.tree.map(jnp.add, params_r, upd_r)
      params_p = {n: jax.tree.map(jnp.add, params_p[n], u)
                  for n, (u, _) in outs.items()}
      chex.assert_trees_all_equal(params_r, params_p[name])
      chex.assert_trees_all_equal(state_r[OPT_NAMES.index(name)],
                                  state_p[name])
    # The optimizer moved the parameters.
    self.assertFalse(np.allclose(params_r['w'], _opt_params()['w']))

  @parameterized.named_parameters(*_pairs(OPT_NAMES))
  def test_non_vertex_weights_mix_updates(self, a, b):
    w = np.zeros(len(OPT_NAMES), np.float32)
    w[OPT_NAMES.index(a)], w[OPT_NAMES.index(b)] = 0.3, 0.7
    params = _opt_params()
    state = components.relaxed_optimizer(OPT_NAMES, w, HP).init(params)
    states = {n: _opt(n, HP).init(params) for n in OPT_NAMES}
    for step in range(3):
      grads = _opt_grads(step)
      updates, state = _relaxed_opt_update_jit(w, grads, state, params, HP)
      outs = _plain_opt_updates_jit(
          grads, states, {n: params for n in OPT_NAMES}, HP)
      states = {n: s for n, (_, s) in outs.items()}
      ua, ub = _np(outs[a][0]), _np(outs[b][0])
      chex.assert_trees_all_close(
          _np(updates), jax.tree.map(lambda u, v: 0.3 * u + 0.7 * v, ua, ub),
          rtol=1e-5, atol=1e-7)
      # Every option sees the same gradients and keeps its own state.
      chex.assert_trees_all_close(state, tuple(states[n] for n in OPT_NAMES),
                                  rtol=1e-6)
      params = jax.tree.map(jnp.add, params, updates)

  @parameterized.parameters(OPT_NAMES)
  def test_traced_learning_rate_compiles_once(self, name):
    # One program serves every learning rate (and, the weights being traced
    # too, every option): `_relaxed_opt_update` builds the optimizer from the
    # traced learning rate and is traced at most once (none if cached).
    chex.clear_trace_counter()
    w = _onehot(OPT_NAMES, name)
    params, grads = _opt_params(), _opt_grads(0)
    state = components.relaxed_optimizer(OPT_NAMES, w, HP).init(params)
    u1, _ = _relaxed_opt_update_jit(w, grads, state, params,
                                    {**HP, 'learning_rate': 0.1})
    u2, _ = _relaxed_opt_update_jit(w, grads, state, params,
                                    {**HP, 'learning_rate': 0.01})
    chex.assert_tree_all_finite((u1, u2))
    self.assertGreater(np.abs(u1['w']).max(), 1e-4)
    if name in READS['learning_rate']:
      # The first update of a learning-rate option is linear in the rate.
      chex.assert_trees_all_close(
          _np(u2), jax.tree.map(lambda u: 0.1 * u, _np(u1)), rtol=1e-5,
          atol=1e-8)
    else:
      chex.assert_trees_all_equal(u1, u2)
    # And it is the option's own first update at that rate.
    hp = {**HP, 'learning_rate': 0.01}
    states = {n: _opt(n, hp).init(params) for n in OPT_NAMES}
    ref, _ = _plain_opt_updates_jit(
        grads, states, {n: params for n in OPT_NAMES}, hp)[name]
    chex.assert_trees_all_close(u2, ref, rtol=1e-6, atol=1e-8)

  @parameterized.parameters(OPT_NAMES)
  def test_hyperparams_are_read(self, name):
    """An option moves differently iff it reads a changed hyperparameter."""

    def run(hp):
      params = {n: _opt_params() for n in OPT_NAMES}
      states = {n: _opt(n, hp).init(params[n])
                for n in OPT_NAMES}
      for step in range(2):
        outs = _plain_opt_updates_jit(_opt_grads(step), states, params, hp)
        states = {n: s for n, (_, s) in outs.items()}
        params = {n: jax.tree.map(jnp.add, params[n], u)
                  for n, (u, _) in outs.items()}
      return params[name]

    base = run(HP)
    for field, readers in READS.items():
      moved = run({**HP, field: HP[field] / 2})
      if name in readers:
        self.assertFalse(np.allclose(moved['w'], base['w']),
                         f'{name} ignores {field}')
      else:
        chex.assert_trees_all_equal(moved, base)

  def test_each_option_is_optax_at_optaxs_own_defaults(self):
    """Independent of ``CONSTANTS``: the one-hot mixture, built from ``HP``
    alone, steps as optax's own transformation built here at optax's
    defaults (Adam's b1 0.9, b2 0.999, eps 1e-8; RMSProp's decay 0.9, eps
    1e-8). Small gradients (1e-4), so that eps shows in Adam's and
    RMSProp's steps; three steps, so that b2 shows past the bias
    correction."""
    refs = {'sgd': optax.sgd(0.1), 'momentum': optax.sgd(0.1, momentum=0.8),
            'nesterov': optax.sgd(0.1, momentum=0.8, nesterov=True),
            'adam': optax.adam(0.1),
            'adamw': optax.adamw(0.1, weight_decay=0.05),
            'rmsprop': optax.rmsprop(0.1)}
    grads = [jax.tree.map(lambda g: 1e-4 * g, _opt_grads(step))
             for step in range(3)]
    for name, ref in refs.items():
      w = _onehot(OPT_NAMES, name)
      params = ref_params = _opt_params()
      state = components.relaxed_optimizer(OPT_NAMES, w, HP).init(params)
      ref_state = ref.init(ref_params)
      for g in grads:
        updates, state = _relaxed_opt_update_jit(w, g, state, params, HP)
        ref_updates, ref_state = ref.update(g, ref_state, ref_params)
        chex.assert_trees_all_close(updates, ref_updates, rtol=1e-5,
                                    atol=1e-12, custom_message=name)
        params = optax.apply_updates(params, updates)
        ref_params = optax.apply_updates(ref_params, ref_updates)
    # Constants the caller passes (the ``constants`` placement rounds them)
    # are the ones used, not the defaults.
    hp = {**HP, 'b1': 0.5, 'b2': 0.9, 'eps': 1e-3, 'decay': 0.5}
    refs = {'adam': optax.adam(0.1, b1=0.5, b2=0.9, eps=1e-3),
            'rmsprop': optax.rmsprop(0.1, decay=0.5, eps=1e-3)}
    step = jax.jit(_relaxed_opt_step)  # another hp structure: its own trace
    for name, ref in refs.items():
      w = _onehot(OPT_NAMES, name)
      params = _opt_params()
      state = components.relaxed_optimizer(OPT_NAMES, w, hp).init(params)
      ref_state = ref.init(params)
      for g in grads[:2]:
        updates, state = step(w, g, state, params, hp)
        ref_updates, ref_state = ref.update(g, ref_state, params)
        chex.assert_trees_all_close(updates, ref_updates, rtol=1e-5,
                                    atol=1e-12, custom_message=name)


def _switching(axis, fn):
  """``fn`` traced with ``axis`` switched (``relaxed.switching``)."""
  def switched(*args):
    with relaxed.switching([axis]):
      return fn(*args)
  return switched


_switched_norm_jit = jax.jit(_switching('norm', _NORM_APPLY), static_argnums=4)
_switched_act_jit = jax.jit(_switching('activation', _ACT))
_switched_opt_update_jit = jax.jit(_switching('optimizer', _relaxed_opt_step))


class SwitchedTest(parameterized.TestCase):
  """Switched, a component computes only the option its one-hot weights pick:
  the plain option's value, and its state alone moves."""

  @parameterized.product(name=NORM_NAMES, train=(True, False))
  def test_norm_is_the_option_and_only_its_state_moves(self, name, train):
    params, state = _NORM_INIT(5)
    x = _x()
    y, new_state = _switched_norm_jit(params, state, x,
                                      _onehot(NORM_NAMES, name), train)
    y_ref, state_ref = _plain_norms_jit(params, state, x, train)[name]
    chex.assert_trees_all_close(y, y_ref, rtol=1e-6, atol=1e-6)
    chex.assert_trees_all_close(new_state[name], state_ref, rtol=1e-6)
    for other in NORM_NAMES:
      if other != name:
        chex.assert_trees_all_equal(new_state[other], state[other])

  @parameterized.parameters(ACT_NAMES)
  def test_activation_is_the_option(self, name):
    x = _x()
    chex.assert_trees_all_close(
        _switched_act_jit(_onehot(ACT_NAMES, name), x),
        _plain_acts_jit(x)[name], rtol=1e-6, atol=1e-6)

  @parameterized.parameters(OPT_NAMES)
  def test_optimizer_is_the_option_and_only_its_state_moves(self, name):
    w = _onehot(OPT_NAMES, name)
    params = _opt_params()
    state = components.relaxed_optimizer(OPT_NAMES, w, HP).init(params)
    grads = _opt_grads(0)
    updates, new_state = _switched_opt_update_jit(w, grads, state, params, HP)
    plain, plain_state = _opt(name, HP).update(
        grads, _opt(name, HP).init(params), params, residual_fn=_residual)
    chex.assert_trees_all_close(updates, plain, rtol=1e-5, atol=1e-7)
    i = OPT_NAMES.index(name)
    chex.assert_trees_all_close(new_state[i], plain_state, rtol=1e-5)
    chex.assert_trees_all_equal(new_state[:i] + new_state[i + 1:],
                                state[:i] + state[i + 1:])

  def test_the_switch_stays_a_branch_under_vmap_of_shared_weights(self):
    xs = np.stack([_x(seed=i) for i in range(3)])
    w = _onehot(ACT_NAMES, 'tanh')
    act = _switching('activation', _ACT)
    shared = jax.make_jaxpr(jax.vmap(act, in_axes=(None, 0)))(w, xs)
    assert 'cond[' in str(shared)  # one option runs, the others not at all
    # Weights per member: XLA computes every branch and selects.
    per_member = jax.make_jaxpr(jax.vmap(act))(np.stack([w] * 3), xs)
    assert 'cond[' not in str(per_member)
    chex.assert_trees_all_close(jax.vmap(act, in_axes=(None, 0))(w, xs),
                                np.tanh(xs), rtol=1e-6)

  def test_choose_rejects_weights_of_another_length(self):
    with self.assertRaisesRegex(ValueError, r'shape \(2,\) for 3 options'):
      relaxed.choose(np.ones(2, np.float32), [lambda: 0.0] * 3)

  @chex.variants(with_jit=True, without_jit=True)
  def test_pick_is_the_row_of_the_one_hot_weight(self):
    table = {'a': np.arange(6.0).reshape(3, 2), 'b': np.asarray([7, 8, 9])}
    pick = self.variant(relaxed.pick)
    chex.assert_trees_all_equal(pick(np.asarray([0.0, 1.0, 0.0]), table),
                                {'a': np.asarray([2.0, 3.0]), 'b': 8})
    with self.assertRaisesRegex(ValueError, r'shape \(2,\) for a table of '
                                r'\[3\] rows'):
      relaxed.pick(np.ones(2), table)


class MixTest(chex.TestCase):

  @chex.variants(with_jit=True, without_jit=True)
  def test_mix_is_the_weighted_sum_of_pytrees(self):
    options = [{'a': np.full((2,), i, np.float32),
                'b': np.arange(3.0, dtype=np.float32) * i} for i in (1, 2, 3)]
    out = self.variant(relaxed.mix)(
        np.asarray([0.5, 0.25, 0.25], np.float32), options)
    chex.assert_trees_all_close(
        out, {'a': np.full((2,), 1.75, np.float32),
              'b': np.arange(3.0, dtype=np.float32) * 1.75})

  @chex.variants(with_jit=True, without_jit=True)
  def test_integer_leaves_mix_to_the_nearest_count(self):
    # (The weights cast to int32 first made 0.5 * 2 + 0.5 * 4 = 0.)
    counts = [np.int32(2), np.int32(4)]
    # 3.6 rounds to 4 (truncating gave 3).
    for weights, want in (([0.5, 0.5], 3), ([0.0, 1.0], 4), ([0.8, 0.2], 2),
                          ([0.2, 0.8], 4)):
      out = self.variant(relaxed.mix)(np.asarray(weights, np.float32), counts)
      chex.assert_trees_all_equal(out, np.int32(want))
    # A vertex is its count exactly, past float32's integers (2**24).
    big = [np.int32(2**24 + 1), np.int32(0)]
    out = self.variant(relaxed.mix)(np.asarray([1.0, 0.0], np.float32), big)
    chex.assert_trees_all_equal(out, np.int32(2**24 + 1))

  def test_mix_grad_wrt_weights_is_the_options(self):
    options = [_x((2, 3), seed=s) for s in range(3)]
    f = lambda w: relaxed.mix(w, options)
    w = np.asarray([0.2, 0.5, 0.3], np.float32)
    jtu.check_grads(f, (w,), order=1, modes=('fwd', 'rev'))
    # d mix / d w_i = option_i (forward mode, one basis direction at a time).
    for i, option in enumerate(options):
      _, tangent = jax.jvp(f, (w,), (np.eye(3, dtype=np.float32)[i],))
      chex.assert_trees_all_close(tangent, option)
    # Reverse mode: the cotangent's inner product with each option.
    ct = _x((2, 3), seed=9)
    (grad_w,) = jax.vjp(f, w)[1](ct)
    np.testing.assert_allclose(
        grad_w, [np.sum(ct * o, dtype=np.float64) for o in options], rtol=1e-5)

  def test_mix_grad_of_a_scalar_loss(self):
    options = [_x((2, 3), seed=s) for s in range(3)]
    loss = lambda w: jnp.sum(jnp.sin(relaxed.mix(w, options)))
    w = np.asarray([0.2, 0.5, 0.3], np.float32)
    jtu.check_grads(loss, (w,), order=1, modes=('fwd', 'rev'))
    # Chain rule: d loss / d w_i = <cos(mix), option_i>.
    y = sum(wi * o.astype(np.float64) for wi, o in zip(w, options))
    np.testing.assert_allclose(
        jax.grad(loss)(w), [np.sum(np.cos(y) * o) for o in options],
        rtol=1e-5)

  def test_mix_rejects_bad_input(self):
    with self.assertRaisesRegex(ValueError, 'at least one'):
      relaxed.mix(np.ones((0,)), [])
    with self.assertRaisesRegex(ValueError, r'\(2,\).*3 options'):
      relaxed.mix(np.ones((2,)), [np.ones(3)] * 3)


# Options of weight 0 that must not poison the selected one. Each reads an
# input ``x`` (with exact zeros) and a parameter ``p``.
def _selected(x, p):
  return jnp.tanh(x) * p


POISONS = {
    'overflow': lambda x, p: jnp.exp(1e3 * x) * p,  # inf, infinite derivative
    'divide_by_zero': lambda x, p: jnp.divide(p, x),  # inf at x = 0
    'sqrt_at_zero': lambda x, p: jnp.sqrt(jnp.abs(x)) * p,  # finite; d/dx inf
    'nan': lambda x, p: jnp.log(-1.0 - jnp.abs(x)) * p,
    # A low-precision option beside the float32 one: exp(20) > 65504.
    'float16_overflow': lambda x, p: (jnp.exp(20 * x.astype(jnp.float16))
                                      * p.astype(jnp.float16)),
}
# The poisons whose value is finite (only the derivative is infinite).
FINITE_POISONS = ('sqrt_at_zero',)
_POISON_X = np.asarray([[0.0, 0.5, -1.0, 2.0], [1.5, 0.0, 0.25, -0.5],
                        [-2.0, 1.0, 0.0, 3.0]], np.float32)  # [3, 4]
_POISON_P = np.asarray([1.5, -0.5, 2.0, 0.75], np.float32)  # [4]
_POISON_CT = _x((3, 4), seed=11)  # a cotangent: loss = sum(ct * y)


def _rtol(poison):
  """Products with a float16 option are rounded to float16."""
  return 1e-3 if 'float16' in poison else 1e-5


def _poisoned(poison, selected_first):
  """``(fns, weights, j)``: the selected option (index ``j``) and a poison."""
  fns = [_selected, POISONS[poison]]
  if not selected_first:
    fns = fns[::-1]
  j = 0 if selected_first else 1
  return fns, _onehot([0, 1], j), j


def _loss(f):
  return lambda *args: jnp.sum(_POISON_CT * f(*args))


def _smooth(x, p):
  return jnp.sin(x) * p * p


def _after_one_step(mixed):
  """``f(w)``: the loss after one gradient step on ``p`` at weights ``w``."""
  x, target = _POISON_X, _POISON_CT

  def loss(p, w):
    return jnp.mean((mixed(w, x, p) - target) ** 2)

  def after(w):
    p = _POISON_P - 0.5 * jax.grad(loss)(_POISON_P, w)
    return loss(p, w)

  return after


class PoisonTest(chex.TestCase):
  """An option of weight 0 changes neither values nor derivatives."""

  @parameterized.product(poison=sorted(POISONS), selected_first=(True, False))
  def test_onehot_value_and_gradients_are_the_selected_options(
      self, poison, selected_first):
    fns, w, _ = _poisoned(poison, selected_first)
    mixed = relaxed.relax(fns)
    x, p = _POISON_X, _POISON_P
    if poison not in FINITE_POISONS:  # the poison is really poisonous
      self.assertFalse(np.all(np.isfinite(POISONS[poison](x, p))))

    y, ref = jax.jit(mixed)(w, x, p), jax.jit(_selected)(x, p)
    chex.assert_trees_all_equal(y, ref)
    chex.assert_type(y, jnp.float32)

    grads = jax.jit(jax.grad(_loss(mixed), argnums=(1, 2)))(w, x, p)
    ref_grads = jax.jit(jax.grad(_loss(_selected), argnums=(0, 1)))(x, p)
    chex.assert_tree_all_finite(grads)
    chex.assert_trees_all_close(grads, ref_grads, rtol=1e-6, atol=1e-7)

    # Forward mode too: one tangent through the input and the parameter.
    dx, dp = _x((3, 4), seed=12), _x((4,), seed=13)
    _, tangent = jax.jit(lambda x, p: jax.jvp(
        lambda x, p: mixed(w, x, p), (x, p), (dx, dp)))(x, p)
    _, ref_tangent = jax.jvp(_selected, (x, p), (dx, dp))
    chex.assert_tree_all_finite(tangent)
    chex.assert_trees_all_close(tangent, ref_tangent, rtol=1e-6, atol=1e-7)

  @parameterized.product(poison=sorted(POISONS), selected_first=(True, False))
  def test_weight_derivative_at_a_vertex_is_each_options_finite_value(
      self, poison, selected_first):
    fns, w, j = _poisoned(poison, selected_first)
    x, p = _POISON_X, _POISON_P
    mixed = relaxed.relax(fns)
    values = [np.asarray(fn(x, p), np.float64) for fn in fns]
    # d mix / d w_i = option_i where finite (an overflow has no derivative).
    finite = [np.where(np.isfinite(v), v, 0.0) for v in values]
    if poison in FINITE_POISONS:
      chex.assert_trees_all_equal(finite, values)
    grad_w = jax.jit(jax.grad(_loss(mixed)))(w, x, p)
    np.testing.assert_allclose(
        grad_w, [np.sum(_POISON_CT * v) for v in finite], rtol=_rtol(poison))
    for i, value in enumerate(finite):  # forward mode, one weight at a time
      _, tangent = jax.jvp(lambda w: mixed(w, x, p), (w,), (np.eye(2)[i],))
      np.testing.assert_allclose(tangent, value, rtol=_rtol(poison))
    # The poison's weight derivative is not zeroed (NaN everywhere aside).
    self.assertEqual(np.any(finite[1 - j] != 0), poison != 'nan')

  @parameterized.parameters(sorted(POISONS))
  def test_mix_alone_guards_values_and_weight_derivatives(self, poison):
    # Without `relax`, the options' own inputs are not guarded, but the value,
    # the forward-mode tangent and the weight gradient already are.
    x, p = _POISON_X, _POISON_P
    w = _onehot([0, 1], 0)

    def mixed(w, x):
      return relaxed.mix(w, [_selected(x, p), POISONS[poison](x, p)])

    chex.assert_trees_all_equal(jax.jit(mixed)(w, x), _selected(x, p))
    chex.assert_tree_all_finite(jax.grad(_loss(mixed))(w, x))
    dw, dx = np.asarray([0.5, -0.5], np.float32), _x((3, 4), seed=12)
    _, tangent = jax.jvp(mixed, (w, x), (dw, dx))
    chex.assert_tree_all_finite(tangent)

  @parameterized.parameters(sorted(POISONS))
  def test_function_arguments_are_guarded_but_differentiable(self, poison):
    """A function argument (like ``residual_fn``) closes over a parameter."""

    def selected(f, x):
      return jnp.tanh(f(x))

    def poisoned(f, x):
      # The option differentiates the function (as Gauss–Newton does); that
      # inner derivative must survive the guard.
      _, slope = jax.jvp(f, (x,), (jnp.ones_like(x),))
      return (POISONS[poison](f(x), jnp.ones((4,), jnp.float32))
              + slope.astype(jnp.float16 if 'float16' in poison else x.dtype))

    mixed = relaxed.relax([selected, poisoned])
    x, w = _POISON_X, _onehot([0, 1], 0)

    def loss(p, w=w):
      return jnp.sum(_POISON_CT * mixed(w, lambda z: z * p, x))

    grad = jax.jit(jax.grad(loss))(_POISON_P)
    ref = jax.jit(jax.grad(lambda p: jnp.sum(_POISON_CT * selected(
        lambda z: z * p, x))))(_POISON_P)
    chex.assert_tree_all_finite(grad)
    chex.assert_trees_all_close(grad, ref, rtol=1e-6, atol=1e-7)
    # The unselected option's value (with its inner derivative, the slope p)
    # is still d mix / d w_1.
    value = np.asarray(poisoned(lambda z: z * _POISON_P, x), np.float64)
    value = np.where(np.isfinite(value), value, 0.0)
    grad_w = jax.grad(lambda w: loss(_POISON_P, w))(w)
    np.testing.assert_allclose(grad_w[1], np.sum(_POISON_CT * value),
                               rtol=_rtol(poison))

  @parameterized.parameters(sorted(POISONS))
  def test_non_vertex_weights_are_the_plain_formula(self, poison):
    # Away from the vertices the guards are the identity: the same values as
    # the plain weighted sum and the same derivatives (which check_grads
    # checks against finite differences where the options are smooth).
    fns = [_selected, POISONS[poison]]
    # Negative, away from 0: every option but 'nan' is finite and smooth.
    x = -np.abs(_POISON_X) - 0.125
    p, w = _POISON_P, np.asarray([0.3, 0.7], np.float32)
    mixed = jax.jit(relaxed.relax(fns))

    def plain(w, x, p):
      return w[0] * fns[0](x, p) + w[1].astype(
          fns[1](x, p).dtype) * fns[1](x, p)

    y = mixed(w, x, p)
    chex.assert_trees_all_equal(y, jax.jit(plain)(w, x, p))
    if poison == 'nan':  # an option of nonzero weight is not masked
      self.assertTrue(np.all(np.isnan(y)))
      return
    grads = jax.jit(jax.grad(_loss(mixed), argnums=(0, 1, 2)))(w, x, p)
    ref = jax.jit(jax.grad(_loss(plain), argnums=(0, 1, 2)))(w, x, p)
    chex.assert_tree_all_finite(grads)
    chex.assert_trees_all_close(grads, ref, rtol=1e-6, atol=1e-7)
    if 'float16' not in poison:  # finite differences need float32
      jtu.check_grads(mixed, (w, x, p), order=2, modes=('fwd', 'rev'),
                      atol=1e-2, rtol=1e-2)

  @parameterized.parameters(0, 1)
  def test_gate_derivatives_through_a_training_step(self, j):
    # A gate sensitivity differentiates the training gradients with respect
    # to the weights. At a vertex that mixed derivative is not zero (mixing in
    # a little of an option changes the gradients), so the guards must keep
    # it: compare with finite differences and with the plain formula.
    fns = [_selected, _smooth]
    w = _onehot([0, 1], j)
    after = _after_one_step(relaxed.relax(fns))
    plain = _after_one_step(
        lambda w, x, p: w[0] * fns[0](x, p) + w[1] * fns[1](x, p))
    jtu.check_grads(after, (w,), order=1, modes=('fwd', 'rev'), atol=1e-2,
                    rtol=1e-2)
    chex.assert_trees_all_close(jax.grad(after)(w), jax.grad(plain)(w),
                                rtol=1e-5, atol=1e-6)

  @parameterized.parameters(sorted(POISONS))
  def test_gate_derivatives_through_a_training_step_ignore_a_poison(
      self, poison):
    # Beside a poison of weight 0, moving weight between the other options
    # has the derivative it has without the poison (forward and reverse).
    with_poison = _after_one_step(relaxed.relax(
        [_selected, _smooth, POISONS[poison]]))
    without = _after_one_step(relaxed.relax([_selected, _smooth]))
    w3, w2 = _onehot([0, 1, 2], 0), _onehot([0, 1], 0)
    d3, d2 = np.asarray([-1, 1, 0], np.float32), np.asarray([-1, 1], np.float32)
    _, slope = jax.jvp(with_poison, (w3,), (d3,))
    _, ref = jax.jvp(without, (w2,), (d2,))
    chex.assert_tree_all_finite(slope)
    chex.assert_trees_all_close(slope, ref, rtol=1e-6)
    grad = jax.grad(with_poison)(w3)
    chex.assert_trees_all_close(grad[:2], jax.grad(without)(w2), rtol=1e-6)

  @parameterized.parameters((0, None), (0, 0), (None, 0))
  def test_vmapped_weights_and_inputs_match_each_member_alone(
      self, w_axis, x_axis):
    # A grid vmaps the weights (and the data it carries): each member, poison
    # beside it at weight 0, is the member computed alone.
    mixed = relaxed.relax([_selected, _smooth, POISONS['overflow']])
    ws = np.asarray([[1, 0, 0], [0, 1, 0], [0.3, 0.7, 0]], np.float32)
    xs = np.stack([_POISON_X, -_POISON_X, 2 * _POISON_X])
    w_in = ws if w_axis == 0 else ws[0]
    x_in = xs if x_axis == 0 else xs[0]

    def value_and_grads(w, x, p):
      return mixed(w, x, p), jax.grad(_loss(mixed), argnums=(1, 2))(w, x, p)

    batched = jax.jit(jax.vmap(value_and_grads,
                               in_axes=(w_axis, x_axis, None)))(
                                   w_in, x_in, _POISON_P)
    chex.assert_tree_all_finite(batched)
    for m in range(3):
      alone = jax.jit(value_and_grads)(ws[m] if w_axis == 0 else ws[0],
                                       xs[m] if x_axis == 0 else xs[0],
                                       _POISON_P)
      chex.assert_trees_all_close(jax.tree.map(lambda a: a[m], batched), alone,
                                  rtol=1e-6, atol=1e-7)


def _poison_norm() -> components.Norm:
  """A norm that is NaN forward, in its state, and in its derivatives."""

  def init(features):
    return {'scale': jnp.ones((features,))}, {'total': jnp.zeros(())}

  def apply(params, state, x, train, key=None):
    del train, key
    y = jnp.sqrt(x - x) * params['scale'] + jnp.log(-jnp.abs(x) - 1.0)
    return y, {'total': state['total'] + jnp.sum(y)}

  return components.Norm(init, apply)


def _poison_optimizer(hp):
  """Updates ``0 / 0``, through a hyperparameter it reads."""

  def update(grads, state, params=None, **extra_args):
    del params, extra_args
    return jax.tree.map(
        lambda g: jnp.sqrt(g - g) / (g - g) * hp['learning_rate'], grads), state

  return optax.GradientTransformation(lambda params: optax.EmptyState(),
                                      update)


def _train_norm_layer(norm, tx, steps=3):
  """A few steps of ``y ~ norm(x @ w)``: returns the parameters and state."""
  x, y = _x((8, 5), seed=20), _x((8, 4), seed=21)
  params, state = norm.init(4)
  params = {'w': _x((5, 4), seed=22) / 3, 'norm': params}

  def loss(params, state, key):
    h, state = norm.apply(params['norm'], state, x @ params['w'], True, key)
    return jnp.mean((h - y) ** 2), state

  @jax.jit
  def step(params, state, opt_state, key):
    grads, state = jax.grad(loss, has_aux=True)(params, state, key)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), state, opt_state

  opt_state = tx.init(params)
  for t in range(steps):  # a key per step, for a stochastic norm
    params, state, opt_state = step(params, state, opt_state,
                                    jax.random.fold_in(jax.random.key(0), t))
  return params, state


class PoisonedComponentTest(parameterized.TestCase):

  @parameterized.parameters(('layer', 'adam'), ('batch', 'momentum'),
                            ('noisy_batch', 'sgd'))
  def test_a_poisoned_option_of_weight_0_changes_no_trained_parameter(
      self, norm_name, opt_name):
    poisons = {'poison': _poison_norm()}
    with mock.patch.dict(components.NORMS, poisons), mock.patch.dict(
        components.OPTIMIZERS, {'poison': _poison_optimizer}):
      names = ('poison', norm_name)
      init, apply = components.relaxed_norm(names)
      norm = components.Norm(init, lambda p, s, x, train, key: apply(
          p, s, x, _onehot(names, norm_name), train, key))
      # The learning rate is traced, as in a grid, so the guard sees it.
      hp = {**HP, 'learning_rate': jnp.asarray(HP['learning_rate'])}
      tx = components.relaxed_optimizer(
          ('poison', opt_name), _onehot(('poison', opt_name), opt_name), hp)
      params, state = _train_norm_layer(norm, tx)
    ref_params, ref_state = _train_norm_layer(
        components.NORMS[norm_name], _opt(opt_name, hp))

    # Two programs (the mixture's and the option's alone) may round the
    # last bit differently after a few steps, poison or not (measured: up to
    # 1.2e-7 with a harmless second option, before and after the guards).
    close = functools.partial(chex.assert_trees_all_close, rtol=1e-5,
                              atol=1e-6)
    chex.assert_tree_all_finite((params, state[norm_name]))
    # The poison fired (its own state is NaN) but reached nothing else.
    self.assertTrue(np.isnan(state['poison']['total']))
    close(params['w'], ref_params['w'])
    close(params['norm'][norm_name], ref_params['norm'])
    close(state[norm_name], ref_state)
    # The poison's own parameters got zero gradients: finite, unchanged.
    chex.assert_trees_all_equal(params['norm']['poison'],
                                {'scale': np.ones(4, np.float32)})
    self.assertFalse(np.allclose(params['w'], _x((5, 4), seed=22) / 3))


class ErrorTest(parameterized.TestCase):

  @parameterized.parameters(sorted(AXES))
  def test_get_unknown_name_lists_accepted(self, axis):
    registry, get, _ = AXES[axis]
    with self.assertRaises(ValueError) as cm:
      get('bogus')
    msg = str(cm.exception)
    self.assertIn("'bogus'", msg)
    self.assertIn(axis, msg)
    for name in registry:
      self.assertIn(name, msg)

  @parameterized.parameters(sorted(AXES))
  def test_relaxed_unknown_name_lists_accepted(self, axis):
    registry, _, make = AXES[axis]
    bad = sorted(registry)[0] + 'd'
    with self.assertRaises(ValueError) as cm:
      make([sorted(registry)[-1], bad])
    msg = str(cm.exception)
    self.assertIn(repr(bad), msg)
    for name in registry:
      self.assertIn(name, msg)

  def test_named_examples(self):
    with self.assertRaisesRegex(ValueError, r"'bogus'.*batch.*layer"):
      components.norms.AXIS.get('bogus')
    with self.assertRaisesRegex(ValueError, r"'sgdd'.*adam.*sgd"):
      components.relaxed_optimizer(['sgdd'], np.ones((1,)), HP)

  @parameterized.parameters(sorted(AXES))
  def test_unhashable_name_is_a_value_error(self, axis):
    _, get, _ = AXES[axis]
    with self.assertRaises(ValueError):
      get(['x'])

  @parameterized.parameters(sorted(AXES))
  def test_empty_options(self, axis):
    registry, _, make = AXES[axis]
    with self.assertRaisesRegex(ValueError, 'empty') as cm:
      make([])
    for name in registry:
      self.assertIn(name, str(cm.exception))

  @parameterized.parameters(sorted(AXES))
  def test_duplicate_options(self, axis):
    registry, _, make = AXES[axis]
    first, second = sorted(registry)[:2]
    with self.assertRaisesRegex(ValueError, f'twice.*{first}'):
      make([first, second, first])


def test_an_optimizer_that_reads_no_knob_or_returns_none_is_named(monkeypatch):
  # They failed inside optax's tracing with KeyError: 'beta2' or
  # AttributeError: 'NoneType' object has no attribute 'init'.
  monkeypatch.setitem(components.OPTIMIZERS, 'user_lion', lambda hp: (
      optax.lion(hp['learning_rate'], b2=hp['beta2'])))
  monkeypatch.setitem(components.OPTIMIZERS, 'user_none', lambda hp: None)
  hp = {'learning_rate': 0.1, 'momentum': 0.9, 'weight_decay': 0.0}
  weights = jnp.ones(1)
  with pytest.raises(KeyError, match=re.escape(
      "optimizer 'user_lion' reads hp['beta2'], which is no knob; hp holds: "
      'b1, b2, decay, eps, learning_rate, momentum, weight_decay')):
    optimizers.relaxed_optimizer(('user_lion',), weights, hp)
  with pytest.raises(TypeError, match=re.escape(
      "optimizer 'user_none' returned None; accepted: an "
      'optax.GradientTransformation (init, update).')):
    optimizers.relaxed_optimizer(('user_none',), weights, hp)
  # hp is still a pytree of its knobs (an option may map over it).
  monkeypatch.setitem(components.OPTIMIZERS, 'user_mapped', lambda hp: (
      optax.sgd(jax.tree.map(lambda v: 2.0 * v, hp)['learning_rate'])))
  tx = optimizers.relaxed_optimizer(('user_mapped',), weights, hp)
  params = {'w': jnp.ones(3)}
  updates, _ = tx.update({'w': jnp.ones(3)}, tx.init(params), params)
  chex.assert_trees_all_close(updates, {'w': jnp.full(3, -0.2)})



def test_pick_refuses_weights_that_are_not_one_vector():
  # [3, 3] weights have a last axis of 3 rows, but argmax of them would
  # index the flattened matrix (a row past the table's end).
  table = {'a': np.arange(6.0).reshape(3, 2)}
  with pytest.raises(ValueError, match=re.escape(
      'pick got weights of shape (3, 3) for a table of [3] rows')):
    relaxed.pick(np.eye(3), table)


def test_switching_nests_and_restores_the_outer_axes():
  assert not relaxed.switched('norm')
  with relaxed.switching(['norm']):
    with relaxed.switching(['placement']):
      assert relaxed.switched('norm') and relaxed.switched('placement')
    assert relaxed.switched('norm') and not relaxed.switched('placement')
  assert not relaxed.switched('norm')

if __name__ == '__main__':
  absltest.main()

