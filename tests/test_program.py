"""program.execute: one compiled program per grid, member-batches, device sharding."""

import concurrent.futures
import dataclasses
import os
import pathlib
import subprocess
import sys
import textwrap
import threading
from unittest import mock

import chex
import jax
import jax.numpy as jnp
from launchers import FAST_COMPILE
import numpy as np
import pytest
import threadpoolctl

from rahimi_jax import grid as grid_lib
from rahimi_jax import program
from rahimi_jax import train as train_lib

ROOT = pathlib.Path(__file__).resolve().parents[1]
CONFIG = train_lib.TrainConfig(hidden=(8,), steps=20, batch_size=32,
                               log_every=10)
GRID = grid_lib.Grid(grid_lib.Choice('optimizer', ('sgd', 'momentum')),
                     grid_lib.Choice('norm', ('none', 'batch')),
                     grid_lib.Values('learning_rate', (0.05,)),
                     grid_lib.Seeds(2))
METRICS = ('train_loss', 'test_loss', 'test_accuracy', 'diverged_step')


def _metrics(results):
  return {m: results.columns[m] for m in METRICS}


def _train():
  return train_lib.make_train(CONFIG.for_grid(GRID))


def _assert_same_runs(res, reference):
  """Same members in the same order, metrics equal to float tolerance."""
  chex.assert_trees_all_equal(res.columns['member'], reference.columns['member'])
  chex.assert_trees_all_close(_metrics(res), _metrics(reference), atol=1e-6,
                              rtol=0)


def test_member_batches_reuse_one_program_and_match(tiny_digits):
  whole = program.execute(_train(), GRID, tiny_digits)
  assert whole.metadata['engine']['member_batches'] == 1
  batched = program.execute(_train(), GRID, tiny_digits, member_batch_size=3)
  info = batched.metadata['engine']
  assert (info['member_batches'], info['member_batch_size']) == (3, 3)
  _assert_same_runs(batched, whole)


