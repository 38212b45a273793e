"""Counting matmul FLOPs in traced programs."""

import jax
import jax.numpy as jnp
import numpy as np

from rahimi_jax import flops

A = np.ones((3, 4), np.float32)
B = np.ones((4, 4), np.float32)
ONE = 2 * 3 * 4 * 4  # one [3, 4] @ [4, 4]


def test_one_matmul_and_batched_matmul():
  assert flops.matmul_flops(jnp.matmul, A, B) == ONE
  assert flops.matmul_flops(jax.vmap(jnp.matmul), np.stack([A] * 5),
                            np.stack([B] * 5)) == 5 * ONE
  assert flops.matmul_flops(lambda a: jnp.tanh(a) + 1.0, A) == 0


def test_scan_counts_its_length_and_nested_jit_counts():
  scanned = lambda a, b: jax.lax.scan(lambda c, _: (c @ b, None), a, None,
                                      length=7)[0]
  assert flops.matmul_flops(scanned, A, B) == 7 * ONE
  assert flops.matmul_flops(jax.jit(scanned), A, B) == 7 * ONE


def test_gradient_of_a_product_counts_forward_and_backward():
  loss = lambda a, b: jnp.sum(a @ b)
  # Forward a @ b; backward ct @ b^T (for a) and a^T @ ct (for b).
  assert flops.matmul_flops(jax.grad(loss, (0, 1)), A, B) == 3 * ONE
  assert flops.matmul_flops(jax.grad(loss), A, B) == 2 * ONE


def test_while_counts_while_trips_and_cond_its_costliest_branch():
  looped = lambda a, b: jax.lax.while_loop(
      lambda c: c[1] < 3, lambda c: (c[0] @ b, c[1] + 1), (a, 0))[0]
  assert flops.matmul_flops(looped, A, B) == ONE
  assert flops.matmul_flops(looped, A, B, while_trips=3) == 3 * ONE
  branchy = lambda p, a, b: jax.lax.cond(p, lambda: a @ b @ b, lambda: a @ b)
  assert flops.matmul_flops(branchy, True, A, B) == 2 * ONE


def test_shape_structs_are_enough():
  spec = jax.ShapeDtypeStruct((3, 4), jnp.float32)
  assert flops.matmul_flops(jnp.matmul, spec, B) == ONE


def test_convolutions_count_window_times_input_features():
  x = np.ones((4, 12, 3), np.float32)  # [batch, length, in]
  w = np.ones((5, 3, 7), np.float32)  # [window, in, out]
  conv = lambda x, w: jax.lax.conv_general_dilated(  # pylint: disable=g-long-lambda
      x, w, (2,), ((1, 1),), dimension_numbers=('NWC', 'WIO', 'NWC'))
  out_length = (12 + 2 - 5) // 2 + 1
  assert flops.matmul_flops(conv, x, w) == 2 * 4 * out_length * 7 * 5 * 3


def test_element_ops_count_what_the_other_operations_write():
  # tanh then + 1: two [3, 4] outputs (the scalar 1.0 is a literal).
  assert flops.element_ops(lambda a: jnp.tanh(a) + 1.0, A) == 2 * A.size
  # A matmul writes no counted elements; the sum after it writes one.
  assert flops.element_ops(lambda a, b: jnp.sum(a @ b), A, B) == 1
  # Loops count as matmul_flops does: a scan its length, a cond the
  # costliest branch, a while ``while_trips``.
  scanned = lambda a: jax.lax.scan(lambda c, _: (jnp.sin(c), None), a, None,
                                   length=7)[0]
  assert flops.element_ops(scanned, A) == 7 * A.size
  branchy = lambda p, a: jax.lax.cond(p, lambda: jnp.sin(jnp.cos(a)),
                                      lambda: jnp.sin(a))
  # (+ 1: the predicate converted to the branch index.)
  assert flops.element_ops(branchy, True, A) == 2 * A.size + 1
  looped = lambda a: jax.lax.while_loop(
      lambda c: c[1] < 3, lambda c: (jnp.exp(c[0]), c[1] + 1), (a, 0))[0]
  # Per trip: exp writes 12, the counter's add 1, its test 1.
  assert flops.element_ops(looped, A, while_trips=3) == 3 * (A.size + 2)


def test_elements_written_count_matmuls_too():
  # The matmul's [3, 5] output, then the sum's one element.
  assert flops.elements_written(lambda a, b: jnp.sum(a @ b), A, B) == (
      A.shape[0] * B.shape[1] + 1)
  # A jit called twice is one sub-jaxpr walked once, counted twice.
  twice = jax.jit(jnp.tanh)
  assert flops.elements_written(lambda a: twice(twice(a)), A) == 2 * A.size


def test_several_contracted_axes_count_their_product():
  # 'ijk,jkl->il' sums over j and k: 2 * (3 * 7) outputs * (4 * 5) terms by
  # hand (XLA's cost_analysis also reads 840 flops).
  a, b = np.ones((3, 4, 5), np.float32), np.ones((4, 5, 7), np.float32)
  assert flops.matmul_flops(lambda a, b: jnp.einsum('ijk,jkl->il', a, b),
                            a, b) == 2 * 3 * 7 * 4 * 5 == 840


def test_rematerialized_code_counts():
  # jax.checkpoint holds its body as an open Jaxpr, not a ClosedJaxpr.
  assert flops.matmul_flops(jax.checkpoint(jnp.matmul), A, B) == ONE
  assert flops.element_ops(jax.checkpoint(jnp.tanh), A) == A.size


def test_element_ops_leave_out_convolutions_and_count_every_output():
  x = np.ones((4, 12, 3), np.float32)
  w = np.ones((5, 3, 7), np.float32)
  conv = lambda x, w: jax.lax.conv_general_dilated(  # pylint: disable=g-long-lambda
      x, w, (2,), ((1, 1),), dimension_numbers=('NWC', 'WIO', 'NWC'))
  # A convolution is matmul work: no element op; its [4, 5, 7] output is
  # written.
  assert flops.element_ops(conv, x, w) == 0
  assert flops.elements_written(conv, x, w) == 4 * 5 * 7
  # A sort of keys with values writes both sorted arrays.
  v = np.arange(5, dtype=np.float32)
  assert flops.element_ops(
      lambda k, v: jax.lax.sort((k, v), num_keys=1), v[::-1], v) == 2 * 5
