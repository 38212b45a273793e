"""Shrunk end-to-end runs of ``python -m benchmarks.grid_throughput``.

Timings are never asserted (they are measured, not promised); what is asserted
is that the benchmark runs, writes the records it promises, that the grid's
final numbers equal the per-member loop's, and that the PyTorch methods are
skipped cleanly where torch is missing (CI does not install it).
"""

import gzip
import importlib.util
import json
import os
import pathlib
import re
import subprocess
import sys

from absl.testing import flagsaver
import chex
import numpy as np
import pytest

import launchers

from benchmarks import grid_throughput as gt
from benchmarks import measure
from benchmarks import methods
from benchmarks import report
from benchmarks import suite
from benchmarks import workloads
from rahimi_jax import program

ROOT = pathlib.Path(__file__).parents[1]
REQUIRED = ('regime', 'workload', 'G', 'method', 'compile_s', 'run_s', 'gflops',
            'peak_gflops', 'matmul_precision')
TINY = ['--regime=small', '--grid_sizes=2', '--steps=5', '--peak_n=128',
        '--repeats=1']


def _env(extra_path=()):
  env = launchers.env()  # compiles at -O0: a shrunk run checks, it times nothing
  env['PYTHONPATH'] = os.pathsep.join(
      [str(ROOT), *map(str, extra_path)] +
      ([env['PYTHONPATH']] if env.get('PYTHONPATH') else []))
  return env


def _start(*flags, extra_path=()):
  return subprocess.Popen(
      [sys.executable, '-m', 'benchmarks.grid_throughput', *flags], cwd=ROOT,
      env=_env(extra_path), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
      text=True)


def _finish(proc, timeout=120):
  try:
    stdout, stderr = proc.communicate(timeout=timeout)
  finally:
    if proc.poll() is None:
      proc.kill()
      proc.wait()
  return subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)


def _torch_installed():
  try:
    return importlib.util.find_spec('torch') is not None
  except (ImportError, ValueError):
    return False


@pytest.fixture(scope='module')
def runs(tmp_path_factory):
  """Both shrunk runs, started together (each is mostly single-threaded)."""
  return launchers.once(tmp_path_factory, 'grid_throughput', _both_runs)


def _both_runs(tmp):
  # A `torch` that fails to import, ahead of any installed one: the CI case.
  fake = tmp / 'no_torch'
  (fake / 'torch').mkdir(parents=True)
  (fake / 'torch' / '__init__.py').write_text(
      'raise ImportError("torch hidden by the test")\n')
  torch = None
  if _torch_installed():
    torch = _start(*TINY, '--methods=a,d,e', '--torch_threads=1',
                   f'--json_out={tmp / "torch.json"}')
  try:
    no_torch, = launchers.launch_runs(
        [('benchmarks.grid_throughput',
          [*TINY, '--methods=a,b,c,d,e', '--profile',
           f'--profile_dir={tmp / "profile"}',
           f'--json_out={tmp / "no_torch.json"}'])],
        timeout=120, environ=_env([fake]))
    done = {'no_torch': (no_torch, tmp / 'no_torch.json')}
    if torch is not None:
      done['torch'] = (_finish(torch), tmp / 'torch.json')
    return done
  finally:
    if torch is not None and torch.poll() is None:
      torch.kill()
      torch.wait()


def _records(path):
  with open(path) as f:
    return json.load(f)


def _final_losses(records, method):
  return {r['workload']: np.asarray(r['final_train_loss'])[
      np.argsort(r['member_indices'])] for r in records if r['method'] == method}


