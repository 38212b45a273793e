"""The training loop: paired design, member == solo run, tracing, divergence."""

import dataclasses
import gc
import os
import re
import signal
import types
from unittest import mock

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from rahimi_jax import components
from rahimi_jax import data as data_lib
from rahimi_jax import engine
from rahimi_jax import grid as grid_lib
from rahimi_jax import program
from rahimi_jax import results as results_lib
from rahimi_jax import train as train_lib
from rahimi_jax import tuning

CONFIG = train_lib.TrainConfig(hidden=(16,), steps=30, batch_size=32,
                               log_every=10)
METRICS = ('train_loss', 'test_loss', 'test_accuracy')


def _run(axes, data, config=CONFIG, **kwargs):
  grid = grid_lib.Grid(*axes)
  return program.execute(train_lib.make_train(config.for_grid(grid)), grid,
                         data, **kwargs)


def _columns(results, names=METRICS):
  return {n: results.columns[n] for n in names}


def test_member_equals_solo_run(tiny_digits):
  grid_res = _run([grid_lib.Choice('optimizer', ('sgd', 'momentum', 'adam')),
                   grid_lib.Choice('norm', ('none', 'batch', 'layer')),
                   grid_lib.Values('learning_rate', (0.05, 0.01)),
                   grid_lib.Seeds(2)], tiny_digits)
  # Adam with batch norm is left out: on digits, features constant within a
  # minibatch get gradients that are rounding noise, which Adam rescales, so
  # last-bit differences between programs grow to ~1e-4 (see WORKSPACE.md).
  for opt, norm, lr, seed in [('adam', 'layer', 0.01, 1),
                              ('sgd', 'batch', 0.05, 0)]:
    solo = _run([grid_lib.Choice('optimizer', (opt,)),
                 grid_lib.Choice('norm', (norm,)),
                 grid_lib.Values('learning_rate', (lr,)),
                 grid_lib.Seeds((seed,))], tiny_digits)
    member = grid_res.where(optimizer=opt, norm=norm, learning_rate=lr,
                            seed=seed)
    assert len(member) == len(solo) == 4
    chex.assert_trees_all_close(_columns(member), _columns(solo), atol=1e-6,
                                rtol=0)


def test_paired_design_shares_init_and_data(tiny_digits):
  res = _run([grid_lib.Choice('optimizer', ('sgd', 'adam')),
              grid_lib.Values('learning_rate', (0.1, 0.01)),
              grid_lib.Seeds(2)], tiny_digits)
  start = res.where(step=0)
  # Step 0 is evaluated before any update: identical for every member of a seed.
  for seed in (0, 1):
    at_seed = start.where(seed=seed).columns['train_loss']
    chex.assert_trees_all_equal(at_seed, np.full_like(at_seed, at_seed[0]))
  assert (start.where(seed=0).columns['train_loss'][0] !=
          start.where(seed=1).columns['train_loss'][0])
  # Same seed, different optimizer and learning rate: training differs.
  final = res.final()
  assert len(set(final.where(seed=0).columns['train_loss'].tolist())) == 4


def test_one_compile_serves_all_learning_rates_and_seeds(tiny_digits):
  config = CONFIG.for_grid(grid_lib.Grid(grid_lib.Values('learning_rate', (1.0,))))
  train = chex.assert_max_traces(train_lib.make_train(config), n=1)
  first = program.execute(train, grid_lib.Grid(
      grid_lib.Values('learning_rate', (0.1, 0.01)), grid_lib.Seeds((0, 1))),
                          tiny_digits)
  second = program.execute(train, grid_lib.Grid(
      grid_lib.Values('learning_rate', (0.3, 0.003)), grid_lib.Seeds((5, 6))),
                           tiny_digits)
  assert second.metadata['engine']['compile_s'] == 0.0
  assert not np.allclose(first.columns['train_loss'],
                         second.columns['train_loss'])


def test_diverging_member_is_recorded_and_isolated(tiny_digits):
  axes = [grid_lib.Choice('optimizer', ('sgd', 'adam'))]
  seeds = grid_lib.Seeds(2)
  with_bad = _run(axes + [grid_lib.Values('learning_rate', (0.01, 1e6)), seeds],
                  tiny_digits)
  # The same width as with_bad: its program, no compile.
  without = _run(axes + [grid_lib.Values('learning_rate', (0.01, 0.02)),
                         seeds], tiny_digits).where(learning_rate=0.01)
  bad = with_bad.where(optimizer='sgd', learning_rate=1e6).final()
  assert np.all(bad.columns['diverged_step'] >= 1)
  assert np.all(bad.columns['diverged_step'] <= CONFIG.steps)
  assert np.all(np.isnan(bad.columns['test_accuracy']))
  good = with_bad.where(learning_rate=0.01)
  assert np.all(good.columns['diverged_step'] == -1)
  chex.assert_trees_all_close(_columns(good), _columns(without), atol=1e-6,
                              rtol=0)


def test_diverged_step_is_first_step_with_nonfinite_params(tiny_synthetic):
  # Full-batch gradient descent on a deep linear net at a huge learning rate
  # blows up within a few steps; the grid records exactly the first step after
  # which a parameter is non-finite, found here by stepping a solo run by hand.
  config = train_lib.TrainConfig(model='deep_linear', hidden=(3,), steps=40,
                                 log_every=40, batch_size=0)
  grid = grid_lib.Grid(grid_lib.Values('learning_rate', (3.0, 0.01)))
  out = program.execute(train_lib.make_train(config), grid, tiny_synthetic)
  loop = train_lib.make_loop(config)
  knobs = jax.tree.map(lambda v: v[0], grid.knobs([0]))
  carry = loop.init(knobs, tiny_synthetic)
  step = jax.jit(loop.step)
  first = -1
  for t in range(1, config.steps + 1):
    carry = step(knobs, tiny_synthetic, carry, t)
    if not all(np.all(np.isfinite(p)) for p in jax.tree.leaves(carry.params)):
      first = t
      break
  assert 1 < first < config.steps
  final = out.final()
  chex.assert_trees_all_equal(final.where(learning_rate=3.0).columns[
      'diverged_step'], np.asarray([first], np.int32))
  chex.assert_trees_all_equal(final.where(learning_rate=0.01).columns[
      'diverged_step'], np.asarray([-1], np.int32))
  assert np.isnan(final.where(learning_rate=3.0).columns['train_loss'][0])


