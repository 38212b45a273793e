"""Saving and loading ``Results``: a results directory replaced whole, checked on load.

``save`` writes ``results.csv`` and ``metadata.json`` (the latter carries the
column types, row count and the CSV's SHA-256, checked by ``load``) into a new
directory that then replaces the old one in one rename (``staged``): a killed
or failed save leaves the previous results as they were.
"""

import contextlib
import csv
import ctypes
import errno
import fcntl
import hashlib
import io
import json
import os
import shutil
import tempfile
import warnings

import numpy as np

from rahimi_jax.results import Results

CSV = 'results.csv'
METADATA = 'metadata.json'
# A launcher's checkpoints while its run is unfinished (``program.RunOptions``).
CHECKPOINT = 'checkpoint'


def _ours(checkpoint: str) -> bool:
  """Whether ``checkpoint`` is a checkpoint directory a run of ours made:
  its launcher's ``flags.json`` and the runs' ``run<k>`` folders only (a
  folder of that name holding anything else is the user's: kept)."""
  try:
    names = os.listdir(checkpoint)
  except OSError:
    return False
  # ``.flags.json*``: its atomic write's temporary file, left by a kill.
  return all(n == 'flags.json' or n.startswith('.flags.json')
             or (n.startswith('run') and n[3:].isdigit()) for n in names)
_KINDS = {'b': 'bool', 'i': 'int', 'u': 'int', 'f': 'float', 'U': 'str', 'O': 'str'}
_DTYPES = {'bool': bool, 'int': np.int64, 'float': np.float64, 'str': str}


@contextlib.contextmanager
def atomic_file(path: str, mode: str = 'w'):
  """Yields a file whose contents replace ``path`` whole when the block ends
  (a synced temporary file renamed into place); on an exception ``path`` is
  left as it was and the temporary file removed."""
  directory = os.path.dirname(os.path.abspath(path))
  fd, tmp = tempfile.mkstemp(dir=directory, prefix='.' + os.path.basename(path))
  try:
    os.fchmod(fd, 0o666 & ~_umask())  # mkstemp's 0600 is for secrets
    with os.fdopen(fd, mode, **({} if 'b' in mode else {'newline': ''})) as f:
      yield f
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.remove(tmp)
    raise


def write_text(path: str, text: str) -> None:
  """Writes one file atomically (``atomic_file``)."""
  with atomic_file(path) as f:
    f.write(text)


def is_results_dir(path: str) -> bool:
  """Whether ``path`` holds results this library wrote (its metadata file)."""
  try:
    with open(os.path.join(path, METADATA)) as f:
      return 'csv_sha256' in json.load(f)
  except (OSError, ValueError):
    return False


def lock(out_dir: str) -> int:
  """Takes ``out_dir``'s run lock and returns its descriptor, to
  ``os.close`` when the run is saved; ``ValueError`` if another process
  holds it (two runs into one directory would share its checkpoint).

  The lock is an ``flock`` of ``.<name>.lock`` beside ``out_dir`` (created
  if missing, and left there), not of the directory: a save swaps the
  directory for another, and a killed save may have left none
  (``recover``).
  """
  out_dir = os.path.abspath(os.path.expanduser(out_dir))
  parent, name = os.path.split(out_dir)
  os.makedirs(parent, exist_ok=True)
  fd = os.open(os.path.join(parent, f'.{name}.lock'), os.O_RDWR | os.O_CREAT,
               0o666 & ~_umask())
  try:
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
  except OSError:
    os.close(fd)
    raise ValueError(f'out: another process is running into {out_dir!r}; '
                     'wait for it, or give another directory.') from None
  return fd


def _saved_files(path: str) -> list[str] | None:
  """The entries the save of ``path`` wrote (``None``: not recorded, a save
  before they were)."""
  try:
    with open(os.path.join(path, METADATA)) as f:
      return json.load(f).get('files')
  except (OSError, ValueError):
    return None


def is_finished(path: str) -> bool:
  """Whether ``path`` holds the results of a run that finished: results not
  marked interrupted, and no checkpoint of a run to resume."""
  if not is_results_dir(path) or os.path.isdir(os.path.join(path, CHECKPOINT)):
    return False
  with open(os.path.join(path, METADATA)) as f:
    return 'interrupted' not in json.load(f)


