"""The methods grid_throughput compares, in one registry (METHODS, RUNNERS).

Every method is ``run_x(bench, members) -> Timing``: it trains ``members`` of
``bench``'s grid and reports compile and run seconds and final train losses.
(a), (b) and (c) are here; the PyTorch ones, (d) and (e), in ``torch_methods``.
"""

import time
from typing import Callable

import numpy as np

from benchmarks import torch_methods
from benchmarks.workloads import Bench
from benchmarks.workloads import Timing

METHODS: dict[str, str] = {
    'a': 'rahimi_jax grid (1 program)',
    'b': 'loop: jit(scan) per member',
    'c': 'loop: jit(step) per step',
    'd': 'torch eager loop',
    'e': 'torch.func vmap ensemble',
}
LOOP_METHODS = ('b', 'c', 'd')  # time a subset of members, extrapolate
TORCH_METHODS = ('d', 'e')
# torch orders float ops differently (seen: 1.1e-5). One SGD step more or
# fewer moved mlp32's final train loss by 8.1e-4 at G=1 (lr 1e-3, 200
# steps): the check must tell that apart.
TORCH_TOLERANCE = 1e-4


def tolerance(method: str, jax_tolerance: float) -> float:
  """Largest accepted |(a) - (method)| of the final train_loss."""
  return TORCH_TOLERANCE if method in TORCH_METHODS else jax_tolerance


def members_to_time(method: str, g: int, cap: int) -> np.ndarray:
  """Loop methods on a large grid time ``cap`` evenly spaced members."""
  if method not in LOOP_METHODS or g <= cap:
    return np.arange(g)
  return np.unique(np.linspace(0, g - 1, cap).round().astype(int))


def run_a(bench: Bench, members: np.ndarray) -> Timing:
  """(a) the whole grid as one compiled program."""
  del members  # (a) always runs the whole grid
  from rahimi_jax import program  # pylint: disable=g-import-not-at-top
  # A first use compiles, as (b)'s and (c)'s: the engine's own cache of
  # programs (by chunk width and devices, not G) handed a later G the
  # program an earlier one compiled (compile 4.13 -> 0.21 s, a_x_total 23.6
  # at G=64; compiling there, 0.94). This clears JAX's caches too.
  program.clear_compiled()
  start = time.perf_counter()
  first = bench.run_grid().metadata['engine']  # compiles; first call warms up
  first_s = time.perf_counter() - start
  # The same program again, warm, on the benchmark's stopwatch as (b)'s and
  # (c)'s loops: the whole call a user waits for, the engine's own work
  # around its program (choosing the chunk, finding the program, provenance,
  # gathering the results; ~5 ms a call on a 2-core Xeon, as long as the
  # program's run at G=1) included, which its ``run_s`` leaves out.
  start = time.perf_counter()
  res = bench.run_grid()
  run_s = time.perf_counter() - start
  info = res.metadata['engine']
  final = res.final().columns
  order = {m.name: m.index for m in bench.grid.members}
  idx = np.asarray([order[name] for name in final['member']])
  loss = np.empty(len(bench))
  loss[idx] = final['train_loss']
  note = (f'{info["member_batches"]} member batch(es) of '
          f'{info["member_batch_size"]}'
          if info['member_batches'] > 1 else '')
  # Its first use, as (b)'s and (c)'s stopwatch around their first call:
  # the first call's wall time (tracing, choosing the chunk, compiling, the
  # first execution) less a warm call's.
  return Timing(max(0.0, first_s - run_s), run_s,
                np.arange(len(bench)), loss, info['program_bytes'], note,
                first['chunk_choice'])


def run_b(bench: Bench, members: np.ndarray) -> Timing:
  """(b) a Python loop over members, each one jitted ``lax.scan`` run."""
  import jax  # pylint: disable=g-import-not-at-top
  from rahimi_jax import program  # pylint: disable=g-import-not-at-top
  from rahimi_jax import train as train_lib  # pylint: disable=g-import-not-at-top
  jax.clear_caches()
  knobs = [bench.member_knobs(int(i)) for i in members]
  start = time.perf_counter()
  compiled = jax.jit(train_lib.make_train(bench.config)).lower(
      knobs[0], bench.data).compile()
  jax.block_until_ready(compiled(knobs[0], bench.data))  # first-call warm-up
  compile_s = time.perf_counter() - start
  losses = []
  start = time.perf_counter()
  for k in knobs:
    out = compiled(k, bench.data)
    losses.append(np.asarray(out['train_loss'])[-1])
  run_s = time.perf_counter() - start
  return Timing(compile_s, run_s, members, np.asarray(losses),
                program.program_bytes(compiled))


def run_c(bench: Bench, members: np.ndarray) -> Timing:
  """(c) a Python loop over members and steps calling a jitted train step."""
  import jax  # pylint: disable=g-import-not-at-top
  from rahimi_jax import train as train_lib  # pylint: disable=g-import-not-at-top
  jax.clear_caches()
  loop = train_lib.make_loop(bench.config)
  init, step, log = jax.jit(loop.init), jax.jit(loop.step), jax.jit(loop.log)
  knobs = [bench.member_knobs(int(i)) for i in members]
  data, steps = bench.data, bench.steps
  targets = jax.jit(loop.targets)(data)  # once, as (a) and (b) hold them

  # Compile: the first call of each function (compile + one execution each).
  start = time.perf_counter()
  carry = init(knobs[0], data)
  carry, _ = log(knobs[0], data, carry, np.int32(0))
  jax.block_until_ready(step(knobs[0], data, carry, np.int32(1), targets))
  compile_s = time.perf_counter() - start

  losses = []
  start = time.perf_counter()
  for k in knobs:
    carry = init(k, data)
    carry, _ = log(k, data, carry, np.int32(0))
    for t in range(1, steps + 1):  # the step draws its own batch
      carry = step(k, data, carry, np.int32(t), targets)
    carry, metrics = log(k, data, carry, np.int32(steps))
    losses.append(float(metrics['train_loss']))
  run_s = time.perf_counter() - start
  note = ''
  if any(f._cache_size() != 1 for f in (init, step, log)):  # pylint: disable=protected-access
    note = 'RETRACED'
  return Timing(compile_s, run_s, members, np.asarray(losses), None, note)


RUNNERS: dict[str, Callable[[Bench, np.ndarray], Timing]] = {
    'a': run_a, 'b': run_b, 'c': run_c,
    'd': torch_methods.run_d, 'e': torch_methods.run_e,
}