def test_memory_budget_splits_the_grid(tiny_digits):
  whole = program.execute(_train(), GRID, tiny_digits)
  need = whole.metadata['engine']['program_bytes']
  assert need > 0
  small = program.execute(_train(), GRID, tiny_digits,
                          memory_budget_bytes=need // 3)
  info = small.metadata['engine']
  assert info['member_batches'] > 1
  assert info['member_batch_size'] < len(GRID)
  # The choice recorded is the width that ran, and why.
  assert info['chunk_choice']['width'] == info['chunk_size'], info
  assert info['chunk_choice']['source'] == 'memory budget', info
  assert 'budget' in info['chunk_choice']['why'], info
  _assert_same_runs(small, whole)


def test_rows_are_tidy(tiny_digits):
  res = program.execute(_train(), GRID, tiny_digits)
  assert len(res) == len(GRID) * 3  # steps 0, 10, 20
  for name in ('member', 'optimizer', 'norm', 'learning_rate', 'seed', 'step',
               *METRICS):
    chex.assert_shape(res.columns[name], (len(res),))
  chex.assert_trees_all_equal(res.columns['step'][:3], np.array([0, 10, 20]))
  # Every run records the launchers' provenance, also from the Python API.
  for key in ('versions', 'devices', 'git_commit', 'git_dirty', 'engine'):
    assert key in res.metadata, key
  assert tuple(res.metadata['train_config']['hidden']) == CONFIG.hidden


_SHARDED = textwrap.dedent("""
    import json
    import os
    import sys
    import tempfile
    import chex
    import jax
    import numpy as np
    from rahimi_jax import data, program, tuning
    sys.path.insert(0, {tests!r})
    import test_program as t
    assert jax.local_device_count() == 8, jax.devices()
    full = data.digits()
    tiny = data.Dataset(x_train=full.x_train[:256], y_train=full.y_train[:256],
                        x_test=full.x_test[:128], y_test=full.y_test[:128],
                        task='classification', num_outputs=10)

    def run(**kwargs):
      res = program.execute(t._train(), t.GRID, tiny, chunk_size=1, **kwargs)
      info = res.metadata['engine']
      return res, (info['num_devices'], info['member_batches'])

    # 8 members in 8 chunks of 1: on 1, 2 and 8 devices, a chunk per device
    # at a time.
    one, shape = run(num_devices=1)
    assert shape == (1, 8), shape
    for kwargs, want in (({{'num_devices': 2}}, (2, 4)), ({{}}, (8, 1))):
      res, shape = run(**kwargs)
      assert shape == want, (kwargs, shape)
      chex.assert_trees_all_equal({{m: res.columns[m] for m in t.METRICS}},
                                  {{m: one.columns[m] for m in t.METRICS}})
    # The default chunk does not depend on the device count: the 8 members
    # are one chunk, on one device.
    info = program.execute(t._train(), t.GRID, tiny).metadata['engine']
    assert (info['num_devices'], info['chunk_size']) == (1, 8), info
    # A tuning that measured 2 devices fastest (cached for this program and
    # host): chunks of 1 on 2 of the 8 devices, the same bits.
    os.environ['RAHIMI_JAX_CACHE'] = tempfile.mkdtemp(
        dir=os.environ['RAHIMI_JAX_CACHE'])  # removed with the suite's
    os.makedirs(os.path.dirname(tuning.cache_path()), exist_ok=True)
    with open(tuning.cache_path(), 'w') as f:
      json.dump({{tuning.signature(t._train().config, tiny):
                 {{'width': 1, 'by_devices': {{'8': {{
                     'devices': 2, 'us_by_devices': {{}}}}}}}}}}, f)
    with program.run_options(chunk_size='auto'):
      res = program.execute(t._train(), t.GRID, tiny)
    info = res.metadata['engine']
    assert (info['num_devices'], info['member_batches']) == (2, 4), info
    assert info['chunk_choice']['source'] == 'cached', info
    assert info['chunk_choice']['devices'] == 2, info
    chex.assert_trees_all_equal({{m: res.columns[m] for m in t.METRICS}},
                                {{m: one.columns[m] for m in t.METRICS}})
    # Switched groups too small to fill the devices run side by side: the
    # norm's 2 groups of 4 (one chunk each) on 2 devices in one round, the
    # bits of one device's 2 rounds.
    from rahimi_jax import engine
    side = [engine.run(t.CONFIG, t.GRID, tiny, partition=(),
                       switch=('norm',), chunk_size=4, **kwargs)
            for kwargs in ({{}}, {{'num_devices': 1}})]
    shapes = [tuple(r.metadata['engine'][k] for k in
                    ('groups', 'chunks', 'num_devices', 'member_batches'))
              for r in side]
    assert shapes == [(2, 2, 2, 1), (2, 2, 1, 2)], shapes
    chex.assert_trees_all_equal(*[{{m: r.columns[m] for m in t.METRICS}}
                                  for r in side])
    # The chunk tuner's probe of a run of 2 groups of 1 times a width of 1
    # as the run runs it: both groups' chunks side by side, on 2 devices
    # (the first group's alone took 1); the programs of the runs above.
    first = t.GRID.subset(range(1), keep=t.GRID.choices)
    train_fn = t._train()
    probe = program._Probe(train_fn, program._resumable(train_fn), first,
                           tiny, jax.devices()[:2], None, [1, 1])
    assert set(probe([1])) == {{1}} and len(probe.base.used) == 2
    assert probe.compile_s == {{1: 0.0}}, probe.compile_s
    # One compile per program: the other devices loaded it.
    assert program._LOAD_FOR_DEVICES
    assert program._SERIALIZED and all(program._SERIALIZED.values())
    # A device's copy evicted and loaded again: what building the program
    # took (the chunk tuner's estimate) is kept, not the load's seconds.
    d0, d1 = jax.devices()[:2]
    both = {{k[:2] + k[3:] for k in program._COMPILED if k[2] == d1.id}}
    built = {{p: program._BUILT[p] for p in both}}
    for k in [k for k in program._COMPILED
              if k[2] == d0.id and k[:2] + k[3:] in both]:
      del program._COMPILED[k]
    res, shape = run(num_devices=2)
    assert {{p: program._BUILT[p] for p in both}} == built
    chex.assert_trees_all_equal({{m: res.columns[m] for m in t.METRICS}},
                                {{m: one.columns[m] for m in t.METRICS}})
    # Where loading fails (another JAX), each device compiles its own: the
    # same bits.
    program._COMPILED.clear()
    program._LOAD_FOR_DEVICES = False
    res, shape = run(num_devices=2)
    assert shape == (2, 4), shape
    chex.assert_trees_all_equal({{m: res.columns[m] for m in t.METRICS}},
                                {{m: one.columns[m] for m in t.METRICS}})
    # Beside the persistent compilation cache too, as in a first and later
    # processes (new functions: neither the engine's memory nor JAX's has
    # them): the first compiles advance once and stores it; the second
    # loads it for both devices; a stored copy that does not load is
    # removed, and where JAX's cache then loads device 0's (which does not
    # serialize whole) device 1 compiles its own.
    from jax.experimental.compilation_cache import compilation_cache
    from rahimi_jax import train
    program._LOAD_FOR_DEVICES = True
    os.environ['JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS'] = '0'
    jax.config.update('jax_persistent_cache_min_compile_time_secs', 0)
    compilation_cache.reset_cache()
    stored = os.path.join(program.use_compilation_cache(tempfile.mkdtemp(
        dir=os.environ['RAHIMI_JAX_CACHE'])), program.STORE_SUBDIR)
    for hits, kept in ((0, 1), (2, 1), (2, 0)):  # start (JAX's) and advance
      program._SERIALIZED.clear()
      res = program.execute(
          train.make_train.__wrapped__(t.CONFIG.for_grid(t.GRID)), t.GRID,
          tiny, chunk_size=1, num_devices=2)
      assert res.metadata['engine']['compile_cache_hits'] == hits
      assert len(os.listdir(stored)) == kept, os.listdir(stored)
      chex.assert_trees_all_equal({{m: res.columns[m] for m in t.METRICS}},
                                  {{m: one.columns[m] for m in t.METRICS}})
      if hits:
        for name in os.listdir(stored):
          with open(os.path.join(stored, name), 'wb') as f:
            f.write(b'not a program')
    print('bit-identical')
""")


def test_sharded_over_devices_is_bit_identical_to_one():
  env = dict(os.environ, XLA_FLAGS=f'{FAST_COMPILE} '
             '--xla_force_host_platform_device_count=8',
             PYTHONPATH=str(ROOT), JAX_PLATFORMS='cpu')
  script = _SHARDED.format(tests=str(ROOT / 'tests'))
  proc = subprocess.run([sys.executable, '-c', script], env=env, cwd=ROOT,
                        capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert 'bit-identical' in proc.stdout


def test_chunks_of_members_match_one_vmap(tiny_digits):
  whole = program.execute(_train(), GRID, tiny_digits)
  chunked = program.execute(_train(), GRID, tiny_digits, chunk_size=3)
  info = chunked.metadata['engine']
  # 8 members in chunks of 3 (the last with one padded copy), one after
  # another on the one device.
  assert (info['chunk_size'], info['chunks'], info['member_batches']) == (
      3, 3, 3)
  _assert_same_runs(chunked, whole)
  # A chunk as large as the grid is one vmap; so is chunk_size=0 (on one
  # device).
  for size in (64, 0):
    res = program.execute(_train(), GRID, tiny_digits, chunk_size=size)
    assert res.metadata['engine']['chunk_size'] == len(GRID)


def test_results_do_not_depend_on_calls_per_round(tiny_digits):
  # 3 rounds of chunks: each round's first call is dispatched during the
  # round before, and two rounds are started ahead. A pass per call, or the
  # whole round in one: the same bits.
  with program.run_options(logs_per_call=1):
    paced = program.execute(_train(), GRID, tiny_digits, chunk_size=3)
  assert paced.metadata['engine']['calls'] == 3 * 3  # 3 passes x 3 rounds
  with program.run_options(logs_per_call=3):
    whole = program.execute(_train(), GRID, tiny_digits, chunk_size=3)
  assert whole.metadata['engine']['calls'] == 3
  chex.assert_trees_all_equal(_metrics(paced), _metrics(whole))


def test_blas_runs_on_one_thread_while_a_grid_runs(tiny_digits):
  """jaxlib's LAPACK kernels call scipy's OpenBLAS; the engine runs one
  device per core, so while its programs run each call gets one thread (set
  to 2 outside here, restored after)."""
  jax.jit(jax.numpy.linalg.svd)(np.eye(3))  # loads jaxlib's LAPACK

  def threads():
    return {i['filepath']: i['num_threads']
            for i in threadpoolctl.threadpool_info() if i['user_api'] == 'blas'}

  seen, wait = [], program.wait

  def waited(*args, **kwargs):
    seen.append(threads())
    return wait(*args, **kwargs)

  with threadpoolctl.threadpool_limits(limits=2, user_api='blas'):
    outside = threads()
    assert any('scipy' in path for path in outside), outside
    with mock.patch.object(program, 'wait', waited):
      program.execute(_train(), GRID, tiny_digits)
    assert threads() == outside
  assert seen and all(set(t.values()) == {1} for t in seen), seen


def test_the_blas_libraries_are_read_again_after_an_import(tmp_path,
                                                         monkeypatch):
  """Reading the loaded libraries costs a run ~2.5 ms, so it is kept; an
  import may load another BLAS, so one is read again after it."""
  first = program._blas_controller()  # pylint: disable=protected-access
  assert program._blas_controller() is first  # pylint: disable=protected-access
  (tmp_path / 'a_new_module.py').write_text('')
  monkeypatch.syspath_prepend(str(tmp_path))
  monkeypatch.delitem(sys.modules, 'a_new_module', raising=False)
  __import__('a_new_module')
  assert program._blas_controller() is not first  # pylint: disable=protected-access


def test_waits_reuse_helper_threads_but_not_a_blocked_one():
  """A thread started per wait cost ~0.5 ms of a busy host's wait; one whose
  wait was interrupted (still blocked on its outputs) is not reused."""
  x = jax.block_until_ready(jax.numpy.arange(3.0))
  program.wait(x)
  with mock.patch.object(threading.Thread, 'start', autospec=True,
                         side_effect=threading.Thread.start) as started:
    for _ in range(20):
      program.wait(x, fetch=False)
  assert started.call_count == 0
  release, real = threading.Event(), jax.block_until_ready
  stuck = object()

  def block(outputs):  # the interrupted wait's outputs never finish
    if outputs is stuck:
      release.wait()
    return real(outputs)

  with mock.patch.object(jax, 'block_until_ready', block):
    blocked = program._BLOCKER.submit(stuck)  # pylint: disable=protected-access
    answered = concurrent.futures.ThreadPoolExecutor(1).submit(
        program.wait, x)
    np.testing.assert_array_equal(answered.result(timeout=30), [0, 1, 2])
    assert not blocked.is_set()
    release.set()
    assert blocked.wait(30)


_FORKED_WAIT = """
import os, signal
import jax, jax.numpy as jnp
from rahimi_jax import program
x = jax.block_until_ready(jnp.arange(3.0))
program.wait(x)  # a helper thread now parked, ready for the next wait
pid = os.fork()
if pid == 0:  # the child has no helper thread: its wait must start one
  signal.alarm(20)
  program.wait(x)
  os._exit(0)
print('child exit status', os.waitpid(pid, 0)[1])
"""


def test_a_forked_child_waits_with_threads_of_its_own():
  proc = subprocess.run([sys.executable, '-W', 'ignore', '-c', _FORKED_WAIT],
                        env=dict(os.environ, PYTHONPATH=str(ROOT),
                                 JAX_PLATFORMS='cpu'),
                        cwd=ROOT, capture_output=True, text=True, timeout=120)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert 'child exit status 0' in proc.stdout, proc.stdout  # 14: it hung


def test_worker_threads_trace_at_the_callers_settings():
  """The devices' and the tuner's compiles run in threads, where JAX's
  thread-local settings would fall back to the global ones."""
  def settings():
    return jax.config.jax_enable_x64, jax.config.jax_default_matmul_precision

  with jax.enable_x64(not jax.config.jax_enable_x64), \
      jax.default_matmul_precision('bfloat16'):
    want = settings()
    carried = program._in_callers_config(settings)  # pylint: disable=protected-access
  with concurrent.futures.ThreadPoolExecutor(1) as pool:
    assert pool.submit(carried).result() == want
    assert pool.submit(settings).result() != want  # what threads see alone


def test_another_matmul_precision_compiles_another_program(tiny_digits):
  """A grid run at another float32 matmul precision compiles its own
  programs (not the cached ones of the first) and its metadata names it."""
  grid = grid_lib.Grid(grid_lib.Seeds(1))
  config = dataclasses.replace(CONFIG, steps=2, log_every=2)
  train = train_lib.make_train(config.for_grid(grid))
  before = jax.config.jax_default_matmul_precision
  texts = {}
  for precision in ('float32', 'bfloat16', 'float32'):
    with jax.default_matmul_precision(precision):
      res = program.execute(train, grid, tiny_digits)
    assert res.metadata['matmul_precision'] == precision
    texts.setdefault(precision, [
        c.as_text() for c in program.compiled_programs(train)[-2:]])
  assert jax.config.jax_default_matmul_precision == before
  # start and advance per precision; the second float32 run reused its own.
  assert len(program.compiled_programs(train)) == 4
  assert texts['float32'] != texts['bfloat16']
  # float32 products are HIGHEST precision dots; bfloat16 ones the default.
  assert 'operand_precision={highest' in texts['float32'][-1]
  assert 'operand_precision={highest' not in texts['bfloat16'][-1]


@pytest.fixture
def compilation_cache(tmp_path):
  """JAX's persistent compilation cache in a fresh directory, for one test."""
  from jax.experimental.compilation_cache import compilation_cache as cc  # pylint: disable=g-import-not-at-top
  before = (jax.config.jax_compilation_cache_dir,
            jax.config.jax_persistent_cache_min_compile_time_secs)
  cc.reset_cache()
  yield str(tmp_path / 'xla')
  jax.config.update('jax_compilation_cache_dir', before[0])
  jax.config.update('jax_persistent_cache_min_compile_time_secs', before[1])
  cc.reset_cache()


def test_a_program_compiled_once_is_loaded_from_disk(tiny_digits,
                                                     compilation_cache):
  assert program.use_compilation_cache(compilation_cache) == compilation_cache
  grid = grid_lib.Grid(grid_lib.Seeds(2))  # a small program: quick to compile
  config = CONFIG.for_grid(grid)
  first = program.execute(train_lib.make_train.__wrapped__(config), grid,
                          tiny_digits)
  assert first.metadata['engine']['compile_cache_hits'] == 0
  assert os.listdir(compilation_cache)  # its programs, written
  # As a later process would: the same program from new functions, in
  # neither the engine's memory nor JAX's, compiled again, which JAX answers
  # from the directory.
  hits, spared = program.compile_cache_hits(), program._CACHE_SPARED['seconds']  # pylint: disable=protected-access
  train = train_lib.make_train.__wrapped__(config)
  again = program.execute(train, grid, tiny_digits)
  info = again.metadata['engine']
  assert info['compile_cache_hits'] >= 2, info  # start and advance
  assert program.compile_cache_hits() - hits == info['compile_cache_hits']
  # Those programs, in memory now, read what building them took (the chunk
  # tuner's estimate of another width), not nothing.
  spared = program._CACHE_SPARED['seconds'] - spared  # pylint: disable=protected-access
  chunked = program._compile_chunk(  # pylint: disable=protected-access
      train, program._resumable(train), grid, tiny_digits,  # pylint: disable=protected-access
      jax.local_devices()[:1], info['chunk_choice']['width'])
  loading = info['compile_s'] + spared  # JAX's saving is net of loading
  assert chunked.seconds == 0 and (
      0.5 * loading <= chunked.cost_s <= 2 * loading), (chunked.cost_s, info)
  chex.assert_trees_all_equal(_metrics(again), _metrics(first))
  # A directory the user configured wins.
  assert program.use_compilation_cache('/elsewhere') == compilation_cache


def test_stored_programs_keep_the_last_used(tmp_path, monkeypatch):
  monkeypatch.setattr(program, 'STORE_MAX_FILES', 2)
  paths = [str(tmp_path / 'programs' / f'{i}.pkl') for i in range(3)]
  for i, path in enumerate(paths[:2]):
    program._write_stored(path, ('program', i), 1.5)
    os.utime(path, (i, i))  # used at time i
  assert program._read_stored(paths[0]) == (('program', 0), 1.5)  # used now
  program._write_stored(paths[2], ('program', 2), 0.5)
  assert sorted(os.listdir(tmp_path / 'programs')) == ['0.pkl', '2.pkl']
  assert program._read_stored(paths[1]) is None


def test_a_compilation_cache_others_may_write_is_refused(tmp_path,
                                                        compilation_cache):
  shared = tmp_path / 'shared'
  shared.mkdir(mode=0o777)
  shared.chmod(0o777)
  assert program.use_compilation_cache(str(shared)) is None
  assert jax.config.jax_compilation_cache_dir is None


def test_a_process_without_chunks_compiles_nothing():
  # Several processes: one whose devices run none of a small grid's chunks.
  assert program.compile_program(lambda x: x, (np.zeros((2, 3)),), [],
                                 (True,)) == ([], 0.0)


def test_compiled_already_knows_what_compile_program_holds():
  # What a chunk's start is checked against before it compiles in a thread.
  def double(x):
    return 2 * x
  args, devices = (np.zeros((2, 3), np.float32),), jax.local_devices()[:1]
  assert not program.compiled_already(double, args, devices, (True,))
  program.compile_program(double, args, devices, (True,))
  assert program.compiled_already(double, args, devices, (True,))
  # Another shape, or optimization level, is another program.
  assert not program.compiled_already(
      double, (np.zeros((3, 3), np.float32),), devices, (True,))
  assert not program.compiled_already(double, args, devices, (True,),
                                      cpu_level=2)


def test_bad_chunk_size_is_refused_before_compiling():
  with pytest.raises(ValueError, match='chunk_size'):
    program.execute(_train(), GRID, np.zeros(3), chunk_size=-1)
  with pytest.raises(ValueError, match='auto, tune, rule or an integer'):
    program.RunOptions(chunk_size='fastest')


_HOST_CORES = textwrap.dedent("""
    import jax
    from rahimi_jax import program
    first = program.use_host_cores(3)
    again = program.use_host_cores(5)  # the first choice stands
    print(first, again, len(jax.devices('cpu')))
    jax.numpy.zeros(1).block_until_ready()
    print(program.use_host_cores(7), len(jax.devices('cpu')))
""")


def _python(code, **env):
  base = dict(os.environ, XLA_FLAGS=FAST_COMPILE)  # no device count
  return subprocess.run(
      [sys.executable, '-c', code], cwd=ROOT, capture_output=True, text=True,
      timeout=120, env=dict(base, PYTHONPATH=str(ROOT), JAX_PLATFORMS='cpu',
                            **env))


def _pythons(*runs):
  """``_python(code, **env)`` of each ``(code, env)``, all at once."""
  with concurrent.futures.ThreadPoolExecutor(len(runs)) as pool:
    return list(pool.map(lambda run: _python(run[0], **run[1]), runs))


def test_use_host_cores_makes_cpu_devices_before_jax_starts():
  # The second: an explicit XLA flag wins.
  default, flagged = _pythons(
      (_HOST_CORES, {}),
      (_HOST_CORES, {'XLA_FLAGS': f'{FAST_COMPILE} '
                                  '--xla_force_host_platform_device_count=2'}))
  assert default.returncode == 0, default.stderr[-2000:]
  assert default.stdout.split() == ['3', '3', '3', '3', '3']
  assert flagged.returncode == 0, flagged.stderr[-2000:]
  assert flagged.stdout.split() == ['2', '2', '2', '2', '2']
  with pytest.raises(ValueError, match='num'):
    program.use_host_cores(0)


_IMPORT_DEFAULT = textwrap.dedent("""
    import os
    import jax
    import rahimi_jax as rj
    from rahimi_jax import data, tuning
    rj.program.use_compilation_cache()  # as the launchers do
    cores = tuning.usable_cores()
    grid = rj.Grid(rj.Seeds(tuning.CPU_CHUNK * cores))  # a chunk per core
    config = rj.TrainConfig(hidden=(4,), steps=2, batch_size=8)
    res = rj.run(config, grid, data.synthetic(n_train=16, n_test=8))
    print(cores, len(jax.devices()), res.metadata['engine']['num_devices'])
""")


def test_import_gives_python_users_the_launchers_devices():
  # The second: an explicit choice made before the import wins over its
  # default.
  default, explicit = _pythons(
      (_IMPORT_DEFAULT, {}),
      ('import jax; jax.config.update("jax_num_cpu_devices", 1); '
       + _IMPORT_DEFAULT.replace('import jax\n', ''), {}))
  assert default.returncode == 0, default.stderr[-2000:]
  cores, devices, used = default.stdout.split()
  assert cores == devices == used
  assert explicit.returncode == 0, explicit.stderr[-2000:]
  assert explicit.stdout.split()[1:] == ['1', '1']


def test_memory_does_not_grow_with_steps(tiny_digits):
  # A program call's memory (arguments, outputs, temporaries) is one
  # epoch's sample order and the logged metrics, not every step's indices:
  # 20,000 steps cost about what 500 do (drawn up front, the indices alone
  # were 20,000 x 32 x 4 bytes per member).
  def call_bytes(steps):
    config = dataclasses.replace(CONFIG, steps=steps, log_every=50)
    run = train_lib.make_train(config.for_grid(GRID)).resumable
    knobs = program._spec(GRID.knobs())  # pylint: disable=protected-access
    state = jax.eval_shape(jax.vmap(run.start, in_axes=(0, None)), knobs,
                           tiny_digits)
    scalar = jax.ShapeDtypeStruct((), np.int32)
    compiled = jax.jit(jax.vmap(run.advance, in_axes=(0, None, 0, None, None))
                       ).lower(knobs, tiny_digits, state, scalar, scalar
                               ).compile()
    return program.program_bytes(compiled)

  short, long = call_bytes(500), call_bytes(20_000)
  assert long < 1.5 * short, (short, long)
  assert long - short < 20_000 * 32 * 4, (short, long)


def test_a_checkpoint_of_other_code_is_not_resumed(tiny_digits, tmp_path,
                                                   monkeypatch):
  """Resuming after the library changed would mix two codes' steps in one
  result; the checkpoint's plan records the code, and another is refused."""
  from rahimi_jax import provenance  # pylint: disable=g-import-not-at-top
  before = program._fingerprint(_train(), GRID, tiny_digits)  # pylint: disable=protected-access
  checkpoints = program._Checkpoints(str(tmp_path), keep=1)  # pylint: disable=protected-access
  checkpoints.write_plan({'fingerprint': before})
  assert checkpoints.plan(before) == {'fingerprint': before}
  monkeypatch.setattr(provenance, 'code_sha256', lambda: 'an edited library')
  after = program._fingerprint(_train(), GRID, tiny_digits)  # pylint: disable=protected-access
  assert [k for k in after if after[k] != before[k]] == ['code']
  with pytest.raises(program.CheckpointMismatch, match=r'\(its code differs\)'):
    checkpoints.plan(after)


def test_a_checkpoint_of_other_data_is_not_resumed(tiny_digits, tmp_path):
  """Data of the same shapes and one other value is another run: resumed, its
  members would train on two datasets."""
  before = program._fingerprint(_train(), GRID, tiny_digits)  # pylint: disable=protected-access
  x_train = np.array(tiny_digits.x_train)
  x_train[0, 0] += 1.0
  other = tiny_digits.replace(x_train=x_train)
  after = program._fingerprint(_train(), GRID, other)  # pylint: disable=protected-access
  assert [k for k in after if after[k] != before[k]] == ['data']
  checkpoints = program._Checkpoints(str(tmp_path), keep=1)  # pylint: disable=protected-access
  checkpoints.write_plan({'fingerprint': before})
  with pytest.raises(program.CheckpointMismatch, match=r'\(its data differs\)'):
    checkpoints.plan(after)


def test_no_chunk_mixes_two_groups():
  """Groups of 3 and 3 in chunks of 2: each group's last chunk holds its
  third member alone (padded), not the next group's first too; every member's
  output is its own learning rate, once."""
  rates = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6)
  grid = grid_lib.Grid(grid_lib.Values('learning_rate', rates))

  def fn(knobs, data):
    del data
    return {'step': jnp.zeros((1,), jnp.int32),
            'lr': knobs['learning_rate'][None]}

  res = program.execute(fn, grid, {'x': np.zeros(3, np.float32)},
                        chunk_size=2, groups=[3, 3])
  assert res.metadata['engine']['chunks'] == 4  # 2 per group
  chex.assert_trees_all_equal(res.columns['member'],
                              np.asarray([m.name for m in grid.members]))
  chex.assert_trees_all_equal(res.columns['lr'], np.asarray(rates, np.float32))


def test_a_plan_differing_by_a_key_either_side_is_another_runs(tmp_path):
  """A checkpoint of a run in several groups (its plan has ``groups``) is
  not resumed by a run without them, nor the other way round."""
  checkpoints = program._Checkpoints(str(tmp_path), keep=1)
  checkpoints.write_plan({'fingerprint': {'grid': 'a', 'groups': '4,3'}})
  with pytest.raises(program.CheckpointMismatch, match='groups differs'):
    checkpoints.plan({'grid': 'a'})
  checkpoints.write_plan({'fingerprint': {'grid': 'a'}})
  with pytest.raises(program.CheckpointMismatch, match='groups differs'):
    checkpoints.plan({'grid': 'a', 'groups': '4,3'})
  assert checkpoints.plan({'grid': 'a'}) == {'fingerprint': {'grid': 'a'}}


def test_a_checkpoint_is_not_resumed_into_other_members_or_chunks(tmp_path):
  """Two unions of grids with the same axes and labels hold other members,
  and a member cap below the checkpoint's chunks would cut other members
  into each chunk: both resumed the first run's states under the second
  run's labels (a member labelled adam with sgd's learning rate); both are
  refused, before anything compiles."""
  sgd, adam = (grid_lib.Choice('optimizer', (o,)) for o in ('sgd', 'adam'))
  lrs = grid_lib.Values('learning_rate', (0.1, 0.01))
  one = grid_lib.Values('learning_rate', (0.1,))
  first = grid_lib.Grid.union(grid_lib.Grid(sgd, lrs), grid_lib.Grid(adam, one))
  other = grid_lib.Grid.union(grid_lib.Grid(sgd, one), grid_lib.Grid(adam, lrs))
  assert repr(first.axes) == repr(other.axes)

  def fn(knobs, data):
    del data
    return {'step': jnp.zeros((1,), jnp.int32),
            'lr': knobs['learning_rate'][None]}

  data = {'x': np.zeros(3, np.float32)}

  def execute(grid, **kwargs):  # a call of its own: the checkpoint's run0
    with program.run_options(checkpoint_dir=str(tmp_path), progress=False):
      return program.execute(fn, grid, data, **kwargs)

  done = execute(first, chunk_size=2)
  with pytest.raises(program.CheckpointMismatch, match=r'\(its grid'):
    execute(other, chunk_size=2)
  with pytest.raises(program.CheckpointMismatch,
                     match=r'member_batch_size=1: .* chunks of 2 members'):
    execute(first, member_batch_size=1)
  again = execute(first, member_batch_size=2)
  assert again.metadata['engine']['chunk_choice']['source'] == 'checkpoint'
  chex.assert_trees_all_equal(again.columns['lr'], done.columns['lr'])
  chex.assert_trees_all_close(again.columns['lr'],  # each member's own
                              done.columns['learning_rate'].astype(np.float32))


def test_a_run_capped_by_member_batch_size_resumes_under_the_same_cap(
    tmp_path):
  """The plan records the chunks that ran (1 member, the cap), not the width
  chosen before the cap (3): the same command resumes."""
  grid = grid_lib.Grid(grid_lib.Values('learning_rate', (0.1, 0.2, 0.3)))

  def fn(knobs, data):
    del data
    return {'step': jnp.zeros((1,), jnp.int32),
            'lr': knobs['learning_rate'][None]}

  def execute():
    with program.run_options(checkpoint_dir=str(tmp_path), progress=False):
      return program.execute(fn, grid, {'x': np.zeros(3, np.float32)},
                             chunk_size=3, member_batch_size=1)

  done = execute()
  assert done.metadata['engine']['chunks'] == 3
  again = execute()
  assert again.metadata['engine']['chunk_choice']['source'] == 'checkpoint'
  chex.assert_trees_all_equal(again.columns['lr'],
                              np.asarray((0.1, 0.2, 0.3), np.float32))


def test_a_checkpoint_of_edited_user_code_is_not_resumed(tiny_digits, tmp_path,
                                                         monkeypatch):
  """An option defined outside the library (a notebook, a script, a module
  of the user's) is code a checkpoint records too: after an edit of what it
  calls, a resume is refused; the library's own options count by name."""
  import importlib  # pylint: disable=g-import-not-at-top
  from rahimi_jax import components  # pylint: disable=g-import-not-at-top
  library = program._fingerprint(_train(), GRID, tiny_digits)  # pylint: disable=protected-access
  module = tmp_path / 'user_optimizer.py'

  def write(factor):
    module.write_text(
        'import optax\n\n\ndef factor():\n  return ' + factor + '\n\n\n'
        'def make(hp):\n  return optax.sgd(hp["learning_rate"] * factor())\n')
    importlib.invalidate_caches()

  monkeypatch.setattr(sys, 'dont_write_bytecode', True)
  monkeypatch.syspath_prepend(str(tmp_path))
  write('1.0')
  user = importlib.import_module('user_optimizer')
  monkeypatch.setitem(components.OPTIMIZERS, 'user_sgd', user.make)
  grid = grid_lib.Grid(grid_lib.Choice('optimizer', ('sgd', 'user_sgd')),
                       grid_lib.Seeds(1))
  train = lambda: train_lib.make_train(CONFIG.for_grid(grid))  # pylint: disable=unnecessary-lambda-assignment
  before = program._fingerprint(train(), grid, tiny_digits)  # pylint: disable=protected-access
  assert before['user code'] != library['user code']
  checkpoints = program._Checkpoints(str(tmp_path / 'ckpt'), keep=1)  # pylint: disable=protected-access
  checkpoints.write_plan({'fingerprint': before})
  assert program._fingerprint(train(), grid, tiny_digits) == before  # pylint: disable=protected-access
  write('0.5')  # the helper the option calls, not the option itself
  monkeypatch.setitem(components.OPTIMIZERS, 'user_sgd',
                      importlib.reload(user).make)
  after = program._fingerprint(train(), grid, tiny_digits)  # pylint: disable=protected-access
  assert [k for k in after if after[k] != before[k]] == ['user code']
  with pytest.raises(program.CheckpointMismatch,
                     match=r'\(its user code differs\)'):
    checkpoints.plan(after)


def test_stored_programs_are_named_by_their_arguments_shapes(tmp_path,
                                                             monkeypatch):
  """jit leaves an argument the program never reads out of its StableHLO
  (a grid's init weights, which ``advance`` does not read): two grids of 2
  and 1 init options had one stored program, and the second process to run
  loaded the first's and failed on the call."""
  monkeypatch.setattr(program, '_cache_dir', lambda: str(tmp_path))
  step = jax.jit(lambda unused, x: x + 1)
  device = jax.devices()[0]
  texts, paths = set(), set()
  for shape in ((4, 2), (4, 1)):
    args = (np.zeros(shape, np.float32), np.zeros(3, np.float32))
    lowered = step.lower(*args)
    texts.add(lowered.as_text())
    paths.add(program._stored_path(lowered, device, {}, program._key(args)))  # pylint: disable=protected-access
  assert len(texts) == 1 and len(paths) == 2
