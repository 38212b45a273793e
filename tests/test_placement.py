"""Rounding placements and loss scaling, against a numpy + ml_dtypes reference.

The reference trains the same linear model by hand (the gradient of
``0.5 * mean ||x W^T + b - y||^2`` written out, optax's momentum and Adam
update rules from their papers) in float32 numpy and rounds with ml_dtypes
casts at the placement under test, so a placement that rounds the wrong value,
at the wrong time, or not at all shows up as a mismatch.
"""

import dataclasses
import re

import chex
import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import optax
import pytest

from rahimi_jax import data as data_lib
from rahimi_jax import engine
from rahimi_jax import grid as grid_lib
from rahimi_jax import train as train_lib
from rahimi_jax.components import placement

LR, MOMENTUM, STEPS = 0.05, 0.9, 4
PLACEMENTS = ('storage', 'gradients', 'updates', 'optimizer_state',
              'constants', 'activations', 'storage+gradients')
_CONFIG = train_lib.TrainConfig(
    hidden=(), steps=STEPS, batch_size=0, log_every=STEPS,
    rounding_events=True, options=(('optimizer', ('momentum',)),
             ('precision', ('float32', 'bfloat16', 'float16')),
             ('rounding', ('nearest_even',)), ('placement', PLACEMENTS),
             ('loss_scaling', ('none', 'static', 'dynamic'))))


def _bf16(x):
  return np.asarray(x, np.float32).astype(ml_dtypes.bfloat16).astype(
      np.float32)


def _f16(x):
  with np.errstate(over='ignore'):
    return np.asarray(x, np.float32).astype(np.float16).astype(np.float32)


def _identity(x):
  return np.asarray(x, np.float32)


@pytest.fixture(scope='module')
def problem():
  data = data_lib.synthetic(n_train=32, n_test=8, in_dim=5, out_dim=3,
                            condition_number=4.0)
  return data


@pytest.fixture(scope='module')
def final_params():
  """``final_params(knobs, data)``: one compiled run of ``_CONFIG``."""
  return jax.jit(train_lib.final_state, static_argnums=0)


def _knobs(precision, place, scaling='none', loss_scale=2.0**15):
  options = dict(_CONFIG.options)
  knobs = {axis: np.eye(len(names), dtype=np.float32)[names.index(value)]
           for axis, names, value in [
               ('precision', options['precision'], precision),
               ('placement', options['placement'], place),
               ('loss_scaling', options['loss_scaling'], scaling)]}
  return knobs | {'learning_rate': np.float32(LR),
                  'momentum': np.float32(MOMENTUM),
                  'loss_scale': np.float32(loss_scale),
                  grid_lib.SEED: jax.random.key(0)}


def _initial(data):
  """The model's float32 initial parameters (rounding is not under test)."""
  params = jax.jit(train_lib.make_loop(_CONFIG).init)(
      _knobs('float32', 'storage'), data).params
  w, b = params['readout']['w'], params['readout']['b']
  return np.asarray(w), np.asarray(b)


def _reference(data, places, q, scale=1.0, steps=STEPS):
  """Momentum SGD on the linear model, rounding with ``q`` at ``places``."""
  x, y = np.asarray(data.x_train), np.asarray(data.y_train)
  n = np.float32(len(x))
  w, b = _initial(data)
  on = lambda p: q if p in places else _identity
  w, b = on('storage')(w), on('storage')(b)
  lr, m = on('constants')(LR), on('constants')(MOMENTUM)
  tw, tb = np.zeros_like(w), np.zeros_like(b)
  for _ in range(steps):
    xa = on('activations')(x)
    r = xa @ on('activations')(w).T + b - y
    gw, gb = (r.T @ xa) / n, r.sum(0) / n  # straight-through
    gw = on('gradients')(gw * np.float32(scale)) / np.float32(scale)
    gb = on('gradients')(gb * np.float32(scale)) / np.float32(scale)
    tw, tb = gw + m * tw, gb + m * tb  # optax.trace
    uw, ub = on('updates')(-lr * tw), on('updates')(-lr * tb)
    tw, tb = on('optimizer_state')(tw), on('optimizer_state')(tb)
    w, b = on('storage')(w + uw), on('storage')(b + ub)
  return w, b


