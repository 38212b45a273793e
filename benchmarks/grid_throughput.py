r"""Grid throughput: a whole grid as one XLA program against the usual ways.

For one grid (same model, data, steps, seeds and options) this times, in one
process run:

  a  rahimi_jax: ``program.execute(make_train(config), grid, data)``, one program;
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
set-up (~60 ms for a fresh XLA executable on a 2-core AMD EPYC) would otherwise swamp
small grids: (a) runs the grid twice through the engine and reports the second
(warm) call's wall time as run (the engine's own work around its program
included, as (b)'s and (c)'s loops include theirs), the first call's extra as
compile; (b) times ``jit(train).lower().compile()`` and one run; (c), (d) and
(e) time their first calls (compile or one-time set-up, plus one step). Loop
methods (b, c, d) time at most ``--loop_members_cap`` evenly spaced members and
extrapolate linearly to G (printed in each row); (e) always runs the whole grid
in one vmap. (a) runs with the engine's defaults, as the launchers do: one XLA
CPU device per core (``program.use_host_cores``; ``--cpu_devices=1`` for one)
and chunks of members (``--chunk_size``). FLOPs count matmuls only, as traced
in one member's training step and evaluation
(``rahimi_jax.flops.matmul_flops``): the steps plus the two evaluations (step 0
and the last step). ``--profile`` adds where (a)'s device time goes, per XLA
instruction, at the largest G, with the rate of each instruction that computes
matrix products and, beside it on a CPU with the torch methods, the same
products' rate as ``torch.einsum`` on one thread: whether another library's
kernels run the program's own products faster. Each torch row runs at the
faster of torch's default threads and one (on a shared host the default's
OpenMP threads can stall on tiny ops), unless ``--torch_threads`` fixes it.
Each method runs ``--repeats`` times (3), its fastest run counting: the
speedups divide two fastest runs.

Default: two workloads where per-step overhead dominates (a few minutes on 2
CPU cores):

  python -m benchmarks.grid_throughput --regime=small

A compute-bound MLP:

  python -m benchmarks.grid_throughput --regime=compute --grid_sizes=1,8,64,128

PyTorch (methods d and e) is optional: ``pip install -r requirements-bench.txt``.

This file is the launcher (flags and ``main``); the benchmark is a library:
``suite`` (options, ``run_benchmark``), ``workloads`` (what is timed: ``Bench``),
``methods`` and ``torch_methods`` (how: the ``RUNNERS`` registry), ``measure``
(matmul peak, memory, profiles) and ``report`` (records, rows, tables).
"""

import sys
import time

from absl import app
from absl import flags
from absl import logging

from benchmarks import suite
from benchmarks.methods import METHODS
from benchmarks.workloads import REGIMES

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
flags.DEFINE_integer('peak_n', None, 'Side of the square float32 matmul that '
                     'measures the peak FLOP/s (default: 2048 on a CPU, 8192 '
                     'on an accelerator).')
flags.DEFINE_integer('repeats', 3, 'Runs of each method (each compiling '
                     'again); the fastest counts, for every method alike: a '
                     'host\'s speed drifts within a run.')
flags.DEFINE_bool('dry_run', False, 'Check the flags and exit.')
flags.DEFINE_float('tolerance', 1e-5, 'Largest accepted |(a) - (b)| of the '
                   'final train_loss.')
flags.DEFINE_integer('torch_threads', 0, 'torch.set_num_threads for (d, e); 0: '
                     'each torch row timed at torch\'s default (one per core) '
                     'and at 1, the faster kept and named (on a loaded host '
                     'OpenMP threads can stall tiny ops).')
if 'chunk_size' not in flags.FLAGS:  # the launchers' flag (rahimi_jax.cli)
  flags.DEFINE_string('chunk_size', None, '(a): members vmapped together '
                      '(one chunk per device at a time): auto, tune, rule or '
                      'an integer; 0: the grid split evenly over the devices; '
                      'default: the engine\'s (auto: measured on this host '
                      'when the run is long enough to pay, cached: '
                      'tuning.choose_chunk).')
if 'matmul_precision' not in flags.FLAGS:  # the launchers' (rahimi_jax.cli)
  flags.DEFINE_enum('matmul_precision', 'float32',
                    ['float32', 'tensorfloat32', 'bfloat16', 'default'],
                    'Float32 matmul precision of (a), (b), (c) and the peak, '
                    'as the launchers\' flag (cli.MATMUL_PRECISIONS; one the '
                    'backend does not have is an error).')
flags.DEFINE_integer('cpu_devices', 0, 'Treat the CPU as this many XLA devices '
                     '(program.use_host_cores), so (a) shards members over '
                     'cores; 0: one per core; 1: a single device.')
flags.DEFINE_bool('profile', False, 'Also trace one more run of (a) at the '
                  'largest G and print where its device time goes, per XLA '
                  'instruction, with the products\' GFLOP/s, and torch\'s on '
                  'the same products when the torch methods run '
                  '(jax.profiler; stored in the JSON record).')
flags.DEFINE_string('profile_dir', None, 'With --profile, also keep each '
                    'workload\'s trace (*.trace.json.gz, for Perfetto or '
                    'TensorBoard) and the traced program\'s compiled HLO '
                    '(program.hlo.txt) in DIR/WORKLOAD.')
flags.DEFINE_string('json_out', None, 'Write the measurements here as a JSON '
                    'list of records (atomically).')

FLAGS = flags.FLAGS


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  try:
    cfg = suite.make_bench_config(
        regime=FLAGS.regime, grid_sizes=FLAGS.grid_sizes, methods=FLAGS.methods,
        steps=FLAGS.steps, workloads=FLAGS.workloads,
        loop_members_cap=FLAGS.loop_members_cap, peak_n=FLAGS.peak_n,
        tolerance=FLAGS.tolerance, json_out=FLAGS.json_out,
        torch_threads=FLAGS.torch_threads, chunk_size=FLAGS.chunk_size,
        profile=FLAGS.profile, repeats=FLAGS.repeats,
        profile_dir=FLAGS.profile_dir)
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
  from rahimi_jax import program  # pylint: disable=g-import-not-at-top
  program.use_host_cores(FLAGS.cpu_devices or None)  # before JAX's first op
  from rahimi_jax import cli  # pylint: disable=g-import-not-at-top
  cli.apply_precision_flag()  # (a) and the peak alike
  if not FLAGS['verbosity'].present:
    logging.set_verbosity(logging.WARNING)  # the engine's progress lines
  start = time.perf_counter()
  records = suite.run_benchmark(cfg, out=lambda s: print(s, flush=True))
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
