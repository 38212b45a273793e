"""What grid_throughput measures besides each method's own timing.

The machine's float32 matmul peak (``measure_peak``), the process's peak memory
(``maxrss_mb``), where a compiled program's device time goes per XLA
instruction (``profile_ops``, ``profile_a``), the matrix products its
instructions compute (``hlo_products``), and torch's rate on those products
(``torch_product_rates``).
"""

import json
import math
import os
import re
import resource
import sys
import time
from typing import Any, Callable, NamedTuple

import numpy as np

from benchmarks.workloads import Bench


def maxrss_mb() -> float:
  """This process's peak resident memory so far (MB)."""
  rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
  return rss / 2**20 if sys.platform == 'darwin' else rss / 2**10


def default_peak_n() -> int:
  """The side of the peak's matmul: 2048 on a CPU; 8192 on an accelerator,
  where a 2048 product is too short to reach the card's rate."""
  import jax  # pylint: disable=g-import-not-at-top
  return 2048 if jax.default_backend() == 'cpu' else 8192


def measure_peak(n: int | None = None, reps: int = 5) -> dict[str, Any]:
  """Best GFLOP/s of an ``n x n`` float32 matmul (default ``default_peak_n``).

  ``jnp``: ``jnp.dot`` on the default device at the precision in effect
  (``provenance.matmul_precision``, recorded as ``precision``: the grid
  programs trace with the same); ``np``: ``np.dot`` on the host CPU.
  ``peak`` is the device's: the larger of the two on a CPU, ``jnp`` on an
  accelerator (the host's BLAS is another machine's rate).
  """
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  n = n or default_peak_n()
  rng = np.random.default_rng(0)
  a = rng.standard_normal((n, n), dtype=np.float32)
  b = rng.standard_normal((n, n), dtype=np.float32)
  ja, jb = jax.device_put(a), jax.device_put(b)
  dot = jax.jit(jnp.dot)

  def best(fn):
    fn()  # warm-up (and compile)
    times = []
    for _ in range(reps):
      start = time.perf_counter()
      fn()
      times.append(time.perf_counter() - start)
    return 2 * n**3 / min(times) / 1e9

  from rahimi_jax import provenance  # pylint: disable=g-import-not-at-top
  out = {'n': n, 'reps': reps, 'precision': provenance.matmul_precision(),
         'cpu': cpu_model(),
         'jnp': best(lambda: dot(ja, jb).block_until_ready()),
         'np': best(lambda: np.dot(a, b))}
  out['peak'] = (max(out['jnp'], out['np']) if jax.default_backend() == 'cpu'
                 else out['jnp'])
  return out


def interleaved(ways: dict[Any, Callable[[], float]], repeats: int
                ) -> dict[Any, list[float]]:
  """Each way's seconds (``way()`` returns them) over ``repeats`` rounds,
  each round running every way once, in order: on a shared host the fastest
  of each is its least disturbed run, and all ways saw the same load."""
  times = {name: [] for name in ways}
  for _ in range(repeats):
    for name, way in ways.items():
      times[name].append(way())
  return times


def best_peak(*readings: dict[str, Any]) -> dict[str, Any]:
  """The best of a run's ``measure_peak`` readings, column by column.

  A shared host's speed drifts within minutes: on a 2-core AMD EPYC VM,
  a 2048^2 product read 98-214 GFLOP/s within one hour, for minutes at a
  time. A share of the peak divided by one reading taken in a slow moment
  overstates itself (a 125.6 GFLOP/s run read "86% of peak" against a 145.7
  GFLOP/s reading at its start, 61% of the next run's best reading, 205.6).
  So the benchmarks read the peak
  at their start and again after their timed runs, and divide by the best
  reading, as their timings are the fastest of several runs. ``readings``
  (in the result) lists every reading's ``peak``.
  """
  values = [v for r in readings for v in r.get('readings', [r['peak']])]
  return {**readings[0], 'jnp': max(r['jnp'] for r in readings),
          'np': max(r['np'] for r in readings), 'peak': max(values),
          'readings': values}


