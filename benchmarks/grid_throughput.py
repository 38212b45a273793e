r"""Grid throughput: a whole grid as one XLA program against the usual ways.

For one grid (same model, data, steps, seeds and options) this times, in one
process run:

  a  rahimi_jax: ``engine.run(make_train(config), grid, data)``, one program;
  b  a Python loop over members, each a ``jit(lax.scan)`` run compiled once;
  c  a Python loop over members and steps calling a jitted train step (the
     most common JAX user code), built from ``make_loop(config)``;
  d  PyTorch eager, a Python loop over members and steps;
  e  PyTorch ``torch.func`` ensembling: ``vmap(grad)`` over the members'
     stacked parameters, with a hand-written SGD update.

It reports compile and run seconds, runs per second, (a)'s speedup over each
method, achieved matmul FLOP/s and their fraction of this machine's float32
matmul peak (measured in the same run), peak memory, and checks that (a)'s final
numbers equal (b)'s. The PyTorch runs start from rahimi_jax's initial weights
and use its batch order, so every method trains the very same runs.

Conventions: compile time includes each method's first call, whose one-time
set-up (~60 ms for a fresh XLA executable on this CPU) would otherwise swamp
small grids: (a) runs the grid twice through the engine and reports the second
(warm) ``run_s``, the engine's ``compile_s`` plus the first call's extra as
compile; (b) times ``jit(train).lower().compile()`` and one run; (c), (d) and
(e) time their first calls (compile or one-time set-up, plus one step). Loop
methods (b, c, d) time at most ``--loop_members_cap`` evenly spaced members and
extrapolate linearly to G (printed in each row); (e) always runs the whole grid
in one vmap. (a) runs with the engine's defaults, as the launchers do: one XLA
CPU device per core (``engine.use_host_cores``; ``--cpu_devices=1`` for one)
and chunks of members (``--chunk_size``). FLOPs count matmuls only, as traced
in one member's training step and evaluation
(``rahimi_jax.flops.matmul_flops``): the steps plus the two evaluations (step 0
and the last step). ``--profile`` adds where (a)'s device time goes, per XLA
instruction, at the largest G. On a shared host, torch's default OpenMP
threads can stall on tiny ops; pass ``--torch_threads=1`` there.

Default: two workloads where per-step overhead dominates (a few minutes on 2
CPU cores):

  python -m benchmarks.grid_throughput --regime=small

A compute-bound MLP:

  python -m benchmarks.grid_throughput --regime=compute --grid_sizes=1,8,64,128

PyTorch (methods d and e) is optional: ``pip install -r requirements-bench.txt``.
"""

import dataclasses
import functools
import json
import os
import resource
import sys
import time
from typing import Any, Callable, NamedTuple

from absl import app
from absl import flags
from absl import logging
import numpy as np


@dataclasses.dataclass(frozen=True)
class Workload:
  """One model + dataset + batching; a grid varies its learning rate."""
  model: str
  hidden: tuple[int, ...]
  dataset: str
  dataset_kwargs: tuple[tuple[str, Any], ...]
  batch_size: int  # 0: full batch
  lr_range: tuple[float, float]  # the grid's learning rates: geomspace(*lr_range, G)
  about: str


WORKLOADS: dict[str, Workload] = {
    'deep_linear': Workload(
        'deep_linear', (6,), 'synthetic',
        (('n_train', 1000), ('in_dim', 6), ('out_dim', 10)), 0, (1e-3, 2e-2),
        "the talk's 10x6x6 two-layer linear net, 1000 samples, full batch"),
    'mlp32': Workload('mlp', (32,), 'digits', (), 32, (1e-3, 5e-2),
                      'MLP 64-32-10 on digits, batch 32'),
    'mlp128': Workload('mlp', (128,), 'digits', (), 128, (1e-3, 5e-2),
                       'MLP 64-128-10 on digits, batch 128'),
}

# regime -> (workloads, default steps)
REGIMES: dict[str, tuple[tuple[str, ...], int]] = {
    'small': (('deep_linear', 'mlp32'), 200),
    'compute': (('mlp128',), 300),
}

METHODS: dict[str, str] = {
    'a': 'rahimi_jax grid (1 program)',
    'b': 'loop: jit(scan) per member',
    'c': 'loop: jit(step) per step',
    'd': 'torch eager loop',
    'e': 'torch.func vmap ensemble',
}
LOOP_METHODS = ('b', 'c', 'd')  # time a subset of members, extrapolate
TORCH_METHODS = ('d', 'e')
TORCH_TOLERANCE = 1e-3  # torch orders float ops differently (seen: 1.1e-5)

flags.DEFINE_enum('regime', 'small', list(REGIMES),
                  'small: deep_linear and mlp32 (per-step overhead dominates); '
                  'compute: mlp128.')
flags.DEFINE_list('grid_sizes', ['1', '8', '64', '256'],
                  'Grid sizes G (comma list of distinct positive integers).')
flags.DEFINE_list('methods', list(METHODS),
                  'Methods to time (comma list of ' + ', '.join(
                      f'{k}: {v}' for k, v in METHODS.items()) + ').')
flags.DEFINE_integer('steps', None, 'Optimizer steps per run (default: '
                     + ', '.join(f'{r} {s}' for r, (_, s) in REGIMES.items())
                     + ').')
