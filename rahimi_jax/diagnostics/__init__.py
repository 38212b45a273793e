"""Diagnostics: pure functions of ``(loss_fn, params)``, vmappable and loggable."""

import math

from rahimi_jax import stats
from rahimi_jax.diagnostics import probes
from rahimi_jax.diagnostics.hessian import condition_number
from rahimi_jax.diagnostics.hessian import gauss_newton_eigenvalues
from rahimi_jax.diagnostics.hessian import gradient_norm
from rahimi_jax.diagnostics.hessian import hessian_density
from rahimi_jax.diagnostics.hessian import hessian_eigenvalues
from rahimi_jax.diagnostics.hessian import hvp
from rahimi_jax.diagnostics.hessian import lanczos
from rahimi_jax.diagnostics.hessian import restricted_hessian
from rahimi_jax.diagnostics.probes import covariate_shift
from rahimi_jax.diagnostics.probes import landscape
from rahimi_jax.diagnostics.probes import preactivation_drift
from rahimi_jax.diagnostics.probes import Probe

__all__ = ['condition_number', 'covariate_shift', 'gauss_newton_eigenvalues',
           'gradient_norm', 'hessian_density', 'hessian_eigenvalues', 'hvp',
           'lanczos', 'landscape', 'LOGGED', 'preactivation_drift', 'Probe',
           'restricted_hessian']


def _log_grad_norm(probe: Probe):
  return {'grad_norm': gradient_norm(probe.train_loss, probe.params)}


# Diagnostics the training loop can log, one signature:
# ``fn(probe: Probe) -> {column: scalar}`` (``probes.Probe``: the member's
# parameters, losses, optimizer step and keys at that log; ``probes.NEEDS``
# says which need what of the model); every column is declared in
# ``stats.METRICS``. (Hessian spectra are taken where they are needed, at a
# trained point: ``studies.deep_linear`` at the stall.)
LOGGED = {
    'grad_norm': _log_grad_norm,
    'covariate_shift': probes.log_covariate_shift,
    'landscape': probes.log_landscape,
    'preactivation_drift': probes.log_preactivation_drift,
}

stats.METRICS.update({
    'ics_l2': stats.Metric(False, 0.0, math.inf),
    'ics_cos': stats.Metric(True, -1.0, 1.0),
    'loss_range': stats.Metric(False, 0.0, math.inf),
    'grad_change': stats.Metric(False, 0.0, math.inf),
    'beta_smoothness': stats.Metric(False, 0.0, math.inf),
    'preact_mean_drift': stats.Metric(False, 0.0, math.inf),
    'preact_var_drift': stats.Metric(False, 0.0, math.inf),
})