def test_shrunk_run_without_torch(runs):
  proc, out = runs['no_torch']
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert 'SKIPPING methods d,e' in proc.stdout
  assert 'scaling table: deep_linear' in proc.stdout
  assert 'scaling table: mlp32' in proc.stdout
  # --profile: where (a)'s device time goes, per XLA instruction.
  assert proc.stdout.count('device time per XLA instruction') == 2
  for r in _records(out):
    if r['method'] == 'a':
      ops = r['profile']['ops']
      assert 0 < len(ops) <= 12
      assert 0 < r['profile']['busy_ms'] and 0 < r['profile']['wall_ms']
      shares = [o['share'] for o in ops]
      assert shares == sorted(shares, reverse=True) and 0 < sum(shares) <= 1
      assert all(o['calls'] >= 1 and o['ms'] > 0 for o in ops)
      assert any(o['opcode'] in ('dot', 'fusion') for o in ops)
      # The products' own rates (their FLOPs over their time).
      assert any(o.get('gflops', 0) > 0 for o in ops), ops
  # --profile_dir: each workload's trace and the program it timed.
  kept = out.parent / 'profile'
  for workload in ('deep_linear', 'mlp32'):
    hlo = (kept / workload / 'program.hlo.txt').read_text()
    assert hlo.startswith('HloModule') and 'ENTRY' in hlo, hlo[:200]
    (trace,) = (kept / workload).glob('*.trace.json.gz')
    with gzip.open(trace) as f:
      names = {e.get('name') for e in json.load(f)['traceEvents']}
    # The trace times the kept program's instructions.
    assert any(f'%{n} = ' in hlo for n in names if n), sorted(names)[:20]

  records = _records(out)
  assert {(r['workload'], r['method']) for r in records} == {
      (w, m) for w in ('deep_linear', 'mlp32') for m in 'abc'}
  for r in records:
    missing = [k for k in REQUIRED if k not in r]
    assert not missing, (r['method'], missing)
    assert r['regime'] == 'small' and r['G'] == 2
    chex.assert_tree_all_finite(
        [r['compile_s'], r['run_s'], r['gflops'], r['peak_gflops']])
    assert r['run_s'] > 0 and r['peak_gflops'] > 0
  a, b, c = (_final_losses(records, m) for m in 'abc')
  chex.assert_trees_all_close(b, a, atol=1e-5, rtol=0)
  chex.assert_trees_all_close(c, a, atol=1e-5, rtol=0)
  assert all(r['agrees_with_a'] for r in records if r['method'] != 'a')
  assert all(r['program_bytes'] for r in records if r['method'] == 'a')


def test_torch_methods_train_the_same_runs(runs):
  if 'torch' not in runs:
    # CI installs requirements-bench.txt: there the cross-check must run.
    assert not os.environ.get('CI'), 'torch is missing in CI'
    pytest.skip('torch is not installed (pip install -r requirements-bench.txt)')
  proc, out = runs['torch']
  assert proc.returncode == 0, proc.stderr[-3000:]
  if 'SKIPPING' in proc.stdout:
    pytest.skip('torch is installed but does not import')
  records = _records(out)
  a = _final_losses(records, 'a')
  for method in 'de':
    got = _final_losses(records, method)
    assert set(got) == {'deep_linear', 'mlp32'}
    chex.assert_trees_all_close(got, a, atol=1e-4, rtol=0)


BAD = {
    'unknown_regime': (dict(regime='huge'), "'huge'"),
    'unknown_method': (dict(methods=['a', 'f']), "'f'"),
    'non_integer_size': (dict(grid_sizes=['8', 'x']), "'x'"),
    'repeated_size': (dict(grid_sizes=['8', '8']), 'distinct'),
    'zero_steps': (dict(steps=0), 'steps'),
    'zero_repeats': (dict(repeats=0), 'repeats'),
    'workload_of_other_regime': (dict(workloads=['mlp128']), "'mlp128'"),
    'unwritable_json': (dict(json_out='/nonexistent/dir/x.json'), 'json_out'),
    'profile_dir_without_profile': (dict(profile_dir='/tmp/p'), '--profile'),
}


@pytest.mark.parametrize('name', list(BAD))
def test_bad_options_fail_early(name):
  kwargs, needle = BAD[name]
  base = dict(regime='small', grid_sizes=['2'], methods=['a'])
  with pytest.raises(ValueError) as err:
    suite.make_bench_config(**(base | kwargs))
  assert needle in str(err.value)


def test_each_method_keeps_its_fastest_run():
  runs = iter([3.0, 1.0, 2.0])

  def runner(bench, members):
    del bench, members
    run_s = next(runs)
    return workloads.Timing(run_s, run_s, np.arange(2), np.zeros(2))

  # The fastest run's seconds, the first run's compile.
  assert suite.fastest_of(runner, 3)(None, None)[:2] == (3.0, 1.0)


def test_disagreeing_methods_exit_non_zero(monkeypatch, capsys):
  records = [{'method': 'a'}, {'method': 'b', 'agrees_with_a': True},
             {'method': 'd', 'agrees_with_a': False}]
  monkeypatch.setattr(suite, 'run_benchmark', lambda cfg, out: records)
  monkeypatch.setattr(program, 'use_host_cores', lambda num=None: 1)
  with flagsaver.flagsaver():
    gt.FLAGS(['grid_throughput', '--methods=a,b,d'])
    assert gt.main(['grid_throughput']) == 2
    assert 'error: methods d trained different runs' in capsys.readouterr().err
    records[2]['agrees_with_a'] = True
    assert gt.main(['grid_throughput']) == 0


