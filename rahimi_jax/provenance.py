"""Provenance of a run: library versions, devices, platform, matmul precision
and git state."""

import functools
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
  are ``None`` (unknown) when git is missing or the source is not a checkout.
  ``matmul_precision`` is the float32 matmul precision programs traced now
  compute with (``jax_default_matmul_precision``, as set by a launcher's
  ``--matmul_precision`` or a ``jax.default_matmul_precision`` context;
  ``'default'``: the backend's own, which differs by backend).

  Args:
    root: the source tree to describe (default: this library's checkout).
  """
  import jax  # pylint: disable=g-import-not-at-top
  versions = {'python': sys.version.split()[0]}
  for name in ('jax', 'jaxlib', 'optax', 'flax', 'chex', 'numpy', 'scipy',
               'sklearn', 'absl'):
    try:
      module = __import__(name)
      versions[name] = getattr(module, '__version__', 'unknown')
    except ImportError:
      versions[name] = None
  root = root or os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  devices = jax.devices()
  return {
      'versions': versions,
      'platform': platform.platform(),
      'devices': [str(d) for d in devices],
      'device_kind': devices[0].device_kind,
      'matmul_precision': matmul_precision(),
      **_git_state(root),
  }


@functools.cache
def _git_state(root: str) -> dict[str, Any]:
  """``git_commit`` and ``git_dirty`` of ``root``, read once per process:
  the code a process runs is the code it imported (two ``git`` processes
  took ~5 ms of every ``program.execute``, ~15 ms in all at G=1)."""

  def git(*args):
    try:
      return subprocess.run(['git', *args], cwd=root, capture_output=True,
                            text=True, timeout=10, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
      return None

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
