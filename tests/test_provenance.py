"""Tests of rahimi_jax.provenance against real git repositories."""

import pathlib
import subprocess
import sys

import jax
import numpy as np
import pytest

from rahimi_jax import provenance


def _git(cwd, *args):
  subprocess.run(['git', *args], cwd=cwd, check=True, capture_output=True)


@pytest.fixture
def repo(tmp_path):
  _git(tmp_path, 'init', '-q')
  (tmp_path / 'a.py').write_text('x = 1\n')
  _git(tmp_path, 'add', 'a.py')
  _git(tmp_path, '-c', 'user.name=t', '-c', 'user.email=t@t', 'commit', '-qm',
       'first')
  return tmp_path


def test_clean_checkout(repo):
  info = provenance.provenance(str(repo))
  head = subprocess.run(['git', 'rev-parse', 'HEAD'], cwd=repo, check=True,
                        capture_output=True, text=True).stdout.strip()
  assert info['git_commit'] == head and info['git_dirty'] is False
  assert info['versions']['jax'] and info['devices'] and info['device_kind']


def test_git_is_read_once_per_process(repo, monkeypatch):
  first = provenance.provenance(str(repo))

  def no_more_git(*args, **kwargs):
    raise AssertionError('git ran again')

  monkeypatch.setattr(provenance.subprocess, 'run', no_more_git)
  again = provenance.provenance(str(repo))
  assert (again['git_commit'], again['git_dirty']) == (
      first['git_commit'], first['git_dirty'])


@pytest.mark.parametrize('change', ['modified', 'untracked', 'staged'])
def test_any_change_makes_it_dirty(repo, change):
  if change == 'modified':
    (repo / 'a.py').write_text('x = 2\n')
  else:
    (repo / 'b.py').write_text('y = 1\n')
    if change == 'staged':
      _git(repo, 'add', 'b.py')
  assert provenance.provenance(str(repo))['git_dirty'] is True


def test_not_a_checkout_is_unknown(tmp_path):
  info = provenance.provenance(str(tmp_path))
  assert info['git_commit'] is None and info['git_dirty'] is None


def test_an_install_inside_another_repository_is_unknown(repo):
  # The enclosing project's commit is not the library's.
  (repo / 'site').mkdir()
  (repo / 'site' / 'provenance.py').write_text('')
  state = provenance._git_state(str(repo), str(repo / 'site' / 'provenance.py'))  # pylint: disable=protected-access
  assert state == {'git_commit': None, 'git_dirty': None}
  assert provenance._git_state(str(repo), str(repo / 'a.py'))['git_commit']  # pylint: disable=protected-access


def test_the_librarys_own_record(repo):
  info = provenance.provenance()
  assert info['versions']['rahimi_jax'] and len(info['code_sha256']) == 64
  if (pathlib.Path(provenance.__file__).parents[1] / '.git').exists():
    assert info['git_commit'] is not None  # this checkout tracks the library


def test_no_git_is_unknown(repo, monkeypatch):
  def no_git(*args, **kwargs):
    raise FileNotFoundError('git')

  monkeypatch.setattr(provenance.subprocess, 'run', no_git)
  info = provenance.provenance(str(repo))
  assert info['git_commit'] is None and info['git_dirty'] is None


def test_matmul_precision_is_the_one_programs_trace_at(repo):
  before = jax.config.jax_default_matmul_precision
  try:
    jax.config.update('jax_default_matmul_precision', None)
    assert provenance.provenance(str(repo))['matmul_precision'] == 'default'
    jax.config.update('jax_default_matmul_precision', 'float32')
    assert provenance.provenance(str(repo))['matmul_precision'] == 'float32'
    with jax.default_matmul_precision('bfloat16'):  # a context wins
      assert provenance.provenance(str(repo))['matmul_precision'] == 'bfloat16'
  finally:
    jax.config.update('jax_default_matmul_precision', before)


