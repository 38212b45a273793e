"""Diagnostics: pure functions of ``(loss_fn, params)``, vmappable and loggable."""

from rahimi_jax.diagnostics.hessian import condition_number
from rahimi_jax.diagnostics.hessian import gauss_newton_eigenvalues
from rahimi_jax.diagnostics.hessian import gradient_norm
from rahimi_jax.diagnostics.hessian import hessian_density
from rahimi_jax.diagnostics.hessian import hessian_eigenvalues
from rahimi_jax.diagnostics.hessian import hvp
from rahimi_jax.diagnostics.hessian import lanczos
from rahimi_jax.diagnostics.hessian import restricted_hessian

__all__ = ['condition_number', 'gauss_newton_eigenvalues', 'gradient_norm',
           'hessian_density', 'hessian_eigenvalues', 'hvp', 'lanczos',
           'LOGGED', 'restricted_hessian']


def _log_grad_norm(loss_fn, params, key):
  del key
  return {'grad_norm': gradient_norm(loss_fn, params)}


# Diagnostics the training loop can log, one signature:
# ``fn(loss_fn, params, key) -> {column: scalar}`` (``key``: the member's
# diagnostics key for that log, for stochastic estimates); every column
# is declared in ``stats.METRICS``. (Hessian spectra are taken where they are
# needed, at a trained point: ``studies.deep_linear`` at the stall.)
LOGGED = {
    'grad_norm': _log_grad_norm,
}
