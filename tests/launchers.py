"""Running the experiment launchers as a user would, and checking bad input."""

import atexit
import fcntl
import json
import os
import pathlib
import pickle
import signal
import subprocess
import sys
import tempfile
import threading

ROOT = pathlib.Path(__file__).resolve().parents[1]
# The suite's tiny programs are compile-bound; XLA's CPU backend compiles at
# LLVM level 3 by default. The launchers the tests start compile at 0 (a test
# grid's program: 6.2 -> 1.5 s under load); in-process tests at 2 (4.3 -> 1.6
# s quiet), where the bit-exact properties they check still hold (a one-hot
# mixture is exactly its option, a member is its solo run: at 0 a tanh mixture
# was 1 ulp off and a float64 stall run 4e-8). The whole suite passes at the
# default level too (WORKSPACE.md); launchers and benchmarks keep it. Launched
# runs also use XLA CPU's loop emitters, not its MLIR fusion emitters: ~25%
# less compile CPU (precision_cost's shrunk run 19 -> 14 s), and what they
# check still holds (the same program on 1 or 8 devices is bit-identical).
# In-process tests use the loop emitters too (since 2026-11-27: the suite's
# CPU 9:00 -> 7:03 min, wall 5:00 -> 3:57 on 2 cores); every bit-exact check
# still holds but one comparison of a jitted model with a model run op by op
# (1 ulp apart; test_noisy_norm says so). A jaxlib that dropped the flag would
# stop every run at start ("Unknown flags in XLA_FLAGS"): drop it then.
FAST_COMPILE = ('--xla_backend_optimization_level=0 '
                '--xla_cpu_use_fusion_emitters=false')
IN_PROCESS_COMPILE = ('--xla_backend_optimization_level=2 '
                      '--xla_cpu_use_fusion_emitters=false')


def env() -> dict[str, str]:
  """The environment of a launcher run: this checkout first, CPU only.

  One OpenBLAS thread (NumPy's, and the LAPACK behind JAX's CPU SVD and
  eigh): a second one spins while it waits for a core that the suite's other
  worker holds. The deep linear launcher's test took 12-13 s of CPU instead of
  16.5-27.5 s beside two busy cores; the deep linear, random features and
  linear solver launchers together 20 s instead of 23 s on a normal load.
  """
  return dict(os.environ, PYTHONPATH=str(ROOT), JAX_PLATFORMS='cpu',
              OPENBLAS_NUM_THREADS='1',
              XLA_FLAGS=f'{os.environ.get("XLA_FLAGS", "")} {FAST_COMPILE}'
              .replace(IN_PROCESS_COMPILE, ''))


def launch(module: str, *flags: str, timeout: int = 300):
  """``python -m MODULE FLAGS`` from the repository root; a CompletedProcess."""
  return launch_many(module, [flags], timeout)[0]


def launch_many(module: str, flag_lists, timeout: int = 300):
  """``launch`` once per flag list, all at once; CompletedProcesses in order."""
  return launch_runs([(module, flags) for flags in flag_lists], timeout)


# One process per distinct environment (per pytest process) imports what
# every launcher imports (JAX, rahimi_jax, matplotlib's pyplot: ~1.8 s of
# CPU, most of a run that fails validation), starts no backend, and stays:
# each batch of runs it is sent (a JSON line on its stdin) it forks once per
# run; each fork runs its module as ``python -m`` does (runpy's
# _run_module_as_main: argv[0] the module's file, run as __main__, uncaught
# exceptions and exit codes as usual), or its code as ``python -c`` does (in a
# fresh __main__), its stdout and stderr in its own files, stdin /dev/null;
# the exit codes come back as a JSON line. What a fork shares with the others,
# unlike a fresh ``python -m``: the imports' state (matplotlib's Agg backend,
# which rahimi_jax.plots sets anyway; warnings printed at import go to the
# server's log) and NumPy's legacy global RNG, reseeded in each fork.
_FORK_SERVER = r"""
import gc, json, os, runpy, sys, types
import jax, rahimi_jax
import numpy as np
import matplotlib
matplotlib.use('Agg')
import matplotlib.pyplot
from jax._src import xla_bridge
assert not xla_bridge.backends_are_initialized()  # forks start JAX themselves
gc.freeze()  # the collector leaves the shared imports alone (0.5 -> 0.1 s/fork)
reply = os.fdopen(os.dup(1), 'w')
for line in sys.stdin:
  pids = []
  for module, flags, out, err in json.loads(line):
    sys.stdout.flush(); sys.stderr.flush()
    pid = os.fork()
    if pid == 0:
      reply.close()  # only the server answers: a dead server reads as EOF
      np.random.seed()
      os.dup2(os.open(os.devnull, os.O_RDONLY), 0)
      for fd, path in ((1, out), (2, err)):
        os.dup2(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC), fd)
      if module == '-c':
        sys.argv = ['-c', *flags[1:]]
        sys.modules['__main__'] = main = types.ModuleType('__main__')
        exec(compile(flags[0], '<string>', 'exec'), main.__dict__)
      else:
        sys.argv = ['-m', *flags]
        runpy._run_module_as_main(module)
      sys.exit(0)
    pids.append(pid)
  reply.write(json.dumps([os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
                          for pid in pids]) + '\n')
  reply.flush()
"""

