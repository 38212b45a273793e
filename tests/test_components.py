"""Tests of rahimi_jax.components: registries, relaxed mixtures, `mix`."""


from absl.testing import absltest
from absl.testing import parameterized
import chex
import jax
from jax import test_util as jtu
import jax.numpy as jnp
import numpy as np

from rahimi_jax import components
from rahimi_jax.components import relaxed

NORM_NAMES = sorted(components.NORMS)
INIT_NAMES = sorted(components.INITS)
ACT_NAMES = sorted(components.ACTIVATIONS)
OPT_NAMES = sorted(components.OPTIMIZERS)

# Each axis: its registry, the `get_` lookup and a constructor of the relaxed
# mixture from a list of names (the optimizer also needs weights and hp).
AXES = {
    'norm': (components.NORMS, components.get_norm, components.relaxed_norm),
    'init': (components.INITS, components.get_init, components.relaxed_init),
    'activation': (components.ACTIVATIONS, components.get_activation,
                   components.relaxed_activation),
    'optimizer': (
        components.OPTIMIZERS, components.get_optimizer,
        lambda names: components.relaxed_optimizer(
            names, jnp.ones((len(tuple(names)),)) / max(len(tuple(names)), 1),
            components.Hyperparams())),
}

HP = components.Hyperparams(learning_rate=0.1, momentum=0.8, weight_decay=0.05)


def _onehot(names, name):
  return jnp.asarray([float(n == name) for n in names], jnp.float32)


def _x(shape=(6, 5), seed=0):
  """Inputs with per-feature offsets and scales (so norms have work to do)."""
  rng = np.random.default_rng(seed)
  x = rng.standard_normal(shape) * rng.uniform(0.5, 3.0, shape[-1])
  return jnp.asarray(x + rng.uniform(-2.0, 2.0, shape[-1]), jnp.float32)


def _pairs(names):
  """Each name with the next one (cyclically): every option is in a pair."""
  return [(f'{a}_{b}', a, b) for a, b in zip(names, names[1:] + names[:1])]


def _opt_params():
  return {'w': jnp.asarray(np.arange(6.0).reshape(2, 3) / 7 - 0.3, jnp.float32),
          'b': jnp.asarray([0.5, -1.0, 2.0], jnp.float32)}


def _opt_grads(step):
  rng = np.random.default_rng(100 + step)
  return jax.tree.map(
      lambda p: jnp.asarray(rng.standard_normal(p.shape), jnp.float32),
      _opt_params())


# Relaxed mixtures over every registry entry, built once at module level so a
# jitted variant compiles once for all one-hot weights (the weights are traced).
_NORM_INIT, _NORM_APPLY = components.relaxed_norm(NORM_NAMES)
_INIT = components.relaxed_init(INIT_NAMES)
_ACT = components.relaxed_activation(ACT_NAMES)


# Every plain option, computed in one function per axis (one compiled program
# under jit serves every parametrized test).


def _plain_norms(params, state, x, train):
  return {n: components.NORMS[n].apply(params[n], state[n], x, train)
          for n in NORM_NAMES}


def _plain_inits(key, shape, dtype):
  return {n: components.INITS[n](key, shape, dtype) for n in INIT_NAMES}


def _plain_acts(x):
  return {n: components.ACTIVATIONS[n](x) for n in ACT_NAMES}


def _relaxed_opt_update(weights, grads, state, params):
  tx = components.relaxed_optimizer(OPT_NAMES, weights, HP)
  return tx.update(grads, state, params)


def _plain_opt_updates(grads, states, params):
  return {n: components.OPTIMIZERS[n](HP).update(grads, states[n], params[n])
          for n in OPT_NAMES}


@jax.jit
@chex.assert_max_traces(n=1)
def _first_update_at_lr(weights, lr, params, grads):
  """Builds the optimizer with a traced learning rate inside the program."""
  tx = components.relaxed_optimizer(
      OPT_NAMES, weights, components.Hyperparams(learning_rate=lr))
  updates, _ = tx.update(grads, tx.init(params), params)
  return updates