def test_bad_flag_exits_with_message():
  proc = _finish(_start('--methods=a,z'), timeout=60)
  assert proc.returncode == 1
  assert "'z'" in proc.stderr


def test_every_method_has_a_runner():
  assert list(methods.RUNNERS) == list(methods.METHODS)
  assert set(methods.LOOP_METHODS + methods.TORCH_METHODS) <= set(methods.METHODS)


def test_launcher_imports_neither_jax_nor_torch():
  """``--help`` and flag errors stay fast: the heavy imports are lazy."""
  code = ('import sys; import benchmarks.grid_throughput; '
          'print(sorted({"jax", "torch", "rahimi_jax"} & set(sys.modules)))')
  proc = subprocess.run([sys.executable, '-c', code], cwd=ROOT, env=_env(),
                        capture_output=True, text=True, timeout=60, check=True)
  assert proc.stdout.strip() == '[]', proc.stdout


class _Threads:
  """torch's thread setting, alone."""

  def __init__(self, n):
    self.n = n

  def get_num_threads(self):
    return self.n

  def set_num_threads(self, n):
    self.n = n


@pytest.mark.parametrize('default, run_s, kept, note', [
    # A loaded host: the default's threads stall on tiny ops.
    (4, {4: 2.0, 1: 0.5}, 1, 'x; faster than 4 threads: 2 s'),
    (4, {4: 0.4, 1: 0.5}, 4, 'x; faster than 1 threads: 0.5 s'),
    (1, {1: 0.5}, 1, 'x'),  # timed once
])
def test_torch_rows_keep_the_faster_thread_setting(default, run_s, kept, note):
  torch, seen = _Threads(default), []

  def runner(bench, members):
    seen.append(torch.n)
    return workloads.Timing(0.1, run_s[torch.n], members, np.zeros(1),
                            note='x')

  t = suite._torch_at_better_threads(torch, runner, None, np.arange(1))
  assert sorted(seen) == sorted(run_s) and torch.n == kept
  assert t.run_s == run_s[kept] and t.note == note, t.note


def test_loop_members_are_capped_and_spread():
  chex.assert_trees_all_equal(methods.members_to_time('b', 8, 16), np.arange(8))
  picked = methods.members_to_time('c', 256, 16)
  assert len(picked) == 16 and picked[0] == 0 and picked[-1] == 255
  chex.assert_trees_all_equal(methods.members_to_time('a', 256, 16), np.arange(256))
  chex.assert_trees_all_equal(methods.members_to_time('e', 256, 16), np.arange(256))


def test_flops_of_the_two_layer_linear_net():
  from rahimi_jax import data as data_lib  # pylint: disable=g-import-not-at-top
  bench = workloads.Bench('deep_linear', 2, 10, data_lib.synthetic())
  n, d, k = 1000, 6, 10
  # The model forms M = W2^T W1^T first (matrix-chain order), then M x^T;
  # the 10x6x6 products (M, and dW2^T = dM W1, dW1^T = W2 dM in the
  # backward pass) run as unrolled multiply-adds, not dots, so they are not
  # counted (0.9% of a step's products): only dM = ct x (k x n x d) and M x^T.
  step = 2 * k * d * n + 2 * k * n * d
  # 10 full-batch steps; 2 evaluations, each a forward on train and test.
  log = 2 * (2 * k * d * n)
  assert bench.flops_per_member() == 10 * step + 2 * log


@pytest.fixture(scope='module')
def shrunk(tmp_path_factory):
  """The other benchmarks, shrunk, started together (one import of JAX)."""
  return launchers.once(tmp_path_factory, 'benchmarks', _other_runs)


def _other_runs(tmp):
  del tmp  # they write nothing
  names = ('precision_cost', 'kernel_solvers', 'chunk_tuning')
  flag_lists = [
      # Switched groups of 4 and 3 members: one program (the second padded).
      # Named, not 'auto': --switch=auto traces each option's step for its
      # cost (4.7 of 19 s CPU here; launchers' smoke tests take that path).
      ['--members=7', '--repeats=1', '--steps=2', '--peak_n=64',
       '--switch=placement'],
      ['--parts=peers,sweep,scale', '--n=300', '--n_test=50', '--features=32',
       '--sweep_n=64', '--sweep_bandwidths=1,2', '--sweep_lams=1e-3',
       '--repeats=1', '--peak_n=64', '--scale_n=400', '--scale_centres=40'],
      ['--workloads=mlp32', '--grid_size=8', '--steps=3', '--repeats=1',
       '--min_width=8', '--max_width=8', '--peak_n=64', '--probe_s=0.002']]
  procs = launchers.launch_runs([(f'benchmarks.{name}', flags)
                                 for name, flags in zip(names, flag_lists)])
  return dict(zip(names, procs))