flags.DEFINE_list('workloads', None, 'Subset of the regime\'s workloads '
                  '(default: all of them).')
flags.DEFINE_integer('loop_members_cap', 16,
                     'Loop methods (b, c, d) time at most this many members '
                     'and extrapolate linearly to G.')
flags.DEFINE_integer('peak_n', 2048, 'Side of the square float32 matmul that '
                     'measures the peak FLOP/s.')
flags.DEFINE_bool('dry_run', False, 'Check the flags and exit.')
flags.DEFINE_float('tolerance', 1e-5, 'Largest accepted |(a) - (b)| of the '
                   'final train_loss.')
flags.DEFINE_integer('torch_threads', 0, 'torch.set_num_threads for (d, e); 0 '
                     'keeps torch\'s default (one per core). On a loaded host '
                     'OpenMP threads can stall tiny ops; 1 is the robust choice.')
flags.DEFINE_integer('chunk_size', None, '(a): members vmapped together per '
                     'device (a lax.map over chunks); 0: all at once; default: '
                     'the engine\'s (engine.default_chunk_size).')
flags.DEFINE_integer('cpu_devices', 0, 'Treat the CPU as this many XLA devices '
                     '(engine.use_host_cores), so (a) shards members over '
                     'cores; 0: one per core; 1: a single device.')
flags.DEFINE_bool('profile', False, 'Also trace one more run of (a) at the '
                  'largest G and print where its device time goes, per XLA '
                  'instruction (jax.profiler; stored in the JSON record).')
flags.DEFINE_string('json_out', None, 'Write the measurements here as a JSON '
                    'list of records (atomically).')

FLAGS = flags.FLAGS


class BenchConfig(NamedTuple):
  regime: str
  workloads: tuple[str, ...]
  grid_sizes: tuple[int, ...]
  methods: tuple[str, ...]
  steps: int
  loop_members_cap: int
  peak_n: int
  tolerance: float
  json_out: str | None
  torch_threads: int = 0
  chunk_size: int | None = None
  profile: bool = False


def make_bench_config(*, regime: str, grid_sizes, methods, steps=None,
                      workloads=None, loop_members_cap=16, peak_n=2048,
                      tolerance=1e-5, json_out=None,
                      torch_threads=0, chunk_size=None,
                      profile=False) -> BenchConfig:
  """Validates the options; raises ``ValueError`` naming the bad value."""
  if regime not in REGIMES:
    raise ValueError(f'Unknown regime {regime!r}; accepted: {", ".join(REGIMES)}.')
  regime_workloads, default_steps = REGIMES[regime]
  workloads = tuple(workloads or regime_workloads)
  for w in workloads:
    if w not in regime_workloads:
      raise ValueError(f'Unknown workload {w!r} for regime {regime!r}; '
                       f'accepted: {", ".join(regime_workloads)}.')
  sizes = []
  for g in grid_sizes:
    try:
      sizes.append(int(g))
    except ValueError:
      raise ValueError(f'grid_sizes: {g!r} is not an integer.') from None
  if not sizes or min(sizes) < 1 or len(set(sizes)) != len(sizes):
    raise ValueError(f'grid_sizes must be distinct integers >= 1; got {sizes}.')
  methods = tuple(methods)
  bad = [m for m in methods if m not in METHODS]
  if bad or not methods:
    raise ValueError(f'Unknown methods {bad}; accepted: {", ".join(METHODS)}.')
  if len(set(methods)) != len(methods):
    raise ValueError(f'methods listed twice: {list(methods)}.')
  steps = default_steps if steps is None else steps
  for name, value in (('steps', steps), ('loop_members_cap', loop_members_cap),
                      ('peak_n', peak_n)):
    if not isinstance(value, (int, np.integer)) or value < 1:
      raise ValueError(f'{name} must be a positive integer; got {value!r}.')
  if not isinstance(torch_threads, (int, np.integer)) or torch_threads < 0:
    raise ValueError(f'torch_threads must be an integer >= 0; got {torch_threads!r}.')
  if chunk_size is not None and (
      not isinstance(chunk_size, (int, np.integer)) or chunk_size < 0):
    raise ValueError(f'chunk_size must be an integer >= 0; got {chunk_size!r}.')
  if not tolerance > 0:
    raise ValueError(f'tolerance must be > 0; got {tolerance}.')
  if json_out is not None:
    directory = os.path.dirname(os.path.abspath(json_out))
    if not os.path.isdir(directory) or not os.access(directory, os.W_OK):
      raise ValueError(f'json_out: directory {directory!r} is not writable.')
  # Methods in canonical order, (a) first: the others are compared with it.
  methods = tuple(m for m in METHODS if m in methods)
  return BenchConfig(regime, workloads, tuple(sorted(sizes)), methods,
                     int(steps), int(loop_members_cap), int(peak_n),
                     float(tolerance), json_out, int(torch_threads),
                     None if chunk_size is None else int(chunk_size),
                     bool(profile))


# ---------------------------------------------------------------------------
# Measurements.


class Timing(NamedTuple):
  """What one method measured on the members it ran."""
  compile_s: float
  run_s: float  # for ``members`` only
  members: np.ndarray  # indices of the members run
  final_train_loss: np.ndarray  # [len(members)]
  program_bytes: int | None = None
  note: str = ''


