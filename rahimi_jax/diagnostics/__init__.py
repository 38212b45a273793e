"""Diagnostics: pure functions of ``(loss_fn, params)``, vmappable and loggable."""

from rahimi_jax.diagnostics.hessian import condition_number
from rahimi_jax.diagnostics.hessian import gradient_norm
from rahimi_jax.diagnostics.hessian import hessian_density
from rahimi_jax.diagnostics.hessian import hessian_eigenvalues
from rahimi_jax.diagnostics.hessian import hvp
from rahimi_jax.diagnostics.hessian import lanczos


def _log_grad_norm(loss_fn, params, key, num_iters):
  del key, num_iters
  return {'grad_norm': gradient_norm(loss_fn, params)}


def _log_hessian(loss_fn, params, key, num_iters):
  eigenvalues = hessian_eigenvalues(loss_fn, params, key, num_iters)
  return {'hessian_max': eigenvalues[-1], 'hessian_min': eigenvalues[0]}


# Diagnostics the training loop can log, one signature:
# ``fn(loss_fn, params, key, num_iters) -> {column: scalar}``.
LOGGED = {
    'grad_norm': _log_grad_norm,
    'hessian': _log_hessian,
}