def test_precision_cost_benchmark_runs_shrunk(shrunk):
  proc = shrunk['precision_cost']
  assert proc.returncode == 0, proc.stderr[-3000:]
  lines = proc.stdout.splitlines()
  assert 'matmul peak' in lines[0] and 'G=7, 2 steps' in lines[0], lines
  rows = [l.rsplit(None, 4) for l in lines[2:5]]
  assert [r[0] for r in rows] == ['fp32', 'mixed', 'mixed + events'] and all(
      len(r) == 5 and r[4].endswith('%') for r in rows), lines
  assert lines[5].startswith('mixed / fp32 time per member-step: '), lines
  assert lines[6].startswith('mixed + events / fp32 time per member-step: ')
  assert lines[7].startswith('mixed: switched: placement (2 groups'), lines


def test_kernel_solvers_benchmark_runs_shrunk(shrunk):
  """Each side timed on OpenBLAS's default threads and on one (the faster
  named); exact kernel ridge agrees with scikit-learn's KernelRidge."""
  proc = shrunk['kernel_solvers']
  assert proc.returncode == 0, proc.stderr[-3000:]
  lines = [l for l in proc.stdout.splitlines() if re.search(r'\bratio ', l)]
  assert len(lines) == 3, proc.stdout
  threads = r'\((default|1 BLAS thread)[;)]'
  for line in lines:
    assert len(re.findall(threads, line)) == 2, line
  exact = re.search(r'exact KRR.*test mse ([\d.]+) vs ([\d.]+)', lines[1])
  np.testing.assert_allclose(*map(float, exact.groups()), rtol=1e-2)
  gap = float(re.search(r'prediction difference ([\d.e+-]+)', lines[2])[1])
  assert gap < 1e-2, lines[2]
  # Our rate on textbook FLOPs, against the peak measured in the run:
  # n=300, 50 test rows, d=8: 2 n^2 d + n^3/3 + 2 n^2 + 2 n_test n d + 2 n_test n.
  assert measure.krr_flops(300, 50, 8) == (
      1_440_000 + 9_000_000 + 180_000 + 240_000 + 30_000)
  # FALKON at n=100, 50 test rows, d=2, M=4 after 3 iterations: K_MM
  # 2 M^2 d, the factors M^3/3 + 2 M^3 + M^3/3, five normal products
  # (2 n M d + 4 n M: right-hand side, 3 iterations, the residual), 5 x 3 +
  # 4 triangular solves of M^2 and K_MM a (2 M^2), prediction 2 n_test M
  # (d + 1).
  np.testing.assert_allclose(
      measure.falkon_flops(100, 50, 2, 4, 3),
      64 + 64 * 8 / 3 + 5 * 3200 + 19 * 16 + 32 + 1200)
  assert 'matmul peak' in proc.stdout
  (falkon,) = [l for l in proc.stdout.splitlines() if l.startswith('FALKON')]
  # The recurrence reached tol 1e-5 before the cap of 100 iterations.
  assert int(re.search(r'(\d+) iterations \(tol 1e-05\)', falkon)[1]) < 100
  assert re.search(r"Nyström system's residual [\d.]+e-\d+ \(converged "
                   r'(True|False)', falkon), falkon
  for line in lines + [falkon]:
    assert re.search(r'[\d.]+ GFLOP/s, [\d.]+% of peak', line), line


def test_chunk_tuning_benchmark_runs_shrunk(shrunk):
  proc = shrunk['chunk_tuning']
  assert proc.returncode == 0, proc.stderr[-3000:]
  out = proc.stdout
  assert 'matmul peak' in out and '== mlp32: G=8, 3 steps; rule width 8' in out
  # The hand-picked width timed; the tuner measured, then read its cache.
  assert out.count('\n     8 ') == 1 and '\n     4 ' not in out, out
  # The default's first use: too short to tune, so the rule's width or, if
  # that fits tuning.FIRST_USE_S, the fastest of it and its neighbour; its
  # later runs against the best hand-picked width.
  auto = re.search(r'auto on first use: width (8 \(rule: too short to tune|'
                   r'[48] \(tuned: a short run).*later runs [\d.]+ s = '
                   r'[\d.]+x the best hand-picked', out)
  assert auto, out
  assert 'tuned, then cached)' in out, out
  # What the chosen width cost on each device count timed ('one only' where
  # its chunks fill one device).
  assert 'us per member-step by device count: ' in out, out
  (row,) = [l for l in out.splitlines() if l.startswith('mlp32 ')]
  fields = row.split()
  assert fields[1] == auto[1][0] and fields[2] in ('8', '4', '2', '1'), row
  assert fields[-1] == '0.0', row


