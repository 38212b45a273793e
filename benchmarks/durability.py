r"""What durability costs: checkpoints and progress, and a grid over two processes.

In one process run, the default ablation grid (108 MLPs on digits, 500
steps) trained through ``engine.run`` three ways, interleaved, the fastest
of ``--repeats`` each:

  plain        no checkpoints, no progress (the usual way: one run to its end)
  default      progress bar and orbax checkpoints at the launchers' default
               interval (``--checkpoint_every_s``, 30 s, at the end of a call)
  every call   a checkpoint after every call (~5 s of work each)

and prints each one's run time, its ratio to plain (issue 15's target: <= 1.05
at the default interval), and the achieved matmul FLOP/s against this
machine's float32 matmul peak measured in the same run. Then, as
subprocesses, the same grid through ``experiments.ablate`` on one process with
a CPU device per usable core and on two processes (``jax.distributed`` over
gloo on localhost) sharing them, and their time per member-step (target: two
processes within 1.3x of one):

  python -m benchmarks.durability --steps=500 --repeats=3
"""

import functools
import json
import os
import socket
import subprocess
import sys
import tempfile

from absl import app
from absl import flags

from benchmarks import measure
from benchmarks import workloads
from rahimi_jax import cli

flags.DEFINE_integer('steps', 500, 'Optimizer steps.')
flags.DEFINE_integer('seeds', 4, 'Seeds of the default grid (27 cells each).')
flags.DEFINE_integer('repeats', 3, 'Warm runs of each way, interleaved; the '
                     'fastest counts.')
cli.define_precision_flag()
flags.DEFINE_integer('peak_n', None, 'Matrix size of the peak measurement '
                     '(default: measure.default_peak_n()).')
flags.DEFINE_bool('processes', True, 'Also time one process against two.')

FLAGS = flags.FLAGS


def _devices_each(processes: int) -> int:
  """CPU devices per process: the host's usable cores shared out."""
  from rahimi_jax import tuning  # pylint: disable=g-import-not-at-top
  return max(1, tuning.usable_cores() // processes)


def _launch(out: str, processes: int) -> dict:
  """``experiments.ablate`` of the benchmark's grid over ``processes``
  processes sharing the host's cores (``_devices_each``); its engine
  metadata. Its programs are compiled, not loaded from a compilation cache
  an earlier run left."""
  base = dict(os.environ, JAX_PLATFORMS='cpu',
              JAX_ENABLE_COMPILATION_CACHE='false')
  flags_ = [f'--steps={FLAGS.steps}', f'--seeds={FLAGS.seeds}',
            f'--out={out}', '--progress=none']
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    port = s.getsockname()[1]
  procs = []
  for index in range(processes):
    env = dict(base, XLA_FLAGS='--xla_force_host_platform_device_count='
               f'{_devices_each(processes)}')
    if processes > 1:
      env |= {'JAX_COORDINATOR_ADDRESS': f'127.0.0.1:{port}',
              'JAX_NUM_PROCESSES': str(processes),
              'JAX_PROCESS_ID': str(index)}
    procs.append(subprocess.Popen(
        [sys.executable, '-m', 'experiments.ablate', *flags_], env=env,
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True))
  for proc in procs:
    _, stderr = proc.communicate()
    if proc.returncode:
      raise RuntimeError(stderr[-2000:])
  with open(os.path.join(out, 'metadata.json')) as f:
    return json.load(f)['engine']


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  from rahimi_jax import program  # pylint: disable=g-import-not-at-top
  program.use_host_cores()
  cli.apply_precision_flag()
  from rahimi_jax import data as data_lib  # pylint: disable=g-import-not-at-top
  from rahimi_jax import engine  # pylint: disable=g-import-not-at-top
  from rahimi_jax.studies import ablation  # pylint: disable=g-import-not-at-top

  config = ablation.AblationConfig(steps=FLAGS.steps, seeds=FLAGS.seeds)
  grid, data = config.grid(), data_lib.get_dataset(config.dataset)()
  train_config = config.train_config()
  ways = {'plain': {'progress': False},
          'default': {'progress': True},
          'every call': {'progress': True, 'checkpoint_every_s': 0.0}}
  measured = measure.measure_peak(FLAGS.peak_n)
  engine.run(train_config, grid, data, partition=())  # compile
  saves = {}

  def way(name, options):  # one warm run's seconds; its saves kept
    with tempfile.TemporaryDirectory() as tmp:
      if name != 'plain':
        options = dict(options, checkpoint_dir=tmp)
      with program.run_options(**options):
        info = engine.run(train_config, grid, data,
                          partition=()).metadata['engine']
    saves[name] = (info.get('checkpoints', 0), info.get('calls'),
                   info.get('checkpoint_s', 0.0))
    return info['run_s']

  with open(os.devnull, 'w') as devnull:
    stderr, sys.stderr = sys.stderr, devnull  # the bars
    try:
      times = measure.interleaved(
          {name: functools.partial(way, name, options)
           for name, options in ways.items()}, FLAGS.repeats)
    finally:
      sys.stderr = stderr
  # Read again after the runs; divide by the best reading (the host drifts).
  measured = measure.best_peak(measured, measure.measure_peak(FLAGS.peak_n))
  peak = measured['peak']
  g = len(grid)
  flops = workloads.run_flops(train_config, grid, data) * g  # with evaluations
  print(f'{measure.cpu_model()}; default ablation grid G={g}, {FLAGS.steps} '
        f'steps; {measure.peak_line(measured)}')
  print(f'{"way":<12}{"run_s":>8}{"vs plain":>10}{"calls":>7}{"saves":>7}'
        f'{"save_s":>8}{"GFLOP/s":>9}{"of peak":>9}')
  for name in ways:
    run_s = min(times[name])
    n_saves, calls, save_s = saves[name]
    gflops = flops / run_s / 1e9
    print(f'{name:<12}{run_s:>8.2f}{run_s / min(times["plain"]):>9.3f}x'
          f'{calls:>7}{n_saves:>7}{save_s:>8.2f}{gflops:>9.2f}'
          f'{gflops / peak:>9.1%}')
  print('target: default <= 1.05x plain')
  if FLAGS.processes:
    with tempfile.TemporaryDirectory() as tmp:
      one = _launch(os.path.join(tmp, 'one'), 1)
      two = _launch(os.path.join(tmp, 'two'), 2)
    for name, info in ((f'1 process x {_devices_each(1)} devices', one),
                       (f'2 processes x {_devices_each(2)} device(s)', two)):
      print(f'{name:<24} run {info["run_s"]:6.2f} s, '
            f'{info["run_s"] / g / FLAGS.steps * 1e6:7.2f} us/member-step '
            f'(evaluations every {train_config.log_every} steps included), '
            f'compile {info["compile_s"]:.1f} s')
    print(f'2 processes / 1 process time per member-step: '
          f'{two["run_s"] / one["run_s"]:.2f}x (target <= 1.3x)')
  return 0


if __name__ == '__main__':
  app.run(main)