def test_a_metric_that_overflows_before_the_parameters_is_a_divergence(
    tiny_synthetic):
  # The blow-up above, logged every 2 steps: the squared residuals overflow
  # float32 (prediction ~ W^2 ~ 1e19) steps before any parameter does, so
  # the first log whose loss is not finite marks the divergence, not the
  # later step whose parameters are. Found here by full-batch gradient
  # descent on 0.5 * mean ||x W1 W2 - y||^2 in float64 numpy from the run's
  # initial factors.
  config = train_lib.TrainConfig(model='deep_linear', hidden=(3,), steps=8,
                                 log_every=2, batch_size=0)
  grid = grid_lib.Grid(grid_lib.Values('learning_rate', (3.0,)))
  knobs = jax.tree.map(lambda v: v[0], grid.knobs([0]))
  train = train_lib.make_train(config)
  init = train_lib.make_loop(config).init
  out, (w1, w2) = jax.jit(lambda k, data: (
      train(k, data), init(k, data).params['w']))(knobs, tiny_synthetic)
  out = results_lib.from_outputs(grid, jax.tree.map(lambda v: np.asarray(v)[
      None], out))
  w1, w2 = np.asarray(w1, np.float64), np.asarray(w2, np.float64)
  x, y = (np.asarray(a, np.float64) for a in (tiny_synthetic.x_train,
                                              tiny_synthetic.y_train))
  x_test, y_test = (np.asarray(a, np.float64) for a in (tiny_synthetic.x_test,
                                                        tiny_synthetic.y_test))
  big = float(np.finfo(np.float32).max)
  sums, losses, first_params = {}, {}, -1
  for t in range(config.steps + 1):
    if t:
      r = (x @ w1 @ w2 - y) / len(x)
      w1, w2 = w1 - 3.0 * x.T @ r @ w2.T, w2 - 3.0 * (x @ w1).T @ r
    top = max(np.max(np.abs(w1)), np.max(np.abs(w2)))
    if not top < big:
      first_params = t
      break
    assert top < 1e-3 * big, (t, top)  # finite in float32 too
    if t % config.log_every == 0:
      train_sum = np.sum(np.square(x @ w1 @ w2 - y))
      sums[t] = max(train_sum,
                    np.sum(np.square(x_test @ w1 @ w2 - y_test)))
      losses[t] = 0.5 * train_sum / len(x)
  # Far from float32's largest number either way: no rounding question.
  assert all(v > 1e3 * big or v < 1e-3 * big for v in sums.values()), sums
  first_log = min(t for t, v in sums.items() if v > big)
  assert 0 < first_log < first_params <= config.steps, (first_log,
                                                        first_params)
  logged = out.columns['step'] >= first_log
  # The numpy reference follows the run: their losses agree before it.
  chex.assert_trees_all_close(out.columns['train_loss'][~logged],
                              np.asarray([losses[t] for t in range(first_log)
                                          if t in losses]), rtol=1e-4)
  assert np.all(np.isnan(out.columns['train_loss'][logged]))
  chex.assert_trees_all_equal(out.final().columns['diverged_step'],
                              np.asarray([first_log], np.int32))
  # Results count the member as diverged, not as a finished run.
  (row,) = out.summarize('train_loss', 'learning_rate')
  assert (row.diverged, row.non_finite, row.members) == (1, 0, 1)


def test_log_steps_with_remainder(tiny_synthetic):
  config = train_lib.TrainConfig(model='deep_linear', hidden=(3,), steps=7,
                                 log_every=3, batch_size=0)
  chex.assert_trees_all_equal(config.log_steps(), np.array([0, 3, 6, 7]))
  out = jax.jit(train_lib.make_train(config))({}, tiny_synthetic)
  chex.assert_trees_all_equal(out['step'], np.array([0, 3, 6, 7]))
  chex.assert_shape(out['train_loss'], (4,))
  assert 'test_accuracy' not in out  # regression has no accuracy


def test_full_batch_gradient_descent_reduces_loss(tiny_synthetic):
  config = train_lib.TrainConfig(model='deep_linear', hidden=(4,), steps=200,
                                 log_every=100, batch_size=0)
  out = jax.jit(train_lib.make_train(config))(
      {'learning_rate': 0.05, 'init_scale': 0.5}, tiny_synthetic)
  loss = np.asarray(out['train_loss'])
  assert loss[-1] < 0.1 * loss[0], loss


def test_a_feature_major_model_steps_on_feature_major_targets(tiny_synthetic):
  # The deep linear net computes (W_2^T W_1^T x^T)^T: a full-batch loop holds
  # y^T, computed once, and steps to the same bits as on y.
  config = train_lib.TrainConfig(model='deep_linear', hidden=(4,), steps=3,
                                 batch_size=0)
  loop = train_lib.make_loop(config)
  targets = jax.jit(loop.targets)(tiny_synthetic)
  chex.assert_trees_all_equal(targets, tiny_synthetic.y_train.T)
  knobs = {'learning_rate': jnp.float32(0.05), 'init_scale': jnp.float32(0.5),
           grid_lib.SEED: jax.random.key(0)}
  step = jax.jit(loop.step)
  carry = jax.jit(loop.init)(knobs, tiny_synthetic)
  on_y = step(knobs, tiny_synthetic, carry, jnp.int32(1))
  on_targets = step(knobs, tiny_synthetic, carry, jnp.int32(1), targets)
  chex.assert_trees_all_equal(on_targets.params, on_y.params)
  assert not np.array_equal(on_y.params['w'][0],
                            carry.params['w'][0])  # it stepped
  # Minibatches, batch-major models: the steps read the data.
  for kwargs in ({'batch_size': 16}, {'model': 'mlp'}):
    other = train_lib.make_loop(dataclasses.replace(config, **kwargs))
    assert other.targets(tiny_synthetic) is None, kwargs


@pytest.mark.parametrize('limit, blocks', [
    (10**9, 1),  # every row fits: one call, no loop
    (40, 4),  # 12 elements a row: blocks of 3 rows, 4 of them, 2 rows padded
    (1, 10),  # at least one row a block
])
def test_forward_in_blocks_is_the_whole_forward(limit, blocks):
  """Members' per-row forwards over blocks of shared rows, against NumPy's
  forward of all rows at once."""
  rng = np.random.default_rng(0)
  x = rng.standard_normal((10, 3)).astype(np.float32)
  w = rng.standard_normal((2, 3, 4)).astype(np.float32)  # two members
  v = rng.standard_normal((2, 4, 2)).astype(np.float32)

  def member(w, v):  # a row writes 4 (x @ w) + 4 (tanh) + 2 (@ v) + 2 (+ 1)
    return train_lib.forward_in_blocks(
        lambda x: jnp.tanh(x @ w) @ v + 1.0, x, limit)

  got = jax.jit(jax.vmap(member))(w, v)
  x64 = x.astype(np.float64)
  want = np.stack([np.tanh(x64 @ wi) @ vi + 1 for wi, vi in zip(w, v)])
  chex.assert_trees_all_close(got, want, rtol=1e-5, atol=1e-6)
  jaxpr = jax.make_jaxpr(jax.vmap(member))(w, v).jaxpr
  loops = [e.params['length'] for e in jaxpr.eqns
           if e.primitive.name == 'scan']
  assert loops == ([] if blocks == 1 else [blocks]), loops


def test_batch_indices_are_epoch_permutations():
  idx = np.asarray(jax.jit(data_lib.batch_indices, static_argnums=(1, 2, 3))(
      jax.random.key(0), 10, 3, 7))
  chex.assert_shape(idx, (7, 3))
  # 3 batches per epoch (the 10th sample is dropped): no repeats in an epoch.
  for epoch in (idx[0:3], idx[3:6]):
    assert len(set(epoch.ravel().tolist())) == 9
  assert not np.array_equal(idx[0:3], idx[3:6])


