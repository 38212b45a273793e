"""Rounding to low-precision formats, checked against ml_dtypes and gfloat."""

import functools
import warnings

import chex
import gfloat
from gfloat import formats as gformats
import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest
from scipy import stats

from rahimi_jax import engine
from rahimi_jax import grid as grid_lib
from rahimi_jax import train as train_lib
from rahimi_jax.components import precision
from rahimi_jax.studies import ablation
from rahimi_jax.studies import attribute

# name -> (ml_dtypes type, gfloat format)
PEERS = {
    'bfloat16': (ml_dtypes.bfloat16, gformats.format_info_bfloat16),
    'float16': (np.float16, gformats.format_info_binary16),
    'float8_e5m2': (ml_dtypes.float8_e5m2, gformats.format_info_ocp_e5m2),
    'float8_e4m3fn': (ml_dtypes.float8_e4m3fn, gformats.format_info_ocp_e4m3),
}
GFLOAT_MODES = {'nearest_even': gfloat.RoundMode.TiesToEven,
                'toward_zero': gfloat.RoundMode.TowardZero,
                'stochastic': gfloat.RoundMode.Stochastic}


def _samples(n=100_000, seed=0):
  """Every float32 class: random bit patterns (NaNs, infs, subnormals,
  normals of every exponent), values spread over the formats' ranges, and
  each format's exact ties, extremes and neighbours of its overflow point."""
  rng = np.random.default_rng(seed)
  random_bits = rng.integers(0, 2**32, n, dtype=np.uint64).astype(np.uint32)
  spread = rng.standard_normal(n) * 2.0**rng.integers(-150, 20, n)
  special = [0.0, -0.0, 1.0, np.inf, -np.inf, np.nan, 2.0**-149, 2.0**-126,
             -2.0**-133, 65504.0, 65519.99, 65520.0, 448.0, 464.0, 465.0,
             57344.0, 61439.0, 61440.0, 3.4e38]
  ties = []
  for name, (dtype, _) in PEERS.items():
    with warnings.catch_warnings():
      warnings.simplefilter('ignore')  # the NaN codes
      grid = np.arange(2**16 if name in ('bfloat16', 'float16') else 2**8,
                       dtype=np.uint16 if name in ('bfloat16', 'float16')
                       else np.uint8).view(dtype).astype(np.float64)
    grid = np.unique(grid[np.isfinite(grid)])
    ties.append((grid[1:] + grid[:-1]) / 2)  # exactly half-way (in float32)
  values = np.concatenate([spread, special, *ties]).astype(np.float32)
  return np.concatenate([random_bits.view(np.float32), values])


X = _samples()
_quantize = jax.jit(precision.quantize, static_argnames='saturate')
_quantize_overflows = jax.jit(functools.partial(precision.quantize,
                                                overflows=True))


def _assert_same_bits(got, want):
  got, want = np.asarray(got), np.asarray(want, np.float32)
  same = (got.view(np.uint32) == want.view(np.uint32)) | (
      np.isnan(got) & np.isnan(want))
  bad = np.flatnonzero(~same)[:5]
  assert not bad.size, (X[bad] if len(X) == len(got) else bad, got[bad],
                        want[bad])


def _knobs(name):
  return precision.format_knobs(precision.get_format(name))


@pytest.mark.parametrize('name', PEERS)
def test_nearest_even_is_ml_dtypes_cast_bit_for_bit(name):
  dtype, _ = PEERS[name]
  with warnings.catch_warnings():
    warnings.simplefilter('ignore')  # overflow / NaN casts
    want = X.astype(dtype).astype(np.float32)
  _assert_same_bits(_quantize(X, _knobs(name), 0), want)



@pytest.mark.parametrize('name', PEERS)
def test_overflows_are_finite_inputs_whose_ml_dtypes_cast_is_not(name):
  """``overflows=True`` flags a finite ``x`` whose nearest-even value is
  past the format's largest (ml_dtypes' cast is inf or NaN); an input that
  is already inf or NaN did not overflow here (counted at every place it
  passed, one overflow would be counted again at each)."""
  dtype, _ = PEERS[name]
  with warnings.catch_warnings():
    warnings.simplefilter('ignore')
    cast = X.astype(dtype).astype(np.float32)
  _, over = _quantize_overflows(X, _knobs(name), 0)
  want = np.isfinite(X) & ~np.isfinite(cast)
  assert np.any(want) and np.any(~np.isfinite(X))  # both kinds are sampled
  chex.assert_trees_all_equal(np.asarray(over), want)

