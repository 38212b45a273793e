"""Kernels, random Fourier / Nyström features, blocked kernel products."""

from rahimi_jax.kernels.features import choose_centres
from rahimi_jax.kernels.features import draw_rff
from rahimi_jax.kernels.features import nystrom_features
from rahimi_jax.kernels.features import RFF
from rahimi_jax.kernels.features import rff_features
from rahimi_jax.kernels.features import rff_kernel
from rahimi_jax.kernels.kernels import get_kernel
from rahimi_jax.kernels.kernels import Kernel
from rahimi_jax.kernels.kernels import kernel_matrix
from rahimi_jax.kernels.kernels import kernel_matvec
from rahimi_jax.kernels.kernels import KERNELS
from rahimi_jax.kernels.kernels import normal_matvec
from rahimi_jax.kernels.kernels import relative_frobenius_error
from rahimi_jax.kernels.kernels import row_mesh
from rahimi_jax.kernels.kernels import sklearn_gamma

__all__ = ['choose_centres', 'draw_rff', 'get_kernel', 'Kernel',
           'kernel_matrix', 'kernel_matvec', 'KERNELS', 'normal_matvec',
           'nystrom_features', 'RFF', 'rff_features', 'rff_kernel',
           'relative_frobenius_error', 'row_mesh', 'sklearn_gamma']
