"""Studies: the bundled simple experiments, each a config + run + report."""

from collections.abc import Sequence


def check_dtype(dtype: str, accepted: Sequence[str]) -> None:
  """A study's ``dtype``: one of ``accepted``, and ``'float64'`` only with
  ``jax_enable_x64`` on (the launchers turn it on for it)."""
  import jax  # pylint: disable=g-import-not-at-top
  if dtype not in accepted:
    raise ValueError(f'Unknown dtype {dtype!r}; accepted: '
                     f'{", ".join(accepted)}.')
  if dtype == 'float64' and not jax.config.jax_enable_x64:
    raise ValueError("dtype 'float64' needs jax_enable_x64 (the launcher "
                     'sets it); use dtype=float32 otherwise.')