def test_user_code_hash_reads_the_code_a_component_runs():
  """Source where there is a file, bytecode where there is none (``python
  -c``, ``exec``); the code a component calls by name or closure counts;
  the library's and installed packages' code does not."""
  import functools  # pylint: disable=g-import-not-at-top
  import optax  # pylint: disable=g-import-not-at-top
  from rahimi_jax import components  # pylint: disable=g-import-not-at-top
  empty = provenance.user_code_sha256([])
  # The library's and installed packages' functions count by name and by
  # what they close over (the settings a factory made them with).
  def sha(*objects):
    return provenance.user_code_sha256(objects)

  assert sha(jax.nn.relu) != sha(jax.nn.gelu)
  assert sha(optax.adam(1e-3)) != sha(optax.sgd(0.5))
  assert sha(optax.adam(1e-3)) != sha(optax.adam(2e-3))
  assert sha(optax.adam(1e-3)) == sha(optax.adam(1e-3))
  scaled = jax.nn.initializers.variance_scaling
  assert sha(scaled(1.0, 'fan_in', 'normal')) != (
      sha(scaled(2.0, 'fan_in', 'normal')))
  assert sha(components.OPTIMIZERS['sgd'], len) != empty

  def build(helper_body, op='*'):
    scope = {'__name__': 'a_notebook_cell'}  # a module not imported
    exec(compile('def helper(x):\n  return ' + helper_body + '\n'
                 'class Step:\n  def __init__(self, lr):\n    self.lr = lr\n'
                 '  def __call__(self, x):\n    return helper(x) ' + op
                 + ' self.lr\ndef make(hp):\n  return helper(hp)\n',
                 '<cell>', 'exec'), scope)
    return scope

  a, b = build('x + 1'), build('x + 2')
  hashes = {provenance.user_code_sha256([s['make']]) for s in (a, b)}
  assert len(hashes) == 2 and empty not in hashes  # the helper it calls
  assert provenance.user_code_sha256([build('x + 1')['make']]) == (
      provenance.user_code_sha256([a['make']]))  # the same code again
  # A callable instance: its class and attributes; a partial: its arguments.
  assert provenance.user_code_sha256([a['Step'](0.1)]) != (
      provenance.user_code_sha256([a['Step'](0.2)]))
  assert provenance.user_code_sha256([a['Step'](0.1)]) != (
      provenance.user_code_sha256([b['Step'](0.1)]))
  # A class without a source file (a notebook's): its methods' code.
  assert provenance.user_code_sha256([a['Step']]) != (
      provenance.user_code_sha256([build('x + 1', op='/')['Step']]))
  assert provenance.user_code_sha256([functools.partial(a['make'], 1)]) != (
      provenance.user_code_sha256([functools.partial(a['make'], 2)]))


def test_user_code_hash_follows_defaults_and_not_addresses():
  # A function a default argument names is code the component runs; the
  # same code built twice (a cell run again: new objects, new addresses)
  # hashes the same.
  def build(helper_body):
    scope = {'__name__': 'a_notebook_cell'}
    exec(compile('def helper(x):\n  return ' + helper_body + '\n'
                 'CHOICES = {helper}\n'
                 'def apply(x, act=helper):\n  return act(x)\n'
                 'def pick():\n  return CHOICES\n', '<cell>', 'exec'), scope)
    return scope

  a, again, b = build('x + 1'), build('x + 1'), build('x + 2')
  sha = lambda s, name: provenance.user_code_sha256([s[name]])
  assert sha(a, 'apply') != sha(b, 'apply')
  assert sha(a, 'apply') == sha(again, 'apply')
  assert a['helper'] is not again['helper']
  assert sha(a, 'pick') == sha(again, 'pick')
  assert sha(a, 'pick') != sha(b, 'pick')  # a set of functions: their code
  # A user's instance counts by all its state, private attributes too; a set
  # by its members.

  class Scaled:

    def __init__(self, scale):
      self._scale = scale

    def __call__(self, x):
      return x * self._scale

  assert provenance.user_code_sha256([Scaled(1.0)]) != (
      provenance.user_code_sha256([Scaled(2.0)]))
  assert provenance.user_code_sha256([{1, 2}]) != (
      provenance.user_code_sha256([{1, 3}]))
  # Like-named closures in a set: the same hash in any order of the set
  # (which follows their addresses), another when one's value changes.
  def make(k):
    return lambda x: x * k

  def closures(ks):
    fs = [make(k) for k in ks]
    return frozenset(fs[::-1]), fs

  (a, keep_a), (b, keep_b) = closures((1, 2, 3)), closures((3, 1, 2))
  assert provenance.user_code_sha256([a]) == provenance.user_code_sha256([b])
  assert provenance.user_code_sha256([a]) != provenance.user_code_sha256(
      [closures((1, 2, 4))[0]])
  del keep_a, keep_b


def test_user_code_hash_reads_the_values_it_reads():
  """A constant or array a component reads by global name, by closure, by
  a ``partial``'s argument or an instance's attribute counts by its value
  (an edited notebook constant must not resume the old run's checkpoint);
  an array by its bytes, not numpy's shortened repr."""
  import functools  # pylint: disable=g-import-not-at-top
  scope = {'__name__': 'a_notebook_cell'}
  exec(compile('import numpy as np\nSCALE = 0.1\nMASK = np.ones(2000)\n'
               'ACT = np.tanh\ndef act(x, m=MASK):\n'
               '  return ACT(x) * SCALE * m\n'
               'class Holder:\n  def __init__(self, m):\n    self.m = m\n',
               '<cell>', 'exec'), scope)

  def sha(*objects):
    return provenance.user_code_sha256(objects)

  before = sha(scope['act'])
  for name, value in [('SCALE', 10.0), ('ACT', np.sin)]:
    old, scope[name] = scope[name], value
    assert sha(scope['act']) != before, name
    scope[name] = old
  assert sha(scope['act']) == before
  a, b = np.zeros(2000), np.zeros(2000)
  b[1000] = 1  # numpy's repr of both: [0. 0. 0. ... 0. 0. 0.]
  assert repr(a) == repr(b)
  assert sha(functools.partial(scope['act'], m=a)) != (
      sha(functools.partial(scope['act'], m=b)))
  assert sha(scope['Holder'](a)) != sha(scope['Holder'](b))
  assert sha(scope['Holder'](a)) == sha(scope['Holder'](a.copy()))
  assert sha(np.float32(3)) != sha(np.asarray([3.0], np.float32))
  # A jitted user function counts by the function it wraps.
  exec('import jax\n@jax.jit\ndef jitted(x):\n  return ACT(x)\n', scope)
  before = sha(scope['jitted'])
  scope['ACT'] = np.sin
  assert sha(scope['jitted']) != before