def check_writable(out_dir: str, create: bool = True) -> str:
  """Checks that ``out_dir`` can receive results; raises ``ValueError`` if not.

  ``out_dir`` may be missing, an empty directory, a results directory
  written before (which a save replaces whole: it must hold only what that
  save wrote, ``metadata.json``'s ``files``), or one holding only the
  checkpoint of an unfinished run; its parent is created if needed
  (``create``; else only checked: its nearest existing ancestor must be a
  writable directory) and must be writable. Any other existing path is
  refused (a mount point too: a save renames the directory), so that a
  save never replaces a directory of other files. ``~`` is expanded.
  """
  out_dir = os.path.abspath(os.path.expanduser(out_dir))
  if os.path.lexists(out_dir):
    if os.path.islink(out_dir):
      raise ValueError(f'out: {out_dir!r} is a symbolic link, which a save '
                       'cannot replace (it renames the directory); give the '
                       f'directory it points to ({os.path.realpath(out_dir)!r}) '
                       'or a new one.')
    if not os.path.isdir(out_dir):
      raise ValueError(f'out: {out_dir!r} exists and is not a directory; give '
                       'a new directory or one that holds earlier results.')
    if os.path.ismount(out_dir):
      raise ValueError(f'out: {out_dir!r} is a mount point, which a save '
                       'cannot replace (it renames the directory); give a '
                       'directory inside it.')
    if not os.access(out_dir, os.W_OK | os.X_OK):
      raise ValueError(f'out: {out_dir!r} is not writable; give a directory '
                       'in a writable place.')
    entries = set(os.listdir(out_dir))
    if _ours(os.path.join(out_dir, CHECKPOINT)):
      entries -= {CHECKPOINT}
    if entries and not is_results_dir(out_dir):
      raise ValueError(
          f'out: {out_dir!r} holds files that are not rahimi_jax results '
          f'(no {METADATA} written by a save); a save replaces the whole '
          'directory, so give a new or empty directory.')
    foreign = sorted(entries - set(_saved_files(out_dir) or entries))
    if foreign:
      raise ValueError(
          f'out: {out_dir!r} holds entries no save wrote there '
          f'({", ".join(foreign[:5])}); a save replaces the whole directory, '
          'so move them or give another directory.')
  parent = os.path.dirname(out_dir)
  try:
    if create:
      os.makedirs(parent, exist_ok=True)
    else:  # the folders a save would create: none yet
      while not os.path.lexists(parent):
        parent = os.path.dirname(parent)
    with tempfile.TemporaryFile(dir=parent):
      pass
  except OSError as e:
    raise ValueError(f'out: cannot write beside {out_dir!r} ({e.strerror}); '
                     'give a directory in a writable place.') from None
  return out_dir


_RENAME_EXCHANGE = 2


def _exchange(a: str, b: str) -> bool:
  """Atomically swaps two paths (Linux ``renameat2``); False if unsupported."""
  try:
    libc = ctypes.CDLL(None, use_errno=True)
    renameat2 = libc.renameat2
  except (OSError, AttributeError):
    return False
  at_fdcwd = -100
  if renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b),
               _RENAME_EXCHANGE) == 0:
    return True
  err = ctypes.get_errno()
  if err in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
    return False
  raise OSError(err, os.strerror(err), b)


def _fsync_dir(path: str) -> None:
  fd = os.open(path, os.O_RDONLY)
  try:
    os.fsync(fd)
  finally:
    os.close(fd)


# The staging folders of this process's saves under way (``staged``).
_ACTIVE: set[str] = set()


def _stale(out_dir: str) -> list[str]:
  """The staging folders beside ``out_dir`` (``staged``'s ``.new-`` and
  ``.old-``) but this process's saves under way: those of a save that was
  killed or failed mid-way. Another process's save into ``out_dir`` would
  hold its run lock (``lock``), which a caller of ``recover`` holds."""
  parent, name = os.path.split(out_dir)
  try:
    entries = os.listdir(parent)
  except OSError:
    return []
  return [os.path.join(parent, e) for e in sorted(entries)
          if e.startswith((f'.{name}.new-', f'.{name}.old-'))
          and os.path.join(parent, e) not in _ACTIVE]


