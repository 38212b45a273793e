"""Small statistics over seeds: intervals that mean what they say.

Every interval the project prints comes from ``mean_ci`` (one value per seed)
or ``paired_ci`` (one paired difference per seed). Its method is the Student-t
interval widened, where the seeds look skewed, to contain Hall's (1992)
skewness-corrected interval; ``tests/test_stats.py`` simulates its coverage.
Coverage of a nominal 95% interval (20,000 simulated draws per cell, Monte
Carlo standard error 0.0015; the percentile bootstrap, which this replaces,
4,000 draws):

  ================================  =====  =====  =====  =====  =====  =====
  method, seeds drawn from          n=2    n=3    n=4    n=8    n=16   n=32
  ================================  =====  =====  =====  =====  =====  =====
  percentile bootstrap, normal      0.511  0.739  0.809  0.883  0.924  0.932
  Student-t, normal                 0.949  0.951  0.951  0.953  0.948  0.948
  t + Hall (this), normal           0.949  0.968  0.966  0.963  0.959  0.956
  percentile bootstrap, exponential 0.460  0.692  0.740  0.855  0.887  0.929
  Student-t, exponential            0.911  0.881  0.881  0.893  0.911  0.929
  Hall alone, exponential           0.911  0.909  0.915  0.934  0.944  0.946
  t + Hall (this), exponential      0.911  0.926  0.927  0.939  0.951  0.957
  t + Hall (this), lognormal(0, 1)  0.894  0.900  0.884  0.900  0.922  0.939
  Hall alone, t(3)                  0.956  0.962  0.955  0.939  0.922  0.926
  t + Hall (this), t(3)             0.956  0.976  0.973  0.966  0.959  0.956
  ================================  =====  =====  =====  =====  =====  =====

At n=2 the interval is Student-t alone: two values are symmetric about their
mean, so their skewness is 0 and Hall's correction is nil. It is exact for
normal seeds but undercovers skewed ones (0.911 exponential, 0.894
lognormal); the tables say so under any interval they print from two seeds
(``two_seed_note``).

A failure mode that only some seeds hit is the hardest case: with a
fraction ``p`` of seeds stuck far away (a loss of 2.3 at chance beside 0.1),
t + Hall covers 0.875 / 0.992 / 1.000 / 0.977 at n = 4 / 8 / 16 / 32 for
p = 0.5, 0.678 / 0.900 / 0.982 / 0.984 for p = 0.25, and 0.343 / 0.569 /
0.813 / 0.961 for p = 0.1: four seeds usually miss a 10% failure mode
altogether, and no interval can see what no seed showed (the tables print
each arm's diverged members beside its mean for this reason).

Student-t is exact for normal seeds but undercovers skewed ones (losses are
skewed); Hall's correction fixes most of the skew but undercovers heavy
symmetric tails; their union keeps both, at a cost in width on normal seeds
(against t's, median / mean over 4000 draws): 2.16x / 1.87x at n=3, 1.23x /
1.58x at n=4, 1.08x / 1.18x at n=8, 1.02x / 1.02x at n=32. (Bootstrap-t was about twice as wide as t at
n=4 and undercovered t(3) at n=32; BCa covered 80% at n=4.) No interval for a
mean can be exact for every distribution at a fixed n (Bahadur & Savage,
1956): with seeds as skewed as an exponential (skewness 2) expect about 91%
at n=2 and 93% at n=3 or 4, and less for heavier skew (lognormal: 88-90%).

References:
  Hall, P. (1992). On the removal of skewness by transformation. JRSS B 54.
  Bahadur, R. R. & Savage, L. J. (1956). The nonexistence of certain
  statistical procedures in nonparametric problems. Ann. Math. Statist. 27.
"""

import math
import re
from typing import NamedTuple

import numpy as np
from scipy import special


class Interval(NamedTuple):
  mean: float
  low: float
  high: float
  n: int


class Metric(NamedTuple):
  """What a metric's values mean: which way is better, and their range."""
  higher_is_better: bool
  low: float
  high: float


# Every metric column the project writes: train.py's losses and accuracy,
# diagnostics.LOGGED's columns. A new metric is one entry here.
METRICS: dict[str, Metric] = {
    'train_loss': Metric(False, 0.0, math.inf),
    'test_loss': Metric(False, 0.0, math.inf),
    'test_accuracy': Metric(True, 0.0, 1.0),
    'grad_norm': Metric(False, 0.0, math.inf),
    'updates_lost': Metric(False, 0.0, 1.0),
}