def peak_line(peak: dict[str, Any]) -> str:
  """One line naming what ``measure_peak`` (or ``best_peak``) measured."""
  values = peak.get('readings', [peak['peak']])
  spread = (f' (the best of {len(values)} readings in this run, the lowest '
            f'{min(values):.1f})' if len(values) > 1 else '')
  return (f'float32 matmul peak on {peak["cpu"]} ({peak["n"]}x{peak["n"]}, '
          f'matmul precision '
          f'{peak["precision"]}, best of {peak.get("reps", 5)} after '
          'warm-up): jnp.dot '
          f'{peak["jnp"]:.1f} GFLOP/s, np.dot {peak["np"]:.1f} GFLOP/s (host) '
          f'-> peak {peak["peak"]:.1f} GFLOP/s{spread}')


def krr_flops(n: int, n_test: int, dim: int) -> float:
  """Textbook FLOPs of an exact kernel ridge fit and prediction: the kernel
  matrices' squared distances as products (``2 n^2 d``, ``2 n_test n d``),
  a Cholesky (``n^3 / 3``), two triangular solves (``2 n^2``) and the
  prediction's matvec (``2 n_test n``); the kernel's exponentials not
  counted."""
  return (2 * n * n * dim + n**3 / 3 + 2 * n * n + 2 * n_test * n * dim
          + 2 * n_test * n)


def rff_ridge_flops(n: int, n_test: int, dim: int, features: int) -> float:
  """Textbook FLOPs of random Fourier features and a ridge fit and
  prediction as ``ridge_fit`` solves it: the features (``2 (n + n_test) d
  D``), then at ``D <= n`` (primal) the Gram (``2 n D^2``), ``Phi^T y``
  (``2 n D``), a Cholesky (``D^3 / 3``) and two triangular solves
  (``2 D^2``), at ``D > n`` (dual) ``Phi Phi^T`` (``2 n^2 D``), a Cholesky
  (``n^3 / 3``), two solves (``2 n^2``) and ``Phi^T alpha`` (``2 n D``);
  the prediction ``2 n_test D``."""
  big, small = max(n, features), min(n, features)
  return (2 * (n + n_test) * dim * features + 2 * small * small * big
          + 2 * n * features + small**3 / 3 + 2 * small * small
          + 2 * n_test * features)


def falkon_flops(n: int, n_test: int, dim: int, centres: int,
                 iterations: int) -> float:
  """Textbook FLOPs of ``kernel_ridge.nystrom_fit`` (FALKON, one target
  column) after ``iterations`` CG steps, and its prediction: ``K_MM``'s
  distances (``2 M^2 d``); the factors ``T = chol(K_MM)``, ``T T^T`` and
  ``A = chol(.)`` (``M^3 / 3 + 2 M^3 + M^3 / 3``); one ``K_nM^T (K_nM u +
  v)`` for the right-hand side, one per iteration and one for the Nyström
  system's residual at the end (``K_nM``'s distances ``2 n M d``, its two
  products ``4 n M``), each iteration's five triangular solves (``5 M^2``),
  the two of ``B^T`` on the right-hand side and two of ``B`` on the answer
  (``4 M^2``) and the residual's ``K_MM a`` (``2 M^2``); the prediction ``2
  n_test M (d + 1)``. CG's vector updates (``O(M)``) and the kernel's
  exponentials not counted."""
  m = centres
  return (2 * m * m * dim + 2 * m**3 / 3 + 2 * m**3
          + (iterations + 2) * (2 * n * m * dim + 4 * n * m)
          + (5 * iterations + 6) * m * m + 2 * n_test * m * (dim + 1))


def falkon_kernel_entries(n: int, n_test: int, centres: int,
                          iterations: int) -> int:
  """Kernel entries (each an exponential) that ``kernel_ridge.nystrom_fit``
  (FALKON) after ``iterations`` CG steps and its prediction evaluate, as
  ``falkon_flops`` counts its products: ``K_MM`` (``M^2``); ``K_nM`` once
  for the right-hand side, once per iteration and once for the Nyström
  system's residual at the end (``(iterations + 2) n M``); the prediction's
  ``n_test M``."""
  return ((iterations + 2) * n + n_test + centres) * centres


def rate(flops: float, seconds: float, peak: dict) -> str:
  """``flops`` in ``seconds`` as GFLOP/s and its share of the measured peak."""
  gflops = flops / seconds / 1e9
  return f'{gflops:.1f} GFLOP/s, {gflops / peak["peak"]:.1%} of peak'


# Instructions that only hold others (their time is their contents').
_CONTAINERS = ('while', 'call', 'conditional', 'tuple', 'get-tuple-element',
               'parameter', 'constant', 'bitcast')