def recover(out_dir: str) -> bool:
  """Finishes what a killed save into ``out_dir`` left undone, and removes
  its staging folders; returns whether it brought anything back.

  A save swaps a staged directory with ``out_dir``, then moves the entries
  it keeps (``staged``'s ``keep``: the checkpoint beside interrupted
  results) from the old contents into the new. Killed between the two,
  the new results record an entry (``metadata.json``'s ``files``) that sits
  in the staging folder: it is moved back. Killed between the two renames
  of a system without an atomic swap, ``out_dir`` is missing (or empty): the
  previous contents are moved back. Call it holding the directory's run
  lock (``lock``), as a launcher's start does, before it reads a checkpoint;
  ``staged`` calls it too.
  """
  out_dir = os.path.abspath(os.path.expanduser(out_dir))
  stale = _stale(out_dir)
  name = os.path.basename(out_dir)
  olds = [os.path.join(s, name) for s in stale if '.old-' in s]
  moved = False
  if not os.path.lexists(out_dir) or (os.path.isdir(out_dir) and
                                      not os.listdir(out_dir)):
    for old in olds:
      if os.path.isdir(old):
        os.replace(old, out_dir)
        moved = True
        break
  for entry in _saved_files(out_dir) or []:
    target = os.path.join(out_dir, entry)
    for folder in [*stale, *olds]:
      source = os.path.join(folder, entry)
      if not os.path.lexists(target) and os.path.lexists(source):
        os.replace(source, target)
        moved = True
  for folder in stale:
    shutil.rmtree(folder, ignore_errors=True)
  if moved or stale:
    _fsync_dir(os.path.dirname(out_dir))
  return moved


@contextlib.contextmanager
def staged(out_dir: str, keep: tuple[str, ...] = ()):
  """Yields a new directory that replaces ``out_dir`` whole on success.

  Everything written into the yielded directory appears in ``out_dir`` at
  once: it is synced, then swapped with ``out_dir`` in one rename (Linux's
  ``renameat2(RENAME_EXCHANGE)``; elsewhere two renames). If the block
  raises, ``out_dir`` keeps its previous contents and the staging directory
  is removed. Files of an earlier save that this one does not write are gone
  afterwards: one directory, one run; but for the entries named in ``keep``
  (e.g. ``CHECKPOINT`` beside interrupted results), moved from the old
  contents into the new just after the swap (a save killed in between:
  ``recover``, which the next save or launch runs, moves them).
  """
  out_dir = check_writable(out_dir)
  recover(out_dir)
  parent, name = os.path.split(out_dir)
  stage = tempfile.mkdtemp(dir=parent, prefix=f'.{name}.new-')
  old, swapped = stage, False  # where the old contents are after the swap
  mine = [stage]
  _ACTIVE.update(mine)
  try:
    os.chmod(stage, 0o777 & ~_umask())
    yield stage
    kept = [e for e in keep if os.path.lexists(os.path.join(out_dir, e))]
    metadata = os.path.join(stage, METADATA)
    if os.path.exists(metadata):  # what this save wrote (check_writable)
      with open(metadata) as f:
        meta = json.load(f)
      meta['files'] = sorted({*os.listdir(stage), *kept})
      with open(metadata, 'w') as f:
        f.write(json.dumps(meta, indent=2) + '\n')
    for directory, _, files in os.walk(stage, topdown=False):
      for entry in files:  # a study's folders of results too
        fd = os.open(os.path.join(directory, entry), os.O_RDONLY)
        try:
          os.fsync(fd)
        finally:
          os.close(fd)
      _fsync_dir(directory)
    if not os.path.exists(out_dir) or not os.listdir(out_dir):
      os.replace(stage, out_dir)  # onto nothing or an empty directory
    elif not _exchange(stage, out_dir):
      holder = tempfile.mkdtemp(dir=parent, prefix=f'.{name}.old-')
      mine.append(holder)
      _ACTIVE.add(holder)
      old = os.path.join(holder, name)
      os.replace(out_dir, old)
      os.replace(stage, out_dir)
      stage = holder
    # Swapped: the old contents hold what ``keep`` moves back (a failure
    # leaves them for ``recover``).
    swapped = True
    for entry in kept:
      os.replace(os.path.join(old, entry), os.path.join(out_dir, entry))
    _fsync_dir(out_dir)
    _fsync_dir(parent)
  except BaseException:
    if swapped and any(os.path.lexists(os.path.join(old, e)) for e in keep):
      stage = None  # not all moved back: ``recover``'s
    raise
  finally:
    _ACTIVE.difference_update(mine)  # what is left is ``recover``'s
    if stage is not None:
      shutil.rmtree(stage, ignore_errors=True)  # the old contents