def get_metric(name: str) -> Metric:
  """The ``Metric`` of column ``name``; unknown names raise ``ValueError``.

  A per-layer column ``<metric>_layer<i>`` is its metric's.
  """
  base = re.sub(r'_layer\d+$', '', name)
  if base not in METRICS:
    raise ValueError(f'Unknown metric {name!r}: its direction and range are '
                     f'not declared; known: {", ".join(METRICS)} (add it to '
                     'stats.METRICS).')
  return METRICS[base]


def higher_is_better(name: str) -> bool:
  """Whether a larger ``name`` is better (accuracy) or worse (a loss)."""
  return get_metric(name).higher_is_better


def metric_range(name: str) -> tuple[float, float]:
  """``(low, high)``: the values ``name`` can take (a loss is >= 0)."""
  m = get_metric(name)
  return m.low, m.high


def difference_range(name: str) -> tuple[float, float]:
  """The range of a difference of two values of ``name``."""
  low, high = metric_range(name)
  return low - high, high - low


def number(x: float, fmt: str) -> str:
  """``x`` in ``fmt``; ``-`` where it is not finite (no value, no bound)."""
  return format(x, fmt) if np.isfinite(x) else '-'


def format_interval(ci: Interval, fmt: str = '.4f') -> str:
  """``mean [low, high]`` in ``fmt``; ``mean [no interval]`` where the
  bounds are unknown (under two finite values, or all equal)."""
  if not (np.isfinite(ci.low) and np.isfinite(ci.high)):
    return f'{number(ci.mean, fmt)} [no interval]'
  return f'{ci.mean:{fmt}} [{ci.low:{fmt}}, {ci.high:{fmt}}]'


def finite_mean(values) -> float:
  """Mean of the finite ``values``; NaN (and no warning) when there are none."""
  x = np.asarray(values, np.float64).ravel()
  x = x[np.isfinite(x)]
  return float(x.mean()) if len(x) else np.nan


def _check_level(level: float) -> None:
  if not 0 < level < 1:
    raise ValueError(f'level={level!r}; accepted: a fraction in (0, 1), e.g. '
                     '0.95.')


def t_skew_bounds(x, level: float = 0.95):
  """Interval bounds for the mean of each sample ``x: [..., n]`` (n >= 2).

  The union of the Student-t interval and Hall's (1992) interval: with
  ``W = (mean - mu) / s`` and ``g`` the sample skewness (moment estimator),
  ``sqrt(n) (W + g W^2 / 3 + g^2 W^3 / 27 + g / (6 n))`` is close to t with
  ``n - 1`` degrees of freedom; the map is monotone, so inverting it at the t
  quantiles gives the interval. With ``g = 0`` both are the t-interval (at
  ``n = 2`` always: two values have no skew).

  Returns:
    ``(low, high)``, each ``[...]``.

  Raises:
    ValueError: ``level`` is not in (0, 1), or a sample has under 2 values.
  """
  _check_level(level)
  x = np.asarray(x, np.float64)
  n = x.shape[-1] if x.ndim else 0
  if n < 2:
    raise ValueError(f't_skew_bounds: samples of n={n} values (x of shape '
                     f'{x.shape}); accepted: x: [..., n] with n >= 2.')
  mean = x.mean(-1)
  d = x - mean[..., None]
  m2, m3 = (d**2).mean(-1), (d**3).mean(-1)
  with np.errstate(divide='ignore', invalid='ignore'):
    g = np.where(m2 > 0, m3 / m2**1.5, 0.0)
  s = np.sqrt(m2 * n / (n - 1))
  q = special.stdtrit(n - 1, 0.5 + level / 2) / np.sqrt(n)  # t quantile

  def w_at(u):
    # The inverse of the transformation, in a form without division by g.
    v = u - g / (6 * n)
    c = np.cbrt(1 + g * v)
    return 3 * v / (c * c + c + 1)

  low = np.minimum(mean - q * s, mean - s * w_at(q))
  high = np.maximum(mean + q * s, mean - s * w_at(-q))
  return low, high