class NormTest(chex.TestCase):

  @chex.variants(with_jit=True, without_jit=True)
  @parameterized.product(name=NORM_NAMES, train=(True, False))
  def test_onehot_mixture_is_exactly_the_option(self, name, train):
    params, state = _NORM_INIT(5)
    # Make every option's parameters and state non-trivial.
    leaves, treedef = jax.tree.flatten((params, state))
    leaves = [l + 0.1 * (i + 1) for i, l in enumerate(leaves)]
    params, state = jax.tree.unflatten(treedef, leaves)
    x = _x()
    w = _onehot(NORM_NAMES, name)

    relaxed_fn = self.variant(_NORM_APPLY, static_argnums=4)
    plain_fn = self.variant(_plain_norms, static_argnums=3)
    y, new_state = relaxed_fn(params, state, x, w, train)
    y_ref, state_ref = plain_fn(params, state, x, train)[name]

    chex.assert_trees_all_equal(y, y_ref)
    chex.assert_trees_all_equal(new_state[name], state_ref)
    chex.assert_shape(y, x.shape)

  @parameterized.named_parameters(*_pairs(NORM_NAMES))
  def test_non_vertex_weights_interpolate(self, a, b):
    init, apply = components.relaxed_norm([a, b])
    params, state = init(5)
    x = _x()
    y, new_state = apply(params, state, x, jnp.asarray([0.3, 0.7]), True)
    ya, sa = components.NORMS[a].apply(params[a], state[a], x, True)
    yb, sb = components.NORMS[b].apply(params[b], state[b], x, True)
    chex.assert_trees_all_close(y, 0.3 * ya + 0.7 * yb, rtol=1e-5, atol=1e-6)
    # Each option keeps its own state, whatever the weights.
    chex.assert_trees_all_close(new_state, {a: sa, b: sb}, rtol=1e-6)

  @parameterized.parameters(NORM_NAMES)
  def test_init_matches_the_plain_option(self, name):
    init, _ = components.relaxed_norm(NORM_NAMES)
    params, state = init(4)
    chex.assert_trees_all_equal((params[name], state[name]),
                                components.NORMS[name].init(4))

  @chex.variants(with_jit=True, without_jit=True)
  def test_batch_norm_train_normalizes_features_and_updates_running_stats(self):
    norm = components.get_norm('batch')
    params, state = norm.init(5)
    x = _x((16, 5))
    y, new_state = self.variant(
        lambda p, s, x: norm.apply(p, s, x, True))(params, state, x)
    chex.assert_trees_all_close(jnp.mean(y, axis=0), jnp.zeros(5), atol=1e-5)
    chex.assert_trees_all_close(jnp.var(y, axis=0), jnp.ones(5), atol=1e-4)
    x64 = np.asarray(x, np.float64)
    chex.assert_trees_all_close(
        new_state,
        {'mean': 0.9 * 0.0 + 0.1 * x64.mean(0),
         'var': 0.9 * 1.0 + 0.1 * x64.var(0)}, rtol=1e-5, atol=1e-6)
    # A second step moves the running averages by momentum 0.9 again.
    _, state2 = norm.apply(params, new_state, 2.0 * x, True)
    chex.assert_trees_all_close(
        state2,
        {'mean': 0.9 * new_state['mean'] + 0.1 * 2.0 * x64.mean(0),
         'var': 0.9 * new_state['var'] + 0.1 * 4.0 * x64.var(0)},
        rtol=1e-5, atol=1e-6)

  @chex.variants(with_jit=True, without_jit=True)
  def test_batch_norm_eval_uses_running_stats(self):
    norm = components.get_norm('batch')
    params, _ = norm.init(5)
    # Non-trivial learned parameters (the scale, and a bias if there is one).
    params = jax.tree.map(lambda p: p + jnp.linspace(0.5, 1.5, 5), params)
    state = {'mean': jnp.linspace(-2.0, 2.0, 5), 'var': jnp.arange(1.0, 6.0)}
    x = _x()
    y, new_state = self.variant(
        lambda p, s, x: norm.apply(p, s, x, False))(params, state, x)
    expected = ((x - state['mean']) / jnp.sqrt(state['var'] + 1e-5)
                * params['scale'] + params.get('bias', 0.0))
    chex.assert_trees_all_close(y, expected, rtol=1e-5, atol=1e-5)
    chex.assert_trees_all_equal(new_state, state)
    # Eval output of one row does not depend on the other rows.
    y0, _ = norm.apply(params, state, x[:1], False)
    chex.assert_trees_all_close(y0, y[:1], rtol=1e-6)

  @chex.variants(with_jit=True, without_jit=True)
  @parameterized.parameters('layer', 'rms')
  def test_row_norms_normalize_each_row(self, name):
    norm = components.get_norm(name)
    params, state = norm.init(7)
    x = _x((4, 7))
    y, new_state = self.variant(
        lambda p, s, x: norm.apply(p, s, x, True))(params, state, x)
    chex.assert_trees_all_equal(new_state, state)
    if name == 'layer':
      chex.assert_trees_all_close(jnp.mean(y, -1), jnp.zeros(4), atol=1e-5)
      chex.assert_trees_all_close(jnp.var(y, -1), jnp.ones(4), atol=1e-4)
    else:
      chex.assert_trees_all_close(jnp.mean(y * y, -1), jnp.ones(4), atol=1e-4)
      # RMS norm does not center: the row means survive (rescaled).
      rms = jnp.sqrt(jnp.mean(x * x, -1))
      chex.assert_trees_all_close(jnp.mean(y, -1), jnp.mean(x, -1) / rms,
                                  rtol=1e-4)
    # Rows are independent: normalizing one row alone gives the same output.
    y1, _ = norm.apply(params, state, x[1:2], False)
    chex.assert_trees_all_close(y1, y[1:2], rtol=1e-6, atol=1e-6)

  def test_none_is_the_identity(self):
    norm = components.get_norm('none')
    params, state = norm.init(3)
    x = _x((2, 3))
    y, new_state = norm.apply(params, state, x, True)
    chex.assert_trees_all_equal((y, new_state), (x, state))