@pytest.mark.parametrize('n', [1, 2, 7, 1347, 5000])
def test_permutation_is_a_permutation(n):
  perms = np.asarray(jax.jit(jax.vmap(lambda k: data_lib.permutation(k, n)))(
      jax.random.split(jax.random.key(1), 8)))
  chex.assert_shape(perms, (8, n))
  for p in perms:
    chex.assert_trees_all_equal(np.sort(p), np.arange(n, dtype=np.int32))
  if n > 2:
    assert len({tuple(p) for p in perms}) == 8


def test_permutation_is_uniform():
  # All 4! orderings, 24000 draws: a chi-square test (23 dof) at p >= 1e-3.
  scipy_stats = pytest.importorskip('scipy.stats')
  perms = np.asarray(jax.jit(jax.vmap(lambda k: data_lib.permutation(k, 4)))(
      jax.random.split(jax.random.key(0), 24000)))
  codes = perms @ (4 ** np.arange(4))
  _, counts = np.unique(codes, return_counts=True)
  assert len(counts) == 24
  assert scipy_stats.chisquare(counts).pvalue >= 1e-3
  # At a size where ties between random keys occur (21 key bits for 1347
  # samples), where an element lands is still uniform: its mean position.
  perms = np.asarray(jax.jit(jax.vmap(lambda k: data_lib.permutation(k, 1347)))(
      jax.random.split(jax.random.key(2), 2000)))
  where0 = np.argmax(perms == 0, axis=1)
  assert abs(where0.mean() - 673) < 4 * 389 / np.sqrt(2000)


def test_permutation_breaks_ties_between_keys():
  # 2**19 samples leave 13 random key bits per round: one round alone puts
  # ~2**19 / 2**13 = 64 pairs (i, i + 1) in one tie, kept in index order, so
  # i + 1 follows i directly ~64 times. In a uniform permutation the number
  # of such successions is Poisson(1) (Kaplansky): 10 or more has
  # probability 1.1e-7.
  n = 2**19
  perm = np.asarray(jax.jit(lambda k: data_lib.permutation(k, n))(
      jax.random.key(3)))
  successions = int(np.sum(np.diff(perm) == 1))
  assert successions < 10, successions


@pytest.mark.parametrize('kwargs, match', [
    ({'steps': 0}, 'steps'),
    ({'log_every': 40}, 'log_every'),
    ({'batch_size': -1}, 'batch_size'),
    ({'model': 'resnet'}, 'resnet'),
    ({'hidden': (0,)}, 'hidden'),
    ({'options': (('norm', ('none', 'bogus')),)}, 'bogus'),
    ({'options': (('colour', ('red',)),)}, 'colour'),
    ({'model': 'deep_linear', 'options': (('activation', ('tanh',)),)},
     'activation'),
])
def test_bad_config_fails_loudly(kwargs, match):
  with pytest.raises(ValueError, match=match):
    train_lib.TrainConfig(**{'steps': 30, **kwargs})


def test_log_every_defaults_to_fit_the_steps():
  assert train_lib.TrainConfig(steps=20).log_every == 20
  assert train_lib.TrainConfig(steps=500).log_every == 50


def test_float64_without_x64_is_an_error_not_a_float32_run():
  assert not jax.config.jax_enable_x64
  with pytest.raises(ValueError, match="jax_enable_x64.*'float32'"):
    train_lib.make_train(train_lib.TrainConfig(dtype='float64', steps=5))


def test_least_squares_optimizer_on_classification_fails_before_tracing(
    tiny_digits, monkeypatch):
  grid = grid_lib.Grid(grid_lib.Choice('optimizer',
                                       ('sgd', 'levenberg_marquardt')))
  traced = []
  monkeypatch.setattr(train_lib, 'make_train',
                      lambda *a: traced.append(a))  # must not be reached
  with pytest.raises(ValueError, match='levenberg_marquardt.*regression'):
    engine.run(CONFIG, grid, tiny_digits)
  assert not traced


def test_unknown_value_axis_fails_before_compiling():
  with pytest.raises(ValueError, match='learning_rat'):
    CONFIG.for_grid(grid_lib.Grid(grid_lib.Values('learning_rat', (0.1,))))


@pytest.mark.parametrize('knob, values, message', [
    ('momentum', (0.9, -1.0),
     "momentum: '-1' must be a finite number >= 0 and < 1."),
    # 1 and above: no decay of the velocity (1.5 was accepted).
    ('momentum', (0.9, 1.5),
     "momentum: '1.5' must be a finite number >= 0 and < 1."),
    # Exactly 1 is out too: the bound is strict (no decay at all).
    ('momentum', (0.9, 1.0),
     "momentum: '1' must be a finite number >= 0 and < 1."),
    ('learning_rate', (0.0,), "learning_rate: '0' must be a finite number > 0."),
    ('noise_scale_var', (0.1, -0.5),
     "noise_scale_var: '-0.5' must be a finite number >= 0."),
])
def test_value_axes_from_python_are_checked_against_the_knob_bound(
    knob, values, message):
  """The bound the launchers' flags are parsed with holds for a grid built
  in Python too, before anything compiles."""
  with pytest.raises(ValueError, match=re.escape(message)):
    CONFIG.for_grid(grid_lib.Grid(grid_lib.Values(knob, values)))


def test_a_value_axis_no_member_reads_fails_before_compiling(tiny_digits,
                                                             monkeypatch):
  # Two momenta under sgd and adam would be copies: an "effect" of exactly 0.
  with pytest.raises(ValueError, match=re.escape(
      'momentum: no member reads it: the optimizer options here are sgd, '
      'adam, and it is read by momentum, nesterov; add one')):
    engine.run(CONFIG, grid_lib.Grid(
        grid_lib.Choice('optimizer', ('sgd', 'adam')),
        grid_lib.Values('momentum', (0.5, 0.9))), tiny_digits)
  # One option that reads it is enough; one value is no axis of copies.
  for grid in (grid_lib.Grid(grid_lib.Choice('optimizer', ('sgd', 'nesterov')),
                             grid_lib.Values('momentum', (0.5, 0.9))),
               grid_lib.Grid(grid_lib.Values('momentum', (0.5,)))):
    CONFIG.for_grid(grid).check_knobs_read(grid)
  # An optimizer registered later reads the learning rate (only the least
  # squares ones are declared not to), and the help says so.
  knob = components.optimizers.AXIS.knobs[0]
  assert knob.readers(('sgd', 'lion', 'gauss_newton')) == ('sgd', 'lion')
  assert knob.full_help().endswith(
      'Ignored by: gauss_newton, levenberg_marquardt.')
  # So may the momentum: a user's optimizer gets all of hp, and one built
  # with hp['momentum'] was refused a momentum axis ("no member reads it").
  monkeypatch.setitem(components.OPTIMIZERS, 'my_momentum', lambda hp: (
      optax.sgd(hp['learning_rate'], momentum=hp['momentum'])))
  grid = grid_lib.Grid(grid_lib.Choice('optimizer', ('my_momentum',)),
                       grid_lib.Values('momentum', (0.0, 0.9)))
  CONFIG.for_grid(grid).check_knobs_read(grid)
  # It may: the error says so, apart from the declared readers.
  with pytest.raises(ValueError, match=re.escape(
      'it is read by momentum, nesterov (and may be by my_momentum, '
      'registered since); add one')):
    engine.run(CONFIG, grid_lib.Grid(
        grid_lib.Choice('optimizer', ('sgd', 'adam')),
        grid_lib.Values('momentum', (0.5, 0.9))), tiny_digits)
  # The norms' noise knobs reach only the declared noisy norms: a user's
  # norm (which never gets them) is no reader.
  assert components.norms.AXIS.knobs[0].readers(('batch', 'user_norm')) == ()