def test_formats_and_modes_are_traced_one_program_for_all():
  """Formats x modes vmapped in one jitted program equal each on its own."""
  names = list(PEERS)
  stacked = jax.tree.map(lambda *a: jnp.stack(a),
                         *[_knobs(n) for n in names])
  traced = jax.jit(jax.vmap(jax.vmap(
      lambda f, m: precision.quantize(X[:4096], f, m),
      in_axes=(None, 0)), in_axes=(0, None)))
  out = traced(stacked, jnp.arange(2, dtype=jnp.int32))
  chex.assert_shape(out, (len(names), 2, 4096))
  with warnings.catch_warnings():
    warnings.simplefilter('ignore')
    for i, name in enumerate(names):
      _assert_same_bits(out[i, 0], X[:4096].astype(PEERS[name][0]))


@pytest.mark.parametrize('saturate', [False, True])
@pytest.mark.parametrize('mode', ['toward_zero', 'stochastic', 'nearest_even'])
@pytest.mark.parametrize('name', PEERS)
def test_every_mode_is_gfloat_bit_for_bit(name, mode, saturate):
  _, info = PEERS[name]
  x = X[np.isfinite(X)] if (info.num_infs == 0 and not saturate) else X
  x = x[~np.isnan(x)]  # gfloat's NaN handling is not under test here
  srbits = np.random.default_rng(1).integers(
      0, 2**precision.SR_BITS, x.shape).astype(np.uint32)
  want = gfloat.round_ndarray(info, x.astype(np.float64), GFLOAT_MODES[mode],
                              saturate, srbits.astype(np.int64),
                              precision.SR_BITS)
  got = _quantize(x, _knobs(name), precision.get_mode(mode), srbits,
                  saturate=saturate)
  _assert_same_bits(got, want)


def test_stochastic_rounding_picks_a_neighbour_unbiased():
  # Values between two bfloat16 neighbours 1 and 1 + 2**-7, at fractions p.
  p = np.asarray([0.001, 0.1, 0.37, 0.5, 0.9], np.float32)
  x = (1 + p * 2.0**-7).astype(np.float32)
  n = 40_000
  keys = jax.random.split(jax.random.key(0), n)
  draws = jax.jit(jax.vmap(lambda k: precision.quantize(
      x, _knobs('bfloat16'), 2, precision.stochastic_bits(k, x.shape))))(keys)
  up = (np.asarray(draws) - 1) / 2.0**-7  # 0 or 1
  assert set(np.unique(up)) <= {0.0, 1.0}
  # Up with probability p: the mean is within 5 standard errors of p (a
  # false alarm below 1e-6 per value); a bias of 0.01 at p = 0.5 is 8 standard
  # errors away, so it would be caught.
  stderr = np.sqrt(p * (1 - p) / n)
  assert np.all(np.abs(up.mean(0) - p) < 5 * stderr + 2.0**-precision.SR_BITS)
  # Only the two neighbours occur (checked above), so the variance is the
  # Bernoulli p (1 - p) quantum**2 of an unbiased rounding, nothing more.


def test_stochastic_rounding_without_bits_is_nan_not_truncation():
  x = np.asarray([1.0078, -3.3], np.float32)
  modes = jnp.asarray([precision.get_mode('stochastic'),
                       precision.get_mode('nearest_even')])
  got = precision.quantize(x, _knobs('bfloat16'), modes)
  assert np.isnan(got[0])  # toward zero would be 1.0, silently
  chex.assert_trees_all_equal(
      got[1], np.float32(ml_dtypes.bfloat16(np.float32(-3.3))))


def test_stochastic_bits_are_uniform_and_uncorrelated():
  """The counter-hash generator, by scipy's tests: the 16 bits the rounding
  uses are uniform (chi-square over 256 bins), and neither neighbouring
  entries nor the same entry under consecutive step keys are correlated. At
  2**16 samples a correlation of 0.02 would be 5 standard errors; the
  p-value bound 1e-4 fails a sound generator once in 10,000 runs (the test
  is deterministic: fixed keys)."""
  n = 2**16
  step_keys = [jax.random.fold_in(jax.random.key(7), t) for t in range(2)]
  draws = [np.asarray(precision.stochastic_bits(k, (n,))) & 0xFFFF
           for k in step_keys]
  u = [d / 2.0**16 for d in draws]
  counts = np.bincount(draws[0] >> 8, minlength=256)
  assert stats.chisquare(counts).pvalue > 1e-4
  for a, b in [(u[0][:-1], u[0][1:]), (u[0], u[1])]:
    assert stats.pearsonr(a, b).pvalue > 1e-4
  assert abs(np.corrcoef(u[0][:-1], u[0][1:])[0, 1]) < 0.02