def test_device_time_attributes_gpu_kernels_by_their_hlo_op():
  """A GPU trace (kernels on a /device:GPU process, named by the library that
  ran them, with the instruction in ``args.hlo_op``; the host's launch
  annotations named as the instruction) and a CPU one (thunks named as the
  instruction, on the host) are both read per instruction."""
  hlo = '\n'.join([
      '%gemm_computation {',
      '  %a = f32[8,2]{1,0} parameter(0)',
      '  %b = f32[2,4]{1,0} parameter(1)',
      '  ROOT %d = f32[8,4]{1,0} dot(f32[8,2]{1,0} %a, f32[2,4]{1,0} %b), '
      'lhs_contracting_dims={1}, rhs_contracting_dims={0}',
      '}',
      'ENTRY %main {',
      '  %gemm_fusion.1 = f32[8,4]{1,0} fusion(f32[8,2] %p0, f32[2,4] %p1), '
      'kind=kCustom, calls=%gemm_computation',
      '  %while.2 = (s32[]) while((s32[]) %t), condition=%c, body=%b',
      '  ROOT %loop_fusion.3 = f32[8]{0} fusion(f32[8,4] %gemm_fusion.1)',
      '}'])
  events = [
      {'ph': 'M', 'name': 'process_name', 'pid': 1,
       'args': {'name': '/device:GPU:0 (stream 7)'}},
      {'ph': 'M', 'name': 'process_name', 'pid': 2,
       'args': {'name': '/host:CPU'}},
      # Two launches of the GEMM, by the library's kernel name.
      {'ph': 'X', 'pid': 1, 'name': 'sm90_xmma_gemm_f32', 'dur': 300.0,
       'args': {'hlo_op': 'gemm_fusion.1'}},
      {'ph': 'X', 'pid': 1, 'name': 'sm90_xmma_gemm_f32', 'dur': 100.0,
       'args': {'hlo_op': 'gemm_fusion.1'}},
      # A split-K call of it: the product and its reduction, two kernels.
      {'ph': 'X', 'pid': 1, 'name': 'triton_gemm_split_k', 'dur': 60.0,
       'args': {'hlo_op': 'gemm_fusion.1'}},
      {'ph': 'X', 'pid': 1, 'name': 'triton_reduce_split_k', 'dur': 40.0,
       'args': {'hlo_op': 'gemm_fusion.1'}},
      {'ph': 'X', 'pid': 1, 'name': 'loop_fusion.3', 'dur': 50.0},
      {'ph': 'X', 'pid': 1, 'name': 'command_buffer_9', 'dur': 50.0},
      # Not counted: a container, host-side work, an instant event.
      {'ph': 'X', 'pid': 1, 'name': 'while.2', 'dur': 1e6},
      {'ph': 'X', 'pid': 2, 'name': 'PjitFunction(main)', 'dur': 1e6},
      {'ph': 'X', 'pid': 2, 'name': 'gemm_fusion.1', 'dur': 7.0,
       'args': {'hlo_op': 'gemm_fusion.1'}},  # a launch, on the host
      {'ph': 'X', 'pid': 2, 'name': 'loop_fusion.3', 'dur': 5.0},
      {'ph': 'i', 'pid': 1, 'name': 'loop_fusion.3', 'dur': 1e6},
  ]
  got = measure.device_time(events, hlo)
  assert got['busy_ms'] == pytest.approx(0.6)
  assert [(o['op'], o['opcode'], o['shape'], o['calls']) for o in got['ops']] == [
      ('gemm_fusion.1', 'fusion', 'f32[8,4]{1,0}', 2),
      ('loop_fusion.3', 'fusion', 'f32[8]{0}', 1),
      ('command_buffer_9', 'kernel', '', 1)]
  chex.assert_trees_all_close([o['share'] for o in got['ops']],
                              [5 / 6, 1 / 12, 1 / 12])
  # The GEMM's rate: 2 * 8 * 2 * 4 FLOPs a call, 2 calls in 500 us.
  assert got['ops'][0]['gflops'] == pytest.approx(2 * 128 / 500e3)
  # On a CPU trace, only the program's own instructions count.
  cpu = [{'ph': 'X', 'pid': 2, 'name': 'loop_fusion.3', 'dur': 20.0},
         {'ph': 'X', 'pid': 2, 'name': 'Eigen::ThreadPool', 'dur': 80.0}]
  got = measure.device_time(cpu, hlo)
  assert [o['op'] for o in got['ops']] == ['loop_fusion.3']
  assert got['busy_ms'] == pytest.approx(0.02)