@pytest.mark.parametrize('axis, options', [
    ('rounding', ('nearest_even', 'stochastic')),
    ('placement', ('storage', 'gradients')),
])
def test_a_rounding_axis_under_float32_alone_fails_before_compiling(
    tiny_digits, axis, options):
  # float32 rounds nothing, so rounding modes or placements beside it alone
  # are copies (the launcher trained 8 bit-identical members for
  # --roundings=nearest_even,stochastic --placements=storage,activations).
  with pytest.raises(ValueError, match=re.escape(
      f'{axis}: no member reads it: the precision options here are float32 '
      f'(nothing is rounded), so its options {", ".join(options)} would '
      'train copies')):
    engine.run(CONFIG, grid_lib.Grid(grid_lib.Choice(axis, options)),
               tiny_digits)
  # A precision that rounds reads it; one option is no axis of copies.
  for grid in (grid_lib.Grid(grid_lib.Choice('precision',
                                             ('float32', 'bfloat16')),
                             grid_lib.Choice(axis, options)),
               grid_lib.Grid(grid_lib.Choice(axis, options[:1]))):
    CONFIG.for_grid(grid).check_knobs_read(grid)


def test_an_option_or_model_redefined_under_its_name_is_a_new_program(
    monkeypatch):
  # Before, the loop was cached by the names alone: a notebook cell that
  # redefined an optimizer trained the old one.
  sgd = components.OPTIMIZERS['sgd']
  monkeypatch.setitem(components.OPTIMIZERS, 'user_sgd', sgd)
  config = dataclasses.replace(CONFIG, options=(('optimizer', 'user_sgd'),))
  loop = train_lib.make_loop(config)
  assert train_lib.make_loop(config) is loop
  monkeypatch.setitem(components.OPTIMIZERS, 'user_sgd', lambda hp: sgd(hp))
  assert train_lib.make_loop(config) is not loop
  train = train_lib.make_train(config)
  monkeypatch.setitem(components.OPTIMIZERS, 'user_sgd', sgd)
  assert train_lib.make_loop(config) is loop
  assert train_lib.make_train(config) is not train
  # A user's model registered again (the cell run again) replaces the old.
  from rahimi_jax import models  # pylint: disable=g-import-not-at-top
  mlp = models.MODELS['mlp']
  monkeypatch.setitem(models.MODELS, 'user_mlp', mlp)
  user = dataclasses.replace(CONFIG, model='user_mlp')
  first = train_lib.make_loop(user)
  again = lambda hidden, options: mlp(hidden, options)
  assert models.register('user_mlp', again) is again
  assert train_lib.make_loop(user) is not first
  # A factory registered once that calls, by name, a function or class a
  # cell redefined (``lambda h, o: from_flax(Net())``): the factory is the
  # same object, the program is not (it was: the old model trained).
  models.register('user_mlp', lambda hidden, options: _USER_NET(hidden,
                                                                options))
  first = train_lib.make_loop(user)
  assert train_lib.make_loop(user) is first
  monkeypatch.setitem(globals(), '_USER_NET', _narrow_net)
  assert train_lib.make_loop(user) is not first


def _wide_net(hidden, options):
  del hidden
  from rahimi_jax import models  # pylint: disable=g-import-not-at-top
  return models.MODELS['mlp']((16,), options)


def _narrow_net(hidden, options):
  del hidden
  from rahimi_jax import models  # pylint: disable=g-import-not-at-top
  return models.MODELS['mlp']((4,), options)


_USER_NET = _wide_net


def test_config_takes_one_option_as_a_string_and_refuses_a_non_model(
    monkeypatch):
  # ('optimizer', 'adam') was read letter by letter: "Unknown optimizer 'a'".
  config = train_lib.TrainConfig(options=(('optimizer', 'adam'),))
  assert config.option_dict()['optimizer'] == ('adam',)
  # A factory returning no Model failed later with an AttributeError.
  from rahimi_jax import models  # pylint: disable=g-import-not-at-top
  monkeypatch.setitem(models.MODELS, 'not_a_model', lambda hidden, options: 3)
  with pytest.raises(TypeError, match="model 'not_a_model': its factory "
                     'returned a int, not a rahimi_jax.models.Model'):
    train_lib.TrainConfig(model='not_a_model')


def test_a_grid_keeps_the_config_options_it_does_not_choose():
  """A study's one-option axis (an init) reaches the runs; several options
  with no grid axis to pick one are refused."""
  config = train_lib.TrainConfig(options=(('init', ('orthogonal',)),
                                          ('norm', ('none', 'batch'))))
  grid = grid_lib.Grid(grid_lib.Choice('norm', ('batch',)))
  assert config.for_grid(grid).option_dict()['init'] == ('orthogonal',)
  assert config.for_grid(grid).option_dict()['norm'] == ('batch',)
  with pytest.raises(ValueError, match="norm: the config lists 2 options "
                     r"\(none, batch\) but the grid has no norm axis"):
    config.for_grid(grid_lib.Grid(grid_lib.Seeds(1)))
  # An axis listed twice kept its last options only, silently.
  with pytest.raises(ValueError, match=r"an axis listed twice in \['norm', "
                     r"'norm'\]"):
    train_lib.TrainConfig(options=(('norm', ('batch',)), ('norm', ('layer',))))