def test_adding_a_thousandth_a_thousand_times_in_bfloat16():
  """Nearest-even swamps the increment; stochastic rounding keeps its mean."""
  fmt = _knobs('bfloat16')

  def accumulate(mode, key):
    def add(total, k):
      bits = precision.stochastic_bits(k, ())
      return precision.quantize(total + 0.001, fmt, mode, bits), None
    return jax.lax.scan(add, jnp.float32(1.0), jax.random.split(key, 1000))[0]

  run = jax.jit(jax.vmap(accumulate, in_axes=(None, 0)))
  keys = jax.random.split(jax.random.key(1), 64)
  assert np.all(np.asarray(run(0, keys)) == 1.0)
  assert np.all(np.asarray(run(1, keys)) == 1.0)
  totals = np.asarray(run(2, keys))
  # Exact sum 2.0; each run's error is a sum of 1000 unbiased roundings, of
  # variance p(1-p) 2**-14 each (p = 0.001 / 2**-7 = 0.128): standard
  # deviation 0.083 per run, 0.0103 for the mean of 64. Bounds at 5 of them.
  assert abs(totals.mean() - 2.0) < 0.052, totals.mean()
  assert np.all(np.abs(totals - 2.0) < 0.42), totals


@pytest.mark.parametrize('name, dtype', [
    ('float32', np.float32), ('e8m23', np.float32), ('e5m10', np.float16),
    ('e8m7', ml_dtypes.bfloat16), ('e5m2', ml_dtypes.float8_e5m2),
    *[(n, d) for n, (d, _) in PEERS.items()]])
def test_format_parameters_are_ml_dtypes_finfo(name, dtype):
  fmt = precision.get_format(name)
  info = ml_dtypes.finfo(dtype)
  assert (fmt.man_bits, fmt.emin, fmt.max) == (info.nmant, info.minexp,
                                               float(info.max))


def test_custom_formats_and_bad_names():
  e8m3 = precision.get_format('e8m3')
  assert (e8m3.man_bits, e8m3.emin, e8m3.max) == (3, -126, 1.875 * 2.0**127)
  for bad, message in [('float12', "Unknown format 'float12'"),
                       ('e9m3', 'exp_bits must be an integer in 2..8; got 9'),
                       ('e5m0', 'man_bits must be an integer in 1..23; got 0')]:
    with pytest.raises(ValueError, match=message):
      precision.get_format(bad)
  with pytest.raises(ValueError, match="Unknown rounding mode 'floor'; "
                     'accepted: nearest_even, stochastic, toward_zero'):
    precision.get_mode('floor')


# ------------------------------------------------ the precision axis in a grid

_CONFIG = train_lib.TrainConfig(hidden=(8,), steps=20, batch_size=32,
                                log_every=10, rounding_events=True)
# Storage (the default placement) in float32, bfloat16 nearest-even and
# stochastic, float8: a union, since float32 and float8 need one mode each.
_GRID = grid_lib.Grid.union(*[
    grid_lib.Grid(grid_lib.Choice('precision', (p,)),
                  grid_lib.Choice('rounding', modes),
                  grid_lib.Values('learning_rate', (0.05,)), grid_lib.Seeds(2))
    for p, modes in [('float32', ('nearest_even',)),
                     ('bfloat16', ('nearest_even', 'stochastic')),
                     ('float8_e4m3fn', ('nearest_even',))]])
_CELLS = {'float32': ('float32', 'nearest_even'),
          'bfloat16': ('bfloat16', 'nearest_even'),
          'bfloat16_stochastic': ('bfloat16', 'stochastic'),
          'float8_e4m3fn': ('float8_e4m3fn', 'nearest_even')}


def _cell(res, name):
  precision_, rounding = _CELLS[name]
  return res.where(precision=precision_, rounding=rounding)


@pytest.fixture(scope='module')
def precision_run(tiny_digits):
  return engine.run(_CONFIG, _GRID, tiny_digits, partition=(), switch=())


def test_float32_member_is_the_run_without_the_axis(precision_run,
                                                     tiny_digits):
  plain = engine.run(_CONFIG, grid_lib.Grid(
      grid_lib.Values('learning_rate', (0.05,)), grid_lib.Seeds(2)),
                     tiny_digits)
  member = _cell(precision_run, 'float32')
  for m in ('train_loss', 'test_loss', 'test_accuracy'):
    chex.assert_trees_all_close(member.columns[m], plain.columns[m],
                                atol=1e-6, rtol=0)
  # Not vacuous: bfloat16 storage trains differently.
  bf16 = _cell(precision_run, 'bfloat16').columns['train_loss']
  assert np.abs(bf16[-1] - member.columns['train_loss'][-1]) > 1e-4