def test_busy_time_of_several_cpu_devices_says_it_is_summed():
  """On a CPU of two devices each thunk's event names its device: the busy
  time sums both, up to twice the wall, and the profile says so."""
  hlo = '\n'.join(['ENTRY %main {',
                   '  %p = f32[8]{0} parameter(0)',
                   '  ROOT %loop_fusion.3 = f32[8]{0} fusion(f32[8] %p)', '}'])
  cpu = [{'ph': 'X', 'pid': 2, 'tid': t, 'name': 'loop_fusion.3',
          'dur': 3000.0, 'args': {'hlo_op': 'loop_fusion.3',
                                  'device_ordinal': str(t)}}
         for t in (0, 1)]
  got = measure.device_time(cpu, hlo) | {'wall_ms': 4.0}
  assert got['busy_ms'] == pytest.approx(6.0) and got['devices'] == 2
  line = report.format_profile(got).splitlines()[0]
  # 6 ms of busy time in a 4-ms run is two devices' 75% of their time.
  assert 'summed over 2 devices' in line and '(75% of their time)' in line, line
  one = measure.device_time(cpu[:1], hlo) | {'wall_ms': 4.0}
  assert one['devices'] == 1
  assert report.format_profile(one).startswith(
      "device busy 3.0 ms of the run's 4.0 ms wall;")


def test_grid_run_time_is_the_warm_calls_wall(monkeypatch):
  """(a)'s run is the warm call as a user waits for it (the loops' (b), (c)
  are timed whole), not the engine's own ``run_s``, which leaves out its
  work around the program."""
  import time  # pylint: disable=g-import-not-at-top
  import types  # pylint: disable=g-import-not-at-top
  monkeypatch.setattr(program, 'clear_compiled', lambda: None)

  class Bench:
    grid = types.SimpleNamespace(members=[types.SimpleNamespace(
        name='m0', index=0)])

    def __len__(self):
      return 1

    def run_grid(self):
      time.sleep(0.05)  # the engine's work around its program
      final = types.SimpleNamespace(columns={'member': ['m0'],
                                             'train_loss': [0.5]})
      return types.SimpleNamespace(
          metadata={'engine': {'run_s': 0.001, 'wall_s': 0.06,
                               'member_batches': 1, 'member_batch_size': 1,
                               'program_bytes': 1, 'chunk_choice': None}},
          final=lambda: final)

  t = methods.run_a(Bench(), np.arange(1))
  assert t.run_s >= 0.05, t
  chex.assert_trees_all_close(t.final_train_loss, np.array([0.5]))


def test_torch_agreement_tells_one_step_apart():
  # One SGD step more or fewer moved mlp32's final train loss by 8.1e-4 at
  # G=1 (lr 1e-3, 200 steps; torch's own rounding: at most 1.1e-5 seen).
  assert methods.tolerance('d', 1e-5) < 8.1e-4 / 4
  assert methods.tolerance('e', 1e-5) < 8.1e-4 / 4
  assert methods.tolerance('b', 1e-5) == 1e-5


