"""Tests for rahimi_jax.storage: atomic save, checked load."""

import json
import os
import pathlib
import re

import chex
import numpy as np
import pytest

import test_results

from rahimi_jax import results
from rahimi_jax import storage

# The hand-made table of tests/test_results.py (a pytest fixture).
res = test_results.res


def test_save_load_round_trip(res, tmp_path):
  storage.save(res, str(tmp_path))
  assert sorted(os.listdir(tmp_path)) == ['metadata.json', 'results.csv']
  loaded = storage.load(str(tmp_path))
  assert list(loaded.columns) == list(res.columns)
  assert len(loaded) == len(res)
  for name, column in res.columns.items():
    got = loaded.columns[name]
    if column.dtype.kind == 'U':
      assert list(got) == list(column), name
    else:
      # Numbers in their dtype (float32 loaded as float64, int32 as int64
      # before); NaN and inf survive in place.
      assert got.dtype == column.dtype, name
      chex.assert_trees_all_equal(got, column)
  assert loaded.metadata == res.metadata
  assert loaded.axes == res.axes
  # Extremes of other dtypes too (uint64's largest overflowed int64), and a
  # key storage keeps for itself is refused rather than dropped on load.
  odd = results.Results({'u': np.asarray([2**64 - 1, 0], np.uint64),
                         'h': np.asarray([65504, -0.0], np.float16)},
                        {'axes': {}})
  storage.save(odd, str(tmp_path / 'odd'))
  back = storage.load(str(tmp_path / 'odd'))
  chex.assert_trees_all_equal(back.columns, odd.columns)
  with pytest.raises(ValueError, match=r"metadata key\(s\) rows: reserved"):
    storage.save(results.Results(odd.columns, {'rows': 'a note'}),
                 str(tmp_path / 'reserved'))


def test_save_load_round_trip_bool_and_awkward_strings(tmp_path):
  awkward = np.asarray(['a,b', 'say "hi"', '', 'nan'])
  res = results.Results(
      {'name': awkward, 'flag': np.asarray([True, False, True, False]),
       'x': np.asarray([0.1, -0.0, 1e-300, np.nan], np.float64)},
      {'axes': {}})
  storage.save(res, str(tmp_path))
  loaded = storage.load(str(tmp_path))
  assert list(loaded.columns['name']) == list(awkward)
  assert loaded.columns['flag'].dtype == bool
  chex.assert_trees_all_equal(loaded.columns['flag'], res.columns['flag'])
  chex.assert_trees_all_equal(loaded.columns['x'], res.columns['x'])
  assert np.signbit(loaded.columns['x'][1])


def test_floats_round_trip_bit_exactly(tmp_path):
  # A float64 needs up to 17 significant digits and a float32 up to 9 to be
  # read back as the same number; 0.1, 1e-300 and the dyadic fixtures round
  # trip at 8 too. Random float64s, and float32s in [1000, 1024) (spacing
  # 2**-14 there, finer than 8 digits' 1e-4), often need all their digits
  # (checked here): they must come back equal to the last bit, in their dtype.
  rng = np.random.default_rng(0)
  wide = rng.random(100)
  narrow = rng.uniform(1000, 1024, 100).astype(np.float32)
  assert np.mean([float(f'{x:.16g}') != x for x in wide]) > 0.1
  assert np.mean([np.float32(f'{x:.8g}') != x for x in narrow]) > 0.1
  res = results.Results({'wide': wide, 'narrow': narrow}, {'axes': {}})
  storage.save(res, str(tmp_path))
  loaded = storage.load(str(tmp_path))
  assert {k: v.dtype for k, v in loaded.columns.items()} == {
      'wide': np.float64, 'narrow': np.float32}
  changed = [k for k, v in res.columns.items()
             if not np.array_equal(loaded.columns[k], v)]
  assert changed == []


def test_save_writes_row_count_and_types(res, tmp_path):
  storage.save(res, str(tmp_path))
  with open(tmp_path / 'metadata.json') as f:
    meta = json.load(f)
  assert meta['rows'] == len(res)
  assert meta['columns'] == {'member': 'str', 'optimizer': 'str',
                             'learning_rate': 'float', 'seed': 'int',
                             'step': 'int', 'train_loss': 'float',
                             'diverged_step': 'int'}


def test_load_rejects_modified_csv(res, tmp_path):
  storage.save(res, str(tmp_path))
  path = tmp_path / 'results.csv'
  text = path.read_text()
  path.write_text(text.replace('1.25', '1.5', 1))
  assert path.read_text() != text
  with pytest.raises(ValueError, match='results.csv'):
    storage.load(str(tmp_path))


