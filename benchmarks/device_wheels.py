"""Installs the wheels in a folder whose modules a GPU image lacks.

``python3 -m benchmarks.device_wheels DIR`` (``device_check.sh`` runs it on
``.device_wheels``): each wheel, without its dependencies or an index, only
where its module does not import, so the image's own jax, numpy and the like
stay. Fill the folder here, for the image's Python (3.12 on the lent H200s):

  pip download --no-deps --only-binary=:all: --python-version 3.12 \\
      --platform manylinux_2_28_x86_64 -d .device_wheels ml_collections \\
      orbax-checkpoint tensorstore etils humanize aiofiles simplejson \\
      optimistix equinox lineax jaxtyping wadler_lindig tqdm threadpoolctl

(24 MB; the twenty-eighth session's image lacked orbax-checkpoint, optimistix
and ml_collections, WORKSPACE.md).
"""

import glob
import importlib.util
import os
import subprocess
import sys

# A wheel's distribution name -> the module that shows it is installed.
MODULES = {'ml_collections': 'ml_collections',
           'orbax_checkpoint': 'orbax.checkpoint'}


def missing(directory: str) -> list[str]:
  """The wheels in ``directory`` whose module does not import."""
  out = []
  for wheel in sorted(glob.glob(os.path.join(directory, '*.whl'))):
    dist = os.path.basename(wheel).split('-')[0]
    try:
      found = importlib.util.find_spec(MODULES.get(dist, dist)) is not None
    except ModuleNotFoundError:  # a parent package is missing
      found = False
    if not found:
      out.append(wheel)
  return out


def main(directory: str) -> int:
  wheels = missing(directory)
  print('installing:', ', '.join(os.path.basename(w).split('-')[0]
                                 for w in wheels) or 'none')
  if wheels:
    return subprocess.run([sys.executable, '-m', 'pip', 'install', '-q',
                           '--no-deps', '--no-index', *wheels]).returncode
  return 0


if __name__ == '__main__':
  sys.exit(main(sys.argv[1] if len(sys.argv) > 1 else '.device_wheels'))