def test_elementwise_options_stay_in_one_program_and_a_split_matches_it(
    tiny_digits):
  grid = grid_lib.Grid(grid_lib.Choice('optimizer', ('sgd', 'adam')),
                       grid_lib.Choice('norm', ('none', 'layer')),
                       grid_lib.Seeds(2))
  ratios = engine.cost_ratios(CONFIG, grid, tiny_digits)
  assert engine.auto_partition(ratios) == ()
  assert set(ratios) == {'optimizer', 'norm'}
  # Optax's updates and the norms add no matmuls: the relaxed step is the
  # members' own step, matmul for matmul; but elementwise work (Adam's
  # moments, layer norm's statistics). (The launchers' smoke test checks
  # that partition='auto' records and prints these ratios.)
  chex.assert_trees_all_close({a: r.matmul for a, r in ratios.items()},
                              {'optimizer': 1.0, 'norm': 1.0})
  assert all(r.elementwise > 1.05 for r in ratios.values()), ratios
  relaxed = engine.run(CONFIG, grid, tiny_digits, partition=(), switch=())
  assert 'programs' not in relaxed.metadata['engine']
  assert relaxed.metadata['partition'] == {'mode': 'given', 'axes': [],
                                           'switch': []}
  # One split proves the point (each program is a compile).
  split = engine.run(CONFIG, grid, tiny_digits, partition=('optimizer',))
  assert split.metadata['engine']['programs'] == 2
  # Switched: four groups of members, one compiled program that branches.
  switched = engine.run(CONFIG, grid, tiny_digits, partition=(),
                        switch='auto')
  assert switched.metadata['partition']['switch'] == ['optimizer', 'norm']
  info = switched.metadata['engine']
  # The groups side by side in one call, a chunk never mixing two.
  assert 'programs' not in info and info['groups'] == 4
  assert (info['chunk_size'], info['chunks']) == (2, 4) and 'parts' not in info
  for other in (split, switched):
    chex.assert_trees_all_equal(other.columns['member'],
                                relaxed.columns['member'])
    chex.assert_trees_all_equal(other.columns['step'], relaxed.columns['step'])
    chex.assert_trees_all_close(_columns(other), _columns(relaxed), atol=1e-6,
                                rtol=0)
  with pytest.raises(ValueError, match='seed'):
    engine.run(CONFIG, grid, tiny_digits, partition=('seed',))
  with pytest.raises(ValueError, match='automatic'):
    engine.run(CONFIG, grid, tiny_digits, partition='automatic')


def test_cost_ratios_are_traced_once_per_step_and_code(
    tiny_digits, monkeypatch, tmp_path):
  monkeypatch.setenv('RAHIMI_JAX_CACHE', str(tmp_path))  # nothing remembered
  monkeypatch.setattr(tuning, '_REMEMBERED', {})
  traces = []
  step_jaxpr = engine._step_jaxpr  # pylint: disable=protected-access
  monkeypatch.setattr(engine, '_step_jaxpr',
                      lambda *a: traces.append(1) or step_jaxpr(*a))
  grid = grid_lib.Grid(grid_lib.Choice('norm', ('none', 'layer')),
                       grid_lib.Seeds(3))
  first = engine.cost_ratios(CONFIG, grid, tiny_digits)
  assert len(traces) == 3  # relaxed, none, layer
  assert engine.cost_ratios(CONFIG, grid, tiny_digits) == first
  monkeypatch.setattr(tuning, '_REMEMBERED', {})  # a later process: on disk
  assert engine.cost_ratios(CONFIG, grid, tiny_digits) == first
  assert len(traces) == 3
  # Other seeds of the same options: each step's cost is remembered by its
  # options and shapes, not its members.
  seeds = grid_lib.Grid(grid_lib.Choice('norm', ('none', 'layer')),
                        grid_lib.Seeds(5))
  assert engine.cost_ratios(CONFIG, seeds, tiny_digits) == first
  assert len(traces) == 3
  other = grid_lib.Grid(grid_lib.Choice('norm', ('none', 'batch')),
                        grid_lib.Seeds(3))
  engine.cost_ratios(CONFIG, other, tiny_digits)
  assert len(traces) == 5  # relaxed and batch; none's step is remembered
  monkeypatch.setattr(tuning.provenance, 'code_sha256', lambda: 'edited')
  assert engine.cost_ratios(CONFIG, grid, tiny_digits) == first
  assert len(traces) == 8


def test_a_union_grids_switch_ratio_is_what_switching_saves(tiny_digits):
  """Only sgd's members use batch norm: a switched optimizer group still
  computes both norms (it keeps every option of the cell), so switching the
  optimizer saves what it saves on the product grid of as many members per
  optimizer (the groups' steps are the same programs); the ratio of an adam
  group without batch norm was taken instead (1.35 against 1.09 in one
  case)."""
  opt = lambda *o: grid_lib.Choice('optimizer', o)  # pylint: disable=unnecessary-lambda-assignment
  norm = lambda *n: grid_lib.Choice('norm', n)  # pylint: disable=unnecessary-lambda-assignment
  full = grid_lib.Grid(opt('sgd', 'adam'), norm('none', 'batch'),
                       grid_lib.Seeds(1))
  union = grid_lib.Grid.union(
      grid_lib.Grid(opt('sgd'), norm('none', 'batch'), grid_lib.Seeds(1)),
      grid_lib.Grid(opt('adam'), norm('none'), grid_lib.Seeds(2)))
  product, ours = (engine.cost_ratios(CONFIG, g, tiny_digits)['optimizer']
                   for g in (full, union))
  assert product.elementwise > 1.02, product
  chex.assert_trees_all_close(ours.elementwise, product.elementwise,
                              rtol=1e-12)


def test_switching_needs_a_switchable_axis_and_one_option_per_call(
    tiny_digits):
  grid = grid_lib.Grid(grid_lib.Choice('norm', ('none', 'layer')),
                       grid_lib.Seeds(2))
  with pytest.raises(ValueError, match=r"'seed'.*accepted: norm"):
    engine.run(CONFIG, grid, tiny_digits, switch=('seed',))
  with program.run_options(switch=('seed',)):  # a launcher's --switch
    with pytest.raises(ValueError, match=r"'seed'.*accepted: norm"):
      engine.run(CONFIG, grid, tiny_digits)
  with pytest.raises(ValueError, match=r"'optimizer'.*accepted: norm"):
    dataclasses.replace(CONFIG.for_grid(grid), switched=('optimizer',))
  config = dataclasses.replace(CONFIG.for_grid(grid), switched=('norm',))
  with pytest.raises(ValueError, match=r"same norm.*layer, none"):
    program.execute(train_lib.make_train(config), grid, tiny_digits)
  # 'auto': an axis whose options add enough elementwise work, while each
  # group keeps two members.
  costly = {'norm': engine.CostRatio(1.0, engine.AUTO_SWITCH_RATIO)}
  cheap = {'norm': engine.CostRatio(1.0, engine.AUTO_SWITCH_RATIO - 0.01)}
  solo = grid_lib.Grid(grid_lib.Choice('norm', ('none', 'layer')))
  assert engine.auto_switch(grid, costly) == ('norm',)
  assert engine.auto_switch(grid, cheap) == ()
  assert engine.auto_switch(solo, costly) == ()
  # 'auto' partitions an axis whose relaxed step does at least
  # AUTO_PARTITION_RATIO times its members' own matmuls.
  for matmul, want in ((engine.AUTO_PARTITION_RATIO, ('norm',)),
                       (engine.AUTO_PARTITION_RATIO - 0.01, ())):
    assert engine.auto_partition({'norm': engine.CostRatio(matmul, 1.0)}
                                 ) == want, matmul
  with mock.patch.object(jax, 'default_backend', return_value='gpu'):
    assert engine.auto_switch(grid, costly) == ()  # one wide relaxed vmap


