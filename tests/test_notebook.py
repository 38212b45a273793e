"""The Colab notebook runs end to end, shrunk, in a Jupyter kernel on CPU.

``experiments/colab_quickstart.ipynb`` is executed cell by cell as Jupyter
would (``nbclient``): its install cell (tag ``install``) is left out, and a
cell after its settings cell (tag ``parameters``) shrinks the grid, as
papermill injects parameters. The kernel is this test's Python
(``sys.executable``), through a kernel spec written for the test, so no
installed ``python3`` kernel of another environment can be picked up.
"""

import pathlib
import sys

from IPython.core import inputtransformer2
from ipykernel import kernelspec
from jupyter_client import kernelspec as client_kernelspec
from jupyter_client import manager
import nbclient
import nbformat
import pytest

import launchers

ROOT = pathlib.Path(__file__).resolve().parents[1]
NOTEBOOK = ROOT / 'experiments' / 'colab_quickstart.ipynb'
KERNEL = 'rahimi_jax_test'
# Two optimizers x two norms x two seeds: 8 members, both choice axes varied.
TINY = {'STEPS': 20, 'SEEDS': 2, 'HIDDEN': (8,),
        'OPTIONS': {'optimizer': ['sgd', 'adam'], 'norm': ['none', 'batch'],
                    'init': ['lecun_normal']}}


def _read():
  return nbformat.read(NOTEBOOK, as_version=4)


def _tagged(nb, tag):
  cells = [c for c in nb.cells if tag in c.metadata.get('tags', [])]
  assert len(cells) == 1, f'one cell tagged {tag!r}; got {len(cells)}'
  return cells[0]


def _text(cell) -> str:
  return ''.join(o.get('text', '') for o in cell.get('outputs', [])
                 if o.output_type == 'stream')


def test_notebook_is_saved_without_outputs_and_its_settings_are_named():
  nb = _read()
  nbformat.validate(nb)
  for cell in nb.cells:
    if cell.cell_type == 'code':
      assert not cell.outputs and cell.execution_count is None, cell.source
  settings = _tagged(nb, 'parameters').source
  for name in ('REPO_URL', *TINY):  # an override of a name it lacks is a no-op
    assert f'\n{name} = ' in f'\n{settings}', name
  assert nb.cells.index(_tagged(nb, 'parameters')) < nb.cells.index(
      _tagged(nb, 'install'))


def test_install_cell_is_valid_ipython():
  source = _tagged(_read(), 'install').source
  python = inputtransformer2.TransformerManager().transform_cell(source)
  assert "run_line_magic('pip', 'install --quiet \"git+{REPO_URL}\"')" in python
  compile(python, 'install', 'exec')


@pytest.fixture
def kernel(tmp_path):
  """A kernel manager whose only kernel spec runs ``sys.executable``."""
  kernels = tmp_path / 'kernels'
  kernelspec.write_kernel_spec(kernels / KERNEL)
  specs = client_kernelspec.KernelSpecManager(kernel_dirs=[str(kernels)])
  km = manager.KernelManager(kernel_name=KERNEL, kernel_spec_manager=specs,
                             connection_file=str(tmp_path / 'kernel.json'))
  assert km.kernel_spec.argv[0] == sys.executable
  return km


def test_notebook_runs_shrunk(kernel, tmp_path):
  nb = _read()
  nb.cells.remove(_tagged(nb, 'install'))
  at = nb.cells.index(_tagged(nb, 'parameters')) + 1
  nb.cells.insert(at, nbformat.v4.new_code_cell(
      '\n'.join(f'{k} = {v!r}' for k, v in TINY.items()),
      metadata={'tags': ['injected-parameters']}))
  client = nbclient.NotebookClient(
      nb, km=kernel, timeout=240,
      resources={'metadata': {'path': str(NOTEBOOK.parent)}})
  # This checkout first, CPU only; the notebook's plot folder in tmp_path.
  client.execute(env=dict(launchers.env(), TMPDIR=str(tmp_path)))
  text = '\n'.join(map(_text, nb.cells))
  assert 'JAX backend: cpu' in text, text
  assert '8 members: 2 optimizer x 2 norm x 1 init x 1 learning_rate x 2 seed' \
      in text, text
  assert 'final test_accuracy: mean over seeds' in text, text
  assert "paired effect on final test_accuracy (higher is better) vs each " \
      "axis's first value" in text, text
  effects = text.split("axis's first value", 1)[1]
  assert 'optimizer' in effects and 'adam' in effects and 'batch' in effects
  images = [o for c in nb.cells for o in c.get('outputs', [])
            if 'image/png' in o.get('data', {})]
  assert len(images) == 3  # curves by optimizer, by norm; the effects
