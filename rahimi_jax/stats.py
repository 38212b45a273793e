"""Small statistics over seeds: intervals that mean what they say.

Every interval the project prints comes from ``mean_ci`` (one value per seed)
or ``paired_ci`` (one paired difference per seed). Its method is the Student-t
interval widened, where the seeds look skewed, to contain Hall's (1992)
skewness-corrected interval (``t_skew_bounds``), taken at the level
(``calibrated_level``) at which it covers the mean of seeds as skewed as an
exponential's (skewness 2) at the nominal rate. ``tests/test_stats.py``
simulates its coverage. Coverage of a nominal 95% interval (20,000 simulated
draws per cell, independent of the calibration's; Monte Carlo standard error
0.0015):

  =================================  =====  =====  =====  =====  =====  =====  =====
  seeds drawn from, method           n=2    n=3    n=4    n=5    n=8    n=16   n=32
  =================================  =====  =====  =====  =====  =====  =====  =====
  normal, Student-t                  0.950  0.951  0.948  0.951  0.952  0.950  0.950
  normal, t + Hall uncalibrated      0.950  0.967  0.962  0.965  0.962  0.958  0.954
  normal, this                       0.975  0.981  0.982  0.981  0.973  0.958  0.954
  gamma(4) (skewness 1), this        0.970  0.976  0.973  0.971  0.967  0.957  0.958
  exponential, Student-t             0.910  0.882  0.880  0.881  0.896  0.913  0.928
  exponential, uncalibrated          0.909  0.926  0.922  0.926  0.939  0.955  0.960
  exponential, this                  0.949  0.950  0.951  0.951  0.950  0.955  0.960
  gamma(0.5) (skewness 2.8), this    0.907  0.913  0.920  0.925  0.937  0.949  0.959
  lognormal(0, 1) (skewness 6), this 0.944  0.927  0.922  0.915  0.910  0.922  0.937
  t(3), this                         0.980  0.987  0.988  0.986  0.977  0.960  0.958
  =================================  =====  =====  =====  =====  =====  =====  =====

(the percentile bootstrap this replaced covered 0.739 / 0.809 / 0.883 / 0.924
normal and 0.692 / 0.740 / 0.855 / 0.887 exponential at n = 3 / 4 / 8 / 16.)
So: at least the nominal level for seeds skewed up to an exponential's, and
less for heavier skew (0.91-0.94 for gamma(0.5) and lognormal seeds at n =
2-8). No interval for a mean can be exact for every distribution at a fixed
n (Bahadur & Savage, 1956); the calibration is the price of covering skewed
seeds when a few seeds cannot tell skewed from normal. Its cost in width on
normal seeds, against the t-interval's (median / mean over 4000 draws):
1.91x / 1.91x at n=2, 2.54x / 2.43x at n=3, 1.88x / 2.16x at n=4, 1.43x /
1.82x at n=5, 1.17x / 1.32x at n=8, 1.02x / 1.02x at n=32 (uncalibrated:
1.22x / 1.57x at n=4). Calibrating the t-interval alone instead would be
narrower at n = 3-4 (1.87x / 1.79x) and wider from n=5 on (1.46x at n=8).

A failure mode that only some seeds hit is the hardest case: with a
fraction ``p`` of seeds stuck far away (a loss of 2.3 at chance beside 0.1),
this interval covers 0.873 / 0.992 / 1.000 / 0.981 at n = 4 / 8 / 16 / 32
for p = 0.5, 0.675 / 0.901 / 0.983 / 0.983 for p = 0.25, and 0.344 / 0.571
/ 0.812 / 0.961 for p = 0.1: four seeds usually miss a 10% failure mode
altogether, and no interval can see what no seed showed (the tables print
each arm's diverged members beside its mean for this reason).

References:
  Hall, P. (1992). On the removal of skewness by transformation. JRSS B 54.
  Bahadur, R. R. & Savage, L. J. (1956). The nonexistence of certain
  statistical procedures in nonparametric problems. Ann. Math. Statist. 27.
"""

import functools
import math
import re
from typing import NamedTuple

