"""Provenance of a run: library versions, devices, platform, matmul precision
and git state."""

from collections.abc import Iterable
import dataclasses
import functools
import hashlib
import importlib.metadata
import inspect
import os
import platform
import re
import subprocess
import sys
import sysconfig
import types
from typing import Any

import numpy as np


def provenance(root: str | None = None) -> dict[str, Any]:
  """Library versions, devices and the git state of this run.

  ``git_commit`` is the checked-out commit of the source tree this library was
  imported from; ``git_dirty`` whether that tree differs from it (modified,
  staged or untracked files, as ``git status --porcelain`` lists them). Both
  are ``None`` (unknown) when git is missing or the source is not a checkout
  of this library (an install inside another project's repository).
  ``code_sha256`` is the hash of the library's source as imported
  (``code_sha256()``), known with or without git.
  ``matmul_precision`` is the float32 matmul precision programs traced now
  compute with (``jax_default_matmul_precision``, as set by a launcher's
  ``--matmul_precision`` or a ``jax.default_matmul_precision`` context;
  ``'default'``: the backend's own, which differs by backend).

  Args:
    root: the source tree to describe (default: this library's checkout).
  """
  import jax  # pylint: disable=g-import-not-at-top
  from rahimi_jax import __version__  # pylint: disable=g-import-not-at-top
  versions = {'python': sys.version.split()[0], 'rahimi_jax': __version__}
  for name, distribution in _LIBRARIES:
    versions[name] = _version(name, distribution)
  # The library's own checkout: one that tracks this file.
  own = None if root else os.path.abspath(__file__)
  root = root or os.path.dirname(os.path.dirname(own))
  devices = jax.devices()
  return {
      'versions': versions,
      'platform': platform.platform(),
      'devices': [str(d) for d in devices],
      'device_kind': devices[0].device_kind,
      'matmul_precision': matmul_precision(),
      'code_sha256': code_sha256(),
      **_git_state(root, own),
  }


# Module and distribution names of the libraries a run records.
_LIBRARIES = (('jax', 'jax'), ('jaxlib', 'jaxlib'), ('optax', 'optax'),
              ('flax', 'flax'), ('chex', 'chex'), ('numpy', 'numpy'),
              ('scipy', 'scipy'), ('sklearn', 'scikit-learn'),
              ('absl', 'absl-py'))


def _version(module: str, distribution: str) -> str | None:
  """The version of ``module`` as imported, else as installed (``None``:
  not installed), without importing it: scikit-learn's import alone took
  0.6 s of every launcher run that does not use it."""
  version = getattr(sys.modules.get(module), '__version__', None)
  if version is not None:
    return str(version)
  try:
    return importlib.metadata.version(distribution)
  except importlib.metadata.PackageNotFoundError:
    return None


@functools.cache
def code_sha256() -> str:
  """SHA-256 of this library's source files (``rahimi_jax/**/*.py``, paths
  and contents) as imported: the code a run ran, with or without git."""
  package = os.path.dirname(os.path.abspath(__file__))
  digest = hashlib.sha256()
  for directory, subdirs, files in os.walk(package):
    subdirs.sort()
    for name in sorted(f for f in files if f.endswith('.py')):
      path = os.path.join(directory, name)
      digest.update(os.path.relpath(path, package).encode() + b'\0')
      with open(path, 'rb') as f:
        digest.update(f.read())
  return digest.hexdigest()


def user_code_sha256(objects: Iterable[Any]) -> str:
  """SHA-256 of the user code among ``objects`` (a run's model factory and
  the components of the options it uses) and of the user code they refer
  to, by name (their globals) or by closure, transitively.

  User code is code outside this library (``code_sha256`` covers that), the
  standard library and installed packages: a notebook's cells, a script, a
  module of the user's project. Each function counts by its source
  (``inspect.getsource``; IPython keeps cells' sources), else by its
  bytecode and constants; a class by its methods (a notebook's class has no
  source file ``inspect`` reads; its methods do) and plain attributes; a
  ``functools.partial`` by its function and arguments; a tuple (a
  ``components.norms.Norm``) by its fields; a callable instance by its class
  and attributes. A checkpoint records it: resuming after an option defined
  in a notebook was edited would mix two codes' steps.
  """
  # Visited objects by id, each kept alive until the end: a temporary (a
  # filtered attribute dict, a partial's tuple) freed mid-walk would hand its
  # id to a later object, which would then be skipped unhashed.
  texts, seen = [], {}
  for obj in objects:
    _visit_user_code(obj, texts, seen, depth=0)
  return hashlib.sha256('\0'.join(texts).encode()).hexdigest()