class InitTest(chex.TestCase):

  @chex.variants(with_jit=True, without_jit=True)
  @parameterized.parameters(INIT_NAMES)
  def test_onehot_mixture_is_exactly_the_option(self, name):
    shape = (5, 7)
    relaxed_fn = self.variant(_INIT, static_argnums=(2, 3))
    plain_fn = self.variant(_plain_inits, static_argnums=(1, 2))
    w = relaxed_fn(_onehot(INIT_NAMES, name), jax.random.key(3), shape,
                   jnp.float32)
    ref = plain_fn(jax.random.key(3), shape, jnp.float32)[name]
    chex.assert_shape(w, shape)
    chex.assert_trees_all_equal(w, ref)
    # The key alone determines the draw.
    chex.assert_trees_all_equal(
        ref, plain_fn(jax.random.key(3), shape, jnp.float32)[name])
    self.assertFalse(np.allclose(
        ref, plain_fn(jax.random.key(4), shape, jnp.float32)[name]))

  @parameterized.named_parameters(*_pairs(INIT_NAMES))
  def test_non_vertex_weights_interpolate(self, a, b):
    init = components.relaxed_init([a, b])
    key = jax.random.key(5)
    w = init(jnp.asarray([0.3, 0.7]), key, (5, 7), jnp.float32)
    expected = (0.3 * components.INITS[a](key, (5, 7), jnp.float32)
                + 0.7 * components.INITS[b](key, (5, 7), jnp.float32))
    chex.assert_trees_all_close(w, expected, rtol=1e-5, atol=1e-6)


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
    act = components.relaxed_activation([a, b])
    x = _x()
    y = act(jnp.asarray([0.3, 0.7]), x)
    expected = (0.3 * components.ACTIVATIONS[a](x)
                + 0.7 * components.ACTIVATIONS[b](x))
    chex.assert_trees_all_close(y, expected, rtol=1e-5, atol=1e-6)