def test_switched_groups_of_a_union_grid_share_one_program(tiny_digits):
  # Dynamic loss scaling only beside the gradients placement (the rounding
  # study's design): each group keeps the options the grid uses, so both
  # run the one program and log the same columns.
  def part(place, scalings, seeds):
    return grid_lib.Grid(grid_lib.Choice('precision', ('bfloat16',)),
                         grid_lib.Choice('placement', (place,)),
                         grid_lib.Choice('loss_scaling', scalings),
                         grid_lib.Seeds(seeds))
  grid = grid_lib.Grid.union(part('storage', ('none',), 2),
                             part('gradients', ('none', 'dynamic'), 1))
  res = engine.run(CONFIG, grid, tiny_digits, partition=(),
                   switch=('placement',))
  info = res.metadata['engine']
  assert info['groups'] == 2 and 'programs' not in info
  assert (info['chunk_size'], info['chunks']) == (2, 2) and 'parts' not in info
  assert 'steps_skipped' in res.columns
  chex.assert_trees_all_equal(res.columns['placement'][::4],
                              np.asarray(['storage'] * 2 + ['gradients'] * 2))


def test_a_smaller_group_runs_padded_in_the_first_groups_program(tiny_digits):
  # Groups of 1, 4 and 3, the largest first: the 3 run beside the 4 in one
  # call, as one chunk of 4 (a copy padding it); the 1, under half the
  # first group, after, at a width of its own (a compile: two programs).
  # (In the grid's order the 1 came first and capped every chunk at 1.) The
  # padded group's members are what they are in a grid of their own.
  def part(norm, seeds):
    return grid_lib.Grid(grid_lib.Choice('norm', (norm,)),
                         grid_lib.Seeds(seeds))
  grid = grid_lib.Grid.union(part('rms', 1), part('none', 4),
                             part('layer', 3))
  res = engine.run(CONFIG, grid, tiny_digits, partition=(), switch=('norm',))
  info = res.metadata['engine']
  assert (info['groups'], info['programs']) == (3, 2), info
  assert [(p['chunk_size'], p['chunks'], p.get('groups', 1))
          for p in info['parts']] == [(4, 2, 2), (1, 1, 1)]
  assert [p['compile_s'] > 0 for p in info['parts']] == [True, True]
  assert list(res.final().columns['norm']) == ['rms'] + ['none'] * 4 + [
      'layer'] * 3  # the grid's order
  alone = engine.run(CONFIG, part('layer', 3), tiny_digits, partition=(),
                     switch=())
  layer = res.columns['norm'] == 'layer'
  for name in ('train_loss', 'test_accuracy'):
    chex.assert_trees_all_close(res.columns[name][layer],
                                alone.columns[name], rtol=1e-5)


def test_ctrl_c_between_groups_keeps_the_finished_ones(tiny_digits):
  # The group of 1 runs after the group of 2 (under half of it: a call of
  # its own), and is interrupted as it is set up.
  grid = grid_lib.Grid.union(
      grid_lib.Grid(grid_lib.Choice('norm', ('none',)), grid_lib.Seeds(3)),
      grid_lib.Grid(grid_lib.Choice('norm', ('layer',)), grid_lib.Seeds(1)))
  subset = grid_lib.Grid.subset
  parts = []

  def second_part_is_interrupted(self, indices, keep=()):
    if keep and len(self) == len(grid):  # engine.run's part, set up
      parts.append(indices)
      if len(parts) == 2:
        raise KeyboardInterrupt
    return subset(self, indices, keep)

  with mock.patch.object(grid_lib.Grid, 'subset', second_part_is_interrupted):
    with pytest.raises(program.Interrupted) as e:
      engine.run(CONFIG, grid, tiny_digits, switch=('norm',))
  assert (e.value.finished, e.value.total) == (3, 4)
  assert set(e.value.results.columns['norm']) == {'none'}


def test_ctrl_c_while_checkpoints_close_keeps_the_finished_group(
    tiny_digits, tmp_path):
  """A Ctrl-C inside orbax's close (it waits on its writer threads) stops the
  run after that call, its members kept (the group of 1 would run after the
  group of 3, in a call of its own)."""
  grid = grid_lib.Grid.union(
      grid_lib.Grid(grid_lib.Choice('norm', ('none',)), grid_lib.Seeds(3)),
      grid_lib.Grid(grid_lib.Choice('norm', ('layer',)), grid_lib.Seeds(1)))
  close = program._Checkpoints.close

  def pressed_while_closing(self):
    os.kill(os.getpid(), signal.SIGINT)
    close(self)

  previous = signal.signal(signal.SIGINT, signal.default_int_handler)
  try:
    with mock.patch.object(program._Checkpoints, 'close',
                           pressed_while_closing):
      with program.run_options(checkpoint_dir=str(tmp_path)):
        with pytest.raises(program.Interrupted) as e:
          engine.run(CONFIG, grid, tiny_digits, switch=('norm',))
  finally:
    signal.signal(signal.SIGINT, previous)
  assert (e.value.finished, e.value.total) == (3, 4)
  assert set(e.value.results.columns['norm']) == {'none'}


def test_ctrl_c_checkpoints_the_chunks_that_had_finished(tiny_digits,
                                                        tmp_path):
  """Ctrl-C after the first of four chunks, before any periodic save: that
  chunk's final state is checkpointed, so the resume runs the other three
  alone (it ran all four again), to the uninterrupted run's bits."""
  grid = grid_lib.Grid(grid_lib.Choice('norm', ('none',)), grid_lib.Seeds(4))
  info = program.logging.info

  def pressed_after_the_first_chunk(message, *args):
    info(message, *args)
    if str(message).startswith('member-batch') and args[0] == 1:
      raise KeyboardInterrupt

  def run(directory):
    with program.run_options(checkpoint_dir=directory, progress=False,
                             checkpoint_every_s=1e6, chunk_size=1):
      return engine.run(CONFIG, grid, tiny_digits, switch=())

  with mock.patch.object(program.logging, 'info',
                         pressed_after_the_first_chunk):
    with pytest.raises(program.Interrupted) as e:
      run(str(tmp_path / 'a'))
  assert (e.value.finished, e.value.total) == (1, 4)
  resumed = run(str(tmp_path / 'a'))
  passes = resumed.metadata['engine']['resumed_passes']
  assert passes[0] > 0 and passes[1:] == [0, 0, 0], passes
  plain = run(str(tmp_path / 'b'))
  assert plain.metadata['engine']['resumed_passes'] == [0] * 4
  chex.assert_trees_all_equal(resumed.columns, plain.columns)
  # The finished member's rows, under its own name: the uninterrupted run's.
  first = plain.where(member=grid.members[0].name)
  chex.assert_trees_all_equal(e.value.results.columns, first.columns)


