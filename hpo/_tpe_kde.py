"""A Parzen estimator over the unit cube: truncated Gaussians for numeric codes, smoothed one-hots for categories.

`Parzen.fit(num, cat, n_choices, weights)` places one kernel on each observation, plus a prior kernel of weight
one (Optuna's: a Gaussian at the cube's centre as wide as the cube, uniform over categories), so that the density
is never zero anywhere in the space. Numeric bandwidths follow the distance to the neighbouring observations in
each dimension (wide where observations are sparse, narrow where they cluster), clipped below so that a tight
cluster of a few points cannot collapse the density. A stepped dimension (ints, floats with a step) is scored by
the mass each kernel puts on the candidate's grid cell, not by the density at one point, as Optuna does: two
candidates that round to the same value get the same score. Everything is vectorized over kernels and
candidates; nothing here knows about Optuna.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

_SQRT2 = np.sqrt(2.0)
_LOG_SQRT_2PI = 0.5 * np.log(2 * np.pi)
_LOG_HALF = np.log(0.5)


def _log_erfc(x: np.ndarray) -> np.ndarray:
    """log erfc(x) for x >= 0 (Abramowitz and Stegun 7.1.26, which writes erfc as a polynomial times exp(-x^2))."""
    t = 1.0 / (1.0 + 0.3275911 * x)
    poly = t * (0.254829592 + t * (-0.284496736 + t * (1.421413741 + t * (-1.453152027 + t * 1.061405429))))
    return np.asarray(np.log(poly) - x * x)


def log_gauss_mass(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """log of the standard normal's mass on [a, b] (elementwise, a <= b), without cancellation in the tails."""
    a, b = np.broadcast_arrays(np.asarray(a, dtype=float), np.asarray(b, dtype=float))
    la, lb = _log_erfc(np.abs(a) / _SQRT2), _log_erfc(np.abs(b) / _SQRT2)  # log erfc(|a|), log erfc(|b|)
    near, far = np.where(a >= 0, la, lb), np.where(a >= 0, lb, la)  # on one side of 0: erfc(near) - erfc(far)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):  # each branch is kept only where valid
        one_side = _LOG_HALF + near + np.log(-np.expm1(far - near))
        across = np.log(0.5 * (-np.expm1(la) - np.expm1(lb)))  # a < 0 < b: (erf(|a|) + erf(|b|)) / 2
    return np.asarray(np.maximum(np.where((a >= 0) | (b <= 0), one_side, across), -700.0))


def bandwidths(mu: np.ndarray) -> np.ndarray:
    """Per-observation, per-dimension bandwidths from the gaps to the neighbouring observations (Optuna's rule).

    In each dimension a kernel's bandwidth is the larger of the gaps to its left and right neighbours (the
    interval's ends count as neighbours only for the outermost gaps' other side), clipped to
    [1 / min(100, n + 2), 1]: the lower clip keeps a few clustered points from becoming spikes.
    """
    n, d = mu.shape
    if n == 0:
        return np.empty((0, d))
    order = np.argsort(mu, axis=0)
    sorted_mu = np.take_along_axis(mu, order, axis=0)
    padded = np.concatenate([np.zeros((1, d)), sorted_mu, np.ones((1, d))], axis=0)
    gaps = np.diff(padded, axis=0)
    sorted_sigma = np.maximum(gaps[:-1], gaps[1:])
    if n >= 2:
        sorted_sigma[0] = gaps[1]
        sorted_sigma[-1] = gaps[-2]
    sigma = np.empty_like(sorted_sigma)
    np.put_along_axis(sigma, order, sorted_sigma, axis=0)
    return np.asarray(np.clip(sigma, 1.0 / min(100.0, n + 2.0), 1.0))