def maxrss_mb() -> float:
  """This process's peak resident memory so far (MB)."""
  rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
  return rss / 2**20 if sys.platform == 'darwin' else rss / 2**10


def measure_peak(n: int, reps: int = 5) -> dict[str, float]:
  """Best float32 GFLOP/s of an ``n x n`` matmul with ``jnp.dot`` and ``np.dot``."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(0)
  a = rng.standard_normal((n, n), dtype=np.float32)
  b = rng.standard_normal((n, n), dtype=np.float32)
  ja, jb = jax.device_put(a), jax.device_put(b)

  def best(fn):
    fn()  # warm-up (and compile)
    times = []
    for _ in range(reps):
      start = time.perf_counter()
      fn()
      times.append(time.perf_counter() - start)
    return 2 * n**3 / min(times) / 1e9

  out = {'jnp': best(lambda: jnp.dot(ja, jb).block_until_ready()),
         'np': best(lambda: np.dot(a, b))}
  out['peak'] = max(out['jnp'], out['np'])
  return out


class Bench:
  """One workload at one grid size: the config, grid and data every method uses."""

  def __init__(self, workload: str, g: int, steps: int, data,
               chunk_size: int | None = None):
    from rahimi_jax import grid as grid_lib  # pylint: disable=g-import-not-at-top
    from rahimi_jax import train as train_lib  # pylint: disable=g-import-not-at-top
    self.name = workload
    self.workload = w = WORKLOADS[workload]
    self.steps = steps
    self.chunk_size = chunk_size
    self.data = data
    self.lrs = np.geomspace(*w.lr_range, g).astype(np.float32)
    self.grid = grid_lib.Grid(grid_lib.Values('learning_rate', tuple(self.lrs)),
                              grid_lib.Seeds((0,)))
    if len(self.grid) != g:
      raise ValueError(f'{workload}: G={g} learning rates are not distinct in '
                       f'float32; lower G or widen the range.')
    # log_every=steps: evaluate at step 0 and at the end, in every method.
    self.config = train_lib.TrainConfig(
        model=w.model, hidden=w.hidden, steps=steps, batch_size=w.batch_size,
        log_every=steps).for_grid(self.grid)
    self._init = None

  def __len__(self):
    return len(self.grid)

  @property
  def full_batch(self) -> bool:
    bs = self.workload.batch_size
    return bs == 0 or bs >= self.data.n_train

  @property
  def batch(self) -> int:
    return self.data.n_train if self.full_batch else self.workload.batch_size

  def flops_per_member(self) -> float:
    """Matmul FLOPs of one run, counted in the programs that run.

    ``steps`` training steps and ``len(log_steps)`` evaluations, each counted
    by ``train.step_flops`` on one member's step and log functions (so a model
    that orders its products cheaply, like ``deep_linear``, is credited with
    the FLOPs it does, not those of the textbook order).
    """
    from rahimi_jax import train as train_lib  # pylint: disable=g-import-not-at-top
    step = train_lib.step_flops(self.config, self.grid, self.data)
    log = train_lib.step_flops(self.config, self.grid, self.data,
                               evaluation=True)
    return float(self.steps * step + len(self.config.log_steps()) * log)

  def run_grid(self):
    """(a): the whole grid through the engine (its compile cache reused)."""
    from rahimi_jax import engine  # pylint: disable=g-import-not-at-top
    from rahimi_jax import train as train_lib  # pylint: disable=g-import-not-at-top
    return engine.run(train_lib.make_train(self.config), self.grid, self.data,
                      chunk_size=self.chunk_size)

  def member_knobs(self, i: int) -> dict[str, Any]:
    import jax  # pylint: disable=g-import-not-at-top
    return jax.tree.map(lambda v: v[0], self.grid.knobs([i]))

  def initial_state(self):
    """Every member's initial params and per-step inputs, as numpy (cached).

    The torch methods start from these, so they train the same runs.
    """
    if self._init is None:
      import jax  # pylint: disable=g-import-not-at-top
      from rahimi_jax import train as train_lib  # pylint: disable=g-import-not-at-top
      loop = train_lib.make_loop(self.config)
      (params, _, _, _), xs = jax.jit(jax.vmap(loop.init, in_axes=(0, None)))(
          self.grid.knobs(), self.data)
      self._init = jax.device_get((params, xs))
    return self._init


def run_a(bench: Bench, members: np.ndarray) -> Timing:
  """(a) the whole grid as one compiled program."""
  del members  # (a) always runs the whole grid
  import jax  # pylint: disable=g-import-not-at-top
  jax.clear_caches()
  first = bench.run_grid().metadata['engine']  # compiles; first call warms up
  res = bench.run_grid()  # the same program again, warm
  info = res.metadata['engine']
  warm_up_s = max(0.0, first['run_s'] - info['run_s'])
  final = res.final().columns
  order = {m.name: m.index for m in bench.grid.members}
  idx = np.asarray([order[name] for name in final['member']])
  loss = np.empty(len(bench))
  loss[idx] = final['train_loss']
  note = (f'{info["member_batches"]} call(s) of {info["member_batch_size"]}'
          if info['member_batches'] > 1 else '')
  return Timing(first['compile_s'] + warm_up_s, info['run_s'],
                np.arange(len(bench)), loss, info['program_bytes'], note)


def run_b(bench: Bench, members: np.ndarray) -> Timing:
  """(b) a Python loop over members, each one jitted ``lax.scan`` run."""
  import jax  # pylint: disable=g-import-not-at-top
  from rahimi_jax import engine  # pylint: disable=g-import-not-at-top
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
                engine.program_bytes(compiled))


def run_c(bench: Bench, members: np.ndarray) -> Timing:
  """(c) a Python loop over members and steps calling a jitted train step."""
  import jax  # pylint: disable=g-import-not-at-top
  from rahimi_jax import train as train_lib  # pylint: disable=g-import-not-at-top
  jax.clear_caches()
  loop = train_lib.make_loop(bench.config)
  init, step, log = jax.jit(loop.init), jax.jit(loop.step), jax.jit(loop.log)
  knobs = [bench.member_knobs(int(i)) for i in members]
  data, steps = bench.data, bench.steps

  # Compile: the first call of each function (compile + one execution each).
  start = time.perf_counter()
  carry, xs = init(knobs[0], data)
  carry, _ = log(knobs[0], data, carry, np.int32(0))
  xs = jax.device_get(xs)
  jax.block_until_ready(step(knobs[0], data, carry, tuple(a[0] for a in xs)))
  compile_s = time.perf_counter() - start

  losses = []
  start = time.perf_counter()
  for k in knobs:
    carry, xs = init(k, data)
    carry, _ = log(k, data, carry, np.int32(0))
    xs = jax.device_get(xs)  # the host-side "data loader": one batch per step
    for t in range(steps):
      carry = step(k, data, carry, tuple(a[t] for a in xs))
    carry, metrics = log(k, data, carry, np.int32(steps))
    losses.append(float(metrics['train_loss']))
  run_s = time.perf_counter() - start
  note = ''
  if any(f._cache_size() != 1 for f in (init, step, log)):  # pylint: disable=protected-access
    note = 'RETRACED'
  return Timing(compile_s, run_s, members, np.asarray(losses), None, note)


# ---------------------------------------------------------------------------
# PyTorch: the same architecture, optimizer, initial weights and batch order.


def _torch():
  try:
    import torch  # pylint: disable=g-import-not-at-top
    import torch.func  # pylint: disable=g-import-not-at-top,unused-import
  except Exception as e:  # pylint: disable=broad-except
    return None, f'{type(e).__name__}: {e}'
  return torch, None


def _layers(bench: Bench, params, i: int):
  """Member ``i``'s ``[(w [out, in], b or None)]`` from stacked JAX params."""
  if bench.workload.model == 'deep_linear':
    return [(np.ascontiguousarray(w[i].T), None) for w in params]
  readout = params['readout']  # its weight is stored [out, in] already
  return [(np.ascontiguousarray(d['w'][i].T), np.asarray(d['b'][i]))
          for d in params['dense']] + [
              (np.ascontiguousarray(readout['w'][i]), np.asarray(readout['b'][i]))]