def profile_ops(run: Callable[[], Any], hlo_text: str,
                top: int = 12, keep: str | None = None) -> dict[str, Any]:
  """Device time per XLA instruction during ``run()``, from a profiler trace.

  Args:
    run: runs the compiled program once (already compiled and warm).
    hlo_text: the compiled program's HLO (``compiled.as_text()``), which
      names the instructions the trace times.
    top: how many of the costliest instructions to return.
    keep: a folder to also keep the trace (``*.trace.json.gz``) and
      ``hlo_text`` (``program.hlo.txt``) in; None keeps neither.

  Returns:
    ``device_time``'s record of the trace, with ``wall_ms`` the run's wall
    time (busy well below it: the device waited).
  """
  import gzip  # pylint: disable=g-import-not-at-top
  import glob  # pylint: disable=g-import-not-at-top
  import tempfile  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top
  with tempfile.TemporaryDirectory() as tmp:
    jax.profiler.start_trace(tmp, create_perfetto_trace=True)
    try:
      start = time.perf_counter()
      run()
      wall_ms = 1e3 * (time.perf_counter() - start)
    finally:
      jax.profiler.stop_trace()
    paths = glob.glob(os.path.join(tmp, '**', '*.trace.json.gz'),
                      recursive=True)
    events = []
    for path in paths:
      with gzip.open(path) as f:
        events += json.load(f).get('traceEvents', [])
    if keep:  # each file whole or not at all
      from rahimi_jax import storage  # pylint: disable=g-import-not-at-top
      os.makedirs(keep, exist_ok=True)
      for path in paths:
        with open(path, 'rb') as f, storage.atomic_file(
            os.path.join(keep, os.path.basename(path)), 'wb') as out:
          out.write(f.read())
      storage.write_text(os.path.join(keep, 'program.hlo.txt'), hlo_text)
  return device_time(events, hlo_text, top) | {'wall_ms': wall_ms}


def device_time(events: list[dict[str, Any]], hlo_text: str,
                top: int = 12) -> dict[str, Any]:
  """Time per XLA instruction in a trace's events (Chrome trace format).

  A complete event (``ph == 'X'``) counts for the instruction its
  ``hlo_op`` argument names (a GPU kernel's), else the one its name is (a
  CPU thunk's); instructions that only hold others (``while``, ``call``,
  ...) do not count. Where the trace has an accelerator (a process named
  ``/device:GPU...`` or ``/device:TPU...``) only its events count: the
  host's events named as an instruction are its launches, not its work
  (counted, they doubled an instruction's calls and rate on an H200). A
  kernel there that names no instruction of ``hlo_text`` (a library's, a
  CUDA graph's, another program's) counts under its own name, opcode
  ``kernel``. An instruction's ``calls`` are its executions: the launches
  of its most launched kernel (a split-K GEMM runs two kernels a call).

  Returns:
    ``{'ops': records, 'busy_ms', 'devices'}``: records ``{op, opcode,
    shape, ms, calls, share}``, costliest first (``ms`` sums every device
    and call, ``share`` is of all counted time), and for an instruction that
    computes matrix products (``hlo_products``) their ``products`` and
    ``gflops``, their FLOPs over its time; ``busy_ms`` that total, summed
    over the ``devices`` whose events it counted (a CPU thunk's
    ``device_ordinal``, an accelerator process's ``/device:GPU:N``; at
    least 1): up to ``devices`` times the run's wall time.
  """
  defs = {}
  for _, name, shape, opcode, _ in _instructions(hlo_text):
    defs.setdefault(name, (opcode, shape))
  accelerator = {}  # pid -> its device
  for e in events:
    m = (e.get('ph') == 'M' and e.get('name') == 'process_name'
         and re.search(r'/device:((?:GPU|TPU)(?::\d+)?)',
                       str((e.get('args') or {}).get('name', ''))))
    if m:
      accelerator[e.get('pid')] = m.group(1)
  total_us, launches, devices = {}, {}, set()
  for e in events:
    if e.get('ph') != 'X' or (accelerator and e.get('pid') not in accelerator):
      continue
    op = (e.get('args') or {}).get('hlo_op') or e.get('name')
    if op in defs:
      if defs[op][0] in _CONTAINERS:
        continue
    elif e.get('pid') in accelerator:
      defs.setdefault(op, ('kernel', ''))
    else:
      continue
    total_us[op] = total_us.get(op, 0.0) + e.get('dur', 0.0)
    devices.add(accelerator.get(e.get('pid'),
                                (e.get('args') or {}).get('device_ordinal')))
    kernels = launches.setdefault(op, {})
    kernels[e.get('name')] = kernels.get(e.get('name'), 0) + 1
  calls = {op: max(k.values()) for op, k in launches.items()}
  everything = sum(total_us.values()) or 1.0
  ranked = sorted(total_us, key=total_us.get, reverse=True)[:top]
  products = hlo_products(hlo_text)
  ops = []
  for n in ranked:
    op = {'op': n, 'opcode': defs[n][0], 'shape': defs[n][1],
          'ms': total_us[n] / 1e3, 'calls': calls[n],
          'share': total_us[n] / everything}
    if n in products:  # its matmul FLOPs over its own time
      flops = sum(p.flops for p in products[n])
      op |= {'products': [p._asdict() for p in products[n]],
             'gflops': flops * calls[n] / (total_us[n] * 1e3)}
    ops.append(op)
  return {'ops': ops, 'busy_ms': sum(total_us.values()) / 1e3,
          'devices': max(1, len(devices - {None}))}