def test_stochastic_bits_do_not_depend_on_the_options_beside(tiny_synthetic):
  """A deep linear member without norm, in a grid with a norm axis, rounds
  stochastically as its run without the axis: its factors keep their paths,
  which key the bits (before they did not: the final losses differed by
  1.7-2.1%, 40 steps). Equal up to float reassociation (the relaxed net
  multiplies layer by layer, the plain one in its cheapest order)."""
  config = train_lib.TrainConfig(model='deep_linear', hidden=(4,), steps=20,
                                 batch_size=0, log_every=20)
  final_state = jax.jit(train_lib.final_state, static_argnums=0)
  weights = []
  for axes in ((), (grid_lib.Choice('norm', ('none', 'layer')),)):
    grid = grid_lib.Grid(grid_lib.Choice('precision', ('bfloat16',)),
                         grid_lib.Choice('rounding', ('stochastic',)), *axes,
                         grid_lib.Seeds(1))
    knobs = jax.tree.map(lambda a: a[0], grid.knobs([0]))  # norm: none
    params, _ = final_state(config.for_grid(grid), knobs, tiny_synthetic)
    weights.append(params['w'])
  chex.assert_trees_all_close(*weights, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize('name, dtype', [
    ('bfloat16', ml_dtypes.bfloat16), ('bfloat16_stochastic', ml_dtypes.bfloat16),
    ('float8_e4m3fn', ml_dtypes.float8_e4m3fn)])
def test_stored_parameters_are_values_of_the_format(name, dtype, tiny_digits):
  index = next(m.index for m in _GRID.members
               if (m.values['precision'], m.values['rounding']) == _CELLS[name])
  knobs = jax.tree.map(lambda a: a[0], _GRID.knobs([index]))
  params, _ = jax.jit(train_lib.final_state, static_argnums=0)(
      _CONFIG.for_grid(_GRID), knobs, tiny_digits)
  for leaf in jax.tree.leaves(params):
    leaf = np.asarray(leaf)
    chex.assert_trees_all_equal(leaf.astype(dtype).astype(np.float32), leaf)


def test_stochastic_and_nearest_storage_differ_and_are_recorded(precision_run):
  final = precision_run.final()
  loss = {p: _cell(final, p).columns['train_loss']
          for p in ('bfloat16', 'bfloat16_stochastic')}
  assert np.all(loss['bfloat16'] != loss['bfloat16_stochastic'])
  assert precision_run.metadata['axes']['precision'] == list(
      _GRID.choices['precision'])


def test_precision_axis_refuses_gates_and_float64():
  with pytest.raises(ValueError, match='precision cannot be a Gate'):
    _CONFIG.for_grid(grid_lib.Grid(
        grid_lib.Gate('precision', 'float32', 'bfloat16', (0.0, 0.5))))
  with pytest.raises(ValueError, match="rounds float32 values; dtype is "
                     "'float64'"):
    train_lib.TrainConfig(dtype='float64',
                          options=(('precision', ('float32', 'bfloat16')),))
  with pytest.raises(ValueError, match='gates: precision has no path'):
    attribute.AttributeConfig(gates='precision:float32..bfloat16')


def test_updates_lost_to_rounding_are_logged(precision_run):
  lost = {p: _cell(precision_run, p).columns['updates_lost'] for p in _CELLS}
  steps = _cell(precision_run, 'float32').columns['step']
  for p, values in lost.items():
    assert np.all(np.isnan(values[steps == 0])), p  # no update yet
    later = values[steps > 0]
    assert np.all((later >= 0) & (later <= 1)), (p, later)
  # float32 storage keeps almost every update; bfloat16 nearest-even drops
  # many of SGD's small ones (here 18-24%; at lr 0.01 on the default MLP
  # 82-87%, WORKSPACE.md), float8 more.
  assert np.nanmax(lost['float32']) < 0.01
  assert np.nanmin(lost['bfloat16'][steps > 0]) > 0.1
  assert np.nanmin(lost['float8_e4m3fn'][steps > 0]) > np.nanmax(
      lost['bfloat16'])


def test_the_report_gives_the_lost_updates_per_precision(precision_run):
  lines = ablation.rounding_lines(precision_run)
  assert lines[0].startswith('updates lost to rounding')
  rows = {tuple(l.split()[:2]): l for l in lines[1:]}
  assert list(rows) == list(_CELLS.values())
  final = precision_run.final()
  for (precision_, rounding), line in rows.items():
    # The mean over the 2 seeds of each member's last logged fraction.
    mean = np.mean(final.where(precision=precision_, rounding=rounding
                               ).columns['updates_lost'])
    fmt = '.1%' if abs(mean) >= 0.01 else '.3%'  # below 1%: 3 decimals
    assert line.split()[2] == format(mean, fmt), (line, mean)