def _check_torch_config(bench: Bench):
  options = bench.config.option_dict()
  expected = {'optimizer': ('sgd',), 'norm': ('none',),
              'activation': ('relu',), 'init': ('lecun_normal',)}
  if options != expected:
    raise ValueError(f'The torch methods implement {expected}; got {options}.')


def _torch_module(torch, bench: Bench, layers):
  mods = []
  for j, (w, b) in enumerate(layers):
    lin = torch.nn.Linear(w.shape[1], w.shape[0], bias=b is not None)
    with torch.no_grad():
      lin.weight.copy_(torch.from_numpy(np.array(w)))
      if b is not None:
        lin.bias.copy_(torch.from_numpy(np.array(b)))
    mods.append(lin)
    if bench.workload.model == 'mlp' and j < len(layers) - 1:
      mods.append(torch.nn.ReLU())
  if bench.workload.model == 'deep_linear':
    return _chain(torch)(*mods)
  return torch.nn.Sequential(*mods)


@functools.cache
def _chain(torch):
  """Bias-free linear layers multiplied as rahimi_jax's ``deep_linear`` does."""

  class Chain(torch.nn.Sequential):

    def forward(self, x):  # (W_L ... W_1) x^T in matrix-chain order, transposed
      return torch.linalg.multi_dot(
          [m.weight for m in reversed(self)] + [x.T]).T

  return Chain


def _torch_data(torch, bench: Bench):
  d = bench.data
  classify = d.task == 'classification'

  def tensor(a):  # a writable host copy of a (device) array
    return torch.from_numpy(np.array(a))

  def y(a):
    return tensor(a).long() if classify else tensor(a)

  def loss_fn(out, target):
    if classify:
      return torch.nn.functional.cross_entropy(out, target)
    return 0.5 * (out - target).square().sum(-1).mean()

  return tensor(d.x_train), y(d.y_train), tensor(d.x_test), y(d.y_test), loss_fn


