"""The chunk width a grid runs in: the ladder, the search, the cache."""

import json
import math
import os

import chex
import jax
import numpy as np
import pytest

import rahimi_jax as rj
from rahimi_jax import engine
from rahimi_jax import program
from rahimi_jax import train as train_lib
from rahimi_jax import tuning

GRID = rj.Grid(rj.Values('learning_rate', (0.01, 0.1)), rj.Seeds(4))
CONFIG = train_lib.TrainConfig(hidden=(8,), steps=12, log_every=4,
                               batch_size=16)


def test_widths_are_the_power_of_two_splits():
  for g in range(1, 300):
    got = tuning.widths(g)
    # Independently: split g into n = 1, 2, 4, ... equal chunks (n < 2g).
    want = {-(-g // n) for n in 2 ** np.arange(int(np.log2(2 * g)) + 1)}
    assert got == sorted(want), g
    for w in got:  # a power of two of chunks, padding < one per chunk
      n = 2 ** math.ceil(math.log2(-(-g // w)))
      assert -(-g // n) == w and n * w - g < n, (g, w)
  # The rule: equal chunks of at most CPU_CHUNK (ACCELERATOR_CHUNK) members,
  # on a CPU 8 of a member whose step does >= 1 MFLOP of products.
  assert (tuning.CPU_CHUNK, tuning.CPU_CHUNK_BIG, tuning.BIG_STEP_FLOPS) == (
      16, 8, 1e6)
  for g, w in ((8, 8), (16, 16), (17, 9), (108, 14), (128, 16)):
    assert tuning.rule_width(g, 'cpu') == w, g
  # The default ablation (108 members of 2.87 MFLOP), mlp128 (5.18 MFLOP),
  # deep_linear (0.24 MFLOP), mlp32 (0.32 MFLOP):
  for g, flops, w in ((108, 2.87e6, 7), (128, 5.18e6, 8), (256, 2.4e5, 16),
                      (256, 3.2e5, 16), (9, 1e6, 5), (9, 999_999, 9)):
    assert tuning.rule_width(g, 'cpu', step_flops=flops) == w, (g, flops)
  assert tuning.rule_width(4096, 'gpu', step_flops=1e7) == 4096
  assert tuning.rule_width(4096, 'gpu') == 4096
  assert tuning.rule_width(10000, 'gpu') == 2500
  with pytest.raises(ValueError, match='members'):
    tuning.widths(0)


@pytest.mark.parametrize('seed', range(20))
def test_climb_finds_the_cheapest_width_of_a_valley(seed):
  rng = np.random.default_rng(seed)
  ladder = sorted(set(rng.integers(1, 500, size=rng.integers(1, 12))))
  low = rng.integers(len(ladder))  # falls to ``low``, then rises
  cost = {w: abs(i - low) + rng.uniform(0, 0.5) for i, w in enumerate(ladder)}
  start = ladder[rng.integers(len(ladder))]
  asked = []

  def measure(widths_):
    asked.append(list(widths_))
    return {w: cost[w] for w in widths_}

  got = tuning.climb(ladder, start, measure)
  assert min(got, key=got.get) == tuning.cheapest(got) == ladder[low]
  # It goes no further than one width past the cheapest.
  i = ladder.index(start)
  assert set(got) <= set(ladder[max(0, min(i, low) - 1):max(i, low) + 2])
  # The start and its wider neighbour (at the end, its narrower), then one
  # new width at a time.
  assert asked[0] == (ladder[i:i + 2] if i + 1 < len(ladder) else
                      ladder[max(0, i - 1):])
  seen = set(asked[0])
  for batch in asked[1:]:
    assert len(set(batch) - seen) == 1, asked
    seen |= set(batch)


def test_the_climb_measures_what_its_budget_affords():
  cost = {1: 3.0, 2: 2.0, 4: 1.0, 8: 0.9, 16: 0.8, 32: 2.0}
  asked = []

  def measure(widths_):
    asked.append(widths_)
    return {w: cost[w] for w in widths_}

  budget = iter([True, True, False])  # the third batch would not fit
  got = tuning.climb(sorted(cost), 4, measure,
                     affords=lambda widths_: next(budget))
  assert asked == [[4, 8], [16, 8]] and tuning.cheapest(got) == 16, asked
  assert tuning.climb(sorted(cost), 4, measure, affords=lambda _: False) == {}
  # The wider neighbour dearer: the narrower side next.
  asked.clear()
  cost = {1: 2.0, 2: 1.0, 4: 1.5, 8: 2.0}
  assert tuning.cheapest(tuning.climb(sorted(cost), 4, measure)) == 2
  assert asked == [[4, 8], [2, 4], [1, 2]], asked


def test_near_ties_go_to_the_wider_width():
  assert tuning.cheapest({4: 1.0, 8: 1.02, 16: 1.5}, tie=0.03) == 8
  assert tuning.cheapest({4: 1.0, 8: 1.04, 16: 1.5}, tie=0.03) == 4
  # The climb goes on past a near tie, to the wider side.
  cost = {1: 3.0, 2: 2.0, 4: 1.0, 8: 1.01, 16: 1.02, 32: 2.0}
  got = tuning.climb(sorted(cost), 4, lambda ws: {w: cost[w] for w in ws},
                     tie=0.03)
  assert tuning.cheapest(got, 0.03) == 16 and 32 in got


def test_a_width_measured_for_another_grid_maps_to_the_nearest_by_ratio():
  # 2 is as near 1 as 4 (a factor 2 each way): the narrower wins the tie.
  assert tuning._nearest([1, 4, 16], 2) == 1  # pylint: disable=protected-access
  assert tuning._nearest([1, 4, 16], 3) == 4  # pylint: disable=protected-access
  assert tuning._nearest([4, 16], 8) == 4  # pylint: disable=protected-access
  assert tuning._nearest([4, 16], 9) == 16  # pylint: disable=protected-access


def test_choose_chunk_validates_the_mode():
  for bad in ('fast', 0, -3, True, 2.5, None):
    with pytest.raises(ValueError, match='auto, tune, rule or an integer'):
      tuning.choose_chunk(CONFIG, GRID, None, mode=bad)
  assert tuning.choose_chunk(CONFIG, GRID, None, mode=3).width == 3
  assert tuning.choose_chunk(CONFIG, GRID, None, mode=99).width == len(GRID)
  assert tuning.choose_chunk(CONFIG, GRID, None, mode='rule').source == 'rule'
  # A member batch cap bounds the rule's width too.
  assert tuning.choose_chunk(CONFIG, GRID, None, mode='rule',
                             most=3).width == 3


def test_signature_is_the_step_and_the_host(tiny_digits, monkeypatch):
  base = tuning.signature(CONFIG, tiny_digits)
  # How long the run is does not change the step, so not the chunk.
  longer = train_lib.TrainConfig(hidden=(8,), steps=500, log_every=50,
                                 batch_size=16)
  assert tuning.signature(longer, tiny_digits) == base
  wider = train_lib.TrainConfig(hidden=(16,), steps=12, log_every=4,
                                batch_size=16)
  assert tuning.signature(wider, tiny_digits) != base
  # A program traced at another matmul precision is another program.
  with jax.default_matmul_precision('bfloat16'):
    assert tuning.signature(CONFIG, tiny_digits) != base
  monkeypatch.setattr(tuning, 'cpu_model', lambda: 'Another CPU')
  assert tuning.signature(CONFIG, tiny_digits) != base


def test_signature_tells_the_datas_dtypes_and_shapes_apart(tiny_digits):
  """The data's shapes and dtypes are part of the program (the docstring's
  key): the same numbers in float64, or fewer rows, are another program."""
  import dataclasses  # pylint: disable=g-import-not-at-top
  base = tuning.signature(CONFIG, tiny_digits)
  as64 = dataclasses.replace(
      tiny_digits, x_train=np.asarray(tiny_digits.x_train, np.float64))
  assert tuning.signature(CONFIG, as64) != base
  fewer = dataclasses.replace(tiny_digits, x_train=tiny_digits.x_train[:128],
                              y_train=tiny_digits.y_train[:128])
  assert tuning.signature(CONFIG, fewer) != base
  same = dataclasses.replace(tiny_digits,
                             x_train=np.array(tiny_digits.x_train))
  assert tuning.signature(CONFIG, same) == base


def test_a_user_model_edited_is_another_program(tiny_digits, monkeypatch):
  """A model registered again under its name (a notebook cell edited and
  run again) is another program: not the first one's width or FLOPs."""
  from rahimi_jax import models  # pylint: disable=g-import-not-at-top
  monkeypatch.setattr(models, 'MODELS', dict(models.MODELS))
  scope = {'__name__': 'a_notebook_cell', 'mlp': models.mlp}
  signatures = []
  for width in (8, 1024):
    exec(f'def make(hidden, options):\n  return mlp(({width},), options)\n',
         scope)
    models.register('cell_mlp', scope['make'])
    config = train_lib.TrainConfig(model='cell_mlp', steps=12, log_every=4,
                                   batch_size=16)
    signatures.append(tuning.signature(config, tiny_digits))
  assert signatures[0] != signatures[1]


def test_the_rule_reads_the_members_size_traced_once(tiny_digits, tmp_path,
                                                    monkeypatch):
  monkeypatch.setenv('RAHIMI_JAX_CACHE', str(tmp_path))
  monkeypatch.setattr(tuning, '_REMEMBERED', {})
  grid = rj.Grid(rj.Seeds(40))  # widths 1, 2, 3, 5, 10, 20, 40
  config = CONFIG.for_grid(grid)
  flops = engine.step_flops(config, grid, tiny_digits)
  assert flops < tuning.BIG_STEP_FLOPS
  counted, count = [], engine.step_flops
  monkeypatch.setattr(engine, 'step_flops',
                      lambda *a, **k: counted.append(1) or count(*a, **k))
  train = train_lib.make_train(config)
  with program.run_options(chunk_size='rule'):
    first = program.execute(train, grid, tiny_digits)
    assert first.metadata['engine']['chunk_size'] == 10  # a small member
    monkeypatch.setattr(tuning, '_REMEMBERED', {})  # a later process
    again = program.execute(train, grid, tiny_digits)
  assert again.metadata['engine']['chunk_size'] == 10
  assert counted == [1]  # traced once, then read from the cache file
  with open(os.path.join(tmp_path, tuning.CACHE_FILE)) as f:
    assert [e['value'] for k, e in json.load(f).items()
            if k.startswith('step_flops ')] == [flops]
  # A member of >= BIG_STEP_FLOPS: chunks of at most 8.
  monkeypatch.setattr(tuning, 'BIG_STEP_FLOPS', flops)
  with program.run_options(chunk_size='rule'):
    big = program.execute(train, grid, tiny_digits)
  assert big.metadata['engine']['chunk_size'] == 5


def test_tuned_chunk_is_measured_once_cached_and_reproducible(
    tiny_digits, tmp_path, monkeypatch):
  monkeypatch.setenv('RAHIMI_JAX_CACHE', str(tmp_path))
  monkeypatch.setattr(tuning, 'MIN_PROBE_S', 0.005)  # short timed stretches
  config = CONFIG.for_grid(GRID)
  # Its own programs (not make_train's cached ones, which another test of
  # this worker may have compiled at these widths: compile_s 0 below).
  train = train_lib.make_train.__wrapped__(config)
  with program.run_options(chunk_size='tune'):
    first = program.execute(train, GRID, tiny_digits)
  with program.run_options(chunk_size='auto'):
    again = program.execute(train, GRID, tiny_digits)
  tuned = first.metadata['engine']['chunk_choice']
  assert tuned['source'] == 'tuned' and tuned['seconds'] > 0, tuned
  # The run's compile, done by the tuner's probe, is the run's compile time.
  assert first.metadata['engine']['compile_s'] > 0, first.metadata['engine']
  timed = {int(w): us for w, us in tuned['us_per_member_step'].items()}
  # The rule's width (8) and its neighbour were timed; the fastest won (a
  # wider one within TIE of it wins the tie).
  assert {4, 8} <= set(timed) <= set(tuning.widths(len(GRID))), timed
  assert all(0 < us < 1e5 for us in timed.values()), timed
  width = max(w for w in timed if timed[w] <= min(timed.values()) *
              (1 + tuning.TIE))
  assert first.metadata['engine']['chunk_size'] == tuned['width'] == width
  cached = again.metadata['engine']['chunk_choice']
  assert cached['source'] == 'cached' and cached['seconds'] == 0, cached
  assert cached['width'] == width
  with open(os.path.join(tmp_path, tuning.CACHE_FILE)) as f:
    (entry,) = json.load(f).values()
  assert entry['width'] == width and entry['host'] == tuning.host()
  # The same width given by hand: the same bits.
  given = program.execute(train, GRID, tiny_digits, chunk_size=width)
  assert given.metadata['engine']['chunk_choice']['source'] == 'given'
  for name in ('train_loss', 'test_loss'):
    chex.assert_trees_all_equal(given.columns[name], first.columns[name])


def test_the_probe_starts_later_widths_from_the_first_widths_start(
    tiny_digits):
  """A width probed after the first compiles ``advance`` only; its chunks'
  states, joined from the first width's ``start``, are those its own
  ``start`` gives the same members."""
  train = train_lib.make_train(CONFIG.for_grid(GRID))
  run = program._resumable(train)  # pylint: disable=protected-access
  devices = jax.local_devices()[:1]
  probe = program._Probe(train, run, GRID, tiny_digits, devices, None)  # pylint: disable=protected-access
  assert set(probe([2])) == {2} and probe.base.chunk == 2
  chunked, slots = probe._chunks(8)  # pylint: disable=protected-access
  assert not chunked.start and chunked.advance  # no start of its own
  own = program._compile_chunk(train, run, GRID, tiny_digits, devices, 8)  # pylint: disable=protected-access
  placed = {devices[0].id: tiny_digits}
  expected = own.started(slots[0][1], placed, devices[0])
  chex.assert_trees_all_equal(jax.device_get(slots[0][3]),
                              jax.device_get(expected))
  # Another probe of the width, now compiled: it costs the probe nothing,
  # yet reads what compiling it took, to estimate the next width's compile.
  again = program._Probe(train, run, GRID, tiny_digits, devices, None)  # pylint: disable=protected-access
  again([8])
  assert again.compile_s == {8: 0.0}, again.compile_s
  assert again.cost_s == {8: own.cost_s} and own.cost_s > 0, again.cost_s
  assert again.next_compile_s == own.advance_s > 0


class _Clock:
  """A ``tuning.Measure`` at known costs (seconds per member-step), whose
  each call takes ``seconds / 2`` of the clock to compile each width new to
  it and ``seconds / 2`` to time each width."""

  def __init__(self, costs, seconds, monkeypatch, spared=0.0, built=()):
    self.costs, self.seconds, self.now = costs, seconds, 100.0
    self.compile_s, self.cost_s, self.calls = {}, {}, []
    self.next_compile_s = 0.0
    self.spared = spared  # each width's programs, loaded: compiling spared
    self.built = built  # widths compiled earlier in the process
    monkeypatch.setattr(tuning.time, 'perf_counter', lambda: self.now)

  def __call__(self, widths, devices=None, rounds=tuning.PROBE_ROUNDS):
    self.rounds = rounds
    self.calls.append(list(widths) if devices is None else (
        list(widths), devices))
    new = [w for w in widths if w not in self.compile_s]
    now = [w for w in new if w not in self.built]
    self.now += self.seconds / 2 * (len(now) + len(widths))
    self.compile_s.update({w: self.seconds / 2 * (w in now) for w in new})
    self.cost_s.update({w: self.seconds / 2 + self.spared for w in new})
    if new:
      self.next_compile_s = self.seconds / 2 + self.spared
    costs = self.costs if devices is None else self.costs_on[devices]
    return {w: costs[w] for w in widths if w in costs}


def test_auto_tunes_only_runs_long_enough_to_pay(tmp_path, monkeypatch):
  monkeypatch.setenv('RAHIMI_JAX_CACHE', str(tmp_path))
  config = CONFIG.for_grid(GRID)  # 8 members x 12 steps
  # At 1 ms per member-step the run takes ~0.1 s: < 10 x tuning (3 widths
  # like the rule's, each compiled in 1 s and timed in 1 s), and timing the
  # rule's neighbour too (1 s to compile, 2 s to time both) would take
  # choosing past FIRST_USE_S. The rule, after timing the rule's width once;
  # choosing cost the probe but its compile, which the run reuses.
  measure = _Clock({2: 1e-3, 4: 1e-3, 8: 1e-3}, 2.0, monkeypatch)
  first = tuning.choose_chunk(config, GRID, None, measure=measure)
  assert (first.width, first.source) == (8, 'rule'), first
  assert first.why.startswith('too short to tune'), first
  assert measure.calls == [[8]] and first.us_per_member_step == {8: 1e3}
  assert first.seconds == 1.0, first
  again = tuning.choose_chunk(config, GRID, None, measure=measure)
  assert (again.width, again.why, again.seconds) == (
      8, 'cached: too short to tune', 0.0), again
  assert measure.calls == [[8]]
  # A run long enough: estimated from the cached speed, then tuned: the
  # climb finds the valley's floor (4), and the cache serves it after.
  long = train_lib.TrainConfig(hidden=(8,), steps=10**7, log_every=4,
                               batch_size=16).for_grid(GRID)
  measure = _Clock({1: 3.0, 2: 2.0, 4: 1.0, 8: 2.0}, 1.0, monkeypatch)
  chosen = tuning.choose_chunk(long, GRID, None, measure=measure)
  assert (chosen.width, chosen.source) == (4, 'tuned'), chosen
  assert measure.calls == [[4, 8], [2, 4]], measure.calls
  # 4 and 2 compiled (1 s), 4 and 8 twice timed, 2 once (2.5 s): what the
  # run does not reuse, 4's compile, is not the choice's.
  assert chosen.seconds == 3.0, chosen
  cached = tuning.choose_chunk(long, GRID, None, measure=measure)
  assert (cached.width, cached.source, cached.seconds) == (4, 'cached', 0.0)
  # The short run again: the chunks it ran before, not the tuned ones...
  again = tuning.choose_chunk(config, GRID, None, measure=measure)
  assert (again.width, again.why) == (8, 'cached: too short to tune'), again
  # ... until a tuning is asked for: then every run takes its width.
  asked = tuning.choose_chunk(config, GRID, None, mode=tuning.TUNE,
                              measure=measure)
  assert (asked.width, asked.source) == (4, 'tuned'), asked
  again = tuning.choose_chunk(config, GRID, None, measure=measure)
  assert (again.width, again.source) == (4, 'cached'), again


def test_a_concurrent_runs_cache_entry_is_merged_not_lost(tmp_path,
                                                         monkeypatch):
  """A long run tunes the program while a short run of it measures: the
  short run's write keeps the tuned width (it rewrote the entry it had
  read at its start, and the next long run measured again)."""
  monkeypatch.setenv('RAHIMI_JAX_CACHE', str(tmp_path))
  long = train_lib.TrainConfig(hidden=(8,), steps=10**7, log_every=4,
                               batch_size=16).for_grid(GRID)
  costs = {1: 3.0, 2: 2.0, 4: 1.0, 8: 2.0}

  class Meanwhile(_Clock):
    def __call__(self, *args, **kwargs):
      if not self.calls:  # the long run, in another process, tunes it now
        tuned = tuning.choose_chunk(long, GRID, None,
                                    measure=_Clock(costs, 1.0, monkeypatch))
        assert tuned.width == 4, tuned
        monkeypatch.setattr(tuning.time, 'perf_counter', lambda: self.now)
      return super().__call__(*args, **kwargs)

  short = tuning.choose_chunk(CONFIG.for_grid(GRID), GRID, None, measure=(
      Meanwhile({w: c * 1e-3 for w, c in costs.items()}, 2.0, monkeypatch)))
  assert short.why.startswith('too short to tune'), short
  again = tuning.choose_chunk(long, GRID, None,
                              measure=_Clock(costs, 1.0, monkeypatch))
  assert (again.width, again.source) == (4, 'cached'), again


def test_a_cache_write_waits_for_another_processs_write(tmp_path,
                                                        monkeypatch):
  """Another process updating the cache holds its lock: an update here waits,
  then merges that write, rather than replacing it with the entries it read
  before (a tuned width lost)."""
  import fcntl  # pylint: disable=g-import-not-at-top
  import threading  # pylint: disable=g-import-not-at-top
  monkeypatch.setenv('RAHIMI_JAX_CACHE', str(tmp_path))
  path = tuning.cache_path()
  with open(path + '.lock', 'a') as lock:  # another open file: as a process
    fcntl.flock(lock, fcntl.LOCK_EX)
    update = threading.Thread(target=tuning._update_cache, args=(  # pylint: disable=protected-access
        'short', lambda entry: {**entry, 'width': 2}))
    update.start()
    update.join(0.3)
    assert update.is_alive()  # waiting for the lock
    with open(path, 'w') as f:  # the other process's write
      json.dump({'long': {'width': 4}}, f)
  update.join(5)
  with open(path) as f:
    assert json.load(f) == {'long': {'width': 4}, 'short': {'width': 2}}


@pytest.mark.parametrize('entry', [
    [], {'width': None}, {'width': 0}, {'us_per_member_step': {'8': 1.0}},
    {'us_per_member_step': {'eight': 1.0}, 'probe_s': 1.0},
    {'width': 4, 'by_devices': {'1': {'devices': 'all'}}},
    {'short_runs': {'8 members x 12 steps': 'eight'}},
    {'us_per_member_step': {'8': '1.0'}, 'probe_s': 1.0},
    {'width': 4.7}, {'width': True}, {'short_runs': 'x'}])
def test_a_malformed_cache_entry_is_measured_again(entry, tmp_path,
                                                   monkeypatch):
  monkeypatch.setenv('RAHIMI_JAX_CACHE', str(tmp_path))
  config = CONFIG.for_grid(GRID)
  with open(os.path.join(tmp_path, tuning.CACHE_FILE), 'w') as f:
    json.dump({tuning.signature(config, None): entry}, f)
  measure = _Clock({2: 1e-3, 4: 1e-3, 8: 1e-3}, 2.0, monkeypatch)
  chosen = tuning.choose_chunk(config, GRID, None, measure=measure)
  assert (chosen.width, chosen.source) == (8, 'rule'), chosen
  assert measure.calls == [[8]]


def test_a_run_of_several_groups_is_as_long_as_all_of_them(tmp_path,
                                                            monkeypatch):
  # 8 members x 12 steps at 1 ms per member-step: a 0.1-s group, under 10 x
  # tuning (3 x a 10-ms probe); four such groups run together: 0.38 s.
  costs = {2: 1e-3, 4: 1e-3, 8: 1e-3}
  config = CONFIG.for_grid(GRID)
  for groups, short in (([8], True), ([8] * 4, False)):
    monkeypatch.setenv('RAHIMI_JAX_CACHE', str(tmp_path / str(len(groups))))
    chosen = tuning.choose_chunk(config, GRID, None, groups=groups,
                                 measure=_Clock(costs, 0.01, monkeypatch))
    assert chosen.source == 'tuned', chosen
    assert chosen.why.startswith('a short run (run ~0.096 s') == short, (
        groups, chosen)  # else tuned as a run that pays for it: no why
    assert bool(chosen.why) == short, chosen


def test_a_short_run_climbs_as_far_as_the_budget_affords(tmp_path,
                                                          monkeypatch):
  monkeypatch.setenv('RAHIMI_JAX_CACHE', str(tmp_path))
  # 64 members x 12 steps at ~1 ms per member-step: a 0.8-s run, too short
  # to tune (10 x 3 x ~0.4 s); the rule's width (16) compiled and timed in
  # 0.4 s. Each next width (0.2 s to compile, 0.2 s to time it and the
  # fastest again) keeps choosing within FIRST_USE_S: the climb goes on,
  # wider first, to the valley's floor (32).
  grid = rj.Grid(rj.Seeds(64))  # widths 1, 2, 4, ..., 64
  config = CONFIG.for_grid(grid)
  measure = _Clock({4: 3e-3, 8: 1.2e-3, 16: 1e-3, 32: 0.8e-3, 64: 0.9e-3},
                   0.4, monkeypatch)
  first = tuning.choose_chunk(config, grid, None, measure=measure)
  assert (first.width, first.source) == (32, 'tuned'), first
  assert measure.calls == [[16], [16, 32], [64, 32]], measure.calls
  assert measure.rounds == tuning.ROUND_PROBE_ROUNDS  # fewer stretches
  assert first.why == ('a short run (run ~0.768 s < 10 x tuning ~1.2 s): 3 '
                       'widths timed, choosing within 2 s'), first
  assert first.us_per_member_step == {16: 1e3, 32: 0.8e3, 64: 0.9e3}
  assert math.isclose(first.seconds, 1.4), first  # not 32's compile
  assert first.devices is None  # all of them: not timed on fewer
  # The same run again: the same chunks, nothing measured.
  again = tuning.choose_chunk(config, grid, None, measure=measure)
  assert (again.width, again.source, again.seconds) == (32, 'cached', 0.0)
  assert len(measure.calls) == 3
  # ... and with fewer members per chunk allowed, the nearest of its widths.
  capped = tuning.choose_chunk(config, grid, None, measure=measure, most=8)
  assert (capped.width, capped.source) == (8, 'cached'), capped
  # Another short run of the program (half the grid: its widths 1..32)
  # takes the round's width, measuring nothing.
  half = rj.Grid(rj.Seeds(32))
  other = tuning.choose_chunk(CONFIG.for_grid(half), half, None,
                              measure=measure)
  assert (other.width, other.source, other.seconds) == (32, 'cached', 0.0)
  assert other.why.endswith('the width an earlier climb measured'), other
  assert len(measure.calls) == 3
  # A slower compile: timing the wider neighbour would take choosing past
  # FIRST_USE_S (0.75 s to compile it, 1.5 s to time both): the rule.
  monkeypatch.setenv('RAHIMI_JAX_CACHE', str(tmp_path / 'slow'))
  slow = _Clock(measure.costs, 1.5, monkeypatch)
  chosen = tuning.choose_chunk(config, grid, None, measure=slow)
  assert (chosen.width, chosen.source) == (16, 'rule'), chosen
  assert chosen.why.endswith('would take choosing past 2 s'), chosen
  assert slow.calls == [[16]]
  # The same, the rule's programs compiled earlier in this process (a run
  # at that width): the next width is still estimated at their compile.
  monkeypatch.setenv('RAHIMI_JAX_CACHE', str(tmp_path / 'earlier'))
  earlier = _Clock(measure.costs, 1.5, monkeypatch, built=(16,))
  chosen = tuning.choose_chunk(config, grid, None, measure=earlier)
  assert (chosen.width, earlier.calls) == (16, [[16]]), chosen
  assert chosen.why.startswith('too short to tune'), chosen
  # The rule's width timed by an earlier process, this one has compiled
  # nothing: a width is estimated at that whole probe (0.4 s), so the rule
  # and its neighbour (compiled, 0.4 s; timed, 0.4 s) fit.
  monkeypatch.setenv('RAHIMI_JAX_CACHE', str(tmp_path / 'timed'))
  tuning._update_cache(tuning.signature(config, None), lambda _: {
      'us_per_member_step': {'16': 1e3}, 'probe_s': 0.4})
  later = _Clock(measure.costs, 0.4, monkeypatch)
  chosen = tuning.choose_chunk(config, grid, None, measure=later)
  assert (chosen.width, later.calls[0]) == (32, [16, 32]), later.calls
  # The same with a probe of 1.6 s, 0.6 of it timing: compiling and timing
  # the rule and its neighbour would take 2 x 1 + 2 x 0.6 - 1 s, past 2 s.
  monkeypatch.setenv('RAHIMI_JAX_CACHE', str(tmp_path / 'timed_slow'))
  tuning._update_cache(tuning.signature(config, None), lambda _: {
      'us_per_member_step': {'16': 1e3}, 'probe_s': 1.6, 'time_s': 0.6})
  later = _Clock(measure.costs, 1.6, monkeypatch)
  chosen = tuning.choose_chunk(config, grid, None, measure=later)
  assert (chosen.width, later.calls) == (16, []), later.calls
  assert chosen.why.endswith('would take choosing past 2 s'), chosen
  # A cache written before short runs were timed lists them: the rule's.
  monkeypatch.setenv('RAHIMI_JAX_CACHE', str(tmp_path / 'old'))
  key = tuning.signature(config, None)
  tuning._update_cache(key, lambda _: {
      'short_runs': [tuning._run_key(config, 64)],
      'us_per_member_step': {'16': 1e3}, 'probe_s': 0.4})
  old = tuning.choose_chunk(config, grid, None, measure=measure)
  assert (old.width, old.why) == (16, 'cached: too short to tune'), old
  # A climb that found the rule's width fastest says so when run again.
  monkeypatch.setenv('RAHIMI_JAX_CACHE', str(tmp_path / 'rule_best'))
  best = _Clock({8: 1.2e-3, 16: 0.8e-3, 32: 1e-3}, 0.4, monkeypatch)
  first = tuning.choose_chunk(config, grid, None, measure=best)
  assert (first.width, first.source) == (16, 'tuned'), first
  again = tuning.choose_chunk(config, grid, None, measure=best)
  assert (again.width, again.source, again.why) == (
      16, 'cached', 'cached: a short run\'s climb'), again


def test_auto_counts_the_compiling_the_compilation_cache_spared(
    tmp_path, monkeypatch):
  # 8 members x 400 steps at 1 ms per member-step: a 3.2-s run.
  config = train_lib.TrainConfig(hidden=(8,), steps=400, log_every=4,
                                 batch_size=16).for_grid(GRID)
  costs = {2: 1e-3, 4: 1e-3, 8: 1e-3}
  # The rule's width compiled and timed in 0.1 s: tuning (~0.3 s) pays.
  monkeypatch.setenv('RAHIMI_JAX_CACHE', str(tmp_path / 'a'))
  choice = tuning.choose_chunk(config, GRID, None,
                               measure=_Clock(costs, 0.1, monkeypatch))
  assert choice.source == 'tuned', choice
  # Its programs loaded from the compilation cache in 0.1 s, sparing 1 s of
  # compiling: the other widths are not there, so tuning would not pay; a
  # short run's climb counts each width at the 1 s spared, and fits.
  monkeypatch.setenv('RAHIMI_JAX_CACHE', str(tmp_path / 'b'))
  choice = tuning.choose_chunk(
      config, GRID, None, measure=_Clock(costs, 0.1, monkeypatch, spared=1.0))
  assert choice.why.startswith('a short run (run ~3.2 s < 10 x tuning ~3.3 '
                               's)'), choice
  # 2 s spared: the neighbour would take choosing past FIRST_USE_S.
  monkeypatch.setenv('RAHIMI_JAX_CACHE', str(tmp_path / 'c'))
  choice = tuning.choose_chunk(
      config, GRID, None, measure=_Clock(costs, 0.1, monkeypatch, spared=2.0))
  assert choice.why.startswith('too short to tune'), choice


def test_a_width_that_does_not_fit_is_not_chosen(tmp_path, monkeypatch):
  monkeypatch.setenv('RAHIMI_JAX_CACHE', str(tmp_path))
  # 8 would be cheapest but the probe leaves it out (over the budget).
  measure = _Clock({2: 2.0, 4: 1.0}, 1.0, monkeypatch)
  chosen = tuning.choose_chunk(CONFIG.for_grid(GRID), GRID, None,
                               mode='tune', measure=measure)
  assert chosen.width == 4 and chosen.us_per_member_step == {2: 2e6, 4: 1e6}
  # 'auto' where the rule's width (16) and wider do not fit: the run's
  # length is unknown, so the climb runs, toward narrower widths, and
  # stops at the fastest that fits; nothing over the budget is cached.
  monkeypatch.setenv('RAHIMI_JAX_CACHE', str(tmp_path / 'auto'))
  grid = rj.Grid(rj.Seeds(64))
  measure = _Clock({4: 3e-3, 8: 1.2e-3}, 0.1, monkeypatch)
  chosen = tuning.choose_chunk(CONFIG.for_grid(grid), grid, None,
                               measure=measure)
  assert (chosen.width, chosen.source) == (8, 'tuned'), chosen
  assert measure.calls[:3] == [[16], [16, 32], [8, 16]], measure.calls
  with open(tuning.cache_path()) as f:
    json.loads(f.read(), parse_constant=lambda c: pytest.fail(c))


@pytest.mark.parametrize('on_one,chosen', [(0.5, 1), (0.98, None)])
def test_fewer_devices_are_chosen_only_when_measured_faster(
    on_one, chosen, tmp_path, monkeypatch):
  monkeypatch.setenv('RAHIMI_JAX_CACHE', str(tmp_path))
  # Width 4 on 2 devices costs 1.0; on 1 device `on_one` (a host whose
  # devices outnumber its cores would measure 0.5): fewer devices only when
  # faster beyond TIE.
  measure = _Clock({2: 2.0, 4: 1.0, 8: 2.0}, 1.0, monkeypatch)
  measure.costs_on = {1: {4: on_one}}
  choice = tuning.choose_chunk(CONFIG.for_grid(GRID), GRID, None, mode='tune',
                               measure=measure, devices=2)
  assert (choice.width, choice.devices) == (4, chosen), choice
  assert measure.calls[-1] == ([4], 1)
  assert choice.us_by_devices == {1: on_one * 1e6, 2: 1e6}
  assert choice.record()['devices'] == chosen
  cached = tuning.choose_chunk(CONFIG.for_grid(GRID), GRID, None,
                               measure=measure, devices=2)
  assert (cached.source, cached.width, cached.devices) == ('cached', 4, chosen)


def test_a_tuned_width_holds_on_every_device_count(tmp_path, monkeypatch):
  # Results depend on the width only: a run on another device count takes
  # the width tuned on the first, even where it would measure another, and
  # measures (once) only how many of its devices to use.
  monkeypatch.setenv('RAHIMI_JAX_CACHE', str(tmp_path))
  assert 'devices' in tuning.host()
  monkeypatch.setattr(tuning, 'host', lambda: {'cpu': 'x', 'devices': 2})
  config = CONFIG.for_grid(GRID)
  measure = _Clock({2: 2.0, 4: 1.0, 8: 2.0}, 1.0, monkeypatch)
  measure.costs_on = {1: {4: 0.98}}
  tuned = tuning.choose_chunk(config, GRID, None, mode='tune',
                              measure=measure, devices=2)
  assert (tuned.width, tuned.devices) == (4, None), tuned
  measure.costs = {2: 2.0, 4: 1.0, 8: 0.5}  # 8 would win now
  monkeypatch.setattr(tuning, 'host', lambda: {'cpu': 'x', 'devices': 1})
  calls = len(measure.calls)
  one = tuning.choose_chunk(config, GRID, None, measure=measure, devices=1)
  assert (one.source, one.width, one.devices) == ('cached', 4, None), one
  assert len(measure.calls) == calls and one.seconds == 0.0
  monkeypatch.setattr(tuning, 'host', lambda: {'cpu': 'x', 'devices': 4})
  measure.costs_on = {1: {4: 0.5}}  # 2 chunks of 4: one device is faster
  four = tuning.choose_chunk(config, GRID, None, measure=measure, devices=4)
  assert (four.source, four.width, four.devices) == ('cached', 4, 1), four
  assert measure.calls[calls:] == [[4], ([4], 1)] and four.seconds > 0
  again = tuning.choose_chunk(config, GRID, None, measure=measure, devices=4)
  assert (again.width, again.devices, again.seconds) == (4, 1, 0.0), again
  assert len(measure.calls) == calls + 2
  assert again.us_by_devices == {1: 0.5e6, 2: 1e6}


def test_a_single_chunk_times_no_device_count():
  assert tuning.fewer_devices(8, 1, 1.0, measure=None) == {1: 1.0}
  halves = []
  costs = tuning.fewer_devices(
      2, 8, 1.0, lambda ws, k: halves.append(k) or {ws[0]: {4: 0.5, 2: 0.6}[k]})
  assert halves == [4, 2] and costs == {8: 1.0, 4: 0.5, 2: 0.6}


@pytest.mark.parametrize('files,cores', [
    ({'cpu.max': 'max 100000\n'}, None),
    ({'cpu.max': '150000 100000\n'}, 2),
    ({'cpu.max': '50000 100000\n'}, 1),
    ({'cpu/cpu.cfs_quota_us': '-1\n', 'cpu/cpu.cfs_period_us': '100000\n'},
     None),
    ({'cpu/cpu.cfs_quota_us': '200000\n', 'cpu/cpu.cfs_period_us': '100000\n'},
     2),
    ({}, None),
])
def test_usable_cores_follow_a_containers_cpu_quota(files, cores, tmp_path):
  for name, text in files.items():
    (tmp_path / name).parent.mkdir(exist_ok=True)
    (tmp_path / name).write_text(text)
  affinity = len(os.sched_getaffinity(0))
  want = affinity if cores is None else min(cores, affinity)
  assert tuning.usable_cores(str(tmp_path)) == want