class Product(NamedTuple):
  """One matrix product of a compiled program: its operands' shapes and
  dimension numbers (as XLA's ``dot`` has them)."""
  lhs: tuple[int, ...]
  rhs: tuple[int, ...]
  lhs_contracting: tuple[int, ...]
  rhs_contracting: tuple[int, ...]
  lhs_batch: tuple[int, ...] = ()
  rhs_batch: tuple[int, ...] = ()

  @property
  def flops(self) -> int:
    """``2 x batch x M x N x K``: every lhs element meets each of the rhs's
    free columns once."""
    free = [n for d, n in enumerate(self.rhs)
            if d not in self.rhs_contracting and d not in self.rhs_batch]
    return 2 * math.prod(self.lhs) * math.prod(free)

  def einsum(self) -> str:
    """The product as an ``einsum`` equation, output ordered as XLA's
    (batch, lhs free, rhs free)."""
    lhs, rhs = [''] * len(self.lhs), [''] * len(self.rhs)
    letters = iter('abcdefghijklmnopqrstuvwxyz')
    for i, j in zip(self.lhs_batch + self.lhs_contracting,
                    self.rhs_batch + self.rhs_contracting):
      lhs[i] = rhs[j] = next(letters)
    lhs = [s or next(letters) for s in lhs]
    rhs = [s or next(letters) for s in rhs]
    out = ([lhs[i] for i in self.lhs_batch] +
           [s for i, s in enumerate(lhs)
            if i not in self.lhs_batch + self.lhs_contracting] +
           [s for j, s in enumerate(rhs)
            if j not in self.rhs_batch + self.rhs_contracting])
    return f'{"".join(lhs)},{"".join(rhs)}->{"".join(out)}'


# An instruction: its name, shape (a tuple's in parentheses), opcode, rest.
_INSTRUCTION = re.compile(
    r'\s*(?:ROOT )?%([\w.\-]+) = (\(.*?\)|\S+) ([\w\-]+)\((.*)$')
_DIMS = re.compile(r'(lhs|rhs)_(batch|contracting)_dims=\{([\d,]*)\}')
_CUBLAS_DIMS = re.compile(r'"(lhs|rhs)_(batch|contracting)_dimensions":'
                          r'\[([\d",]*)\]')


def _shape(text: str) -> tuple[int, ...] | None:
  """The dimensions of an array shape (``f32[16,128]{1,0}``); a tuple's
  first element's."""
  m = re.search(r'[a-z]\w*\[([\d,]*)\]', text)
  return None if m is None else tuple(int(d) for d in m.group(1).split(',')
                                      if d)


def _instructions(hlo_text: str):
  """``(computation, name, shape, opcode, rest)`` of each instruction of an
  HLO module's text, ``shape`` as written."""
  computation = None
  for line in hlo_text.splitlines():
    if line.endswith('{') and not line.startswith(' '):
      computation = line.replace('ENTRY ', '').split(' ', 1)[0].lstrip('%')
      continue
    m = _INSTRUCTION.match(line)
    if m:
      yield (computation, *m.groups())