def test_falkon_kernel_entries_are_the_exponentials_it_evaluates():
  """Counted by hand, and as the ``exp`` evaluations of the traced fit and
  prediction (a ``while`` body once per CG iteration, a ``scan``'s per
  trip): ``K_MM``, ``K_nM`` for the right-hand side, each iteration and
  the final residual, and the prediction's ``K(x_test, centres)``."""
  import jax  # pylint: disable=g-import-not-at-top
  from jax.extend import core as jex_core  # pylint: disable=g-import-not-at-top
  from rahimi_jax import kernels  # pylint: disable=g-import-not-at-top
  from rahimi_jax.solvers import kernel_ridge as kr  # pylint: disable=g-import-not-at-top
  assert measure.falkon_kernel_entries(100, 50, 4, 3) == (5 * 100 + 50 + 4) * 4
  n, n_test, m, it = 64, 8, 6, 3
  rng = np.random.default_rng(0)
  x, x_test = (rng.standard_normal((k, 2), np.float32) for k in (n, n_test))
  y = rng.standard_normal(n, np.float32)

  def solve(x, y, x_test):
    c = x[:m]
    res = kr.nystrom_fit('gaussian', x, y, c, 1.0, 1e-3, maxiter=it)
    return kernels.kernel_matvec(kernels.get_kernel('gaussian'), x_test, c,
                                 res.coef, 1.0)

  def exps(jaxpr):
    total = 0
    for eqn in jaxpr.eqns:
      if eqn.primitive.name == 'exp':
        total += int(np.prod(eqn.outvars[0].aval.shape))
      trips = {'scan': eqn.params.get('length', 1), 'while': it}.get(
          eqn.primitive.name, 1)
      for v in eqn.params.values():
        for sub in v if isinstance(v, (tuple, list)) else (v,):
          if isinstance(sub, jex_core.ClosedJaxpr):
            total += trips * exps(sub.jaxpr)
          elif isinstance(sub, jex_core.Jaxpr):
            total += trips * exps(sub)
    return total

  assert exps(jax.make_jaxpr(solve)(x, y, x_test).jaxpr) == (
      measure.falkon_kernel_entries(n, n_test, m, it))


@pytest.mark.parametrize('dims', [
    # (lhs shape, rhs shape, contracting (lhs, rhs), batch (lhs, rhs))
    ((5, 3), (3, 4), ((1,), (0,)), ((), ())),
    ((2, 7, 5), (2, 7, 3), ((1,), (1,)), ((0,), (0,))),  # x^T dh per member
    ((3, 2, 4, 6), (6, 2, 5), ((3,), (0,)), ((1,), (1,))),
])
def test_a_product_is_the_dot_its_dimension_numbers_say(dims):
  """``Product``'s einsum equation is XLA's ``dot_general`` (checked with
  NumPy's einsum) and its FLOPs are 2 x batch x M x N x K."""
  import jax  # pylint: disable=g-import-not-at-top
  lhs, rhs, (lc, rc), (lb, rb) = dims
  p = measure.Product(lhs, rhs, lc, rc, lb, rb)
  rng = np.random.default_rng(0)
  a, b = rng.standard_normal(lhs), rng.standard_normal(rhs)
  want = jax.lax.dot_general(np.float32(a), np.float32(b), ((lc, rc), (lb, rb)))
  chex.assert_trees_all_close(np.einsum(p.einsum(), a, b), np.asarray(want),
                              rtol=1e-5, atol=1e-5)
  k = np.prod([lhs[d] for d in lc])
  assert p.flops == 2 * k * np.prod(want.shape)