import numpy as np


# How tables name the method (this docstring says what it covers).
METHOD = 't, extended for skew (Hall 1992) and calibrated to exponential skew'


def percent(level: float) -> str:
  """An interval's level as a label: 0.95 -> '95%', 0.975 -> '97.5%'."""
  return f'{100 * level:g}%'


def interval_label(level: float = 0.95, note: str | None = None) -> str:
  """How every table names its intervals: ``'95% interval over seeds
  (METHOD)'``, ``note`` added inside the parentheses."""
  return (f'{percent(level)} interval over seeds '
          f'({METHOD}{"; " + note if note else ""})')


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


def _hall(w, g, n: int):
  """Hall's (1992) transformation of ``w = (mean - mu) / s`` at skewness ``g``:
  ``sqrt(n)`` times it is close to Student-t with ``n - 1`` degrees of
  freedom. Monotone (its derivative is ``(1 + g w / 3)^2``)."""
  return w + g * w**2 / 3 + g**2 * w**3 / 27 + g / (6 * n)


def _moments(x):
  """Each sample's mean, standard deviation ``s`` and skewness ``g`` (moment
  estimator; 0 where the sample has no spread), over the last axis."""
  n = x.shape[-1]
  mean = x.mean(-1)
  d = x - mean[..., None]
  d2 = d * d
  m2, m3 = d2.mean(-1), (d2 * d).mean(-1)
  with np.errstate(divide='ignore', invalid='ignore'):
    g = np.where(m2 > 0, m3 / m2**1.5, 0.0)
  return mean, np.sqrt(m2 * n / (n - 1)), g