def _close(got, want, man_bits):
  """Equal, except where float32 arithmetic in numpy and XLA (summation
  order, fused multiply-adds) differs in the last bits: within 1e-5 relative
  or, where that tipped a rounding, one ulp of the format (``man_bits``)."""
  got, want = np.asarray(got), np.asarray(want)
  ulp = np.exp2(np.floor(np.log2(np.abs(want) + 1e-30)) - man_bits)
  err = np.abs(got - want)
  assert np.all(err <= np.maximum(ulp, 1e-5 * np.abs(want)) + 1e-12), (
      got, want)
  assert np.mean(err <= 1e-5 * np.abs(want) + 1e-12) > 0.9, (got, want)


@pytest.mark.parametrize('place', PLACEMENTS)
def test_each_placement_rounds_what_it_names(place, problem, final_params):
  params, _ = final_params(_CONFIG, _knobs('bfloat16', place), problem)
  got = params['readout']['w'], params['readout']['b']
  places = placement.AXIS.get(place)
  want = _reference(problem, places, _bf16)
  for g, w in zip(got, want):
    _close(g, w, 7)
  # Not vacuous: training without rounding ends elsewhere.
  plain = _reference(problem, (), _bf16)
  assert max(np.max(np.abs(np.asarray(g) - p)) for g, p in zip(got, plain)
             ) > 1e-4, place


def test_float32_rounds_nothing_anywhere(problem, final_params):
  plain = _reference(problem, (), _identity)
  for place in PLACEMENTS:
    params, _ = final_params(_CONFIG, _knobs('float32', place), problem)
    for g, w in zip((params['readout']['w'], params['readout']['b']), plain):
      chex.assert_trees_all_close(np.asarray(g), w, atol=1e-6, rtol=1e-5)


def _tiny_gradient_problem(problem):
  """Inputs and targets times 1e-6: the weights' gradients are ~1e-12,
  far below float16's smallest subnormal (6e-8), the bias's ~1e-6."""
  return dataclasses.replace(
      problem, x_train=np.asarray(problem.x_train) * np.float32(1e-6),
      y_train=np.asarray(problem.y_train) * np.float32(1e-6))


@pytest.mark.parametrize('scaling, scale', [('none', 1.0),
                                            ('static', 2.0**24)])
def test_loss_scaling_rescues_float16_gradients(scaling, scale, problem,
                                                final_params):
  data = _tiny_gradient_problem(problem)
  params, _ = final_params(_CONFIG, _knobs('float16', 'gradients', scaling,
                                           scale), data)
  got = params['readout']['w'], params['readout']['b']
  want = _reference(data, ('gradients',), _f16, scale=scale)
  for g, w in zip(got, want):
    _close(g, w, 10)


def test_underflows_are_counted_and_loss_scaling_removes_them(problem):
  """The logged count is the reference's: every weight gradient (15 per
  step) flushed to zero without scaling, none at scale 2**24."""
  data = _tiny_gradient_problem(problem)
  grid = grid_lib.Grid(grid_lib.Choice('precision', ('float16',)),
                       grid_lib.Choice('placement', ('gradients',)),
                       grid_lib.Choice('loss_scaling', ('none', 'static')),
                       grid_lib.Values('loss_scale', (2.0**24,)),
                       grid_lib.Values('learning_rate', (LR,)),
                       grid_lib.Values('momentum', (MOMENTUM,)))
  res = engine.run(_CONFIG.for_grid(grid), grid, data).final().columns
  x, y = np.asarray(data.x_train), np.asarray(data.y_train)
  w, b = _initial(data)  # the weights stay (their updates are ~1e-13)
  r = x @ w.T + b - y
  gw = r.T @ x / len(x)
  assert np.all((gw != 0) & (_f16(gw) == 0))
  assert np.all(_f16(gw * 2.0**24) != 0)
  counts = dict(zip(res['loss_scaling'], res['underflows_gradients']))
  assert counts == {'none': gw.size * STEPS, 'static': 0}


