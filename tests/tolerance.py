"""Tolerances for comparing floating-point results, derived from the arithmetic, not guessed.

How tolerances are chosen
-------------------------
A float32 number carries a relative rounding error of at most ``F32_EPS / 2`` (``F32_EPS`` is
``2**-23`` ~ 1.19e-7). Two computations of the same quantity that differ only in the order of
their sums -- batch sizes, backward passes in slices, the number of threads, CPU kernels (SSE,
AVX2, AVX-512/AMX pick different blockings and fused multiply-adds) -- round differently, and the
difference of a sum of ``n`` terms is bounded by about ``n * eps * sum|terms|`` (about
``sqrt(n) * eps * ...`` in practice). That error is absolute on the *scale of the terms*, not of
the result: an entry that is nearly zero because large terms cancel is as uncertain as the
largest entry. So comparisons here are

    max |actual - expected|  <=  ulps * eps * max |expected|

-- relative to the largest value compared, never element-wise relative (which fails on entries
that cancel to near zero) and never an absolute ``1e-6`` on values of unknown scale (which fails
when the values are large, and passes anything when they are small).

``ulps`` defaults to ``DEFAULT_ULPS = 64``, i.e. ``rtol = 64 * F32_EPS ~ 7.6e-6``. The toy models'
reductions are dot products of a few dozen to a few hundred terms chained through a few layers
(forward, then backward). Measured differences between such results (batch sizes, slices, 1 or 2
threads, ``ATEN_CPU_CAPABILITY`` default / avx2 / avx512) are 0-8 ulps of the largest value
compared; the failure that prompted this module (an AVX-512/AMX Xeon) was 3.8e-6 on a graph whose
largest edge is 32.2, i.e. 1 ulp, against an absolute 1e-6. 64 ulps leaves a wide margin for other
kernels and thread counts while still catching any real mistake: a wrong or shifted row, a dropped
term or a 1e-5 relative error is 80 ulps or more. Where an element is a difference or a
rectification of larger sums (a reconstruction error ``out - recon``, ``relu(pre)``), pass the
scale of those sums as ``scale``: that is where the rounding happens.

Comparisons of float32 results against a float64 reference (the frozen oracle, forward
differences) carry the float32 error of whole forward passes and state a larger ``rtol``.
Comparisons of two float64 computations pass ``eps=F64_EPS`` (a few ulps, or ``n * n`` for sums of
``n`` terms over ``n`` steps).

``assert_differs`` is the counterpart for checks that something *did* change: it demands a
difference of more than ``rtol`` of the largest value, well above any rounding.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import scipy.sparse as sp

#: float32 machine epsilon, ``2**-23``: the gap between 1.0 and the next float32.
F32_EPS = float(np.finfo(np.float32).eps)
#: float64 machine epsilon, ``2**-52``.
F64_EPS = float(np.finfo(np.float64).eps)
#: Default allowance, in ulps of the largest value compared, for results that differ only in
#: summation order (see the module docstring).
DEFAULT_ULPS = 64
#: The default relative tolerance, ``DEFAULT_ULPS * F32_EPS`` (~7.6e-6).
RTOL = DEFAULT_ULPS * F32_EPS
#: Below this a scale counts as zero (the smallest normal float32).
TINY = float(np.finfo(np.float32).tiny)


def _as_array(x: Any) -> np.ndarray | sp.sparray | sp.spmatrix:
    """``x`` as a float64 numpy array, or a float64 scipy sparse array/matrix if it is one."""
    if sp.issparse(x):
        return x.astype(np.float64)
    try:
        import torch

        if isinstance(x, torch.Tensor):
            x = x.detach().cpu()
            if x.is_sparse:
                x = x.to_dense()
            return x.to(torch.float64).numpy()
    except ImportError:  # pragma: no cover - torch is a dependency of the package
        pass
    if hasattr(x, "to_numpy"):  # pandas Series / DataFrame (nullable dtypes: NA becomes nan)
        return x.to_numpy(dtype=np.float64, na_value=np.nan)
    return np.asarray(x, dtype=np.float64)


def max_abs(x: Any) -> float:
    """``max |x|`` (0.0 for an empty ``x``); scipy sparse inputs are not densified."""
    a = _as_array(x)
    if sp.issparse(a):
        return float(abs(a).max()) if a.nnz else 0.0
    return float(np.abs(a).max()) if a.size else 0.0


def _diff(actual: Any, expected: Any):
    """(``actual - expected`` as an array or sparse matrix, ``expected`` converted)."""
    a, e = _as_array(actual), _as_array(expected)
    if a.shape != e.shape:
        raise AssertionError(f"shapes differ: actual {a.shape}, expected {e.shape}")
    if sp.issparse(a) != sp.issparse(e):  # one dense side: compare densely
        a = a.toarray() if sp.issparse(a) else a
        e = e.toarray() if sp.issparse(e) else e
    return a - e, a, e


def _worst(diff) -> tuple[float, tuple[int, ...] | None]:
    """``max |diff|`` and where it is (None for an empty diff); nan counts as worst."""
    if sp.issparse(diff):
        coo = sp.coo_array(diff)
        if coo.nnz == 0:
            return 0.0, None
        d = np.abs(coo.data)
        i = int(np.argmax(np.where(np.isnan(d), np.inf, d)))
        return float(d[i]), (int(coo.row[i]), int(coo.col[i]))
    if diff.size == 0:
        return 0.0, None
    d = np.abs(diff)
    i = int(np.argmax(np.where(np.isnan(d), np.inf, d)))
    return float(d.flat[i]), tuple(int(k) for k in np.unravel_index(i, diff.shape))


def max_abs_diff(actual: Any, expected: Any) -> float:
    """``max |actual - expected|`` (nan if either side has a nan where the other does not)."""
    return _worst(_diff(actual, expected)[0])[0]


def rel_err(actual: Any, expected: Any, *, scale: float | None = None) -> float:
    """``max |actual - expected| / max |expected|`` (or ``/ scale`` when given).

    The error relative to the *largest* value compared, the quantity every tolerance here bounds.
    """
    s = max_abs(expected) if scale is None else float(scale)
    return max_abs_diff(actual, expected) / max(s, TINY)


def _at(x, where) -> float:
    if where is None:
        return float("nan")
    if sp.issparse(x):
        return float(sp.csr_array(x)[where[0], where[1]])
    return float(x[where]) if x.ndim else float(x)


def assert_close(
    actual: Any,
    expected: Any,
    *,
    ulps: float = DEFAULT_ULPS,
    eps: float = F32_EPS,
    rtol: float | None = None,
    scale: float | None = None,
    what: str = "",
) -> None:
    """Assert ``max |actual - expected| <= ulps * eps * max(max |expected|, TINY)``.

    Works on torch tensors (dense or sparse), numpy arrays, pandas columns, scalars and scipy
    sparse arrays/matrices (two sparse sides are subtracted without densifying). The shapes must
    be equal. ``scale`` replaces ``max |expected|`` where the natural scale is something else (for
    example the largest value of a whole graph when comparing a few of its entries). ``eps`` is
    ``F32_EPS`` unless both sides are float64 computations (``F64_EPS``). ``rtol``, where given,
    replaces ``ulps * eps`` (for comparisons whose error is not a summation-order rounding, e.g.
    float32 results against a float64 reference). A nan on either side fails.
    """
    diff, a, e = _diff(actual, expected)
    worst, where = _worst(diff)
    s = max(max_abs(e) if scale is None else float(scale), TINY)
    if rtol is not None:
        ulps = rtol / eps
    tol = ulps * eps * s
    if worst <= tol:  # False for nan
        return
    name = f"{what}: " if what else ""
    raise AssertionError(
        f"{name}max |actual - expected| = {worst:.4g} at {where} "
        f"(actual {_at(a, where):.8g}, expected {_at(e, where):.8g}); "
        f"scale {s:.4g}, relative error {worst / s:.3g} = {worst / s / eps:.1f} ulps "
        f"> allowed {ulps:g} ulps ({ulps * eps:.3g} relative, {tol:.3g} absolute)"
    )


def assert_differs(
    actual: Any, expected: Any, *, rtol: float = 1e-3, scale: float | None = None, what: str = ""
) -> None:
    """Assert that ``actual`` really differs from ``expected``: ``max |actual - expected| >
    rtol * max |expected|`` (``rtol`` far above rounding, default 1e-3 ~ 8000 float32 ulps)."""
    diff, _, e = _diff(actual, expected)
    worst, where = _worst(diff)
    s = max(max_abs(e) if scale is None else float(scale), TINY)
    if worst > rtol * s:
        return
    name = f"{what}: " if what else ""
    raise AssertionError(
        f"{name}expected a change: max |actual - expected| = {worst:.4g} at {where} is not above "
        f"{rtol:g} of the scale {s:.4g}"
    )