def mean_ci(values, level: float = 0.95, *,
            bounds: tuple[float, float] = (-math.inf, math.inf)) -> Interval:
  """Mean of the finite ``values`` and its interval (``t_skew_bounds``).

  The interval is clipped to ``bounds``, the range the mean can take (a loss
  is >= 0; ``metric_range``): the truth lies in it, so clipping keeps the
  coverage. With fewer than two finite values, or all of them equal, the
  interval is NaN (unknown), never zero: equal seeds say nothing of the
  spread (paired accuracies that differ on one seed in three are all equal
  at n=4 a quarter of the time, and a zero-width interval there covered
  76%; printed only when the seeds differ, 100%).

  Raises:
    ValueError: ``level`` is not in (0, 1), or ``bounds`` is not
      ``(low, high)`` with ``low <= high``.
  """
  _check_level(level)
  if not bounds[0] <= bounds[1]:
    raise ValueError(f'bounds={tuple(bounds)!r}; accepted: (low, high) with '
                     'low <= high, e.g. stats.metric_range(name).')
  x = np.asarray(values, np.float64).ravel()
  x = x[np.isfinite(x)]
  n = len(x)
  if n == 0:
    return Interval(np.nan, np.nan, np.nan, 0)
  mean = float(np.mean(x))
  if n < 2 or np.all(x == x[0]):
    return Interval(mean, np.nan, np.nan, n)
  low, high = t_skew_bounds(x, level)
  return Interval(mean, float(max(low, bounds[0])), float(min(high, bounds[1])),
                  n)


def bonferroni(level: float, comparisons: int) -> float:
  """The level of each of ``comparisons`` intervals that all cover at once
  with probability at least ``level`` (Bonferroni):
  ``1 - (1 - level) / comparisons``."""
  _check_level(level)
  if comparisons < 1:
    raise ValueError(f'comparisons={comparisons!r}; accepted: a count >= 1.')
  return 1 - (1 - level) / comparisons


def two_seed_note(intervals) -> list[str]:
  """A table's note when one of its ``intervals`` is from two seeds: ``[]``
  when none is, else one line saying it is Student-t alone.

  Two values have no skew, so their interval is the t-interval; it undercovers
  skewed seeds (91% for exponential ones at a nominal 95%; the module's
  table).
  """
  if not any(ci.n == 2 and np.isfinite(ci.low) and np.isfinite(ci.high)
             for ci in intervals):
    return []
  return ['note: with 2 seeds the skew extension is nil (two values show no '
          'skew): such an interval is Student-t alone and undercovers skewed '
          'seeds, about 91% at a nominal 95% for exponential-like skew (about '
          '93% from 3 seeds on; stats.py\'s coverage table)']


def paired_ci(a, b, level: float = 0.95, *,
              bounds: tuple[float, float] = (-math.inf, math.inf)) -> Interval:
  """Mean of the paired differences ``b - a`` and its ``mean_ci`` interval.

  Pairs share a seed (common random numbers), so the interval reflects the
  variance of the difference, not of each arm. Pairs with a non-finite value
  on either side are dropped; ``n`` counts the pairs used.
  """
  a = np.asarray(a, np.float64).ravel()
  b = np.asarray(b, np.float64).ravel()
  if a.shape != b.shape:
    raise ValueError(f'paired values need equal lengths; got {a.shape} and '
                     f'{b.shape}.')
  keep = np.isfinite(a) & np.isfinite(b)
  return mean_ci(b[keep] - a[keep], level, bounds=bounds)


def probability_of_improvement(a, b, *, higher_is_better: bool) -> float:
  """P(a draw of B is better than a draw of A), ties half: Mann–Whitney.

  A non-finite value (a diverged run) counts as worse than every finite one
  and ties with another non-finite one, so divergence lowers P rather than
  vanishing from it.

  Args:
    a: metric values of the baseline, one per run.
    b: metric values of the alternative.
    higher_is_better: the metric's direction (``stats.higher_is_better``).

  Returns:
    A probability in [0, 1]; 0.5 means no stochastic ordering; NaN when a side
    has no runs.
  """
  worst = -np.inf if higher_is_better else np.inf
  a, b = (np.asarray(v, np.float64).ravel() for v in (a, b))
  if not len(a) or not len(b):
    return np.nan
  a, b = (np.where(np.isfinite(v), v, worst) for v in (a, b))
  sign = 1.0 if higher_is_better else -1.0
  better = (sign * b[:, None] > sign * a[None, :]).mean()
  ties = (b[:, None] == a[None, :]).mean()
  return float(better + 0.5 * ties)