def test_dynamic_loss_scaling_halves_and_skips_on_overflow(problem):
  """Start at 2**24: float16 gradients overflow, the step is skipped and the
  scale halves, until a scale fits; then training proceeds as at that static
  scale (the rule of Micikevicius et al. 2018, replayed in numpy)."""
  config = train_lib.TrainConfig(
      hidden=(), steps=20, batch_size=0, log_every=20,
      options=(('optimizer', ('momentum',)),
               ('precision', ('float32', 'float16')),
               ('placement', ('gradients',)),
               ('loss_scaling', ('none', 'dynamic'))))
  grid = grid_lib.Grid(grid_lib.Choice('precision', ('float16',)),
                       grid_lib.Choice('placement', ('gradients',)),
                       grid_lib.Choice('loss_scaling', ('dynamic',)),
                       grid_lib.Values('loss_scale', (2.0**24,)),
                       grid_lib.Values('learning_rate', (LR,)),
                       grid_lib.Values('momentum', (MOMENTUM,)))
  res = engine.run(config.for_grid(grid), grid, problem).final().columns
  # numpy replay: the largest |gradient| at the (unchanged) initial weights
  # decides how many halvings it takes to fit under 65504.
  x, y = np.asarray(problem.x_train), np.asarray(problem.y_train)
  w, b = _initial(problem)
  r = x @ w.T + b - y
  g_max = max(np.max(np.abs(r.T @ x / len(x))), np.max(np.abs(r.sum(0) / len(x))))
  scale, skipped = 2.0**24, 0
  while not np.all(np.isfinite(_f16(np.float32(g_max) * np.float32(scale)))):
    scale, skipped = scale / 2, skipped + 1
  assert 3 <= skipped < 20
  assert res['steps_skipped'][0] == skipped
  assert res['loss_scale'][0] == scale  # no doubling within 2000 steps
  assert res['diverged_step'][0] == -1
  assert np.isfinite(res['train_loss'][0])


def test_placement_and_loss_scaling_names_are_checked_before_compile():
  cases = [
      ({'placement': ('storage+weights',)},
       "Unknown placement 'storage+weights'; accepted: storage, gradients, "
       'updates, optimizer_state, constants, activations, or several joined '
       'by +'),
      ({'placement': ('storage+storage',)}, "Unknown placement "
       "'storage+storage'"),
      ({'rounding': ('floor',)}, "Unknown rounding 'floor'; accepted: "
       'nearest_even, stochastic, toward_zero'),
      ({'precision': ('e9m3',)}, "Unknown precision 'e9m3'; accepted: "
       'float32, bfloat16, float16, float8_e5m2, float8_e4m3fn, or e<E>m<M>'),
      ({'loss_scaling': ('auto',)}, "Unknown loss_scaling 'auto'; accepted: "
       'dynamic, none, static'),
  ]
  for options, message in cases:
    with pytest.raises(ValueError, match=re.escape(message)):
      train_lib.TrainConfig(options=tuple(options.items()))
  with pytest.raises(ValueError, match="placement activations: model "
                     "'deep_linear' has no matmul hook"):
    train_lib.TrainConfig(model='deep_linear', options=(
        ('precision', ('float32', 'bfloat16')),
        ('placement', ('activations',))))
  for axis in ('placement', 'rounding', 'loss_scaling'):
    with pytest.raises(ValueError, match=f'{axis} cannot be a Gate'):
      _CONFIG.for_grid(grid_lib.Grid(grid_lib.Gate(
          axis, *dict(_CONFIG.options)[axis][:2], (0.5,))))


def test_rounded_adam_constants_are_the_ml_dtypes_casts():
  """The ``constants`` placement's b2 = 0.999 is ml_dtypes' bfloat16(0.999)
  = 1.0 under nearest-even, and optax's Adam with b2 = 1 gives NaN at the
  first step: the collapse the rounding launcher reports."""
  from rahimi_jax.studies import rounding  # pylint: disable=g-import-not-at-top
  assert float(ml_dtypes.bfloat16(0.999)) == 1.0
  for fmt, dtype in [('bfloat16', ml_dtypes.bfloat16), ('float16', np.float16)]:
    for name, value in [('b1', 0.9), ('b2', 0.999), ('eps', 1e-8),
                        ('learning_rate', 1e-3)]:
      assert rounding.rounded_constant(name, value, fmt, 'nearest_even') == (
          float(np.float32(value).astype(dtype))), (fmt, name)
  params = {'w': np.ones(3, np.float32)}
  tx = optax.adam(1e-3, b2=1.0)
  updates, _ = tx.update({'w': np.full(3, 0.1, np.float32)}, tx.init(params))
  assert np.all(np.isnan(updates['w']))
  tx = optax.adam(1e-3, b2=float(np.float32(0.999).astype(ml_dtypes.bfloat16)
                                 .astype(np.float32) - 2.0**-8))
  updates, _ = tx.update({'w': np.full(3, 0.1, np.float32)}, tx.init(params))
  assert np.all(np.isfinite(updates['w']))