def test_user_code_hash_reads_every_field_and_only_settings():
  """A dataclass counts by its fields and public attributes, each reached
  once per walk: the walk's own temporaries, freed, handed their ids to
  later objects, which were then skipped (two specs that differ in their
  last layer hashed alike, and a cached program was reused after an edit);
  a flax module's first use (its private bookkeeping) changes nothing."""
  import dataclasses  # pylint: disable=g-import-not-at-top
  import flax.linen as nn  # pylint: disable=g-import-not-at-top

  @dataclasses.dataclass
  class Layer:
    width: int

  @dataclasses.dataclass
  class Spec:
    layers: list

  def sha(*objects):
    return provenance.user_code_sha256(objects)

  assert sha(Spec([Layer(8), Layer(10)])) != sha(Spec([Layer(8), Layer(7)]))
  spec = Spec([Layer(8)])
  before = sha(spec)
  spec.note = 'wide'  # a public attribute outside the fields counts too
  assert sha(spec) != before
  seq = nn.Sequential([nn.Dense(8), nn.relu, nn.Dense(10)])
  before = sha(seq)
  seq.init(jax.random.key(0), np.ones((1, 3)))
  assert sha(seq) == before
  assert sha(nn.Sequential([nn.Dense(8), nn.relu, nn.Dense(7)])) != before


def test_versions_are_read_without_importing(monkeypatch):
  """A library the run did not import is not imported to read its version
  (scikit-learn's import took 0.6 s of each launcher run); its installed
  version is recorded, and an imported module's own."""
  import sklearn  # pylint: disable=g-import-not-at-top
  monkeypatch.delitem(sys.modules, 'sklearn')
  versions = provenance.provenance()['versions']
  assert 'sklearn' not in sys.modules
  assert versions['sklearn'] == sklearn.__version__
  assert versions['jax'] == jax.__version__
  assert provenance._version('no_such_module', 'no-such-dist') is None  # pylint: disable=protected-access


def test_user_code_hash_follows_what_a_function_reads_of_a_user_module(
    tmp_path, monkeypatch):
  """``helpers.helper(x)`` with ``import helpers``, a module of the user's:
  an edit of ``helper`` is another code."""
  import importlib  # pylint: disable=g-import-not-at-top
  module = tmp_path / 'rj_user_helpers.py'
  module.write_text('def helper(x):\n  return x * 2\n')
  monkeypatch.setattr(sys, 'dont_write_bytecode', True)
  monkeypatch.syspath_prepend(str(tmp_path))
  helpers = importlib.import_module('rj_user_helpers')
  scope = {'__name__': 'a_notebook_cell', 'rj_user_helpers': helpers}
  exec('def f(x):\n  return rj_user_helpers.helper(x)\n', scope)
  before = provenance.user_code_sha256([scope['f']])
  module.write_text('def helper(x):\n  return x * 3\n')
  importlib.invalidate_caches()
  importlib.reload(helpers)
  assert provenance.user_code_sha256([scope['f']]) != before


def test_code_hash_reads_each_source_file_and_its_path(tmp_path, monkeypatch):
  # A package of two modules: an edit, or a module renamed with its code
  # unchanged, is other code (hashlib of path and contents by hand).
  import hashlib  # pylint: disable=g-import-not-at-top
  package = tmp_path / 'rahimi_jax'
  package.mkdir()
  (package / 'a.py').write_text('x = 1\n')
  (package / 'b.py').write_text('y = 2\n')
  monkeypatch.setattr(provenance, '__file__', str(package / 'provenance.py'))

  def sha():
    provenance.code_sha256.cache_clear()
    return provenance.code_sha256()

  try:
    first = sha()
    assert first == hashlib.sha256(
        b'a.py\0x = 1\nb.py\0y = 2\n').hexdigest()
    (package / 'a.py').write_text('x = 3\n')
    edited = sha()
    (package / 'b.py').rename(package / 'c.py')
    renamed = sha()
  finally:
    provenance.code_sha256.cache_clear()
  assert len({first, edited, renamed}) == 3