def test_a_chunk_resumed_midway_goes_on_to_the_uninterrupted_bits(
    tiny_digits, tmp_path, monkeypatch):
  """Checkpointed after each call of one pass, Ctrl-C in the second call:
  the resume goes on from the first pass's state (the other resumes here
  restart finished chunks, whose last pass only logs) to the uninterrupted
  run's bits, and its checkpoint then records the run's 4 passes (logs at
  steps 0, 10, 20 and 30), not the passes its call was allowed."""
  grid = grid_lib.Grid(grid_lib.Choice('norm', ('none',)), grid_lib.Seeds(1))
  waits, wait = [], program.wait

  def pressed_in_the_second_call(outputs, fetch=True):
    if not fetch:
      waits.append(fetch)
      if len(waits) == 2:
        raise KeyboardInterrupt
    return wait(outputs, fetch)

  def run(directory, **options):
    with program.run_options(checkpoint_dir=directory, progress=False,
                             chunk_size=1, **options):
      return engine.run(CONFIG, grid, tiny_digits, switch=())

  with monkeypatch.context() as m:
    m.setattr(program, 'wait', pressed_in_the_second_call)
    with pytest.raises(program.Interrupted) as e:
      run(str(tmp_path / 'a'), logs_per_call=1, checkpoint_every_s=0)
  assert e.value.finished == 0
  resumed = run(str(tmp_path / 'a'), logs_per_call=100, checkpoint_every_s=0)
  assert resumed.metadata['engine']['resumed_passes'] == [1]
  plain = run(str(tmp_path / 'b'))
  chex.assert_trees_all_equal(resumed.columns, plain.columns)
  again = run(str(tmp_path / 'a'))
  assert again.metadata['engine']['resumed_passes'] == [4]
  chex.assert_trees_all_equal(again.columns, plain.columns)


def test_a_periodic_save_takes_the_chunks_finished_since_the_last(
    tiny_digits, tmp_path, monkeypatch):
  """Four chunks, one call each; the clock jumps past checkpoint_every_s
  after the third call: that save holds chunk 2 and the two finished before
  it (they had no checkpoint at their last pass), not chunk 3, which came
  after. A resume in the same directory shows what was saved."""
  grid = grid_lib.Grid(grid_lib.Choice('norm', ('none',)), grid_lib.Seeds(4))
  waits, wait = [], program.wait

  def counted(outputs, fetch=True):
    waits.append(fetch)
    return wait(outputs, fetch)

  clock = lambda: 1e9 if waits.count(False) >= 3 else 0.0  # pylint: disable=unnecessary-lambda-assignment

  def run():
    with program.run_options(checkpoint_dir=str(tmp_path), progress=False,
                             checkpoint_every_s=100.0, chunk_size=1,
                             logs_per_call=100):
      return engine.run(CONFIG, grid, tiny_digits, switch=())

  with monkeypatch.context() as m:
    m.setattr(program, 'wait', counted)
    m.setattr(program, 'time', types.SimpleNamespace(perf_counter=clock))
    plain = run()
  assert waits.count(False) == 4  # one call per chunk
  passes = run().metadata['engine']['resumed_passes']
  assert passes[:3] == [passes[0]] * 3 and passes[0] > 0, passes
  assert passes[3] == 0, passes
  chex.assert_trees_all_equal(run().columns, plain.columns)


def test_auto_partition_splits_off_levenberg_marquardt(tiny_synthetic):
  config = train_lib.TrainConfig(model='deep_linear', hidden=(3,), steps=6,
                                 log_every=3, batch_size=0)
  grid = grid_lib.Grid.union(
      grid_lib.Grid(grid_lib.Choice('optimizer', ('sgd',)),
                    grid_lib.Values('learning_rate', (0.1, 0.03, 0.01))),
      grid_lib.Grid(grid_lib.Choice('optimizer', ('levenberg_marquardt',)),
                    grid_lib.Values('learning_rate', (1.0,))))
  # Per step, one GD member's own matmuls are a gradient; LM's are a gradient
  # plus up to n_params CG iterations of a JVP and a VJP each.
  relaxed = engine.step_flops(config, grid, tiny_synthetic)
  gd = engine.step_flops(config, grid.subset([0, 1, 2]), tiny_synthetic)
  lm = engine.step_flops(config, grid.subset([3]), tiny_synthetic)
  assert gd < lm <= relaxed
  ratios = engine.cost_ratios(config, grid, tiny_synthetic)
  assert engine.auto_partition(ratios) == ('optimizer',)
  chex.assert_trees_all_close(ratios['optimizer'].matmul,
                              relaxed / ((3 * gd + lm) / 4))
  assert ratios['optimizer'].matmul >= engine.AUTO_PARTITION_RATIO
  auto = engine.run(config, grid, tiny_synthetic, partition='auto')
  given = engine.run(config, grid, tiny_synthetic,
                     partition=('optimizer',))
  assert auto.metadata['engine']['programs'] == 2
  assert auto.metadata['partition']['axes'] == ['optimizer']
  assert {k: given.metadata['partition'][k] for k in ('mode', 'axes', 'switch')
          } == {'mode': 'given', 'axes': ['optimizer'], 'switch': []}
  chex.assert_trees_all_equal(auto.columns, given.columns)


def test_union_grid_runs_as_one_program(tiny_digits):
  grid = grid_lib.Grid.union(
      grid_lib.Grid(grid_lib.Choice('optimizer', ('sgd',)),
                    grid_lib.Values('learning_rate', (0.1, 0.05))),
      grid_lib.Grid(grid_lib.Choice('optimizer', ('adam',)),
                    grid_lib.Values('learning_rate', (0.001,))))
  res = engine.run(CONFIG, grid, tiny_digits)
  assert res.metadata['engine']['member_batches'] == 1
  final = res.final()
  assert final.columns['member'].tolist() == [m.name for m in grid.members]
  solo = _run([grid_lib.Choice('optimizer', ('adam',)),
               grid_lib.Values('learning_rate', (0.001,))], tiny_digits)
  chex.assert_trees_all_close(_columns(res.where(optimizer='adam')),
                              _columns(solo), atol=1e-6, rtol=0)


def test_final_state_is_the_members_run(tiny_digits):
  grid = grid_lib.Grid(grid_lib.Choice('optimizer', ('sgd', 'momentum')),
                       grid_lib.Seeds(2))
  config = CONFIG.for_grid(grid)
  res = program.execute(train_lib.make_train(config), grid, tiny_digits)
  knobs = jax.tree.map(lambda a: a[0], grid.knobs([3]))
  params, state = jax.jit(train_lib.final_state, static_argnums=0)(
      config, knobs, tiny_digits)
  model = train_lib.models.get_model(config.model)(config.hidden,
                                                   config.option_dict())
  logits, _ = model.apply(params, state, tiny_digits.x_test,
                          train_lib._resolve_knobs(config, knobs), train=False)
  accuracy = np.mean(np.argmax(logits, -1) == tiny_digits.y_test)
  chex.assert_trees_all_close(
      accuracy, res.where(member=grid.members[3].name).final()
      .columns['test_accuracy'][0], atol=1e-6)


def test_gate_axis_interpolates_between_vertices(tiny_digits):
  gated = _run([grid_lib.Gate('norm', 'none', 'batch', (0.0, 0.3, 1.0)),
                grid_lib.Seeds(2)], tiny_digits)
  # Seeds(3): the gated grid's width (6), so its program, no compile.
  chosen = _run([grid_lib.Choice('norm', ('none', 'batch')), grid_lib.Seeds(3)],
                tiny_digits)
  chosen = chosen.subset(chosen.columns['seed'] < 2)
  chex.assert_trees_all_close(_columns(gated.where(norm=0.0)),
                              _columns(chosen.where(norm='none')), atol=1e-6,
                              rtol=0)
  chex.assert_trees_all_close(_columns(gated.where(norm=1.0)),
                              _columns(chosen.where(norm='batch')), atol=1e-6,
                              rtol=0)
  middle = gated.where(norm=0.3).final().columns['test_loss']
  ends = [gated.where(norm=g).final().columns['test_loss'] for g in (0.0, 1.0)]
  assert np.all(middle != ends[0]) and np.all(middle != ends[1])
  with pytest.raises(ValueError, match='1.5'):
    grid_lib.Gate('norm', 'none', 'batch', (0.0, 1.5))