def test_only_the_members_own_optimizer_state_is_counted(tiny_digits):
  """In a grid of SGD and Adam each member carries both options' states (the
  relaxed mixture); SGD's member must not count Adam's unused moments."""
  config = train_lib.TrainConfig(hidden=(8,), steps=4, batch_size=32,
                                 log_every=4, rounding_events=True)
  grid = grid_lib.Grid(grid_lib.Choice('optimizer', ('sgd', 'adam')),
                       grid_lib.Choice('precision', ('float16',)),
                       grid_lib.Choice('placement', ('optimizer_state',)))
  res = engine.run(config, grid, tiny_digits).final().columns
  counts = dict(zip(res['optimizer'], res['underflows_optimizer_state']))
  assert counts['sgd'] == 0  # SGD has no floating state
  assert counts['adam'] > 0  # squared gradients below float16's range


def test_only_the_parameters_a_member_reads_are_counted(problem):
  """A grid's member also holds the norm options it does not use; AdamW's
  weight decay still moves them, and their updates were counted (an MLP's
  'none' member of a norm grid lost 0.0696 of its updates to bfloat16
  storage where the same run alone lost 0.0574). Counted as that run alone
  now."""
  base = dict(hidden=(4,), steps=4, log_every=2, batch_size=8,
              rounding_events=True)
  fixed = (('precision', ('bfloat16',)), ('optimizer', ('adamw',)),
           ('placement', ('storage+updates',)))
  knobs = {'seed': jax.random.key(0), 'learning_rate': jnp.float32(0.01),
           'weight_decay': jnp.float32(1e-4)}
  grid_run, alone = (
      jax.jit(train_lib.make_train(train_lib.TrainConfig(
          options=fixed + (('norm', norms),), **base)))(
              knobs | ({'norm': jnp.eye(2)[0]} if len(norms) > 1 else {}),
              problem)
      for norms in (('none', 'batch'), ('none',)))
  for name in ('train_loss', 'updates_lost', 'underflows_updates',
               'underflows_storage'):
    chex.assert_trees_all_equal(grid_run[name], alone[name])
  assert np.nanmax(alone['updates_lost']) > 0


def test_rounding_events_off_trains_the_same_and_logs_no_counts(
    problem, final_params):
  knobs = _knobs('bfloat16', 'storage+gradients')
  on = final_params(_CONFIG, knobs, problem)
  off = final_params(dataclasses.replace(_CONFIG, rounding_events=False),
                     knobs, problem)
  chex.assert_trees_all_equal(on, off)
  options = _CONFIG.option_dict()
  assert 'underflows_gradients' in placement.counters(options)
  assert set(placement.counters(options, events=False)) == {'steps_skipped'}


def test_switched_placement_rounds_only_where_the_group_rounds():
  """Switched (``relaxed.switching(['placement'])``, one placement per call,
  as an engine group runs it), the rounding at a place is a branch: taken,
  the values are ml_dtypes' bfloat16 casts and the events their counts;
  not taken, the values pass through with no events. Under ``vmap`` over
  members sharing the placement it stays a ``cond``."""
  from rahimi_jax.components import relaxed  # pylint: disable=g-import-not-at-top
  options = {'precision': ('float32', 'bfloat16'),
             'rounding': ('nearest_even',), 'placement': placement.PLACES,
             'loss_scaling': ('none',)}
  x = np.asarray([1.0 + 2.0**-9, 3.0, 1e-45, 0.0, 3.4e38, -2.5], np.float32)
  counts = placement.counters(options)

  def rounded(place_weights, leaf):
    with relaxed.switching(['placement']):
      policy = placement.Policy(options, {
          'precision': np.asarray([0.0, 1.0], np.float32),
          'rounding': np.ones(1, np.float32), 'placement': place_weights,
          'loss_scaling': np.ones(1, np.float32),
          'loss_scale': np.float32(1.0)}, None)
      out, c = policy.round('gradients', {'g': leaf}, counts)
      return out['g'], c['overflows_gradients'], c['underflows_gradients']

  for place in placement.PLACES:
    w = np.asarray([p == place for p in placement.PLACES], np.float32)
    out, over, under = jax.jit(rounded)(w, x)
    if place == 'gradients':
      want = _bf16(x)
      chex.assert_trees_all_equal(out, want)
      assert (over, under) == (1, 1)  # 3.4e38 past bfloat16's max; 1e-45 to 0
    else:
      chex.assert_trees_all_equal(out, x)
      assert (over, under) == (0, 0)
  w = np.asarray([p == 'gradients' for p in placement.PLACES], np.float32)
  xs = np.stack([x, -x])
  shared = jax.make_jaxpr(jax.vmap(rounded, in_axes=(None, 0)))(w, xs)
  assert 'cond[' in str(shared)
  chex.assert_trees_all_equal(jax.vmap(rounded, in_axes=(None, 0))(w, xs)[0],
                              _bf16(xs))