def test_load_rejects_csv_of_another_run(res, tmp_path):
  first, second = tmp_path / 'a', tmp_path / 'b'
  storage.save(res, str(first))
  storage.save(res.where(optimizer='adam'), str(second))
  os.replace(second / 'results.csv', first / 'results.csv')
  with pytest.raises(ValueError, match='does not match'):
    storage.load(str(first))


def _snapshot(directory):
  return {name: (directory / name).read_bytes()
          for name in sorted(os.listdir(directory))}


def _fail_on_write(monkeypatch, name):
  """Makes opening ``name`` for writing inside storage raise OSError."""
  real = open

  def fake_open(path, mode='r', *args, **kwargs):
    if 'w' in mode and os.path.basename(path) == name:
      raise OSError('disk full (simulated)')
    return real(path, mode, *args, **kwargs)

  monkeypatch.setattr('builtins.open', fake_open)


@pytest.mark.parametrize('failing', [storage.CSV, storage.METADATA])
def test_failed_save_leaves_previous_results_intact(res, tmp_path, monkeypatch,
                                                    failing):
  out = tmp_path / 'out'
  storage.save(res, str(out))
  before = _snapshot(out)
  with monkeypatch.context() as m:
    _fail_on_write(m, failing)
    with pytest.raises(OSError, match='simulated'):
      storage.save(res.where(optimizer='adam'), str(out))
  assert _snapshot(out) == before
  assert os.listdir(tmp_path) == ['out']  # no staging directory left
  chex.assert_trees_all_equal(storage.load(str(out)).columns['train_loss'],
                              res.columns['train_loss'].astype(np.float64))


def test_failure_inside_staged_block_keeps_previous_directory(res, tmp_path):
  out = tmp_path / 'out'
  storage.save(res, str(out))
  before = _snapshot(out)
  with pytest.raises(RuntimeError, match='plot failed'):
    with storage.staged(str(out)) as stage:
      storage.write(res.where(optimizer='adam'), stage)
      raise RuntimeError('plot failed')
  assert _snapshot(out) == before
  assert os.listdir(tmp_path) == ['out']


@pytest.mark.parametrize('exchange', [True, False])
def test_save_replaces_the_whole_directory(res, tmp_path, monkeypatch,
                                           exchange):
  if not exchange:  # the two-rename path of systems without renameat2
    monkeypatch.setattr(storage, '_exchange', lambda a, b: False)
  out = tmp_path / 'out'
  with storage.staged(str(out)) as stage:
    storage.write(res, stage)
    (pathlib.Path(stage) / 'curves.png').write_bytes(b'png')
  newer = res.where(optimizer='adam')
  storage.save(newer, str(out))
  # One directory, one run: the earlier run's plot does not linger.
  assert sorted(os.listdir(out)) == sorted([storage.CSV, storage.METADATA])
  assert len(storage.load(str(out))) == len(newer)
  assert os.listdir(tmp_path) == ['out']


def test_save_into_existing_empty_directory(res, tmp_path):
  out = tmp_path / 'out'
  out.mkdir()
  storage.save(res, str(out))
  assert len(storage.load(str(out))) == len(res)


def test_save_refuses_a_directory_of_other_files(res, tmp_path):
  (tmp_path / 'notes.txt').write_text('mine')
  with pytest.raises(ValueError, match='not rahimi_jax results') as info:
    storage.save(res, str(tmp_path))
  assert repr(str(tmp_path)) in str(info.value)
  assert (tmp_path / 'notes.txt').read_text() == 'mine'
  # A folder named like a run's checkpoint but holding the user's files
  # (a week's weights) is theirs too: refused, not swapped away.
  (tmp_path / 'notes.txt').unlink()
  (tmp_path / storage.CHECKPOINT).mkdir()
  (tmp_path / storage.CHECKPOINT / 'model.ckpt').write_text('weights')
  with pytest.raises(ValueError, match='not rahimi_jax results'):
    storage.save(res, str(tmp_path))
  assert (tmp_path / storage.CHECKPOINT / 'model.ckpt').read_text() == 'weights'
  # Only a run's own ``run<k>`` folders: the user's ``runs.md`` there is not.
  (tmp_path / storage.CHECKPOINT / 'model.ckpt').unlink()
  (tmp_path / storage.CHECKPOINT / 'runs.md').write_text('my runs')
  with pytest.raises(ValueError, match='not rahimi_jax results'):
    storage.save(res, str(tmp_path))
  assert (tmp_path / storage.CHECKPOINT / 'runs.md').read_text() == 'my runs'
  # Another tool's metadata.json is not a save's (no csv_sha256).
  (tmp_path / storage.CHECKPOINT / 'runs.md').unlink()
  (tmp_path / storage.CHECKPOINT).rmdir()
  (tmp_path / storage.METADATA).write_text('{"author": "me"}')
  with pytest.raises(ValueError, match='not rahimi_jax results'):
    storage.save(res, str(tmp_path))
  assert (tmp_path / storage.METADATA).read_text() == '{"author": "me"}'