def _probe_norm():
  """An identity norm that records, in its state, a draw from its key (and
  the step before's)."""

  def init(features):
    del features
    return {}, {'draw': jnp.zeros(()), 'before': jnp.zeros(())}

  def apply(params, state, x, train, key=None):
    del params
    draw = jax.random.normal(key, ())
    if not train:
      return x, {'draw': jnp.zeros(()), 'before': jnp.zeros(())}
    return x, {'draw': draw, 'before': state['draw']}

  return components.Norm(init, apply)


def _draws(grid, data, steps):
  """Per member: the probes' draws at the last step and the one before,
  each ``[members, layers, options]``."""
  config = dataclasses.replace(CONFIG, hidden=(4, 4), steps=steps,
                               log_every=steps).for_grid(grid)
  _, state = jax.jit(jax.vmap(
      lambda k: train_lib.final_state(config, k, data)))(grid.knobs())
  return [np.stack([np.stack([layer[n][which] for n in ('probe_a', 'probe_b')],
                             -1) for layer in state['norm']], 1)
          for which in ('before', 'draw')]


def test_step_keys_pair_arms_and_vary_with_seed_layer_and_step(tiny_digits):
  with mock.patch.dict(components.NORMS, {'probe_a': _probe_norm(),
                                          'probe_b': _probe_norm()}):
    grid = grid_lib.Grid(
        grid_lib.Choice('norm', ('probe_a', 'probe_b')),
        grid_lib.Choice('optimizer', ('sgd', 'adam')),
        grid_lib.Choice('init', ('lecun_normal', 'orthogonal')),
        grid_lib.Values('learning_rate', (0.1, 0.01)),
        grid_lib.Seeds(2))
    draws, later = _draws(grid, tiny_digits, steps=4)  # steps 3 and 4
  seeds = np.asarray([m.values[grid_lib.SEED] for m in grid.members])
  chex.assert_shape(draws, (len(grid), 2, 2))
  # Both options of the norm axis draw the same numbers (the key does not
  # depend on the option), and so does every member with the same seed,
  # whatever its norm, optimizer, init or learning rate.
  chex.assert_trees_all_equal(draws[..., 0], draws[..., 1])
  for seed in (0, 1):
    same = draws[seeds == seed]
    chex.assert_trees_all_equal(same, np.broadcast_to(same[0], same.shape))
  # Independent across seeds, layers and steps.
  assert draws[seeds == 0][0, 0, 0] != draws[seeds == 1][0, 0, 0]
  assert draws[0, 0, 0] != draws[0, 1, 0]
  assert np.all(draws[:, :, 0] != later[:, :, 0])
  # One draw per (seed, layer): 2 x 2 distinct values in the whole grid.
  assert len(np.unique(draws)) == 2 * 2


def test_optimizer_receives_the_steps_key(tiny_digits):
  seen = []

  def probe(hp):
    def update(grads, state, params=None, *, key=None, **extra):
      del params, extra
      seen.append(key)
      return jax.tree.map(lambda g: -hp['learning_rate'] * g, grads), state
    return optax.GradientTransformationExtraArgs(
        lambda params: optax.EmptyState(), update)

  with mock.patch.dict(components.OPTIMIZERS, {'probe': probe}):
    grid = grid_lib.Grid(grid_lib.Choice('optimizer', ('probe',)))
    config = CONFIG.for_grid(grid)
    jax.eval_shape(lambda k: train_lib.final_state(config, k, tiny_digits),
                   jax.tree.map(lambda v: v[0], grid.knobs()))
  assert seen and all(
      k is not None and jax.dtypes.issubdtype(k.dtype, jax.dtypes.prng_key)
      for k in seen)


def test_step_batches_draw_the_runs_order_one_epoch_at_a_time():
  # The streaming draw (one epoch's order held, redrawn at each epoch's first
  # step) gives, step by step, the indices of the whole run drawn up front;
  # those are still the order runs used before the streaming draw: one
  # permutation per key of split(key, epochs).
  key, n, batch, steps = jax.random.key(3), 10, 3, 11
  per_epoch, epochs = n // batch, -(-steps // (n // batch))
  before = np.concatenate([
      np.asarray(p)[:per_epoch * batch].reshape(-1, batch)
      for p in jax.jit(jax.vmap(lambda k: data_lib.permutation(k, n)))(
          jax.random.split(key, epochs))])[:steps]

  def step(order, t):
    idx, order = data_lib.step_batch(key, n, batch, steps, t, order)
    return order, idx

  _, streamed = jax.lax.scan(step, jnp.zeros(n, jnp.int32),
                             jnp.arange(1, steps + 1))
  chex.assert_trees_all_equal(np.asarray(streamed), before)
  chex.assert_trees_all_equal(np.asarray(jax.jit(
      data_lib.batch_indices, static_argnums=(1, 2, 3))(key, n, batch, steps)),
                              before)


@pytest.mark.filterwarnings('ignore::pytest.PytestUnraisableExceptionWarning')
def test_a_ctrl_c_python_ignored_stops_the_run_at_its_next_call(tiny_digits):
  """A KeyboardInterrupt raised inside a garbage-collection callback (XLA
  has one) is printed as "Exception ignored" and lost: the run went on to
  its end. Within ``watch_interrupts`` (the launchers') the press is
  recorded, and the run stops at its next call, its finished members kept."""
  grid = grid_lib.Grid(grid_lib.Choice('norm', ('none',)), grid_lib.Seeds(2))
  pressed = []

  def press_in_a_gc_callback(phase, info):
    del info
    if phase == 'start' and not pressed:
      pressed.append(True)
      os.kill(os.getpid(), signal.SIGINT)  # handled here, in the callback

  previous = signal.signal(signal.SIGINT, signal.default_int_handler)
  try:
    with program.watch_interrupts():
      gc.callbacks.append(press_in_a_gc_callback)
      try:
        gc.collect()  # "Exception ignored in: <function press_in_...>"
      finally:
        gc.callbacks.remove(press_in_a_gc_callback)
      assert pressed  # the press came, and nothing stopped
      with program.run_options(progress=False, logs_per_call=1):
        with pytest.raises(program.Interrupted) as e:
          engine.run(CONFIG, grid, tiny_digits, switch=())
    assert e.value.finished < e.value.total == 2
    # Outside the block a run is as before, even with a press left recorded
    # (a second Ctrl-C as the block restored the handler).
    program._PRESSES.append(True)  # pylint: disable=protected-access
    with program.run_options(progress=False):
      assert len(engine.run(CONFIG, grid, tiny_digits, switch=()).final()) == 2
  finally:
    signal.signal(signal.SIGINT, previous)
    program._PRESSES.clear()  # pylint: disable=protected-access