@pytest.mark.parametrize('fmt,dtype', [
    ('float8_e4m3fn', ml_dtypes.float8_e4m3fn), ('bfloat16', ml_dtypes.bfloat16),
    ('float8_e5m2', ml_dtypes.float8_e5m2)])
def test_an_overflow_is_a_value_rounded_past_the_largest(fmt, dtype):
  """A value between the largest finite one and the midpoint past it rounds
  down to the largest (nearest-even): not an overflow. Counted by the
  magnitude before rounding, float8_e4m3fn's 450 and 460 (to 448) were
  counted with 470 (to NaN). The count is of ml_dtypes' casts that are not
  finite."""
  top = float(ml_dtypes.finfo(dtype).max)
  ulp = top - float(np.nextafter(np.asarray(top, dtype), np.asarray(0, dtype)))
  x = np.asarray([top, top + 0.3 * ulp, top + 0.45 * ulp, top + 0.55 * ulp,
                  -(top + 0.4 * ulp), -(top + 0.6 * ulp), 1.0], np.float32)
  options = {'precision': (fmt,), 'rounding': ('nearest_even',),
             'placement': ('gradients',), 'loss_scaling': ('none',)}
  policy = placement.Policy(options, {
      'precision': np.ones(1, np.float32), 'rounding': np.ones(1, np.float32),
      'placement': np.ones(1, np.float32),
      'loss_scaling': np.ones(1, np.float32),
      'loss_scale': np.float32(1.0)}, None)
  out, counts = jax.jit(lambda x: policy.round(
      'gradients', {'g': x}, placement.counters(options)))(x)
  cast = x.astype(dtype).astype(np.float32)
  chex.assert_trees_all_equal(out['g'], cast)
  assert counts['overflows_gradients'] == np.sum(~np.isfinite(cast)) == 2


def test_stochastic_bits_follow_an_arrays_path_not_its_position():
  """A relaxed grid's tree also holds the options a member does not use (a
  batch norm's scale beside a member without norm); before, they shifted
  the later arrays' bits, so a member alone or in a partition rounded
  differently from the same member in the grid."""
  options = {'precision': ('bfloat16',), 'rounding': ('stochastic',),
             'placement': ('storage',), 'loss_scaling': ('none',)}
  knobs = {'precision': np.ones(1, np.float32),
           'rounding': np.ones(1, np.float32),
           'placement': np.ones(1, np.float32),
           'loss_scaling': np.ones(1, np.float32), 'loss_scale': 1.0}
  policy = placement.Policy(options, knobs, jax.random.key(3))
  w = jax.random.normal(jax.random.key(0), (64, 10)) * 1e-2
  alone, _ = policy.round('storage', {'readout': w}, {})
  beside, _ = policy.round('storage', {'norm': {'batch': jnp.ones(64)},
                                       'readout': w}, {})
  chex.assert_trees_all_equal(alone['readout'], beside['readout'])
  assert not np.array_equal(alone['readout'], w)  # it did round, at random


def test_count_both_at_and_past_fifteen_bits():
  """The packed count holds 2**15 - 1 per half; at 2**15 entries it must
  take the two plain sums (numpy's counts)."""
  for n in (2**15 - 1, 2**15, 2**15 + 3):
    for a, b in [(np.ones(n, bool), np.zeros(n, bool)),
                 (np.zeros(n, bool), np.ones(n, bool)),
                 (np.ones(n, bool), np.ones(n, bool))]:
      got = jax.jit(placement.count_both)(a, b)
      assert tuple(int(c) for c in got) == (a.sum(), b.sum()), (n, got)


def _scaling_policy(scaling):
  options = {'precision': ('float16',), 'rounding': ('nearest_even',),
             'placement': ('gradients',), 'loss_scaling': ('static', 'dynamic')}
  return placement.Policy(options, {
      'precision': np.ones(1, np.float32), 'rounding': np.ones(1, np.float32),
      'placement': np.ones(1, np.float32),
      'loss_scaling': np.asarray([scaling == 'static', scaling == 'dynamic'],
                                 np.float32),
      'loss_scale': np.float32(2.0**10)}, None)