def run_d(bench: Bench, members: np.ndarray) -> Timing:
  """(d) PyTorch eager: a Python loop over members and steps."""
  torch, _ = _torch()
  _check_torch_config(bench)
  params, xs = bench.initial_state()
  x_train, y_train, x_test, y_test, loss_fn = _torch_data(torch, bench)
  modules = [_torch_module(torch, bench, _layers(bench, params, int(i)))
             for i in members]

  def evaluate(model):
    with torch.no_grad():
      train_loss = loss_fn(model(x_train), y_train)
      out = model(x_test)
      test_loss = loss_fn(out, y_test)
      if bench.data.task == 'classification':
        (out.argmax(-1) == y_test).float().mean()
    return float(train_loss), float(test_loss)

  def train_step(model, opt, xb, yb):
    opt.zero_grad(set_to_none=True)
    loss = loss_fn(model(xb), yb)
    loss.backward()
    opt.step()

  # "Compile": torch's one-time lazy set-up, timed as the first step and
  # evaluation of a throwaway copy (the analogue of (c)'s first calls).
  start = time.perf_counter()
  scratch = _torch_module(torch, bench, _layers(bench, params, int(members[0])))
  train_step(scratch, torch.optim.SGD(scratch.parameters(), lr=0.0),
             x_train[:bench.batch], y_train[:bench.batch])
  evaluate(scratch)
  compile_s = time.perf_counter() - start

  losses = []
  start = time.perf_counter()
  for i, model in zip(members, modules):
    opt = torch.optim.SGD(model.parameters(), lr=float(bench.lrs[i]))
    evaluate(model)
    if not bench.full_batch:
      idx = torch.from_numpy(xs[1][i].astype(np.int64))  # [steps, B]
    for t in range(bench.steps):
      if bench.full_batch:
        xb, yb = x_train, y_train
      else:
        xb, yb = x_train[idx[t]], y_train[idx[t]]
      train_step(model, opt, xb, yb)
    losses.append(evaluate(model)[0])
  run_s = time.perf_counter() - start
  return Timing(compile_s, run_s, members, np.asarray(losses), None,
                f'torch threads={torch.get_num_threads()}')


def run_e(bench: Bench, members: np.ndarray) -> Timing:
  """(e) torch.func ensembling: vmap(grad) over stacked params, SGD by hand."""
  torch, _ = _torch()
  from torch import func  # pylint: disable=g-import-not-at-top
  _check_torch_config(bench)
  params, xs = bench.initial_state()
  x_train, y_train, x_test, y_test, loss_fn = _torch_data(torch, bench)
  modules = [_torch_module(torch, bench, _layers(bench, params, int(i)))
             for i in members]
  stacked, buffers = func.stack_module_state(modules)
  stacked = {k: v.detach().clone() for k, v in stacked.items()}
  base = _torch_module(torch, bench, _layers(bench, params, int(members[0])))
  base = base.to('meta')
  lrs = torch.from_numpy(bench.lrs[members])
  g = len(members)

  def member_loss(p, b, x, y):
    return loss_fn(func.functional_call(base, (p, b), (x,)), y)

  data_axis = None if bench.full_batch else 0
  grads_fn = func.vmap(func.grad(member_loss),
                       in_dims=(0, 0, data_axis, data_axis))
  forward = func.vmap(lambda p, b, x: func.functional_call(base, (p, b), (x,)),
                      in_dims=(0, 0, None))
  per_member_loss = func.vmap(loss_fn, in_dims=(0, None))

  def evaluate(p):
    with torch.no_grad():
      train_loss = per_member_loss(forward(p, buffers, x_train), y_train)
      out = forward(p, buffers, x_test)
      per_member_loss(out, y_test)
      if bench.data.task == 'classification':
        (out.argmax(-1) == y_test).float().mean(-1)
    return train_loss.numpy().copy()

  # "Compile": the first vmapped gradient and evaluation (torch.func's
  # one-time set-up), on a throwaway copy of the stacked params.
  start = time.perf_counter()
  scratch = {k: v.clone() for k, v in stacked.items()}
  evaluate(scratch)
  if bench.full_batch:
    grads_fn(scratch, buffers, x_train, y_train)
  else:
    first = torch.from_numpy(xs[1][members, 0].astype(np.int64))  # [G, B]
    grads_fn(scratch, buffers, x_train[first], y_train[first])
  compile_s = time.perf_counter() - start
  del scratch

  start = time.perf_counter()
  evaluate(stacked)
  if not bench.full_batch:
    idx = torch.from_numpy(xs[1][members].astype(np.int64))  # [G, steps, B]
  for t in range(bench.steps):
    if bench.full_batch:
      xb, yb = x_train, y_train
    else:
      xb, yb = x_train[idx[:, t]], y_train[idx[:, t]]  # [G, B, ...]
    grads = grads_fn(stacked, buffers, xb, yb)
    with torch.no_grad():
      for k, p in stacked.items():
        p.sub_(lrs.view((g,) + (1,) * (p.dim() - 1)) * grads[k])
  losses = evaluate(stacked)
  run_s = time.perf_counter() - start
  return Timing(compile_s, run_s, members, losses, None,
                f'all {g} members vmapped; torch threads={torch.get_num_threads()}')


# Instructions that only hold others (their time is their contents').
_CONTAINERS = ('while', 'call', 'conditional', 'tuple', 'get-tuple-element',
               'parameter', 'constant', 'bitcast')


