"""The linear solver study and its launcher:
``python -m experiments.linear_solver``."""

import numpy as np
import pytest

import launchers

from rahimi_jax import storage
from rahimi_jax.studies import linear_solver


@pytest.fixture(scope='module')
def study(tmp_path_factory):
  """The launcher run as a user would, beside bad input that must fail
  before anything runs."""
  def make(tmp):
    return tmp, launchers.launch_many('experiments.linear_solver', [
        ['--sizes=300,600', '--centres=60', '--maxiter=300',
         '--exact_max=300', '--block_size=128', f'--out={tmp / "out"}'],
        ['--sizes=500', '--centres=900', f'--out={tmp / "bad"}'],
        ['--sizes=300', '--centres=60', '--maxiter=300', '--exact_max=0',
         '--block_size=128', '--dtype=float64', f'--out={tmp / "f64"}']])

  tmp, (ok, bad, f64) = launchers.once(tmp_path_factory, 'linear_solver',
                                       make)
  for proc in (ok, f64):
    assert proc.returncode == 0, proc.stderr[-3000:]
  return (storage.load(str(tmp / 'out')), ok, bad, tmp,
          storage.load(str(tmp / 'f64')))


def test_falkon_needs_far_fewer_iterations_for_the_same_system(study):
  res, ok, _, tmp, _ = study
  assert (tmp / 'out' / 'convergence.png').stat().st_size > 1000
  c = res.columns
  assert list(zip(c['n'], c['solver'])) == [
      (300, 'falkon'), (300, 'cg'), (300, 'exact'), (600, 'falkon'),
      (600, 'cg')]
  falkon, cg = c['solver'] == 'falkon', c['solver'] == 'cg'
  assert (c['iterations'][falkon] < 300).all()  # the recurrence reached tol
  # converged is read from the Nyström system's residual, recomputed;
  # float32 leaves FALKON's above tol 1e-6, and the report says so.
  assert np.isfinite(c['residual'][falkon | cg]).all(), c['residual']
  stalled = falkon & ~c['converged']
  assert ("reached tol but the Nyström system's did not (falkon"
          in ok.stdout) == stalled.any(), ok.stdout
  assert (5 * c['iterations'][falkon] < c['iterations'][cg]).all(), c
  # Every solver fits the noise-0.1 target (MSE 0.01) about equally.
  assert (c['test_mse'] < 0.03).all(), c['test_mse']
  assert (c['gap'][falkon] < 0.1).all(), c['gap']
  # Provenance, as every launcher records it.
  assert {'versions', 'git_commit', 'matmul_precision'} <= set(res.metadata)
  histories = res.metadata['residuals']
  assert [len(h['residuals']) for h in histories] == list(
      c['iterations'][~(c['solver'] == 'exact')] + 1)
  assert histories[0]['residuals'][-1] <= 1e-6
  assert 'plain CG iterations / FALKON iterations' in ok.stdout
  assert np.isnan(c['gap'][c['solver'] == 'exact']).all()


def test_float64_reaches_the_tolerance_float32_cannot(study):
  # Both solvers' Nyström residuals reach tol 1e-6 in float64; FALKON's
  # predictions are then the float64 reference's (NumPy, scikit-learn's
  # kernel) to 1e-6, plain CG's still 1e-3 away: its residual is dominated
  # by the large eigenvalues.
  c = study[4].columns
  assert study[4].metadata['config']['dtype'] == 'float64'
  assert c['converged'].all() and (c['residual'] <= 1e-6).all(), c
  falkon, cg = (c['gap'][c['solver'] == s][0] for s in ('falkon', 'cg'))
  assert falkon < 1e-5 and cg > 100 * falkon, (falkon, cg)


def test_bad_input_is_one_error_line(study):
  launchers.assert_clean_error(study[2], 'M=900 centres with n=500')


def test_bad_config_fails_before_anything_runs():
  for kwargs, message in ((dict(lam=-1.0), 'lam=-1.0'),
                          (dict(sizes=(2000, 1000)), 'increasing'),
                          (dict(tol=0.0), 'tol=0.0'),
                          (dict(kernel='rbf'), "'rbf'"),
                          (dict(dtype='float16'), "'float16'")):
    with pytest.raises(ValueError, match=message):
      linear_solver.LinearSolverConfig(**kwargs)