def test_dynamic_scale_doubles_after_2000_finite_steps_in_a_row():
  """PyTorch's GradScaler (growth_interval 2000, factors 2 and 1/2),
  replayed by hand: the 2000th finite step in a row doubles the scale and
  restarts the count; a non-finite one halves it and restarts the count. A
  static member of the same grid keeps its scale and never skips."""
  dynamic = _scaling_policy('dynamic')
  step = jax.jit(dynamic.next_scaler)
  for (scale, good), finite, want in [
      ((1024.0, 0.0), True, (1024.0, 1.0)),
      ((1024.0, 1998.0), True, (1024.0, 1999.0)),
      ((1024.0, 1999.0), True, (2048.0, 0.0)),
      ((1024.0, 1999.0), False, (512.0, 0.0)),
      ((1024.0, 5.0), False, (512.0, 0.0))]:
    got = step(jnp.asarray([scale, good], jnp.float32), jnp.bool_(finite))
    chex.assert_trees_all_equal(np.asarray(got), np.asarray(want, np.float32))
  assert bool(dynamic.skips(jnp.bool_(False)))
  assert not bool(dynamic.skips(jnp.bool_(True)))
  static = _scaling_policy('static')
  assert not bool(static.skips(jnp.bool_(False)))
  scaler = jnp.asarray([1024.0, 1999.0], jnp.float32)
  chex.assert_trees_all_equal(static.next_scaler(scaler, jnp.bool_(True)),
                              scaler)
  assert float(static.scale(scaler)) == 2.0**10


def test_constants_round_to_nearest_under_stochastic_rounding():
  """A stochastic member's ``constants`` are its format's nearest-even
  values (ml_dtypes' casts: b2 0.999 -> 1.0 in bfloat16), not a coin flip
  and not NaN (no random bits are drawn for them)."""
  options = {'precision': ('bfloat16',),
             'rounding': ('nearest_even', 'stochastic'),
             'placement': ('constants',), 'loss_scaling': ('none',)}
  hp = {'learning_rate': np.float32(0.01), 'b1': np.float32(0.9),
        'b2': np.float32(0.999), 'eps': np.float32(1e-8)}
  for mode in ((1.0, 0.0), (0.0, 1.0)):
    policy = placement.Policy(options, {
        'precision': np.ones(1, np.float32),
        'rounding': np.asarray(mode, np.float32),
        'placement': np.ones(1, np.float32),
        'loss_scaling': np.ones(1, np.float32),
        'loss_scale': np.float32(1.0)}, jax.random.key(0))
    got = jax.jit(policy.constants)(hp)
    chex.assert_trees_all_equal(
        {n: np.asarray(v) for n, v in got.items()},
        {n: _bf16(v) for n, v in hp.items()})
  assert _bf16(0.999) == 1.0


def test_activation_events_count_each_matmul_input_once_per_step(problem):
  """The ``activations`` place rounds the inputs and the weights of every
  matmul of the forward pass: at learning rate 0 both stay, so each log
  counts, per step, the inputs and weights ml_dtypes' float16 cast flushes
  to zero (inputs times 3e-8: about two thirds of them)."""
  data = dataclasses.replace(
      problem, x_train=np.asarray(problem.x_train) * np.float32(3e-8))
  config = train_lib.TrainConfig(
      hidden=(), steps=4, batch_size=0, log_every=2, rounding_events=True,
      options=(('precision', ('float16',)), ('placement', ('activations',))))
  knobs = {grid_lib.SEED: jax.random.key(0), 'learning_rate': jnp.float32(0)}
  out = jax.jit(train_lib.make_train(config))(knobs, data)
  w = np.asarray(jax.jit(train_lib.make_loop(config).init)(
      knobs, data).params['readout']['w'])
  x = np.asarray(data.x_train)
  flushed = sum(int(np.sum((a != 0) & (_f16(a) == 0))) for a in (x, w))
  assert 0 < flushed < x.size
  chex.assert_trees_all_equal(np.asarray(out['step']), np.asarray([0, 2, 4]))
  chex.assert_trees_all_equal(np.asarray(out['underflows_activations']),
                              np.asarray([0, 2 * flushed, 2 * flushed],
                                         np.float32))
  chex.assert_trees_all_equal(np.asarray(out['overflows_activations']),
                              np.zeros(3, np.float32))
