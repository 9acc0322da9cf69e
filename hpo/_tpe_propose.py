"""One TPE proposal for one group of parameters, given coded observations and the points still in flight.

The observations are split into the best `gamma(n)` ("below") and the rest ("above"); candidates are drawn from
the below density l and the one maximizing log l(x) - log g(x) wins. Points in flight (asked, not yet told) are
handled in one of three ways, chosen by `pending`:

- "liar": Optuna's constant liar: they join the above set, as if they had come back bad, so that candidates near
  them score low.
- "repel": they stay out of both densities, and each one instead multiplies the acquisition by
  1 - exp(-d^2 / 2), d being the candidate's distance to it in units of `radius` times the below density's
  median bandwidths: a candidate on top of a pending point is ruled out, one a few bandwidths away is untouched.
- "fantasy": each joins the below set with weight p and the above set with weight 1 - p, p being its
  probability of being good under the model fitted without the pending points (gamma l / (gamma l + (1-gamma) g)).

Kernel weights, the split and the densities follow Optuna's TPE (see `_tpe_kde`): the same model, in numpy.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np

from incl.hpo._tpe_kde import Parzen
from incl.hpo._tpe_space import Space

Pending = Literal["liar", "repel", "fantasy"]


@dataclass(frozen=True)
class Observations:
    """Coded points of one group: numeric (n, dn), categorical (n, dc), and a loss to minimize (n,).

    A pruned trial's loss is +inf: it only ever counts as a bad point. `number` is each point's trial number.
    """

    num: np.ndarray
    cat: np.ndarray
    loss: np.ndarray
    number: np.ndarray


def n_below(n: int) -> int:
    """How many of n observations form the good density: 10 %, at least 1, at most 25 (Optuna's rule)."""
    return max(1, min(math.ceil(0.1 * n), 25))


def weights(number: np.ndarray) -> np.ndarray:
    """Kernel weights by age (Optuna's `default_weights`): the newest 25 weigh 1, older ones ramp down to 1 / n."""
    n = len(number)
    if n < 25:
        return np.ones(n)
    by_age = np.concatenate([np.linspace(1.0 / n, 1.0, num=n - 25), np.ones(25)])
    out = np.empty(n)
    out[np.argsort(number, kind="stable")] = by_age
    return out


def _repulsion(
    num: np.ndarray, cat: np.ndarray, pending: Observations, sigma: np.ndarray
) -> np.ndarray:
    """The log of the product, over pending points, of 1 - exp(-d^2 / 2) at each candidate: (m,) <= 0."""
    if pending.num.shape[0] == 0:
        return np.zeros(num.shape[0])
    z = (num[:, None, :] - pending.num[None, :, :]) / sigma[None, None, :]
    d2 = (z * z).sum(axis=2) + 4.0 * (cat[:, None, :] != pending.cat[None, :, :]).sum(axis=2)
    return np.asarray(np.log(np.maximum(-np.expm1(-0.5 * d2), 1e-300)).sum(axis=1))


def _p_good(
    obs: Observations, below: np.ndarray, above: np.ndarray, pending: Observations, space: Space, gamma: float
) -> np.ndarray:
    """Each pending point's probability of landing in the good group, by the model fitted without them."""
    low = Parzen.fit(obs.num[below], obs.cat[below], space.n_choices, weights(obs.number[below]))
    high = Parzen.fit(obs.num[above], obs.cat[above], space.n_choices, weights(obs.number[above]))
    num, left, right = space.snap(pending.num)
    log_ratio = high.log_pdf(num, pending.cat, (left, right)) - low.log_pdf(num, pending.cat, (left, right))
    return np.asarray(1.0 / (1.0 + np.exp(np.clip(log_ratio, -50, 50)) * (1.0 - gamma) / gamma))


def propose(
    obs: Observations,
    pending: Observations,
    space: Space,
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
    n_choices = space.n_choices
    below_w, above_w = weights(obs.number[below]), weights(obs.number[above])
    below_num, below_cat = obs.num[below], obs.cat[below]
    above_num, above_cat = obs.num[above], obs.cat[above]
    n_pending = len(pending.loss)
    if mode == "liar" and n_pending:
        above_num = np.concatenate([above_num, pending.num])
        above_cat = np.concatenate([above_cat, pending.cat])
        above_w = weights(np.concatenate([obs.number[above], pending.number]))
    if mode == "fantasy" and n_pending:
        good = _p_good(obs, below, above, pending, space, len(below) / max(len(obs.loss), 1))
        below_num = np.concatenate([below_num, pending.num])
        below_cat = np.concatenate([below_cat, pending.cat])
        below_w = np.concatenate([below_w, good])
        above_num = np.concatenate([above_num, pending.num])
        above_cat = np.concatenate([above_cat, pending.cat])
        above_w = weights(np.concatenate([obs.number[above], pending.number]))
        above_w[len(above):] *= 1.0 - good
    low = Parzen.fit(below_num, below_cat, n_choices, below_w)
    high = Parzen.fit(above_num, above_cat, n_choices, above_w)
    drawn, cat = low.sample(rng, n_candidates)
    num, left, right = space.snap(drawn)
    score = low.log_pdf(num, cat, (left, right)) - high.log_pdf(num, cat, (left, right))
    if mode == "repel" and num.shape[1] + cat.shape[1] > 0:
        scale = np.median(low.sigma[:-1], axis=0) if len(below) else np.full(num.shape[1], 0.25)
        score = score + _repulsion(num, cat, pending, np.maximum(radius * scale, 1e-3))
    best = int(np.argmax(score))
    return num[best], cat[best]
