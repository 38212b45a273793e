"""Solvers: matrix-free Gauss–Newton and Levenberg–Marquardt."""

from rahimi_jax.solvers.least_squares import gauss_newton
from rahimi_jax.solvers.least_squares import gauss_newton_direction
from rahimi_jax.solvers.least_squares import LeastSquaresState
from rahimi_jax.solvers.least_squares import levenberg_marquardt

__all__ = ['gauss_newton', 'gauss_newton_direction', 'LeastSquaresState',
           'levenberg_marquardt']
