"""Running the experiment launchers as a user would, and checking bad input."""

import os
import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]
# The suite's tiny programs are compile-bound; XLA's CPU backend compiles at
# LLVM level 3 by default. The launchers the tests start compile at 0 (a test
# grid's program: 6.2 -> 1.5 s under load); in-process tests at 2 (4.3 -> 1.6
# s quiet), where the bit-exact properties they check still hold (a one-hot
# mixture is exactly its option, a member is its solo run: at 0 a tanh mixture
# was 1 ulp off and a float64 stall run 4e-8). The whole suite passes at the
# default level too (WORKSPACE.md); launchers and benchmarks keep it.
FAST_COMPILE = '--xla_backend_optimization_level=0'
IN_PROCESS_COMPILE = '--xla_backend_optimization_level=2'


def env() -> dict[str, str]:
  """The environment of a launcher run: this checkout first, CPU only."""
  return dict(os.environ, PYTHONPATH=str(ROOT), JAX_PLATFORMS='cpu',
              XLA_FLAGS=f'{os.environ.get("XLA_FLAGS", "")} {FAST_COMPILE}'
              .replace(IN_PROCESS_COMPILE, ''))


def launch(module: str, *flags: str, timeout: int = 300):
  """``python -m MODULE FLAGS`` from the repository root; a CompletedProcess."""
  return subprocess.run([sys.executable, '-m', module, *flags], cwd=ROOT,
                        env=env(), capture_output=True, text=True,
                        timeout=timeout)


def launch_many(module: str, flag_lists, timeout: int = 300):
  """``launch`` once per flag list, all at once; CompletedProcesses in order.

  Runs that fail validation spend their time importing JAX, mostly on one
  core: started together they take about the time of the slowest.
  """
  procs = [subprocess.Popen([sys.executable, '-m', module, *flags], cwd=ROOT,
                            env=env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
           for flags in flag_lists]
  done = []
  try:
    for proc in procs:
      stdout, stderr = proc.communicate(timeout=timeout)
      done.append(subprocess.CompletedProcess(proc.args, proc.returncode,
                                              stdout, stderr))
  finally:
    for proc in procs:
      if proc.poll() is None:
        proc.kill()
        proc.wait()
  return done


def assert_clean_error(proc, bad_value: str) -> None:
  """Non-zero exit, no traceback, exactly one 'error:' line naming the value."""
  assert proc.returncode != 0, proc.stdout
  assert 'Traceback' not in proc.stderr, proc.stderr
  errors = [l for l in proc.stderr.splitlines() if l.startswith('error:')]
  assert len(errors) == 1, proc.stderr
  assert bad_value in errors[0], errors[0]
