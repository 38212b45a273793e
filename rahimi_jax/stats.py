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


def interquartile_mean(values) -> float:
  """Mean of the middle 50% of the finite ``values`` (robust to outlier seeds)."""
  x = np.asarray(values, np.float64).ravel()
  x = x[np.isfinite(x)]
  return float(stats.trim_mean(x, 0.25)) if len(x) else np.nan


def probability_of_improvement(a, b) -> float:
  """P(B > A) for a draw of each (ties count half): the Mann–Whitney statistic.

  Args:
    a: metric values of the baseline, one per seed.
    b: metric values of the alternative.

  Returns:
    A probability in [0, 1]; 0.5 means no stochastic ordering.
  """
  a = np.asarray(a, np.float64).ravel()
  b = np.asarray(b, np.float64).ravel()
  a, b = a[np.isfinite(a)], b[np.isfinite(b)]
  if not len(a) or not len(b):
    return np.nan
  greater = (b[:, None] > a[None, :]).mean()
  ties = (b[:, None] == a[None, :]).mean()
  return float(greater + 0.5 * ties)


def paired_bootstrap_ci(a, b, level: float = 0.95, n_resamples: int = 9999,
                        seed: int = 0) -> Interval:
  """Mean of the paired differences ``b - a`` with a bootstrap interval.

  Pairs share a seed (common random numbers), so the interval reflects the
  variance of the difference, not of each arm. Pairs with a non-finite value
  are dropped. Uses ``scipy.stats.bootstrap`` (percentile method, which stays
  defined for the few seeds typical of small experiments).
  """
  a = np.asarray(a, np.float64).ravel()
  b = np.asarray(b, np.float64).ravel()
  if a.shape != b.shape:
    raise ValueError(f'paired values need equal lengths; got {a.shape} and '
                     f'{b.shape}.')
  keep = np.isfinite(a) & np.isfinite(b)
  d = b[keep] - a[keep]
  n = len(d)
  if n == 0:
    return Interval(np.nan, np.nan, np.nan, 0)
  if n < 2 or np.all(d == d[0]):
    return Interval(float(d.mean()), np.nan if n < 2 else float(d[0]),
                    np.nan if n < 2 else float(d[0]), n)
  res = stats.bootstrap((d,), np.mean, confidence_level=level,
                        n_resamples=n_resamples, method='percentile',
                        random_state=np.random.default_rng(seed))
  return Interval(float(d.mean()), float(res.confidence_interval.low),
                  float(res.confidence_interval.high), n)
