"""The One-Euro filter (Casiez, Roussel and Vogel, "1 Euro Filter: A Simple Speed-based Low-pass
Filter for Noisy Input in Interactive Systems", CHI 2012), on arrays of points.

A first-order low-pass filter whose cutoff rises with the speed: at rest a low cutoff
(``min_cutoff``) removes jitter, when moving the cutoff ``min_cutoff + beta * speed`` follows the
motion with little lag. The speed is itself low-passed at ``d_cutoff``. Every step follows the
paper's Algorithm 1: the derivative is taken against the previous *filtered* value.

One filter holds the state of a whole pose, (K, 2) joints in pixels: each joint is filtered on
its own, and its speed is the length of its 2-D velocity (px/s), so x and y of one joint share
a cutoff and the filter does not depend on the direction of the motion.
"""

from __future__ import annotations

import math

import numpy as np


def smoothing_factor(cutoff: np.ndarray | float, dt: float) -> np.ndarray | float:
    """alpha of an exponential smoothing step ``x_hat = alpha x + (1 - alpha) x_hat_prev`` that
    acts as a first-order low-pass filter of ``cutoff`` Hz sampled ``dt`` seconds apart:
    ``alpha = 1 / (1 + tau / dt)``, ``tau = 1 / (2 pi cutoff)``."""
    rate = 2.0 * math.pi * np.asarray(cutoff, dtype=np.float64) * dt
    return rate / (1.0 + rate)


class OneEuroFilter:
    """The 1-Euro filter over an array of points (..., D), e.g. one pose's (K, 2) joints.

    ``min_cutoff`` (Hz) is the cutoff at rest, ``beta`` (s/px: Hz per px/s of speed) how much it
    rises with speed, ``d_cutoff`` (Hz) the cutoff of the speed estimate. Timestamps are in
    seconds and must increase; a gap (frames without this person) is just a longer ``dt``, which
    the filter weighs as the paper does: a longer step trusts the new value more.

    A point with a non-finite coordinate passes through unchanged and leaves that point's state as
    it was; a point first seen non-finite starts afresh at its first finite value.
    """

    def __init__(self, min_cutoff: float, beta: float, d_cutoff: float = 1.0) -> None:
        if min_cutoff <= 0 or d_cutoff <= 0 or beta < 0:
            raise ValueError(
                f"need min_cutoff > 0, d_cutoff > 0, beta >= 0; got {min_cutoff}, {d_cutoff}, {beta}"
            )
        self.min_cutoff, self.beta, self.d_cutoff = min_cutoff, beta, d_cutoff
        self.x_hat: np.ndarray | None = None  # (..., D) the last filtered value
        self.dx_hat: np.ndarray | None = None  # (..., D) the filtered derivative, units per second
        self.time: float | None = None  # seconds, of the last value

    def __call__(self, x: np.ndarray, time: float) -> np.ndarray:
        """The filtered value of ``x`` (..., D) seen at ``time`` seconds; the same shape, float64."""
        x = np.asarray(x, dtype=np.float64)
        if self.x_hat is None or self.dx_hat is None or self.time is None:
            # the first value is its own estimate (a point first seen non-finite starts there too)
            self.x_hat, self.dx_hat, self.time = x.copy(), np.zeros_like(x), time
            return x.copy()
        if x.shape != self.x_hat.shape:
            raise ValueError(f"expected values of shape {self.x_hat.shape}, got {x.shape}")
        dt = time - self.time
        if not dt > 0:
            raise ValueError(f"timestamps must increase: {time} after {self.time}")
        with np.errstate(invalid="ignore"):  # non-finite points are replaced just below
            dx = (x - self.x_hat) / dt
            dx_hat = self.dx_hat + smoothing_factor(self.d_cutoff, dt) * (dx - self.dx_hat)
            speed = np.linalg.norm(dx_hat, axis=-1, keepdims=True)  # (..., 1)
            cutoff = self.min_cutoff + self.beta * speed
            x_hat = self.x_hat + smoothing_factor(cutoff, dt) * (x - self.x_hat)
        seen = np.isfinite(x).all(axis=-1, keepdims=True)  # (..., 1) points with a value now
        known = np.isfinite(self.x_hat).all(axis=-1, keepdims=True)  # and with a state to continue
        self.x_hat = np.where(seen, np.where(known, x_hat, x), self.x_hat)
        self.dx_hat = np.where(seen, np.where(known, dx_hat, 0.0), self.dx_hat)
        self.time = time
        return np.where(seen, self.x_hat, x)