def t_skew_bounds(x, level: float = 0.95):
  """Interval bounds for the mean of each sample ``x: [..., n]`` (n >= 2).

  The union of the Student-t interval and Hall's (1992) interval: with
  ``W = (mean - mu) / s`` and ``g`` the sample skewness (moment estimator),
  ``sqrt(n) (W + g W^2 / 3 + g^2 W^3 / 27 + g / (6 n))`` is close to t with
  ``n - 1`` degrees of freedom; the map is monotone, so inverting it at the t
  quantiles gives the interval. With ``g = 0`` both are the t-interval (at
  ``n = 2`` always: two values have no skew). ``level`` is the interval's own
  level; ``mean_ci`` calls it at ``calibrated_level``.

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
  mean, s, g = _moments(x)
  from scipy import special  # pylint: disable=g-import-not-at-top  (0.16 s: not at import)
  q = special.stdtrit(n - 1, 0.5 + level / 2) / np.sqrt(n)  # t quantile

  def w_at(u):
    # The inverse of _hall, in a form without division by g.
    v = u - g / (6 * n)
    c = np.cbrt(1 + g * v)
    return 3 * v / (c * c + c + 1)

  low = np.minimum(mean - q * s, mean - s * w_at(q))
  high = np.maximum(mean + q * s, mean - s * w_at(-q))
  return low, high


# The reference ``calibrated_level`` is calibrated on: samples of exponential
# seeds (skewness 2), this many, from a fixed key; past CALIBRATED_UP_TO seeds
# the level is left nominal (exponential seeds cover it there uncalibrated).
CALIBRATION_DRAWS = 1 << 17
CALIBRATED_UP_TO = 128


@functools.lru_cache(maxsize=None)
def _reference_quantiles(n: int) -> np.ndarray:
  """For each of CALIBRATION_DRAWS samples of ``n`` exponential seeds (mean
  1), the smallest ``t_skew_bounds`` half-width quantile ``q`` (its ``q``:
  the t quantile over ``sqrt(n)``) at which the interval holds the mean."""
  rng = np.random.default_rng(0)
  out = []
  for rows in np.array_split(np.arange(CALIBRATION_DRAWS),
                             max(1, CALIBRATION_DRAWS * n >> 22)):
    mean, s, g = _moments(rng.standard_exponential((len(rows), n)))
    w = (mean - 1.0) / s
    h = _hall(w, g, n)
    # The interval's low end is below the mean 1 when q >= min(w, h) (the
    # t or Hall's end), its high end above it when q >= -max(w, h).
    out.append(np.maximum(np.minimum(w, h), -np.maximum(w, h)))
  return np.concatenate(out)


def calibrated_level(n: int, level: float = 0.95) -> float:
  """The level at which ``t_skew_bounds`` covers the mean at least ``level``
  of the time for ``n`` seeds drawn from an exponential (skewness 2), and
  never below ``level`` (so normal and symmetric seeds keep it too).

  Found from CALIBRATION_DRAWS simulated samples (a fixed key, so a given
  ``(n, level)`` always gets the same level; Monte Carlo error of its
  coverage 0.0006 at 95%); ``level`` itself past CALIBRATED_UP_TO seeds. At
  a nominal 95%: 0.974 / 0.971 / 0.975 / 0.972 / 0.963 at n = 2 / 3 / 4 / 5
  / 8, and 0.95 from n = 16 on. A level rests on the ``(1 - level) *
  CALIBRATION_DRAWS`` samples beyond it: 6,554 at 95%, 92 at 0.9993 (a
  Bonferroni 95% over 72 intervals), 13 at 0.9999, so levels that high are
  calibrated only roughly.

  Raises:
    ValueError: ``level`` is not in (0, 1), or ``n`` < 2.
  """
  _check_level(level)
  if not isinstance(n, (int, np.integer)) or n < 2:
    raise ValueError(f'calibrated_level: n={n!r} seeds; accepted: an integer '
                     '>= 2.')
  return _calibrated_level(int(n), float(level))


@functools.lru_cache(maxsize=None)
def _calibrated_level(n: int, level: float) -> float:
  if n > CALIBRATED_UP_TO:
    return level
  q = float(np.quantile(_reference_quantiles(n), level))
  from scipy import special  # pylint: disable=g-import-not-at-top
  return max(level, float(2 * special.stdtr(n - 1, np.sqrt(n) * q) - 1))


# Bounded metrics (accuracies) are logged in float32 (3/450 is 0.00666666...
# to float32's 24 bits), so values (or their differences, means, Shapley
# values) that agree to a few float32 ulps of the metric's scale are the same
# number rounded differently, not a spread over seeds.
TIE_ULPS = 8


def _all_equal(x: np.ndarray, bounds: tuple[float, float]) -> bool:
  """Whether the finite ``x`` are one value: of a bounded metric (an
  accuracy, its differences: both ``bounds`` finite), to ``TIE_ULPS`` float32
  ulps of the larger of the bounds' and the values' magnitudes; else exactly
  (a loss may be float64, and a log10 of one has no float32 scale)."""
  if not np.all(np.isfinite(bounds)):
    return bool(np.all(x == x[0]))
  scale = max(float(np.max(np.abs(x))), *(abs(float(b)) for b in bounds))
  return float(np.ptp(x)) <= TIE_ULPS * float(np.finfo(np.float32).eps) * scale


def mean_ci(values, level: float = 0.95, *,
            bounds: tuple[float, float] = (-math.inf, math.inf)) -> Interval:
  """Mean of the finite ``values`` and its interval (``t_skew_bounds``).

  The interval is clipped to ``bounds``, the range the mean can take (a loss
  is >= 0; ``metric_range``): the truth lies in it, so clipping keeps the
  coverage. With fewer than two finite values, or all of them equal, the
  interval is NaN (unknown), never zero: equal seeds say nothing of the
  spread (paired accuracies that differ on one seed in three are all equal
  at n=4 a quarter of the time, and a zero-width interval there covered
  76%; printed only when the seeds differ, 100%). For a bounded metric
  (both ``bounds`` finite) equal means equal to float32's rounding at its
  scale (``TIE_ULPS``): accuracies are logged in float32, so two seeds that
  each gained 3 of 450 test points differ by 1e-8.

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
  if n < 2 or _all_equal(x, bounds):
    return Interval(mean, np.nan, np.nan, n)
  low, high = t_skew_bounds(x, calibrated_level(n, level))
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