_MAX_DEPTH = 16  # references followed from a run's components


def _visit_user_code(obj, texts, seen, depth):
  if depth > _MAX_DEPTH:
    return
  if isinstance(obj, _SCALARS):  # not by identity: small ints are shared
    texts.append(repr(obj))
    return
  if id(obj) in seen:
    return
  seen[id(obj)] = obj
  visit = functools.partial(_visit_user_code, texts=texts, seen=seen,
                            depth=depth + 1)
  if isinstance(obj, functools.partial):
    obj = (obj.func, obj.args, obj.keywords)
  if isinstance(obj, (tuple, list)):
    texts.append(f'{type(obj).__name__}[{len(obj)}]')
    for x in obj:
      visit(x)
    return
  if isinstance(obj, dict):
    for k, v in obj.items():
      texts.append(_stable_repr(k))
      visit(v)
    return
  if isinstance(obj, (set, frozenset)):
    texts.append(repr(sorted(_stable_repr(x) for x in obj)))
    # What is not a plain value counts by its code, not its name: each member
    # hashed on its own (from what was seen before the set) and the texts
    # sorted, since a set's order (and like-named closures' order by any
    # key) follows the hash seed and memory addresses.
    parts, reached = [], {}
    for x in obj:
      if not isinstance(x, _SCALARS):
        part, seen_by_x = [], dict(seen)
        _visit_user_code(x, part, seen_by_x, depth + 1)
        parts.append('\0'.join(part))
        reached.update(seen_by_x)
    seen.update(reached)
    texts.extend(sorted(parts))
    return
  if hasattr(obj, 'dtype') and hasattr(obj, 'shape') and hasattr(
      obj, '__array__'):  # an array (numpy, JAX): its values
    try:
      a = np.asarray(obj)
    except TypeError:  # typed PRNG keys
      texts.append(_stable_repr(obj))
    else:
      texts.append(f'{a.dtype}{a.shape}:'
                   + hashlib.sha256(a.tobytes()).hexdigest())
    return
  if isinstance(obj, types.ModuleType):
    texts.append(obj.__name__)  # what a function reads of it: by name below
    return
  if isinstance(obj, types.MethodType):
    visit((obj.__func__, obj.__self__))
    return
  wrapped = getattr(obj, '__wrapped__', None)
  if wrapped is not None and callable(obj):  # jax.jit, custom_jvp, wraps
    texts.append(type(obj).__qualname__)
    visit(wrapped)
    return
  if isinstance(obj, types.FunctionType) and _is_user(obj):
    try:
      texts.append(inspect.getsource(obj))
    except (OSError, TypeError):  # no source file: a compiled string
      texts.append(_code_text(obj.__code__))
    names = _global_names(obj.__code__)
    for name in names:
      if name in obj.__globals__:
        value = obj.__globals__[name]
        visit(value)
        if isinstance(value, types.ModuleType) and _is_user(value):
          # ``helpers.helper(x)``: what it reads of the user's module.
          visit([getattr(value, n) for n in names if hasattr(value, n)])
  if isinstance(obj, types.FunctionType):
    if not _is_user(obj):  # a library's function: its name, what it closes
      texts.append(_library_name(obj))
    for cell in obj.__closure__ or ():
      try:
        visit(cell.cell_contents)
      except ValueError:  # an empty cell
        pass
    if obj.__defaults__ or obj.__kwdefaults__:
      visit((obj.__defaults__, obj.__kwdefaults__))
    return
  if isinstance(obj, type):
    if not _is_user(obj):
      texts.append(_library_name(obj))
      return
    for k, v in vars(obj).items():  # its attributes, each method as code
      if not k.startswith('__') or callable(v):
        texts.append(k)
        v = (v.fget, v.fset) if isinstance(v, property) else v
        visit(getattr(v, '__func__', v))
    return
  # An instance: its class, and its state (a library's: its public
  # attributes, the settings it was made with: ``nn.Dense(4)``). A
  # dataclass's state is its fields and its other public attributes: a flax
  # module's private ones hold its bookkeeping (``_state``), which its first
  # use changes.
  user = _is_user(type(obj))
  visit(type(obj))
  state = getattr(obj, '__dict__', None)
  state = state if isinstance(state, dict) else {}
  if dataclasses.is_dataclass(obj):
    state = {**{f.name: getattr(obj, f.name, None)
                for f in dataclasses.fields(obj)},
             **{k: v for k, v in state.items() if not k.startswith('_')}}
  elif not user:
    state = {k: v for k, v in state.items() if not k.startswith('_')}
  if state:
    visit(state)
  if callable(obj) and not user:  # np.tanh, a builtin, a C++ callable
    texts.append(_library_name(obj))