def hlo_products(hlo_text: str) -> dict[str, list[Product]]:
  """The matrix products each instruction of a compiled program computes.

  A ``dot`` computes its own; a fusion those of the computation it calls (a
  CPU's YNN or oneDNN dot fusion, a GPU's Triton GEMM fusion); a cuBLAS
  custom call (``__cublas$gemm``, ``__cublas$lt$matmul``: its dimension
  numbers in its backend config) its own. Operand shapes come from their
  definitions (instruction names are unique in a module).

  Returns:
    ``{instruction: [Product, ...]}`` for every instruction that computes
    one or more.
  """
  shapes, dots, calls, inside = {}, {}, {}, {}
  for computation, name, shape, opcode, rest in _instructions(hlo_text):
    shapes[name] = _shape(shape)
    inside.setdefault(computation, []).append(name)
    called = re.search(r'calls=%([\w.\-]+)', rest)
    if called:
      calls[name] = called.group(1)
    dims = None
    if opcode == 'dot':
      dims = _DIMS.findall(rest)
    elif opcode == 'custom-call' and re.search(
        r'custom_call_target="__cublas\$(gemm|lt\$matmul)"', rest):
      dims = _CUBLAS_DIMS.findall(rest)
    if dims is not None:
      operands = re.findall(r'%([\w.\-]+)', rest.split(')', 1)[0])[:2]
      numbers = {f'{side}_{kind}': tuple(int(d) for d in re.findall(r'\d+', v))
                 for side, kind, v in dims}
      dots[name] = (operands, numbers)
  products = {}
  for name, (operands, numbers) in dots.items():
    lhs, rhs = (shapes.get(o) for o in operands)
    if lhs is not None and rhs is not None:
      products[name] = [Product(lhs, rhs, **numbers)]

  def within(computation, seen=()):
    out = []
    for name in inside.get(computation, ()):
      out += products.get(name, [])
      if name in calls and calls[name] not in seen:
        out += within(calls[name], (*seen, calls[name]))
    return out

  for name, computation in calls.items():
    found = within(computation, (computation,))
    if found and name not in products:
      products[name] = found
  return products


def torch_product_rates(profile: dict[str, Any], seconds: float = 0.02,
                        reps: int = 5) -> None:
  """Adds ``torch_gflops`` to each of ``profile``'s ops that computes
  products: the same products (shapes, dimension numbers; float32) as
  ``torch.einsum`` on one thread, the best of ``reps`` stretches of at least
  ``seconds``. What a CPU's other well-kept kernels (PyTorch's MKL or
  oneDNN) do with the products the program's instructions spend their time
  on: one core's rate beside the program's (each CPU device one core)."""
  import torch  # pylint: disable=g-import-not-at-top
  threads = torch.get_num_threads()
  torch.set_num_threads(1)
  rng = np.random.default_rng(0)
  try:
    for op in profile['ops']:
      if 'products' not in op:
        continue
      products = [Product(**{k: tuple(v) for k, v in d.items()})
                  for d in op['products']]
      work = [(p.einsum(),
               torch.from_numpy(rng.standard_normal(p.lhs, np.float32)),
               torch.from_numpy(rng.standard_normal(p.rhs, np.float32)))
              for p in products]

      def run():
        for equation, lhs, rhs in work:
          torch.einsum(equation, lhs, rhs)

      start = time.perf_counter()
      run()  # warm-up, and the repeats a stretch needs
      n = max(1, math.ceil(seconds / max(time.perf_counter() - start, 1e-9)))
      best = math.inf
      for _ in range(reps):
        start = time.perf_counter()
        for _ in range(n):
          run()
        best = min(best, (time.perf_counter() - start) / n)
      op['torch_gflops'] = sum(p.flops for p in products) / best / 1e9
  finally:
    torch.set_num_threads(threads)


def profile_a(bench: Bench, keep: str | None = None) -> dict[str, Any]:
  """``profile_ops`` of (a)'s program on ``bench`` (compiled by ``run_a``);
  ``keep``: a folder for its trace and HLO."""
  from rahimi_jax import program  # pylint: disable=g-import-not-at-top
  from rahimi_jax import train as train_lib  # pylint: disable=g-import-not-at-top
  bench.run_grid()  # compiled (cached) and warm
  compiled = program.compiled_programs(train_lib.make_train(bench.config))[-1]
  return profile_ops(bench.run_grid, compiled.as_text(), keep=keep)


def cpu_model() -> str:
  """The host CPU's model name (named beside every number a benchmark prints)."""
  from rahimi_jax import tuning  # pylint: disable=g-import-not-at-top
  return tuning.cpu_model()