class OptimizerTest(chex.TestCase):

  @chex.variants(with_jit=True, without_jit=True)
  @parameterized.parameters(OPT_NAMES)
  def test_onehot_mixture_is_exactly_the_option(self, name):
    w = _onehot(OPT_NAMES, name)
    relaxed_update = self.variant(_relaxed_opt_update)
    plain_updates = self.variant(_plain_opt_updates)
    params_r = _opt_params()
    params_p = {n: _opt_params() for n in OPT_NAMES}  # each option alone
    state_r = components.relaxed_optimizer(OPT_NAMES, w, HP).init(params_r)
    state_p = {n: components.OPTIMIZERS[n](HP).init(_opt_params())
               for n in OPT_NAMES}
    for step in range(3):
      grads = _opt_grads(step)
      upd_r, state_r = relaxed_update(w, grads, state_r, params_r)
      outs = plain_updates(grads, state_p, params_p)
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
    tx = components.relaxed_optimizer([a, b], jnp.asarray([0.3, 0.7]), HP)
    ta, tb = components.OPTIMIZERS[a](HP), components.OPTIMIZERS[b](HP)
    params = _opt_params()
    state, sa, sb = tx.init(params), ta.init(params), tb.init(params)
    for step in range(3):
      grads = _opt_grads(step)
      updates, state = tx.update(grads, state, params)
      ua, sa = ta.update(grads, sa, params)
      ub, sb = tb.update(grads, sb, params)
      expected = jax.tree.map(lambda u, v: 0.3 * u + 0.7 * v, ua, ub)
      chex.assert_trees_all_close(updates, expected, rtol=1e-5, atol=1e-7)
      # Every option sees the same gradients and keeps its own state.
      chex.assert_trees_all_close(state, (sa, sb), rtol=1e-6)

  @parameterized.parameters(OPT_NAMES)
  def test_traced_learning_rate_compiles_once(self, name):
    # One program for every learning rate (and, the weights being traced too,
    # every option): `_first_update_at_lr` may be traced once per test run.
    chex.clear_trace_counter()
    w = _onehot(OPT_NAMES, name)
    params, grads = _opt_params(), _opt_grads(0)
    u1 = _first_update_at_lr(w, jnp.float32(0.1), params, grads)
    u2 = _first_update_at_lr(w, jnp.float32(0.01), params, grads)
    self.assertFalse(np.allclose(u1['w'], u2['w']))
    # Every option's first update is linear in the learning rate.
    chex.assert_trees_all_close(u2, jax.tree.map(lambda u: 0.1 * u, u1),
                                rtol=1e-5, atol=1e-8)
    # And it is the option's own first update at that rate.
    tx = components.get_optimizer(name)(components.Hyperparams(0.01))
    ref, _ = tx.update(grads, tx.init(params), params)
    chex.assert_trees_all_close(u2, ref, rtol=1e-6, atol=1e-8)

  @parameterized.parameters(OPT_NAMES)
  def test_hyperparams_are_read(self, name):
    """Different hyperparameters change an option's trajectory (or not, by design)."""
    params = _opt_params()

    def run(hp):
      tx = components.OPTIMIZERS[name](hp)
      state, p = tx.init(params), params
      for step in range(3):
        u, state = tx.update(_opt_grads(step), state, p)
        p = jax.tree.map(jnp.add, p, u)
      return p

    base = run(HP)
    for field, uses in (('momentum', ('momentum', 'nesterov')),
                        ('weight_decay', ('adamw',))):
      moved = run(HP._replace(**{field: getattr(HP, field) / 2}))
      if name in uses:
        self.assertFalse(np.allclose(moved['w'], base['w']),
                         f'{name} ignores {field}')
      else:
        chex.assert_trees_all_equal(moved, base)


