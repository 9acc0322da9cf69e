"""A Parzen estimator over the unit cube: truncated Gaussians for numeric codes, smoothed one-hots for categories.

`Parzen.fit(num, cat, n_choices)` places one kernel on each observation, plus a uniform prior kernel of the same
weight, so that the density is never zero anywhere in the space. Numeric bandwidths follow the distance to the
neighbouring observations in each dimension (wide where observations are sparse, narrow where they cluster),
clipped below so that a tight cluster of a few points cannot collapse the density. Everything is vectorized over
kernels and candidates; nothing here knows about Optuna.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

_SQRT2 = np.sqrt(2.0)
_LOG_SQRT_2PI = 0.5 * np.log(2 * np.pi)


def _erf(x: np.ndarray) -> np.ndarray:
    """The error function (Abramowitz and Stegun 7.1.26, absolute error below 1.5e-7), vectorized."""
    s = np.sign(x)
    a = np.abs(x)
    t = 1.0 / (1.0 + 0.3275911 * a)
    poly = t * (0.254829592 + t * (-0.284496736 + t * (1.421413741 + t * (-1.453152027 + t * 1.061405429))))
    return np.asarray(s * (1.0 - poly * np.exp(-a * a)))


def _mass(mu: np.ndarray, sigma: np.ndarray) -> np.ndarray:
    """The mass a Gaussian kernel puts inside [0, 1]: the normalizer of its truncation."""
    upper = _erf((1.0 - mu) / (sigma * _SQRT2))
    lower = _erf((0.0 - mu) / (sigma * _SQRT2))
    return np.asarray(np.maximum(0.5 * (upper - lower), 1e-12))


def bandwidths(mu: np.ndarray) -> np.ndarray:
    """Per-observation, per-dimension bandwidths from the gaps to the neighbouring observations.

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
    """A fitted mixture: kernels on observations plus one uniform prior kernel (the last weight)."""

    mu: np.ndarray  # (n, dn) numeric centres
    sigma: np.ndarray  # (n, dn) numeric bandwidths
    log_mass: np.ndarray  # (n,) summed log truncation normalizers
    cat_logp: tuple[np.ndarray, ...]  # per categorical dimension, (n, k) log probabilities
    log_weights: np.ndarray  # (n + 1,), the prior last
    n_choices: np.ndarray  # (dc,)

    @classmethod
    def fit(cls, num: np.ndarray, cat: np.ndarray, n_choices: np.ndarray, weights: np.ndarray) -> Parzen:
        n = num.shape[0]
        sigma = bandwidths(num)
        log_mass = np.log(_mass(num, sigma)).sum(axis=1)
        cat_logp = []
        for j, k in enumerate(n_choices):
            table = np.full((n, int(k)), 1.0 / (n + 1))
            table[np.arange(n), cat[:, j]] += 1.0
            cat_logp.append(np.log(table / table.sum(axis=1, keepdims=True)))
        w = np.append(weights, 1.0)
        return cls(num, sigma, log_mass, tuple(cat_logp), np.log(w / w.sum()), n_choices)

    def sample(self, rng: np.random.Generator, size: int) -> tuple[np.ndarray, np.ndarray]:
        """`size` draws: numeric codes (size, dn) and category indices (size, dc)."""
        n, dn = self.mu.shape
        which = rng.choice(n + 1, size=size, p=np.exp(self.log_weights))
        prior = which == n
        kernel = np.minimum(which, max(n - 1, 0))
        num = rng.random((size, dn))
        if n > 0 and dn > 0:
            mu, sigma = self.mu[kernel], self.sigma[kernel]
            draw = mu + sigma * rng.standard_normal((size, dn))
            for _ in range(20):  # rejection sampling of the truncation; a kernel keeps >= ~16 % of its mass
                outside = (draw < 0) | (draw > 1)
                if not outside.any():
                    break
                draw[outside] = (mu + sigma * rng.standard_normal((size, dn)))[outside]
            num = np.where(prior[:, None], num, np.clip(draw, 0.0, 1.0))
        cat = np.empty((size, len(self.n_choices)), dtype=np.int64)
        for j, k in enumerate(self.n_choices):
            uniform = rng.integers(int(k), size=size)
            if n == 0:
                cat[:, j] = uniform
                continue
            p = np.exp(self.cat_logp[j][kernel])
            drawn = (rng.random((size, 1)) > np.cumsum(p, axis=1)).sum(axis=1)
            cat[:, j] = np.where(prior, uniform, np.minimum(drawn, int(k) - 1))
        return num, cat

    def log_pdf(self, num: np.ndarray, cat: np.ndarray) -> np.ndarray:
        """The mixture's log density at each of m points: (m,)."""
        m = num.shape[0]
        z = (num[:, None, :] - self.mu[None, :, :]) / self.sigma[None, :, :]
        per_kernel = -0.5 * (z * z).sum(axis=2) - (np.log(self.sigma) + _LOG_SQRT_2PI).sum(axis=1) - self.log_mass
        prior = np.zeros(m)
        for j, k in enumerate(self.n_choices):
            per_kernel = per_kernel + self.cat_logp[j][:, cat[:, j]].T
            prior = prior - np.log(float(k))
        joined = np.concatenate([per_kernel, prior[:, None]], axis=1) + self.log_weights[None, :]
        top = joined.max(axis=1, keepdims=True)
        return np.asarray(top[:, 0] + np.log(np.exp(joined - top).sum(axis=1)))