def profile_ops(run: Callable[[], Any], hlo_text: str,
                top: int = 10) -> list[dict[str, Any]]:
  """Device time per XLA instruction during ``run()``, from a profiler trace.

  Args:
    run: runs the compiled program once (already compiled and warm).
    hlo_text: the compiled program's HLO (``compiled.as_text()``), which
      names the instructions the trace times.
    top: how many of the costliest instructions to return.

  Returns:
    Records ``{op, opcode, shape, ms, calls, share}``, costliest first;
    ``ms`` sums every device and call, ``share`` is of all instructions' time.
  """
  import gzip  # pylint: disable=g-import-not-at-top
  import glob  # pylint: disable=g-import-not-at-top
  import re  # pylint: disable=g-import-not-at-top
  import tempfile  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top
  defs = {}
  for line in hlo_text.splitlines():
    m = re.match(r'\s*(?:ROOT )?%([\w.\-]+) = (\S+) ([\w\-]+)\(', line)
    if m:
      defs.setdefault(m.group(1), (m.group(3), m.group(2)))
  with tempfile.TemporaryDirectory() as tmp:
    jax.profiler.start_trace(tmp, create_perfetto_trace=True)
    try:
      run()
    finally:
      jax.profiler.stop_trace()
    paths = glob.glob(os.path.join(tmp, '**', '*.trace.json.gz'),
                      recursive=True)
    events = []
    for path in paths:
      with gzip.open(path) as f:
        events += json.load(f).get('traceEvents', [])
  total_us, calls = {}, {}
  for e in events:
    name = e.get('name')
    if (e.get('ph') == 'X' and name in defs
        and defs[name][0] not in _CONTAINERS):
      total_us[name] = total_us.get(name, 0.0) + e.get('dur', 0.0)
      calls[name] = calls.get(name, 0) + 1
  everything = sum(total_us.values()) or 1.0
  ranked = sorted(total_us, key=total_us.get, reverse=True)[:top]
  return [{'op': n, 'opcode': defs[n][0], 'shape': defs[n][1],
           'ms': total_us[n] / 1e3, 'calls': calls[n],
           'share': total_us[n] / everything} for n in ranked]


def profile_a(bench: Bench) -> list[dict[str, Any]]:
  """``profile_ops`` of (a)'s program on ``bench`` (compiled by ``run_a``)."""
  from rahimi_jax import engine  # pylint: disable=g-import-not-at-top
  from rahimi_jax import train as train_lib  # pylint: disable=g-import-not-at-top
  bench.run_grid()  # compiled (cached) and warm
  program = engine.compiled_programs(train_lib.make_train(bench.config))[-1]
  return profile_ops(bench.run_grid, program.as_text())


def format_profile(ops: list[dict[str, Any]]) -> str:
  lines = [f'{"share":>6} {"ms":>9} {"calls":>6}  {"opcode":<12} {"shape":<28} op']
  for o in ops:
    lines.append(f'{100 * o["share"]:>5.1f}% {o["ms"]:>9.1f} {o["calls"]:>6}  '
                 f'{o["opcode"]:<12} {o["shape"][:28]:<28} {o["op"]}')
  return '\n'.join(lines)


RUNNERS: dict[str, Callable[[Bench, np.ndarray], Timing]] = {
    'a': run_a, 'b': run_b, 'c': run_c, 'd': run_d, 'e': run_e,
}


# ---------------------------------------------------------------------------
# The benchmark.


def _members_to_time(method: str, g: int, cap: int) -> np.ndarray:
  """Loop methods on a large grid time ``cap`` evenly spaced members."""
  if method not in LOOP_METHODS or g <= cap:
    return np.arange(g)
  return np.unique(np.linspace(0, g - 1, cap).round().astype(int))


def _record(cfg: BenchConfig, bench: Bench, method: str, t: Timing,
            peak: dict[str, float], a_record: dict[str, Any] | None,
            a_loss: np.ndarray | None, device: str) -> dict[str, Any]:
  g = len(bench)
  k = len(t.members)
  run_s = t.run_s * g / k  # linear extrapolation for loop methods
  flops = bench.flops_per_member()
  gflops = flops * g / run_s / 1e9
  rec = {
      'regime': cfg.regime, 'workload': bench.name, 'G': g, 'method': method,
      'method_name': METHODS[method], 'steps': bench.steps,
      'batch_size': bench.batch, 'compile_s': float(t.compile_s),
      'run_s': float(run_s), 'run_s_measured': float(t.run_s),
      'members_timed': k, 'extrapolated': k < g,
      'ms_per_member': 1e3 * run_s / g, 'runs_per_s': g / run_s,
      'flops_per_member': flops, 'gflops': gflops,
      'peak_gflops': peak['peak'], 'peak_gflops_jnp': peak['jnp'],
      'peak_gflops_np': peak['np'], 'pct_peak': 100 * gflops / peak['peak'],
      'program_bytes': t.program_bytes, 'maxrss_mb': maxrss_mb(),
      'member_indices': [int(i) for i in t.members],
      'final_train_loss': [float(v) for v in t.final_train_loss],
      'device': 'cpu (torch)' if method in TORCH_METHODS else device,
      'note': t.note,
  }
  if method in TORCH_METHODS:
    import torch  # pylint: disable=g-import-not-at-top
    rec['torch_threads'] = torch.get_num_threads()
  if a_record is not None:
    rec['speedup_a'] = rec['run_s'] / a_record['run_s']
    rec['speedup_a_total'] = ((rec['compile_s'] + rec['run_s']) /
                              (a_record['compile_s'] + a_record['run_s']))
  if a_loss is not None:
    diff = np.abs(np.asarray(t.final_train_loss) - a_loss[t.members])
    rec['max_abs_diff_vs_a'] = float(np.max(diff)) if len(diff) else 0.0
    tol = TORCH_TOLERANCE if method in TORCH_METHODS else cfg.tolerance
    rec['agrees_with_a'] = bool(np.all(diff <= tol))
  return rec