class MixTest(chex.TestCase):

  @chex.variants(with_jit=True, without_jit=True)
  def test_mix_is_the_weighted_sum_of_pytrees(self):
    options = [{'a': jnp.full((2,), float(i)), 'b': jnp.arange(3.0) * i}
               for i in (1, 2, 3)]
    out = self.variant(relaxed.mix)(jnp.asarray([0.5, 0.25, 0.25]), options)
    chex.assert_trees_all_close(
        out, {'a': jnp.full((2,), 1.75), 'b': jnp.arange(3.0) * 1.75})

  def test_mix_grad_wrt_weights_is_the_options(self):
    options = [_x((2, 3), seed=s) for s in range(3)]
    f = lambda w: relaxed.mix(w, options)
    w = jnp.asarray([0.2, 0.5, 0.3])
    jtu.check_grads(f, (w,), order=1, modes=('fwd', 'rev'))
    # d mix / d w_i = option_i (forward mode, one basis direction at a time).
    for i, option in enumerate(options):
      _, tangent = jax.jvp(f, (w,), (jnp.eye(3)[i],))
      chex.assert_trees_all_close(tangent, option)
    # Reverse mode: the cotangent's inner product with each option.
    ct = _x((2, 3), seed=9)
    (grad_w,) = jax.vjp(f, w)[1](ct)
    chex.assert_trees_all_close(
        grad_w, jnp.stack([jnp.sum(ct * o) for o in options]), rtol=1e-5)

  def test_mix_grad_of_a_scalar_loss(self):
    options = [_x((4,), seed=s) for s in range(4)]
    loss = lambda w: jnp.sum(jnp.sin(relaxed.mix(w, options)))
    w = jnp.asarray([0.1, 0.2, 0.3, 0.4])
    jtu.check_grads(loss, (w,), order=1, modes=('fwd', 'rev'))
    # Chain rule: d loss / d w_i = <cos(mix), option_i>.
    y = relaxed.mix(w, options)
    expected = jnp.stack([jnp.sum(jnp.cos(y) * o) for o in options])
    chex.assert_trees_all_close(jax.grad(loss)(w), expected, rtol=1e-5)

  def test_mix_rejects_bad_input(self):
    with self.assertRaisesRegex(ValueError, 'at least one'):
      relaxed.mix(jnp.ones((0,)), [])
    with self.assertRaisesRegex(ValueError, r'\(2,\).*3 options'):
      relaxed.mix(jnp.ones((2,)), [jnp.ones(3)] * 3)


class ErrorTest(parameterized.TestCase):

  @parameterized.parameters(sorted(AXES))
  def test_get_unknown_name_lists_accepted(self, axis):
    registry, get, _ = AXES[axis]
    with self.assertRaises(ValueError) as cm:
      get('bogus')
    msg = str(cm.exception)
    self.assertIn('bogus', msg)
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
      components.get_norm('bogus')
    with self.assertRaisesRegex(ValueError, r"'sgdd'.*adam.*sgd"):
      components.relaxed_optimizer(['sgdd'], jnp.ones((1,)), HP)

  @parameterized.parameters(sorted(AXES))
  def test_unhashable_name_is_a_value_error(self, axis):
    _, get, _ = AXES[axis]
    with self.assertRaises(ValueError):
      get(['x'])

  @parameterized.parameters(sorted(AXES))
  def test_empty_options(self, axis):
    _, _, make = AXES[axis]
    with self.assertRaisesRegex(ValueError, 'empty'):
      make([])

  @parameterized.parameters(sorted(AXES))
  def test_duplicate_options(self, axis):
    registry, _, make = AXES[axis]
    first, second = sorted(registry)[:2]
    with self.assertRaisesRegex(ValueError, f'twice.*{first}'):
      make([first, second, first])


if __name__ == '__main__':
  absltest.main()
