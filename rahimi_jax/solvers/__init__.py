"""Solvers: matrix-free Gauss–Newton and Levenberg–Marquardt; kernel ridge
regression (exact, on features, Nyström / FALKON-preconditioned CG)."""

from rahimi_jax.solvers.kernel_ridge import CGResult
from rahimi_jax.solvers.kernel_ridge import conjugate_gradient
from rahimi_jax.solvers.kernel_ridge import exact_fit
from rahimi_jax.solvers.kernel_ridge import exact_sweep
from rahimi_jax.solvers.kernel_ridge import falkon_factors
from rahimi_jax.solvers.kernel_ridge import nystrom_fit
from rahimi_jax.solvers.kernel_ridge import NystromResult
from rahimi_jax.solvers.kernel_ridge import ridge_fit
from rahimi_jax.solvers.least_squares import gauss_newton
from rahimi_jax.solvers.least_squares import gauss_newton_direction
from rahimi_jax.solvers.least_squares import LeastSquaresState
from rahimi_jax.solvers.least_squares import levenberg_marquardt

__all__ = ['CGResult', 'conjugate_gradient', 'exact_fit', 'exact_sweep',
           'falkon_factors', 'gauss_newton', 'gauss_newton_direction',
           'LeastSquaresState', 'levenberg_marquardt', 'nystrom_fit',
           'NystromResult', 'ridge_fit']
