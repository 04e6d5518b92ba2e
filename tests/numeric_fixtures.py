"""Numerical helpers shared by the loss tests."""
import numpy as np


def numeric_grad(f, x, eps=1e-6):
    """Central-difference gradient of scalar `f` at `x` (float64), element by element."""
    x = np.asarray(x, np.float64)
    g = np.zeros_like(x)
    for idx in np.ndindex(x.shape):
        up, dn = x.copy(), x.copy()
        up[idx] += eps
        dn[idx] -= eps
        g[idx] = (f(up) - f(dn)) / (2 * eps)
    return g