def test_save_refuses_entries_no_save_wrote_beside_results(res, tmp_path):
  # Before, a results folder with a user's notes or another run's results
  # inside was swapped away whole by the next save (--overwrite).
  storage.save(res, str(tmp_path))
  (tmp_path / 'NOTES.txt').write_text('mine')
  (tmp_path / 'inner').mkdir()
  with pytest.raises(ValueError, match=r"holds entries no save wrote there "
                     r"\(NOTES.txt, inner\)"):
    storage.save(res, str(tmp_path))
  assert (tmp_path / 'NOTES.txt').read_text() == 'mine'
  (tmp_path / 'NOTES.txt').unlink()
  (tmp_path / 'inner').rmdir()
  (tmp_path / storage.CHECKPOINT).mkdir()  # a run's own: no foreign entry
  # A kill during the launcher's write of its flags leaves the temporary file.
  (tmp_path / storage.CHECKPOINT / '.flags.jsonab12_x').write_text('{')
  storage.save(res, str(tmp_path), keep=(storage.CHECKPOINT,))


def test_one_run_at_a_time_into_a_directory(tmp_path):
  # Before, a second launch into a running one's --out resumed its live
  # checkpoint, and the first crashed in orbax.
  out = str(tmp_path / 'out')
  held = storage.lock(out)
  try:
    with pytest.raises(ValueError, match='another process is running into'):
      storage.lock(out)  # another open file: flock conflicts as across processes
  finally:
    os.close(held)
  os.close(storage.lock(out))  # released: the next run takes it


def test_a_read_only_directory_is_refused_before_anything(tmp_path,
                                                         monkeypatch):
  out = tmp_path / 'out'
  out.mkdir()
  access = os.access  # root may write to a 0500 folder: say it may not
  monkeypatch.setattr(storage.os, 'access',
                      lambda path, mode: path != str(out) and access(path, mode))
  with pytest.raises(ValueError, match="is not writable"):
    storage.check_writable(str(out))


def test_metadata_is_strict_json_and_warns_of_a_newer_unfinished_run(
    res, tmp_path):
  res.metadata['gap'] = float('inf')
  res.metadata['nested'] = {'x': [np.float32('nan'), 1.0]}
  storage.save(res, str(tmp_path))

  def strict(token):
    raise ValueError(f'not JSON: {token}')
  meta = json.loads((tmp_path / storage.METADATA).read_text(),
                    parse_constant=strict)
  assert meta['gap'] == 'inf' and meta['nested'] == {'x': ['nan', 1.0]}
  # An --overwrite run killed before it saved left its checkpoint beside
  # these: load says they are an earlier run's.
  (tmp_path / storage.CHECKPOINT).mkdir()
  with pytest.warns(UserWarning, match="an earlier run's"):
    storage.load(str(tmp_path))


# A failed write, and a Ctrl-C (KeyboardInterrupt, not an Exception) in it.
@pytest.mark.parametrize('error', [OSError, KeyboardInterrupt])
def test_write_text_failure_leaves_no_temp_file(tmp_path, monkeypatch, error):
  path = tmp_path / 'records.json'
  path.write_text('old')

  def fsync(fd):
    del fd
    raise error('io error (simulated)')

  monkeypatch.setattr(storage.os, 'fsync', fsync)
  with pytest.raises(error, match='simulated'):
    storage.write_text(str(path), 'new')
  assert os.listdir(tmp_path) == ['records.json']
  assert path.read_text() == 'old'


def test_check_writable_creates_parents_not_the_directory(tmp_path):
  out = tmp_path / 'a' / 'b'
  assert storage.check_writable(str(out)) == str(out)
  assert (tmp_path / 'a').is_dir()
  assert not out.exists()


@pytest.mark.parametrize('make_path, message', [
    (lambda f: f / 'out', 'cannot write'),  # parent is a regular file
    (lambda f: f, 'not a directory'),       # the path itself is a file
])
def test_check_writable_rejects_unwritable(tmp_path, make_path, message):
  blocker = tmp_path / 'file'
  blocker.write_text('not a directory')
  path = str(make_path(blocker))
  with pytest.raises(ValueError) as info:
    storage.check_writable(path)
  assert repr(path) in str(info.value)
  assert str(info.value).startswith('out: ')
  assert message in str(info.value)
  assert blocker.read_text() == 'not a directory'


def test_save_rejects_unwritable(res, tmp_path):
  blocker = tmp_path / 'file'
  blocker.write_text('')
  with pytest.raises(ValueError, match='cannot write'):
    storage.save(res, str(blocker / 'out'))


