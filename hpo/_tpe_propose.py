"""One TPE proposal for one group of parameters, given coded observations and the points still in flight.

The observations are split into the best `gamma(n)` ("below") and the rest ("above"); candidates are drawn from
the below density l and the one maximizing log l(x) - log g(x) wins. Points in flight (asked, not yet told) are
handled in one of two ways, chosen by `pending`:

- "liar": Optuna's constant liar: they join the above set, as if they had come back bad. With 8 in flight and a
  dozen finished trials this lie dominates g, and it moves g everywhere, not only near the pending points.
- "repel": they stay out of both densities, and each one instead multiplies the acquisition by
  1 - exp(-d^2 / 2), d being the candidate's distance to it in units of `radius` times the below density's
  median bandwidths: a
  candidate on top of a pending point is ruled out, one a few bandwidths away is untouched. The model stays
  an honest estimate of what is known, and parallel workers still spread out.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np

from incl.hpo._tpe_kde import Parzen

Pending = Literal["liar", "repel"]


@dataclass(frozen=True)
class Observations:
    """Coded points of one group: numeric (n, dn), categorical (n, dc), and a loss to minimize (n,).

    A pruned trial's loss is +inf: it only ever counts as a bad point.
    """

    num: np.ndarray
    cat: np.ndarray
    loss: np.ndarray


def n_below(n: int) -> int:
    """How many of n observations form the good density: 10 %, at least 1, at most 25 (Optuna's rule)."""
    return max(1, min(math.ceil(0.1 * n), 25))


def _repulsion(
    num: np.ndarray, cat: np.ndarray, pending: Observations, sigma: np.ndarray
) -> np.ndarray:
    """The log of the product, over pending points, of 1 - exp(-d^2 / 2) at each candidate: (m,) <= 0."""
    if pending.num.shape[0] == 0:
        return np.zeros(num.shape[0])
    z = (num[:, None, :] - pending.num[None, :, :]) / sigma[None, None, :]
    d2 = (z * z).sum(axis=2) + 4.0 * (cat[:, None, :] != pending.cat[None, :, :]).sum(axis=2)
    return np.asarray(np.log(np.maximum(-np.expm1(-0.5 * d2), 1e-300)).sum(axis=1))


def propose(
    obs: Observations,
    pending: Observations,
    n_choices: np.ndarray,
    rng: np.random.Generator,
    *,
    n_candidates: int,
    mode: Pending,
    radius: float = 0.3,
) -> tuple[np.ndarray, np.ndarray]:
    """The next point (numeric codes, category indices) for one group."""
    order = np.argsort(obs.loss, kind="stable")
    k = n_below(int(np.isfinite(obs.loss).sum()))
    below, above = order[:k], order[k:]
    above_num, above_cat = obs.num[above], obs.cat[above]
    if mode == "liar":
        above_num = np.concatenate([above_num, pending.num])
        above_cat = np.concatenate([above_cat, pending.cat])
    low = Parzen.fit(obs.num[below], obs.cat[below], n_choices, np.ones(len(below)))
    high = Parzen.fit(above_num, above_cat, n_choices, np.ones(len(above_num)))
    num, cat = low.sample(rng, n_candidates)
    score = low.log_pdf(num, cat) - high.log_pdf(num, cat)
    if mode == "repel" and num.shape[1] + cat.shape[1] > 0:
        scale = np.median(low.sigma, axis=0) if len(below) else np.full(num.shape[1], 0.25)
        score = score + _repulsion(num, cat, pending, np.maximum(radius * scale, 1e-3))
    best = int(np.argmax(score))
    return num[best], cat[best]
