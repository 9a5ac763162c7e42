"""Fits the rational approximation of erf used by csrc/gelu_impl.inc and prints its coefficients.

    python csrc/fit_gelu_erf.py        # P (6 coefficients), Q (1 + 5), max |error| in double precision

erf(z) ~ z P(z^2) / Q(z^2) on [0, ZMAX] (odd, so it holds on [-ZMAX, ZMAX]); beyond ZMAX erf(z) rounds to
+-1 within 4e-8. Linearised least squares (Sanathanan-Koerner: the residual divided by the previous Q),
then Lawson re-weighting toward the minimax error.
"""
from math import erf

import numpy as np

ZMAX, P_DEGREE, Q_DEGREE = 3.9, 5, 5


def fit(zmax=ZMAX, p_degree=P_DEGREE, q_degree=Q_DEGREE, iterations=60):
    z = np.linspace(0.0, zmax, 40000)
    f = np.array([erf(v) for v in z])
    u = z * z
    weight, q_prev = np.ones_like(z), np.ones_like(z)
    for it in range(iterations):
        a = np.hstack([np.stack([z * u ** i for i in range(p_degree + 1)], 1),
                       np.stack([-f * u ** j for j in range(1, q_degree + 1)], 1)])
        coef, *_ = np.linalg.lstsq(a / q_prev[:, None] * weight[:, None], f / q_prev * weight, rcond=None)
        p, q = coef[:p_degree + 1], np.concatenate([[1.0], coef[p_degree + 1:]])
        q_prev = sum(q[j] * u ** j for j in range(q_degree + 1))
        err = f - z * sum(p[i] * u ** i for i in range(p_degree + 1)) / q_prev
        if it >= 10:
            weight = weight * (np.abs(err) / np.abs(err).max() + 1e-3) ** 0.5
            weight /= weight.max()
    return p, q, float(np.abs(err).max())


if __name__ == "__main__":
    p, q, worst = fit()
    print("P:", ", ".join(f"{v:.9g}f" for v in p))
    print("Q:", ", ".join(f"{v:.9g}f" for v in q))
    print(f"max |erf error| on [0, {ZMAX}] (double): {worst:.3g}")