def _umask() -> int:
  umask = os.umask(0)
  os.umask(umask)
  return umask


def _cell(value, kind):
  if kind == 'float':
    return repr(float(value))
  if kind == 'bool':
    return '1' if value else '0'
  return str(value)


def save(results: Results, out_dir: str, keep: tuple[str, ...] = ()) -> None:
  """Replaces ``out_dir`` with ``results.csv`` and ``metadata.json``, atomically.

  To save other files (plots, reports) in the same atomic step, write them
  and call ``write`` inside one ``staged(out_dir)`` block. ``keep``: as
  ``staged``'s.
  """
  with staged(out_dir, keep) as stage:
    write(results, stage)


# Metadata keys ``write`` and ``staged`` add (and ``load`` takes back).
RESERVED = ('columns', 'dtypes', 'rows', 'csv_sha256', 'files')


def write(results: Results, directory: str) -> None:
  """Writes ``results.csv`` and ``metadata.json`` into ``directory``; a
  number or bool column loads back in its dtype (``dtypes``)."""
  taken = [k for k in RESERVED if k in results.metadata]
  if taken:
    raise ValueError(f'metadata key(s) {", ".join(taken)}: reserved for the '
                     f'saved files\' record ({", ".join(RESERVED)}); rename '
                     'them.')
  kinds = {k: _KINDS[v.dtype.kind] for k, v in results.columns.items()}
  buf = io.StringIO()
  writer = csv.writer(buf, lineterminator='\n')
  writer.writerow(results.columns)
  for row in zip(*results.columns.values()):
    writer.writerow(_cell(v, kinds[k]) for k, v in zip(results.columns, row))
  text = buf.getvalue()
  meta = {**results.metadata, 'columns': kinds,
          'dtypes': {k: v.dtype.str for k, v in results.columns.items()
                     if v.dtype.kind in 'biuf'},
          'rows': len(results),
          'csv_sha256': hashlib.sha256(text.encode()).hexdigest()}
  for name, content in ((CSV, text), (METADATA, json.dumps(
      _finite(meta), indent=2, default=_json_default, allow_nan=False) + '\n')):
    with open(os.path.join(directory, name), 'w', newline='') as f:
      f.write(content)


def _finite(value):
  """``value`` with each non-finite float as the string ``'nan'``,
  ``'inf'`` or ``'-inf'``: strict JSON has no NaN or Infinity."""
  if isinstance(value, dict):
    return {k: _finite(v) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return [_finite(v) for v in value]
  if isinstance(value, (float, np.floating)) and not np.isfinite(value):
    return str(float(value))
  return value


def _json_default(value):
  if isinstance(value, np.generic):
    return value.item()
  if isinstance(value, np.ndarray):
    return value.tolist()
  return str(value)


def load(out_dir: str) -> Results:
  """Reads what ``save`` wrote; checks the CSV against the metadata. Warns
  when a checkpoint of another, unfinished run sits beside them (an
  ``--overwrite`` run killed before it saved: these results are older)."""
  out_dir = os.path.expanduser(out_dir)
  with open(os.path.join(out_dir, METADATA)) as f:
    meta = json.load(f)
  if ('interrupted' not in meta
      and os.path.isdir(os.path.join(out_dir, CHECKPOINT))):
    warnings.warn(f'{out_dir} also holds the checkpoint of an unfinished run '
                  'that would replace these results when it finishes: they '
                  'are an earlier run\'s.', stacklevel=2)
  with open(os.path.join(out_dir, CSV), newline='') as f:
    text = f.read()
  if hashlib.sha256(text.encode()).hexdigest() != meta.get('csv_sha256'):
    raise ValueError(f'{CSV} in {out_dir!r} does not match {METADATA} '
                     '(written by another run?).')
  rows = list(csv.reader(io.StringIO(text)))
  header, body = rows[0], rows[1:]
  kinds = meta.pop('columns')
  dtypes = meta.pop('dtypes', {})  # absent: written before it was recorded
  meta.pop('rows')
  meta.pop('csv_sha256')
  meta.pop('files', None)
  columns = {}
  for j, name in enumerate(header):
    cells = [r[j] for r in body]
    kind = kinds[name]
    if kind == 'bool':
      columns[name] = np.asarray([c == '1' for c in cells], bool)
    else:
      columns[name] = np.asarray(cells).astype(dtypes.get(name, _DTYPES[kind]))
  return Results(columns, meta)
