"""Small statistics over seeds."""

from typing import NamedTuple

import numpy as np
from scipy import stats


class Interval(NamedTuple):
  mean: float
  low: float
  high: float
  n: int


def mean_ci(values, level: float = 0.95) -> Interval:
  """Mean and Student-t confidence interval of the finite ``values``.

  With fewer than two finite values the interval is NaN (unknown), never zero.
  """
  x = np.asarray(values, np.float64).ravel()
  x = x[np.isfinite(x)]
  n = len(x)
  if n == 0:
    return Interval(np.nan, np.nan, np.nan, 0)
  mean = float(np.mean(x))
  if n < 2:
    return Interval(mean, np.nan, np.nan, n)
  half = stats.t.ppf(0.5 + level / 2, n - 1) * np.std(x, ddof=1) / np.sqrt(n)
  return Interval(mean, mean - half, mean + half, n)