HEADER = (f'{"G":>5} {"method":<29}{"compile_s":>10}{"run_s":>9}'
          f'{"ms/member":>11}{"runs/s":>9}{"GFLOP/s":>9}{"%peak":>7}'
          f'{"a_x_run":>9}{"a_x_total":>10}  note')


def format_row(rec: dict[str, Any]) -> str:
  note = []
  if rec['extrapolated']:
    note.append(f'extrapolated from {rec["members_timed"]}/{rec["G"]} members')
  if 'max_abs_diff_vs_a' in rec and rec['method'] != 'a':
    flag = '' if rec['agrees_with_a'] else ' FLAG'
    note.append(f'|dloss vs a|={rec["max_abs_diff_vs_a"]:.1e}{flag}')
  if rec['note']:
    note.append(rec['note'])
  speed = (f'{rec["speedup_a"]:>9.2f}{rec["speedup_a_total"]:>10.2f}'
           if 'speedup_a' in rec else f'{"-":>9}{"-":>10}')
  label = f'{rec["method"]} {rec["method_name"]}'
  return (f'{rec["G"]:>5} {label:<29}{rec["compile_s"]:>10.2f}'
          f'{rec["run_s"]:>9.3f}{rec["ms_per_member"]:>11.3f}'
          f'{rec["runs_per_s"]:>9.1f}{rec["gflops"]:>9.2f}'
          f'{rec["pct_peak"]:>7.2f}{speed}  {"; ".join(note)}')


def scaling_table(records: list[dict[str, Any]], workload: str) -> str:
  rows = [r for r in records if r['workload'] == workload]
  lines = [HEADER, '-' * len(HEADER)]
  last_g = None
  for r in sorted(rows, key=lambda r: (r['G'], r['method'])):
    if last_g is not None and r['G'] != last_g:
      lines.append('')
    last_g = r['G']
    lines.append(format_row(r))
  a = sorted((r for r in rows if r['method'] == 'a'), key=lambda r: r['G'])
  if a:
    lines.append('')
    lines.append('(a) over G: ms/member ' + ' -> '.join(
        f'{r["ms_per_member"]:.3g} (G={r["G"]})' for r in a))
    lines.append('(a) over G: compile_s ' + ' -> '.join(
        f'{r["compile_s"]:.2f} (G={r["G"]})' for r in a))
    if any(r['program_bytes'] for r in a):
      lines.append('(a) over G: program MB ' + ' -> '.join(
          f'{(r["program_bytes"] or 0) / 2**20:.2f} (G={r["G"]})' for r in a))
  return '\n'.join(lines)


def _write_json(path: str, records: list[dict[str, Any]]):
  from rahimi_jax import storage  # pylint: disable=g-import-not-at-top
  storage.write_text(path, json.dumps(records, indent=1) + '\n')


