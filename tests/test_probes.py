"""Santurkar et al.'s probes on known answers and a finite-difference reference."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rahimi_jax import diagnostics

LR = 0.1


def _sgd(params, grads):
  return jax.tree.map(lambda p, g: p - LR * g, params, grads)


def _quadratic():
  rng = np.random.default_rng(0)
  q, _ = np.linalg.qr(rng.normal(size=(5, 5)))
  eigenvalues = np.array([4.0, 2.0, 1.0, 0.5, 0.1])
  return (q * eigenvalues) @ q.T, q, eigenvalues


def test_landscape_of_a_quadratic_is_its_curvature(x64):
  a, q, eigenvalues = _quadratic()

  def loss(p):
    return 0.5 * p['x'] @ jnp.asarray(a) @ p['x']

  steps = np.array([0.05, 0.1, 0.2, 0.4])
  # Along the top eigenvector the smoothness is the largest eigenvalue.
  top = diagnostics.landscape(loss, {'x': jnp.asarray(3.0 * q[:, 0])},
                              jnp.asarray(steps))
  chex.assert_trees_all_close(top['beta_smoothness'], eigenvalues[0],
                              rtol=1e-12)
  # Anywhere else: ||A g|| / ||g||, the change of the gradient is eta A g
  # and the loss is the quadratic at p - eta g (numpy, by hand).
  p = np.random.default_rng(1).normal(size=5)
  g = a @ p
  values = [0.5 * (p - s * g) @ a @ (p - s * g) for s in steps]
  want = {'beta_smoothness': np.linalg.norm(a @ g) / np.linalg.norm(g),
          'grad_change': steps.max() * np.linalg.norm(a @ g),
          'loss_range': max(values) - min(values)}
  got = diagnostics.landscape(loss, {'x': jnp.asarray(p)}, jnp.asarray(steps))
  chex.assert_trees_all_close(got, want, rtol=1e-10)
  given = diagnostics.landscape(loss, {'x': jnp.asarray(p)},
                                jnp.asarray(steps), {'x': jnp.asarray(g)})
  chex.assert_trees_all_close(given, want, rtol=1e-10)


def test_landscape_off_a_quadratic_takes_the_maxima_over_steps(x64):
  """On ``sum(sin(c x))`` the loss, the gradient change and the ratio peak
  at different step sizes, none at the last (a quadratic's change and ratio
  are monotone and constant in eta, so it cannot tell a max from the last
  value or a mean). The logged probe moves 0.5, 1, 2 and 4 learning rates
  along the gradient of the probe batch's loss with this step's key
  (numpy, by hand, from the analytic gradient)."""
  c = np.array([1.0, 2.0, 0.5, 1.5])
  p = np.array([0.3, 1.0, -0.5, 2.0])
  lr = 0.6
  keys = (jax.random.key(0), jax.random.key(1))
  noise = 0.1 * np.asarray(jax.random.normal(keys[0], (4,), jnp.float64))
  np_grad = lambda x: c * np.cos(c * (x + noise))
  g = np_grad(p)
  steps = lr * np.array([0.5, 1.0, 2.0, 4.0])
  values = [np.sum(np.sin(c * (p - s * g + noise))) for s in steps]
  changes = [np.linalg.norm(g - np_grad(p - s * g)) for s in steps]
  ratios = [d / (s * np.linalg.norm(g)) for d, s in zip(changes, steps)]
  # Not vacuous: the extremes sit inside the range of steps.
  assert np.argmin(values) == 2 and np.argmax(changes) == 2
  assert np.max(ratios) > 1.2 * np.mean(ratios)
  want = {'loss_range': max(values) - min(values),
          'grad_change': max(changes), 'beta_smoothness': max(ratios)}

  def loss(params, key):
    shift = 0.1 * jax.random.normal(key, (4,), jnp.float64)
    return jnp.sum(jnp.sin(jnp.asarray(c) * (params['x'] + shift)))

  got = diagnostics.landscape(lambda q: loss(q, keys[0]),
                              {'x': jnp.asarray(p)}, jnp.asarray(steps))
  chex.assert_trees_all_close(got, want, rtol=1e-10)
  assert diagnostics.probes.STEP_MULTIPLIERS == (0.5, 1.0, 2.0, 4.0)
  probe = diagnostics.Probe(
      params={'x': jnp.asarray(p)}, key=jax.random.key(2), train_loss=None,
      loss=loss, keys=keys,
      update=lambda q, gr: jax.tree.map(lambda a, b: a - lr * b, q, gr),
      depth=None, preactivations=None, learning_rate=jnp.asarray(lr))
  chex.assert_trees_all_close(diagnostics.LOGGED['landscape'](probe), want,
                              rtol=1e-10)


def test_preactivation_drift_redraws_the_noise_with_the_next_key(x64):
  """The logged drift compares the pre-activations at ``params`` with this
  step's key to those after the optimizer's step with the next step's key
  (the module's "Keys"), by hand in numpy."""
  rng = np.random.default_rng(0)
  x = rng.normal(size=(8, 3))
  w = rng.normal(size=(3, 2))
  keys = (jax.random.key(0), jax.random.key(1))
  noise = [np.asarray(jax.random.normal(k, (8, 2), jnp.float64)) for k in keys]

  def preactivations(params, key):
    return [jnp.asarray(x) @ params['w'] + jax.random.normal(key, (8, 2),
                                                              jnp.float64)]

  def loss(params, key):
    return 0.5 * jnp.sum(preactivations(params, key)[0] ** 2)

  g = x.T @ (x @ w + noise[0])  # the gradient with this step's noise
  stepped = w - LR * g
  before, after = x @ w + noise[0], x @ stepped + noise[1]
  want_mean = np.sqrt(np.mean((after.mean(0) - before.mean(0)) ** 2))
  want_var = np.sqrt(np.mean((after.var(0) - before.var(0)) ** 2))
  probe = diagnostics.Probe(
      params={'w': jnp.asarray(w)}, key=jax.random.key(2), train_loss=None,
      loss=loss, keys=keys, update=_sgd, depth=None,
      preactivations=preactivations, learning_rate=jnp.asarray(LR))
  out = diagnostics.LOGGED['preactivation_drift'](probe)
  chex.assert_trees_all_close(
      (out['preact_mean_drift_layer0'], out['preact_var_drift_layer0']),
      (want_mean, want_var), rtol=1e-10)


def _deep_linear(seed=0, widths=(4, 5, 3, 2), n=16):
  rng = np.random.default_rng(seed)
  x, y = rng.normal(size=(n, widths[0])), rng.normal(size=(n, widths[-1]))
  params = [rng.normal(size=(i, o)) / np.sqrt(i)
            for i, o in zip(widths[:-1], widths[1:])]

  def np_loss(ws):
    out = x
    for w in ws:
      out = out @ w
    return 0.5 * np.mean(np.sum((out - y)**2, -1))

  def loss(ws, key=None):
    del key
    out = jnp.asarray(x)
    for w in ws:
      out = out @ w
    return 0.5 * jnp.mean(jnp.sum((out - y)**2, -1))

  return params, np_loss, loss


def _fd_grad(f, ws, h=1e-6):
  """Central finite differences of ``f(list of arrays)``, in numpy."""
  grads = []
  for i, w in enumerate(ws):
    g = np.zeros_like(w)
    for j in np.ndindex(w.shape):
      plus = [v.copy() for v in ws]
      minus = [v.copy() for v in ws]
      plus[i][j] += h
      minus[i][j] -= h
      g[j] = (f(plus) - f(minus)) / (2 * h)
    grads.append(g)
  return grads


def _fd_covariate_shift(ws, np_loss):
  """Santurkar et al.'s Definition 2.1 by hand: layer i's gradient before and
  after the layers below it took their SGD step. ``(l2, cos, stepped)``."""
  grads = _fd_grad(np_loss, ws)
  stepped = [w - LR * g for w, g in zip(ws, grads)]
  want_l2, want_cos = [], []
  for i in range(len(ws)):
    moved = stepped[:i] + ws[i:]
    after = _fd_grad(np_loss, moved)[i]
    want_l2.append(np.linalg.norm(grads[i] - after))
    want_cos.append(np.sum(grads[i] * after) /
                    (np.linalg.norm(grads[i]) * np.linalg.norm(after)))
  return np.asarray(want_l2), np.asarray(want_cos), stepped


def test_covariate_shift_matches_finite_differences(x64):
  ws, np_loss, loss = _deep_linear()
  want_l2, want_cos, stepped = _fd_covariate_shift(ws, np_loss)
  keys = (jax.random.key(0), jax.random.key(1))
  params = [jnp.asarray(w) for w in ws]
  l2, cos = diagnostics.covariate_shift(loss, params, _sgd, depth=[0, 1, 2],
                                        keys=keys)
  chex.assert_trees_all_close(l2, want_l2, rtol=1e-6, atol=1e-9)
  chex.assert_trees_all_close(cos, want_cos, rtol=1e-6)
  assert l2[0] == 0 and np.all(l2[1:] > 1e-3)  # nothing below layer 0
  # The step given (as a log's probes share it) instead of taken inside.
  given = diagnostics.covariate_shift(
      loss, params, _sgd, depth=[0, 1, 2], keys=keys,
      stepped=[jnp.asarray(w) for w in stepped])
  chex.assert_trees_all_close(given, (want_l2, want_cos), rtol=1e-6,
                              atol=1e-9)


def test_a_log_traces_the_step_its_probes_simulate_once(x64):
  ws, np_loss, loss = _deep_linear()
  traced = []

  def counted(p, key):
    traced.append(key)
    return loss(p, key)

  probe = diagnostics.Probe(
      params=[jnp.asarray(w) for w in ws], key=jax.random.key(2),
      train_loss=loss, loss=counted,
      keys=(jax.random.key(0), jax.random.key(1)), update=_sgd,
      depth=[0, 1, 2], preactivations=lambda p, key: [p[0]],
      learning_rate=jnp.asarray(LR))
  out = {}
  for name in ('covariate_shift', 'landscape', 'preactivation_drift'):
    out |= diagnostics.LOGGED[name](probe)
  # The shared gradient, covariate shift's scanned one and the landscape's
  # vmapped one (each probe taking its own step traced five).
  assert len(traced) == 3
  want_l2, want_cos, stepped = _fd_covariate_shift(ws, np_loss)
  chex.assert_trees_all_close(
      [out[f'ics_l2_layer{i}'] for i in range(3)], list(want_l2), rtol=1e-6,
      atol=1e-9)
  # The summaries average the layers with something below them (1 and 2):
  # layer 0's shift is 0 by definition and would dilute them.
  chex.assert_trees_all_close(
      (out['ics_l2'], out['ics_cos']),
      (want_l2[1:].mean(), want_cos[1:].mean()), rtol=1e-6)
  # The first layer's weights as its "pre-activations": the drift of their
  # column means over one SGD step, by hand.
  chex.assert_trees_all_close(
      out['preact_mean_drift_layer0'],
      np.sqrt(np.mean((stepped[0].mean(0) - ws[0].mean(0))**2)), rtol=1e-6)


def test_a_loss_that_draws_from_its_key_gets_one_key():
  # A model without per-layer keys (Model.layer_keys False) may draw from
  # its key directly: it gets one PRNG key, this step's while nothing below
  # the measured layer moved, then the next step's for the whole network.
  x = jnp.asarray([0.5, -1.0, 2.0])

  def loss(p, key):
    h = p[0] * x + jax.random.normal(key, (3,))
    return jnp.sum((p[1] * h) ** 2)

  params = [jnp.float32(0.7), jnp.float32(1.3)]
  keys = (jax.random.key(1), jax.random.key(2))
  l2, _ = jax.jit(lambda p, k: diagnostics.covariate_shift(
      loss, p, lambda p, g: p, [0, 1], k))(params, keys)  # a step of size 0
  assert l2[0] == 0, l2
  now, after = (jax.grad(loss)(params, k)[1] for k in keys)
  np.testing.assert_allclose(l2[1], abs(now - after), rtol=1e-5)


def test_a_one_layer_net_has_no_covariate_shift():
  rng = np.random.default_rng(0)
  x, y = jnp.asarray(rng.normal(size=(32, 6))), jnp.asarray(rng.integers(0, 3, 32))

  def loss(p, key=None):
    del key
    logits = x @ p['w'] + p['b']
    return -jnp.mean(jax.nn.log_softmax(logits)[jnp.arange(32), y])

  params = {'w': jnp.asarray(rng.normal(size=(6, 3)), jnp.float32),
            'b': jnp.zeros(3)}
  l2, cos = diagnostics.covariate_shift(
      loss, params, _sgd, depth={'w': 0, 'b': 0},
      keys=(jax.random.key(0), jax.random.key(1)))
  chex.assert_shape((l2, cos), (1,))
  assert l2[0] == 0.0 and cos[0] == 1.0


def test_a_dead_layer_has_no_cosine_and_leaves_the_summary(x64):
  """A layer whose gradient is 0 (here: one the loss does not read) read
  cosine 1.0, which the summary averaged in; now NaN, left out."""
  ws, np_deep_loss, deep_loss = _deep_linear(widths=(4, 5, 5, 2))

  def loss(p, key=None):  # layer 1 unused: x w0 w2
    return deep_loss([p[0], jnp.eye(5), p[2]], key)

  def logged(params):
    return diagnostics.LOGGED['covariate_shift'](diagnostics.Probe(
        params=params, key=jax.random.key(2), train_loss=loss, loss=loss,
        keys=(jax.random.key(0), jax.random.key(1)), update=_sgd,
        depth=[0, 1, 2], preactivations=None, learning_rate=jnp.asarray(LR)))

  out = jax.jit(logged)([jnp.asarray(w) for w in ws])
  # Layer 2's cosine by hand: its gradient before and after layer 0's step.
  np_loss = lambda p: np_deep_loss([p[0], np.eye(5), p[1]])
  g0, g2 = _fd_grad(np_loss, [ws[0], ws[2]])
  after = _fd_grad(np_loss, [ws[0] - LR * g0, ws[2]])[1]
  want = np.sum(g2 * after) / (np.linalg.norm(g2) * np.linalg.norm(after))
  assert np.isnan(out['ics_cos_layer1']), out
  chex.assert_trees_all_close(
      (out['ics_cos_layer2'], out['ics_cos'], out['ics_l2_layer1']),
      (want, want, 0.0), rtol=1e-6)


def test_covariate_shift_vmaps_over_members(x64):
  members = [_deep_linear(seed)[0] for seed in range(3)]
  _, _, loss = _deep_linear()
  keys = (jax.random.key(0), jax.random.key(1))

  def probe(ws):
    return diagnostics.covariate_shift(loss, ws, _sgd, [0, 1, 2], keys)

  stacked = jax.tree.map(lambda *a: jnp.stack(a),
                         *[[jnp.asarray(w) for w in ws] for ws in members])
  every = jax.jit(jax.vmap(probe))(stacked)
  for i, ws in enumerate(members):
    chex.assert_trees_all_close(jax.tree.map(lambda a: a[i], every),
                                probe([jnp.asarray(w) for w in ws]),
                                rtol=1e-12)


def test_preactivation_drift_known_shifts():
  rng = np.random.default_rng(0)
  before = [rng.normal(size=(64, 7)), rng.normal(size=(32, 10, 5))]
  # A constant shift c moves every unit's mean by c and no variance; a
  # scale s moves the variances by (s^2 - 1) var.
  after = [before[0] + 0.3, 2.0 * before[1]]
  mean, var = diagnostics.preactivation_drift(
      [jnp.asarray(h) for h in before], [jnp.asarray(h) for h in after])
  v1 = before[1].reshape(-1, 5).var(0)
  m1 = before[1].reshape(-1, 5).mean(0)
  chex.assert_trees_all_close(mean, np.array(
      [0.3, np.sqrt(np.mean(m1**2))]), rtol=1e-5)
  chex.assert_trees_all_close(var, np.array(
      [0.0, np.sqrt(np.mean((3 * v1)**2))]), rtol=1e-5, atol=1e-6)


def test_bad_probe_names_fail_before_compile():
  from rahimi_jax import train as train_lib  # pylint: disable=g-import-not-at-top
  with pytest.raises(ValueError, match=r"'ics'.*covariate_shift.*landscape"):
    train_lib.TrainConfig(diagnostics=('covariate_shift', 'ics'))


def test_covariate_shift_with_layer_keys_by_hand(x64):
  """Two noisy scalar layers, ``out = p1 (p0 x + n0) + n1``, each drawing its
  noise from its own layer's key. Definition 2.1 by hand (numpy): G_1 with
  this step's noise everywhere; G'_1 after layer 0's SGD step, with layer
  0's noise from the next step's key and layer 1's from this step's."""
  from rahimi_jax import components  # pylint: disable=g-import-not-at-top
  x = np.asarray([0.5, -1.0, 2.0])
  keys = (jax.random.key(3), jax.random.key(4))

  def noise(key, layer):
    return np.asarray(jax.random.normal(jax.random.fold_in(key, layer), (3,),
                                        jnp.float64))

  def loss(p, key):
    h = p[0] * x + jax.random.normal(
        jax.random.fold_in(components.layer_key(key, 0), 0), (3,),
        jnp.float64)
    out = p[1] * h + jax.random.normal(
        jax.random.fold_in(components.layer_key(key, 1), 1), (3,),
        jnp.float64)
    return jnp.sum(out ** 2)

  def np_grads(p0, p1, n0, n1):
    h = p0 * x + n0
    out = p1 * h + n1
    return np.sum(2 * out * p1 * x), np.sum(2 * out * h)

  p0, p1 = 0.7, 1.3
  now = [noise(keys[0], i) for i in range(2)]
  g0, g1 = np_grads(p0, p1, *now)
  _, g1_after = np_grads(p0 - LR * g0, p1, noise(keys[1], 0), now[1])
  l2, cos = jax.jit(lambda p: diagnostics.covariate_shift(
      loss, p, _sgd, [0, 1], keys, layer_keys=True))(
          [jnp.float64(p0), jnp.float64(p1)])
  chex.assert_trees_all_close(l2, np.asarray([0.0, abs(g1 - g1_after)]),
                              rtol=1e-10, atol=1e-12)
  chex.assert_trees_all_close(cos, np.asarray([1.0, np.sign(g1 * g1_after)]))
  assert abs(g1 - g1_after) > 0.1  # not vacuous