def test_the_products_of_a_compiled_program_are_found_with_their_flops():
  """Each instruction of XLA's compiled CPU program that computes a product
  (a dot, or a fusion calling one) is credited with its FLOPs, and a GPU's
  cuBLAS call with its own, as counted by hand."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top

  def step(x, w, dh):  # a layer's forward and its weight gradient, 4 members
    return jax.nn.relu(x @ w), jnp.einsum('bnk,bnm->bkm', x, dh)

  x, w, dh = (jax.ShapeDtypeStruct(s, jnp.float32)
              for s in ((4, 32, 16), (4, 16, 8), (4, 32, 8)))
  hlo = jax.jit(step).lower(x, w, dh).compile().as_text()
  found = measure.hlo_products(hlo)
  # The instructions that run (the entry's; a fusion's dot runs inside it).
  entry = hlo[hlo.index('ENTRY'):]
  ran = [n for n in re.findall(r'^\s*(?:ROOT )?%([\w.\-]+) =', entry, re.M)
         if n in found]
  assert len(ran) == 2, found
  flops = 2 * 4 * 32 * 16 * 8  # each product: 4 members x [32,16] x [16,8]
  assert [sum(p.flops for p in found[n]) for n in ran] == [flops] * 2
  assert measure.Product((4, 32, 16), (4, 32, 8), (1,), (1,), (0,), (0,)) in [
      p for n in ran for p in found[n]]
  cublas = ('  %custom-call.3 = (f32[64,32]{1,0}, s8[4194304]{0}) custom-call('
            '%p.1, %p.2), custom_call_target="__cublas$gemm", backend_config='
            '{"gemm_backend_config":{"dot_dimension_numbers":{'
            '"lhs_contracting_dimensions":["0"],"rhs_contracting_dimensions":'
            '["1"],"lhs_batch_dimensions":[],"rhs_batch_dimensions":[]}}}')
  gpu = '\n'.join(['ENTRY %main {', '  %p.1 = f32[128,64]{1,0} parameter(0)',
                   '  %p.2 = f32[32,128]{1,0} parameter(1)', cublas, '}'])
  (p,), = measure.hlo_products(gpu).values()
  assert p.flops == 2 * 128 * 64 * 32 and p.einsum() == 'ab,ca->bc'
  lt = gpu.replace('__cublas$gemm', '__cublas$lt$matmul')
  assert measure.hlo_products(lt) == {'custom-call.3': [p]}


def test_torch_times_a_profiles_products_on_one_thread():
  try:
    import torch  # pylint: disable=g-import-not-at-top
  except ImportError:
    assert not os.environ.get('CI'), 'torch is missing in CI'
    pytest.skip('torch is not installed (pip install -r requirements-bench.txt)')
  product = measure.Product((4, 32, 16), (4, 32, 8), (1,), (1,), (0,), (0,))
  profile = {'ops': [{'op': 'dot.1', 'products': [product._asdict()]},
                     {'op': 'sort.2'}]}
  threads = torch.get_num_threads()
  measure.torch_product_rates(profile, seconds=1e-3, reps=2)
  assert profile['ops'][0]['torch_gflops'] > 0
  assert 'torch_gflops' not in profile['ops'][1]
  assert torch.get_num_threads() == threads
  table = report.format_profile({'busy_ms': 1.0, 'wall_ms': 1.0, 'ops': [
      {**profile['ops'][0], 'opcode': 'dot', 'shape': 'f32[4,16,8]',
       'ms': 0.5, 'calls': 2, 'share': 0.5, 'gflops': 1.5}]})
  assert 'torch' in table and '1.5' in table


def test_precision_flag_takes_the_launchers_values():
  from rahimi_jax import cli  # pylint: disable=g-import-not-at-top
  assert gt.FLAGS['matmul_precision'].parser.enum_values == list(
      cli.MATMUL_PRECISIONS)


def test_a_profile_of_cuda_graphs_says_how_to_see_their_kernels():
  def profile(op, opcode):
    return {'busy_ms': 1.0, 'wall_ms': 2.0, 'ops': [
        {'op': op, 'opcode': opcode, 'shape': '', 'ms': 0.9, 'calls': 3,
         'share': 0.9},
        {'op': 'copy.1', 'opcode': 'copy', 'shape': 's32[]', 'ms': 0.1,
         'calls': 3, 'share': 0.1}]}

  hint = '--xla_gpu_enable_command_buffer='
  assert hint in report.format_profile(profile('command_buffer_25', 'kernel'))
  assert hint not in report.format_profile(profile('gemm_fusion', 'fusion'))


def test_best_peak_divides_by_the_runs_best_reading():
  # A slow first reading (a shared host's drift) must not inflate a share.
  slow = {'n': 64, 'precision': 'float32', 'cpu': 'cpu', 'jnp': 140.0,
          'np': 150.0, 'peak': 150.0}
  fast = dict(slow, jnp=205.0, np=190.0, peak=205.0)
  best = measure.best_peak(slow, fast)
  assert (best['jnp'], best['np'], best['peak']) == (205.0, 190.0, 205.0)
  assert best['readings'] == [150.0, 205.0]
  again = measure.best_peak(best, dict(slow, peak=180.0))
  assert again['readings'] == [150.0, 205.0, 180.0]
  assert again['peak'] == 205.0
  line = measure.peak_line(again)
  assert 'peak 205.0 GFLOP/s (the best of 3 readings' in line, line
  assert 'the lowest 150.0' in line, line
  assert 'readings' not in measure.peak_line(slow)
  rec = report.with_peak({'gflops': 123.0}, best)
  np.testing.assert_allclose(rec['pct_peak'], 60.0)
  assert rec['peak_readings'] == [150.0, 205.0]


def test_device_wheels_installs_only_what_does_not_import(tmp_path):
  # A GPU image has its own jax and numpy: a wheel of one must not replace it.
  from benchmarks import device_wheels  # pylint: disable=g-import-not-at-top
  for name in ('numpy-2.0.0-cp312-cp312-manylinux_2_28_x86_64.whl',
               'orbax_checkpoint-0.12.8-py3-none-any.whl',
               'no_such_module_xyz-1.0-py3-none-any.whl'):
    (tmp_path / name).write_bytes(b'')
  assert [p.rsplit('/', 1)[1] for p in device_wheels.missing(str(tmp_path))] == [
      'no_such_module_xyz-1.0-py3-none-any.whl']