def run_benchmark(cfg: BenchConfig, out=print) -> list[dict[str, Any]]:
  """Runs every (workload, G, method) of ``cfg``; returns the records."""
  import jax  # pylint: disable=g-import-not-at-top
  from rahimi_jax import data as data_lib  # pylint: disable=g-import-not-at-top

  device = f'{jax.devices()[0].device_kind} x{jax.local_device_count()}'
  out(f'grid_throughput: regime={cfg.regime} workloads={",".join(cfg.workloads)}'
      f' G={",".join(map(str, cfg.grid_sizes))} methods={",".join(cfg.methods)}'
      f' steps={cfg.steps}')
  out(f'device: {device}; host CPUs: {os.cpu_count()}; jax {jax.__version__}')
  methods = list(cfg.methods)
  torch_wanted = [m for m in methods if m in TORCH_METHODS]
  if torch_wanted:
    torch, why = _torch()
    if torch is None:
      out(f'SKIPPING methods {",".join(torch_wanted)} (PyTorch): torch is not '
          f'importable ({why}). Install it with: pip install -r '
          'requirements-bench.txt')
      methods = [m for m in methods if m not in TORCH_METHODS]
    else:
      if cfg.torch_threads:
        torch.set_num_threads(cfg.torch_threads)
      where = ('' if jax.default_backend() == 'cpu' else
               f'; torch runs on the CPU, rahimi_jax on {jax.default_backend()}')
      out(f'torch {torch.__version__}, {torch.get_num_threads()} threads'
          f'{"" if cfg.torch_threads else " (its default)"}{where}')
  peak = measure_peak(cfg.peak_n)
  out(f'float32 matmul peak ({cfg.peak_n}x{cfg.peak_n}, default precision, '
      f'best of 5 after warm-up): jnp.dot {peak["jnp"]:.1f} GFLOP/s, np.dot {peak["np"]:.1f} '
      f'GFLOP/s -> peak {peak["peak"]:.1f} GFLOP/s')
  if any(m in LOOP_METHODS for m in methods) and max(cfg.grid_sizes) > cfg.loop_members_cap:
    out(f'Loop methods ({",".join(m for m in LOOP_METHODS if m in methods)}) '
        f'time at most {cfg.loop_members_cap} evenly spaced members and '
        'extrapolate run time linearly to G; (e) runs all members in one vmap.')

  records: list[dict[str, Any]] = []
  for name in cfg.workloads:
    w = WORKLOADS[name]
    dataset = data_lib.get_dataset(w.dataset)(**dict(w.dataset_kwargs))
    dataset = jax.device_put(dataset)  # once, so no method pays transfers
    out(f'\n== {name}: {w.about}; {cfg.steps} steps, sgd, lr geomspace'
        f'{w.lr_range}, Seeds((0,)) ==')
    for g in cfg.grid_sizes:
      bench = Bench(name, g, cfg.steps, dataset, cfg.chunk_size)
      out(f'-- G={g}: {bench.flops_per_member() / 1e6:.2f} MFLOP per run '
          f'(batch {bench.batch}) --')
      a_record, a_loss = None, None
      for method in methods:
        members = _members_to_time(method, g, cfg.loop_members_cap)
        t = RUNNERS[method](bench, members)
        rec = _record(cfg, bench, method, t, peak, a_record, a_loss, device)
        if method == 'a':
          a_record, a_loss = rec, np.asarray(t.final_train_loss)
        records.append(rec)
        out(format_row(rec))
        if rec.get('agrees_with_a') is False:
          tol = TORCH_TOLERANCE if method in TORCH_METHODS else cfg.tolerance
          out(f'FLAG: (a) and ({method}) final train_loss differ by '
              f'{rec["max_abs_diff_vs_a"]:.3g} > {tol:g}')
      if cfg.profile and g == max(cfg.grid_sizes) and a_record is not None:
        a_record['profile'] = profile_a(bench)
        out(f'\n(a) at G={g}: device time per XLA instruction (all devices '
            f'and calls; top {len(a_record["profile"])}):')
        out(format_profile(a_record['profile']))
      if cfg.json_out:
        _write_json(cfg.json_out, records)
    out(f'\n== scaling table: {name} (regime {cfg.regime}, {cfg.steps} steps; '
        'a_x_run = run_s(method) / run_s(a), a_x_total with compile) ==')
    out(scaling_table(records, name))
  for method in methods[1:]:
    recs = [r for r in records
            if r['method'] == method and 'max_abs_diff_vs_a' in r]
    if recs:
      tol = TORCH_TOLERANCE if method in TORCH_METHODS else cfg.tolerance
      bad = any(not r['agrees_with_a'] for r in recs)
      out(f'(a) vs ({method}) final train_loss: max |diff| = '
          f'{max(r["max_abs_diff_vs_a"] for r in recs):.3g} '
          f'({"FLAG: above" if bad else "within"} {tol:g})')
  out(f'peak RSS (process): {maxrss_mb():.0f} MB')
  if cfg.json_out:
    out(f'wrote {len(records)} records to {cfg.json_out}')
  return records


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  try:
    cfg = make_bench_config(
        regime=FLAGS.regime, grid_sizes=FLAGS.grid_sizes, methods=FLAGS.methods,
        steps=FLAGS.steps, workloads=FLAGS.workloads,
        loop_members_cap=FLAGS.loop_members_cap, peak_n=FLAGS.peak_n,
        tolerance=FLAGS.tolerance, json_out=FLAGS.json_out,
        torch_threads=FLAGS.torch_threads, chunk_size=FLAGS.chunk_size,
        profile=FLAGS.profile)
    if FLAGS.cpu_devices < 0:
      raise ValueError(f'cpu_devices must be >= 0; got {FLAGS.cpu_devices}.')
  except ValueError as e:
    print(f'error: {e}', file=sys.stderr)
    return 1
  if FLAGS.dry_run:
    print(f'dry run: the flags are valid ({cfg.regime}: workloads '
          f'{",".join(cfg.workloads)}, G={",".join(map(str, cfg.grid_sizes))}, '
          f'methods {",".join(cfg.methods)}); nothing was run.')
    return 0
  from rahimi_jax import engine  # pylint: disable=g-import-not-at-top
  engine.use_host_cores(FLAGS.cpu_devices or None)  # before JAX's first op
  if not FLAGS['verbosity'].present:
    logging.set_verbosity(logging.WARNING)  # the engine's progress lines
  start = time.perf_counter()
  records = run_benchmark(cfg, out=lambda s: print(s, flush=True))
  print(f'total wall time: {time.perf_counter() - start:.1f}s')
  disagree = sorted({r['method'] for r in records
                     if r.get('agrees_with_a') is False})
  if disagree:
    print(f'error: methods {",".join(disagree)} trained different runs than '
          '(a) (final train_loss beyond tolerance; see FLAG lines): their '
          'timings do not compare like with like.', file=sys.stderr)
    return 2
  return 0


if __name__ == '__main__':
  app.run(main)