# ---------------------------------------------------------- final/where/stats


def test_summarize_survives_round_trip(res, tmp_path):
  storage.save(res, str(tmp_path))
  loaded = storage.load(str(tmp_path))
  for axis in ('optimizer', 'learning_rate'):
    want = res.summarize('train_loss', axis)
    got = loaded.summarize('train_loss', axis)
    assert [r[0] for r in got] == [r[0] for r in want]
    assert [r[2] for r in got] == [r[2] for r in want]
    chex.assert_trees_all_equal([tuple(r[1]) for r in got],
                                [tuple(r[1]) for r in want])



class _Killed(BaseException):
  """A ``kill -9`` inside a save (nothing after it runs)."""


@pytest.mark.parametrize('exchange, at', [(True, 'keep'), (False, 'keep'),
                                          (False, 'rename')])
def test_a_save_killed_midway_is_recovered(res, tmp_path, monkeypatch,
                                           exchange, at):
  """Killed after the swap and before the checkpoint moved into the new
  results (or, without an atomic swap, between the two renames): a launcher
  takes the run lock and ``recover``s (the next save does too), which puts
  the checkpoint back (or the previous results with it) and leaves no
  staging folder; a save under way in this process is left alone."""
  out = tmp_path / 'out'
  storage.save(res, str(out))
  state = out / storage.CHECKPOINT / 'run0' / 'state'
  state.parent.mkdir(parents=True)
  state.write_text('passes 3')
  replace = os.replace

  def dying(src, dst):
    src, dst = str(src), str(dst)
    if (src.endswith(storage.CHECKPOINT) if at == 'keep' else
        '.new-' in src and dst == str(out)):
      raise _Killed
    replace(src, dst)

  with monkeypatch.context() as m:
    if not exchange:
      m.setattr(storage, '_exchange', lambda a, b: False)
    m.setattr(storage.shutil, 'rmtree', lambda *a, **k: None)  # nothing runs
    m.setattr(storage.os, 'replace', dying)
    with pytest.raises(_Killed):
      storage.save(res.where(optimizer='adam'), str(out),
                   keep=(storage.CHECKPOINT,))
  assert not state.exists()  # hidden in a staging folder
  held = storage.lock(str(out))  # a launcher's start: the lock, then recover
  try:
    with storage.staged(str(tmp_path / 'other')):  # another save under way
      assert storage.recover(str(out))
      assert storage.recover(str(tmp_path / 'other')) is False
      assert len([e for e in os.listdir(tmp_path) if '.other.new-' in e]) == 1
  finally:
    os.close(held)
  assert state.read_text() == 'passes 3'
  assert sorted(os.listdir(tmp_path)) == ['.out.lock', 'other', 'out']
  want = res if at == 'rename' else res.where(optimizer='adam')
  with pytest.warns(UserWarning, match='unfinished'):  # not marked interrupted
    assert len(storage.load(str(out))) == len(want)
  assert not storage.recover(str(out))  # nothing left to do


def test_previous_results_come_back_into_an_empty_directory(res, tmp_path,
                                                            monkeypatch):
  """Killed between the two renames of a system without an atomic swap, then
  ``out`` made again, empty (a user's ``mkdir``), before the next start:
  ``recover`` moves the previous results into it, not away with the
  staging folders it removes."""
  out = tmp_path / 'out'
  storage.save(res, str(out))
  before = _snapshot(out)
  replace = os.replace

  def dying(src, dst):
    if '.new-' in str(src) and str(dst) == str(out):
      raise _Killed
    replace(src, dst)

  with monkeypatch.context() as m:
    m.setattr(storage, '_exchange', lambda a, b: False)
    m.setattr(storage.shutil, 'rmtree', lambda *a, **k: None)  # nothing runs
    m.setattr(storage.os, 'replace', dying)
    with pytest.raises(_Killed):
      storage.save(res.where(optimizer='adam'), str(out))
  assert not out.exists()
  out.mkdir()
  assert storage.recover(str(out))
  assert _snapshot(out) == before
  assert os.listdir(tmp_path) == ['out']  # no staging folder left


def test_a_symbolic_link_out_is_refused_and_named(res, tmp_path):
  # It said "exists and is not a directory" of a link to a directory.
  target = tmp_path / 'target'
  storage.save(res, str(target))
  link = tmp_path / 'link'
  os.symlink(target, link)
  with pytest.raises(ValueError, match=re.escape(
      f"out: '{link}' is a symbolic link, which a save cannot replace (it "
      f"renames the directory); give the directory it points to "
      f"('{target}') or a new one.")):
    storage.save(res, str(link))
  assert len(storage.load(str(target))) == len(res)
