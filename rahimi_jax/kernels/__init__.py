"""Kernels, random Fourier / binning / Nyström features, blocked kernel
products."""

from rahimi_jax.kernels.binning import Binning
from rahimi_jax.kernels.binning import binning_features
from rahimi_jax.kernels.binning import binning_kernel
from rahimi_jax.kernels.binning import draw_binning

from rahimi_jax.kernels.features import choose_centres
from rahimi_jax.kernels.features import draw_rff
from rahimi_jax.kernels.features import Nystrom
from rahimi_jax.kernels.features import nystrom
from rahimi_jax.kernels.features import nystrom_apply
from rahimi_jax.kernels.features import nystrom_features
from rahimi_jax.kernels.features import RFF
from rahimi_jax.kernels.features import rff_features
from rahimi_jax.kernels.features import rff_kernel
from rahimi_jax.kernels.kernels import ACCELERATOR_BLOCK_SIZE
from rahimi_jax.kernels.kernels import check_block_size
from rahimi_jax.kernels.kernels import check_finite
from rahimi_jax.kernels.kernels import check_positive
from rahimi_jax.kernels.kernels import default_block_size
from rahimi_jax.kernels.kernels import get_kernel
from rahimi_jax.kernels.kernels import Kernel
from rahimi_jax.kernels.kernels import kernel_matrix
from rahimi_jax.kernels.kernels import kernel_matvec
from rahimi_jax.kernels.kernels import KERNELS
from rahimi_jax.kernels.kernels import l2_cache_bytes
from rahimi_jax.kernels.kernels import normal_matvec
from rahimi_jax.kernels.kernels import relative_frobenius_error
from rahimi_jax.kernels.kernels import row_mesh
from rahimi_jax.kernels.kernels import sklearn_gamma

__all__ = ['ACCELERATOR_BLOCK_SIZE', 'Binning', 'binning_features', 'binning_kernel', 'check_block_size',
           'check_finite', 'check_positive', 'choose_centres',
           'default_block_size', 'draw_binning', 'draw_rff', 'get_kernel',
           'Kernel', 'kernel_matrix', 'kernel_matvec', 'KERNELS',
           'l2_cache_bytes',
           'normal_matvec', 'Nystrom', 'nystrom', 'nystrom_apply',
           'nystrom_features', 'RFF', 'rff_features', 'rff_kernel',
           'relative_frobenius_error', 'row_mesh', 'sklearn_gamma']
