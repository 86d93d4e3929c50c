"""Synthetic tasks: fake correlated binary tasks (thesis 000, scenario 2 and section 5.3)."""
from __future__ import annotations

import numpy as np


def fake_correlated_labels(n: int, k: int, rho: float = 0.8, rate: float = 0.1,
                           seed: int = 0) -> np.ndarray:
    """(n, k) binary labels that are correlated with each other and independent of any input.

    Each column thresholds sqrt(rho) z + sqrt(1 - rho) e_j, with one latent z ~ N(0, 1) per example
    shared by all columns and private noise e_j ~ N(0, 1); the threshold gives a positive rate of `rate`.
    """
    if not 0 <= rho <= 1 or not 0 < rate < 1:
        raise ValueError(f"need 0 <= rho <= 1 and 0 < rate < 1, got rho={rho}, rate={rate}")
    rng = np.random.default_rng(seed)
    z = rng.standard_normal((n, 1))  # (n, 1) shared latent
    score = np.sqrt(rho) * z + np.sqrt(1 - rho) * rng.standard_normal((n, k))  # (n, k)
    return (score > np.quantile(score, 1 - rate, axis=0)).astype(np.float32)