_SERVERS: dict = {}  # frozen environment -> its server (this process's)
_LOCK = threading.Lock()  # one batch at a time (tests run some in threads)


def _server(environ):
  """``(key, server)``: this environment's server, started if none is alive.

  Its own stderr goes to a file (``server.log``), read when it fails: an
  unread pipe would stop it once full.
  """
  # pytest's PYTEST_CURRENT_TEST names each test: not part of the key.
  environ = {k: v for k, v in environ.items() if k != 'PYTEST_CURRENT_TEST'}
  key = tuple(sorted(environ.items()))
  server = _SERVERS.get(key)
  if server is None or server.poll() is not None:
    log = tempfile.NamedTemporaryFile(prefix='launch_server_', suffix='.log',
                                      delete=False)
    server = _SERVERS[key] = subprocess.Popen(
        [sys.executable, '-c', _FORK_SERVER], cwd=ROOT, env=environ,
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log, text=True,
        start_new_session=True)
    server.log = log.name
    log.close()
  return key, server


def _stop(key, kill: bool) -> str:
  """Stops the server of ``key`` (its forks too when ``kill``); its log."""
  server = _SERVERS.pop(key)
  if kill:
    os.killpg(server.pid, signal.SIGKILL)
  elif server.poll() is None:
    server.stdin.close()
  server.wait()
  with open(server.log) as f:
    text = f.read()
  os.unlink(server.log)
  return text


def close_servers():
  for key in list(_SERVERS):
    _stop(key, kill=False)


atexit.register(close_servers)


def launch_runs(runs, timeout: int = 300,
                environ: dict[str, str] | None = None):
  """``python -m MODULE FLAGS`` for each ``(module, flags)``, all at once.

  A module ``'-c'`` is ``python -c CODE ARGS`` (``flags = [CODE, *ARGS]``).
  The runs see ``environ`` (default ``env()``). CompletedProcesses in order,
  their args the command a user would type.
  """
  runs = [(module, [*flags]) for module, flags in runs]
  with _LOCK, tempfile.TemporaryDirectory(prefix='launch_') as tmp:
    files = [(os.path.join(tmp, f'{i}.out'), os.path.join(tmp, f'{i}.err'))
             for i in range(len(runs))]
    key, server = _server(env() if environ is None else environ)
    done_line = []
    reader = threading.Thread(
        target=lambda: done_line.append(server.stdout.readline()), daemon=True)
    try:
      server.stdin.write(json.dumps(
          [[m, f, *paths] for (m, f), paths in zip(runs, files)]) + '\n')
      server.stdin.flush()
      reader.start()
      reader.join(timeout)
    except BaseException:  # interrupted: the forks too (the server's group)
      _stop(key, kill=True)
      raise
    if reader.is_alive():
      raise TimeoutError(f'launch_runs: no answer in {timeout} s; the '
                         'server\'s log:\n' + _stop(key, kill=True)[-3000:])
    if not done_line[0]:  # the server itself ended
      raise RuntimeError('launch_runs: the fork server exited:\n'
                         + _stop(key, kill=True)[-3000:])
    if environ is not None:  # a one-off environment: not kept
      _stop(key, kill=False)
    codes = json.loads(done_line[0])
    done = []
    for (module, flags), (out, err), code in zip(runs, files, codes):
      command = ['-c'] if module == '-c' else ['-m', module]
      with open(out) as o, open(err) as e:
        done.append(subprocess.CompletedProcess(
            [sys.executable, *command, *flags], code, o.read(), e.read()))
  return done


def once(tmp_path_factory, name: str, make):
  """``make(directory)``, run once per test session however the pytest-xdist
  workers split a module: the first worker to ask runs it (the others wait
  on a lock) and saves its value; the others read that. ``directory``, new
  for each try, is shared by the workers: put the runs' outputs there.

  A module-scoped fixture runs once per worker that runs one of its tests,
  and work stealing splits modules: a split launcher fixture (10-25 s of
  subprocesses) ran twice. ``make``'s value must pickle (CompletedProcess,
  paths); an exception is not saved, so each worker re-raises its own.
  """
  root = tmp_path_factory.getbasetemp()
  if os.environ.get('PYTEST_XDIST_WORKER'):
    root = root.parent  # the session's, above each worker's own
  with open(root / f'once_{name}.lock', 'w') as lock:
    fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
    saved = root / f'once_{name}.pickle'
    if saved.exists():
      return pickle.loads(saved.read_bytes())
    value = make(pathlib.Path(tempfile.mkdtemp(prefix=f'{name}_', dir=root)))
    saved.write_bytes(pickle.dumps(value))
    return value


def assert_clean_error(proc, bad_value: str) -> None:
  """Non-zero exit, no traceback, exactly one 'error:' line naming the value."""
  assert proc.returncode != 0, proc.stdout
  assert 'Traceback' not in proc.stderr, proc.stderr
  errors = [l for l in proc.stderr.splitlines() if l.startswith('error:')]
  assert len(errors) == 1, proc.stderr
  # Nothing before it either (JAX's INFO line on its backends came first).
  assert proc.stderr.strip() == errors[0], proc.stderr
  assert bad_value in errors[0], errors[0]
