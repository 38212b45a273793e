"""Saving and loading ``Results``: written atomically, checked on load.

``save`` writes ``results.csv`` and ``metadata.json`` (the latter carries the
column types, row count and the CSV's SHA-256, checked by ``load``).
"""

import csv
import hashlib
import io
import json
import os
import tempfile

import numpy as np

from rahimi_jax.results import Results

CSV = 'results.csv'
METADATA = 'metadata.json'
_KINDS = {'b': 'bool', 'i': 'int', 'u': 'int', 'f': 'float', 'U': 'str', 'O': 'str'}
_DTYPES = {'bool': bool, 'int': np.int64, 'float': np.float64, 'str': str}


def _write_temp(path: str, text: str) -> str:
  """Writes ``text`` to a synced temporary file beside ``path``; returns it."""
  directory = os.path.dirname(os.path.abspath(path))
  fd, tmp = tempfile.mkstemp(dir=directory, prefix='.' + os.path.basename(path))
  try:
    umask = os.umask(0)
    os.umask(umask)
    os.fchmod(fd, 0o666 & ~umask)
    with os.fdopen(fd, 'w', newline='') as f:
      f.write(text)
      f.flush()
      os.fsync(f.fileno())
  except BaseException:
    os.remove(tmp)
    raise
  return tmp


def atomic_write(files: dict[str, str]) -> None:
  """Writes ``{path: text}``: every file complete, or none replaced.

  All contents are written and synced to temporary files first; only then are
  they renamed into place, so a failure while writing leaves the previous
  files untouched and no file is ever half-written.
  """
  temps = {}
  try:
    for path, text in files.items():
      temps[path] = _write_temp(path, text)
    for path, tmp in temps.items():
      os.replace(tmp, path)
  finally:
    for tmp in temps.values():
      if os.path.exists(tmp):
        os.remove(tmp)


def check_writable(out_dir: str) -> str:
  """Creates ``out_dir`` if needed; raises ``ValueError`` if it is not writable."""
  try:
    os.makedirs(out_dir, exist_ok=True)
    with tempfile.TemporaryFile(dir=out_dir):
      pass
  except OSError as e:
    raise ValueError(f'out: cannot write to {out_dir!r} ({e.strerror}); '
                     'give a writable directory.') from None
  return out_dir


def _cell(value, kind):
  if kind == 'float':
    return repr(float(value))
  if kind == 'bool':
    return '1' if value else '0'
  return str(value)


def save(results: Results, out_dir: str) -> None:
  """Writes ``results.csv`` and ``metadata.json`` into ``out_dir`` atomically."""
  check_writable(out_dir)
  kinds = {k: _KINDS[v.dtype.kind] for k, v in results.columns.items()}
  buf = io.StringIO()
  writer = csv.writer(buf, lineterminator='\n')
  writer.writerow(results.columns)
  for row in zip(*results.columns.values()):
    writer.writerow(_cell(v, kinds[k]) for k, v in zip(results.columns, row))
  text = buf.getvalue()
  meta = {**results.metadata, 'columns': kinds, 'rows': len(results),
          'csv_sha256': hashlib.sha256(text.encode()).hexdigest()}
  atomic_write({
      os.path.join(out_dir, CSV): text,
      os.path.join(out_dir, METADATA):
          json.dumps(meta, indent=2, default=_json_default) + '\n',
  })


def _json_default(value):
  if isinstance(value, np.generic):
    return value.item()
  if isinstance(value, np.ndarray):
    return value.tolist()
  return str(value)


def load(out_dir: str) -> Results:
  """Reads what ``save`` wrote; checks the CSV against the metadata."""
  with open(os.path.join(out_dir, METADATA)) as f:
    meta = json.load(f)
  with open(os.path.join(out_dir, CSV), newline='') as f:
    text = f.read()
  if hashlib.sha256(text.encode()).hexdigest() != meta.get('csv_sha256'):
    raise ValueError(f'{CSV} in {out_dir!r} does not match {METADATA} '
                     '(written by another run?).')
  rows = list(csv.reader(io.StringIO(text)))
  header, body = rows[0], rows[1:]
  kinds = meta.pop('columns')
  meta.pop('rows')
  meta.pop('csv_sha256')
  columns = {}
  for j, name in enumerate(header):
    cells = [r[j] for r in body]
    kind = kinds[name]
    if kind == 'bool':
      columns[name] = np.asarray([c == '1' for c in cells], bool)
    else:
      columns[name] = np.asarray(cells).astype(_DTYPES[kind])
  return Results(columns, meta)
