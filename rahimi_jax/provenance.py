"""Provenance of a run: library versions, devices, platform, matmul precision
and git state."""

import functools
import hashlib
import os
import platform
import subprocess
import sys
from typing import Any


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
  for name in ('jax', 'jaxlib', 'optax', 'flax', 'chex', 'numpy', 'scipy',
               'sklearn', 'absl'):
    try:
      module = __import__(name)
      versions[name] = getattr(module, '__version__', 'unknown')
    except ImportError:
      versions[name] = None
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