@dataclass(frozen=True)
class Parzen:
    """A fitted mixture of n + 1 kernels: one per observation, the prior last."""

    mu: np.ndarray  # (n + 1, dn) numeric centres
    sigma: np.ndarray  # (n + 1, dn) numeric bandwidths
    log_mass: np.ndarray  # (n + 1, dn) log of each kernel's mass inside [0, 1]: its truncation normalizer
    cat_logp: tuple[np.ndarray, ...]  # per categorical dimension, (n + 1, k) log probabilities
    log_weights: np.ndarray  # (n + 1,)
    n_choices: np.ndarray  # (dc,)

    @classmethod
    def fit(cls, num: np.ndarray, cat: np.ndarray, n_choices: np.ndarray, weights: np.ndarray) -> Parzen:
        n, dn = num.shape
        mu = np.concatenate([num, np.full((1, dn), 0.5)])
        sigma = np.concatenate([bandwidths(num), np.ones((1, dn))])
        log_mass = log_gauss_mass(-mu / sigma, (1.0 - mu) / sigma)
        cat_logp = []
        for j, k in enumerate(n_choices):
            table = np.full((n + 1, int(k)), 1.0 / (n + 1))
            table[np.arange(n), cat[:, j]] += 1.0
            cat_logp.append(np.log(table / table.sum(axis=1, keepdims=True)))
        w = np.append(weights, 1.0)
        return cls(mu, sigma, log_mass, tuple(cat_logp), np.log(w / w.sum()), n_choices)

    def sample(self, rng: np.random.Generator, size: int) -> tuple[np.ndarray, np.ndarray]:
        """`size` draws: numeric codes (size, dn) and category indices (size, dc)."""
        kernel = rng.choice(len(self.log_weights), size=size, p=np.exp(self.log_weights))
        mu, sigma = self.mu[kernel], self.sigma[kernel]
        num = mu + sigma * rng.standard_normal(mu.shape)
        for _ in range(30):  # rejection sampling of the truncation; a kernel keeps >= ~16 % of its mass
            outside = (num < 0) | (num > 1)
            if not outside.any():
                break
            num[outside] = (mu + sigma * rng.standard_normal(mu.shape))[outside]
        num = np.clip(num, 0.0, 1.0)
        cat = np.empty((size, len(self.n_choices)), dtype=np.int64)
        for j, k in enumerate(self.n_choices):
            p = np.exp(self.cat_logp[j][kernel])
            drawn = (rng.random((size, 1)) > np.cumsum(p, axis=1)).sum(axis=1)
            cat[:, j] = np.minimum(drawn, int(k) - 1)
        return num, cat

    def log_pdf(self, num: np.ndarray, cat: np.ndarray, cells: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
        """The mixture's log density at each of m points: (m,).

        `cells` are each point's grid-cell edges (left, right), both (m, dn); where they are equal the dimension
        is continuous and scored by density, elsewhere by the kernel's mass on the cell.
        """
        left, right = cells
        discrete = (right > left).any(axis=0)
        per_kernel = -self.log_mass.sum(axis=1)[None, :]
        cont = ~discrete
        if cont.any():
            z = (num[:, None, cont] - self.mu[None, :, cont]) / self.sigma[None, :, cont]
            per_kernel = per_kernel - 0.5 * (z * z).sum(axis=2) - (np.log(self.sigma[:, cont]) + _LOG_SQRT_2PI).sum(1)
        for d in np.flatnonzero(discrete).tolist():
            per_kernel = per_kernel + _cell_log_mass(left[:, d], right[:, d], self.mu[:, d], self.sigma[:, d])
        for j in range(len(self.n_choices)):
            per_kernel = per_kernel + self.cat_logp[j][:, cat[:, j]].T
        joined = per_kernel + self.log_weights[None, :]
        top = joined.max(axis=1, keepdims=True)
        return np.asarray(top[:, 0] + np.log(np.exp(joined - top).sum(axis=1)))


def _cell_log_mass(left: np.ndarray, right: np.ndarray, mu: np.ndarray, sigma: np.ndarray) -> np.ndarray:
    """(m, n) log mass of each kernel (mu, sigma) on each point's cell [left, right] of one stepped dimension.

    Cells and kernels repeat a lot on a grid (a few values, bandwidths at the clip), so each distinct pair is
    computed once.
    """
    cells, cell_of = np.unique(left, return_inverse=True)
    widths = right[np.unique(cell_of, return_index=True)[1]] - cells
    kernels, kernel_of = np.unique(np.stack([mu, sigma], axis=1), axis=0, return_inverse=True)
    k_mu, k_sigma = kernels[None, :, 0], kernels[None, :, 1]
    table = log_gauss_mass((cells[:, None] - k_mu) / k_sigma, (cells[:, None] + widths[:, None] - k_mu) / k_sigma)
    return np.asarray(table[np.ix_(cell_of.ravel(), kernel_of.ravel())])
