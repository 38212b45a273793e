"""Rows (and an exact sweep's pairs) sharded over 8 CPU devices give the
numbers of 1 device (a fresh process: the device count is fixed when JAX
starts)."""

import json
import os

import launchers
from launchers import FAST_COMPILE
from launchers import ROOT

_SCRIPT = """
import json
import jax
import jax.numpy as jnp
import numpy as np
from rahimi_jax import kernels
from rahimi_jax.solvers import kernel_ridge as kr

assert jax.local_device_count() == 8, jax.devices()
rng = np.random.default_rng(0)
x = jnp.asarray(rng.uniform(-2, 2, size=(203, 3)), jnp.float32)
y = jnp.stack([jnp.sin(x.sum(1)), jnp.cos(x[:, 0])], 1)
kernel = kernels.get_kernel('gaussian')
c = x[kernels.choose_centres(jax.random.key(0), 203, 24)]
u = jnp.asarray(rng.normal(size=(24, 2)), jnp.float32)
out = {}
products = [kernels.normal_matvec(kernel, x, c, u, y, 1.5, block_size=16,
                                  mesh=mesh)
            for mesh in (None, kernels.row_mesh(1), kernels.row_mesh(8))]
out['product'] = [float(jnp.max(jnp.abs(p - products[0]))
                        / jnp.max(jnp.abs(products[0]))) for p in products]

def sweep(mesh):
  fit = lambda lam, bw: kr.nystrom_fit(kernel, x, y, c, bw, lam, tol=1e-5,
                                       maxiter=100, block_size=16, mesh=mesh)
  return jax.jit(jax.vmap(fit))(jnp.array([1e-3, 1e-4]), jnp.array([1.5, 1.0]))

one, eight = sweep(None), sweep(kernels.row_mesh(8))
out['iterations'] = [np.asarray(one.iterations).tolist(),
                     np.asarray(eight.iterations).tolist()]
out['coef'] = float(jnp.max(jnp.abs(one.coef - eight.coef))
                    / jnp.max(jnp.abs(one.coef)))

# Exact fits split over the devices, each device factoring its own pairs
# (LAPACK calls on 8 devices at once): by bandwidth (3 x 2 pairs: 3
# bandwidths padded to 8) and by ridge (1 x 3: 3 ridges padded to 8).
for name, bws, lams in (('by_bandwidth', [0.8, 1.5, 3.0], [1e-3, 1e-2]),
                        ('by_ridge', [1.5], [1e-3, 1e-2, 1e-1])):
  exact = [jax.jit(lambda x, y: kr.exact_sweep(
      kernel, x[:60], y[:60], jnp.array(bws), jnp.array(lams), block_size=16,
      mesh=mesh))(x, y) for mesh in (None, kernels.row_mesh(8))]
  out[name] = [list(exact[1].shape),
               float(jnp.max(jnp.abs(exact[1] - exact[0])))]
print(json.dumps(out))
"""


def test_eight_devices_give_the_numbers_of_one():
  env = dict(os.environ, PYTHONPATH=str(ROOT), JAX_PLATFORMS='cpu',
             XLA_FLAGS=f'{FAST_COMPILE} '
             '--xla_force_host_platform_device_count=8')
  proc, = launchers.launch_runs([('-c', [_SCRIPT])], environ=env)
  assert proc.returncode == 0, proc.stderr[-3000:]
  out = json.loads(proc.stdout.strip().splitlines()[-1])
  # The same sums in another order: float32 rounding only.
  assert out['product'][1] == 0.0, out  # a mesh of 1 is the unsharded scan
  assert out['product'][2] < 1e-6, out
  assert out['iterations'][0] == out['iterations'][1], out
  assert max(out['iterations'][1]) < 100, out  # each reached tol
  assert out['coef'] < 1e-3, out
  # Each pair's fit is the same program on every device: the same bits.
  assert out['by_bandwidth'] == [[3, 2, 60, 2], 0.0], out
  assert out['by_ridge'] == [[1, 3, 60, 2], 0.0], out
