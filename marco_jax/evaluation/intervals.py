"""95 % confidence intervals for the report's proportions: Wilson score intervals.

Accuracy, each class's recall and the crystals precision/recall are each a proportion k/n of
images (correct ones among all, found ones among a class, true ones among those called). Their
interval is the Wilson score interval (Wilson 1927; scipy's `binomtest(...).proportion_ci(
method="wilson")`, without continuity correction):

  centre = (k + z^2/2) / (n + z^2),  half width = z / (n + z^2) * sqrt(k (n - k) / n + z^2 / 4)

Why Wilson and not a bootstrap or the textbook p +- z sqrt(p (1 - p) / n) (Wald):
- it keeps close to its nominal 95 % coverage for small n and for proportions near 0 or 1
  (Brown, Cai & DasGupta, Statistical Science 2001), which is where this report lives: a class of
  a few dozen images, a recall of 0.98; Wald's interval shrinks to zero width at 0 % and 100 %;
- it is closed form and deterministic, so the same predictions always give the same report; a
  bootstrap adds resampling noise and thousands of passes, and for one binomial proportion it
  gives no better coverage.
What it assumes: images are independent draws. Images of the same plate or drop, or of the same
imager, are correlated, so on such data the true uncertainty is wider than these intervals.
Precision's interval is conditional on the number of images called positive.
"""

from __future__ import annotations

import math

from scipy import stats

CONFIDENCE = 0.95
METHOD = "wilson"
DESCRIPTION = (
    "95 % Wilson score intervals: close to their nominal coverage for small counts and for "
    "proportions near 0 or 1, closed form and deterministic (no bootstrap noise); they treat "
    "images as independent, so correlated images (same plate, same imager) make the true "
    "uncertainty wider"
)


def wilson_interval(
    successes: int, trials: int, confidence: float = CONFIDENCE
) -> tuple[float, float]:
    """The Wilson score interval of successes/trials; (nan, nan) when there are no trials."""
    if trials == 0:
        return math.nan, math.nan
    if not 0 <= successes <= trials:
        raise ValueError(f"successes must lie in [0, trials={trials}], got {successes}")
    interval = stats.binomtest(int(successes), int(trials)).proportion_ci(
        confidence_level=confidence, method=METHOD
    )
    return float(interval.low), float(interval.high)