_SCALARS = (bool, int, float, complex, str, bytes, type(None))


def _library_name(obj) -> str:
  """A library's function or class by its module and name (``jax.nn.relu``
  read from a global is not ``jax.nn.gelu``)."""
  return (f'{getattr(obj, "__module__", None)}.'
          f'{getattr(obj, "__qualname__", getattr(obj, "__name__", None))}')


def _global_names(code: types.CodeType) -> list[str]:
  """The names ``code`` and the code nested in it look up."""
  names = list(code.co_names)
  for const in code.co_consts:
    if isinstance(const, types.CodeType):
      names += _global_names(const)
  return names


def _code_text(code: types.CodeType | None) -> str:
  """Bytecode, names and constants (nested code alike), without addresses."""
  if code is None:
    return ''
  consts = [_code_text(c) if isinstance(c, types.CodeType) else
            repr(sorted(map(repr, c))) if isinstance(c, frozenset) else repr(c)
            for c in code.co_consts]  # a frozenset's order is the hash seed's
  return repr((code.co_code, code.co_names, consts))


def _stable_repr(value) -> str:
  """``repr`` without object addresses (which differ between processes)."""
  return re.sub(r' at 0x[0-9a-fA-F]+', '', repr(value))


@functools.cache
def _installed_roots() -> tuple[str, ...]:
  """Where the standard library and installed packages live, and this
  library."""
  paths = sysconfig.get_paths()
  roots = {os.path.realpath(paths[k]) for k in ('stdlib', 'platstdlib',
                                                 'purelib', 'platlib')
           if k in paths}
  roots.add(os.path.dirname(os.path.realpath(__file__)))
  return tuple(sorted(roots))


def _is_user(obj) -> bool:
  """Whether ``obj`` (a function, class or module) is user code."""
  module = obj if isinstance(obj, types.ModuleType) else sys.modules.get(
      getattr(obj, '__module__', None) or '')
  if module is None or module.__name__ in sys.builtin_module_names:
    return module is None
  path = getattr(module, '__file__', None)
  if path is None:  # a notebook's __main__, or a module built in memory
    return True
  path = os.path.realpath(path)
  return not any(path.startswith(root + os.sep)
                 for root in _installed_roots())


@functools.cache
def _git_state(root: str, tracked: str | None = None) -> dict[str, Any]:
  """``git_commit`` and ``git_dirty`` of ``root``, read once per process:
  the code a process runs is the code it imported (two ``git`` processes
  took ~5 ms of every ``program.execute``, ~15 ms in all at G=1). Unknown
  unless the checkout tracks ``tracked`` (if given): a library installed
  inside another project's repository is not that project's commit."""

  def git(*args):
    try:
      return subprocess.run(['git', *args], cwd=root, capture_output=True,
                            text=True, timeout=10, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
      return None

  if tracked is not None and git('ls-files', '--error-unmatch',
                                 os.path.relpath(tracked, root)) is None:
    return {'git_commit': None, 'git_dirty': None}
  status = git('status', '--porcelain')
  return {'git_commit': git('rev-parse', 'HEAD'),
          'git_dirty': None if status is None else bool(status)}


def matmul_precision() -> str:
  """The float32 matmul precision programs traced now compute with
  (``jax_default_matmul_precision``); ``'default'`` where none is set: the
  backend's own (float32 on CPU, TensorFloat-32 on recent NVIDIA GPUs, one
  bfloat16 pass on TPU)."""
  import jax  # pylint: disable=g-import-not-at-top
  return str(jax.config.jax_default_matmul_precision or 'default')
