"""One input answered from two rows of a batch (or two batches): equal, floats within ``TOL``. Not bit for bit: the
CPU kernels may split rows and threads differently (a bit-equal check failed once on torch 2.4 under a CPU hog, two
rows of the same image 2e-10 apart); a wrong row or a swapped answer is off by far more."""

from __future__ import annotations

TOL = 1e-6


def close(a, b, tol: float = TOL) -> bool:
    """``a`` and ``b`` (JSON-like: dicts in the same key order, lists, strings, numbers) equal, floats within ``tol``."""
    if isinstance(a, float) or isinstance(b, float):
        return all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in (a, b)) and abs(a - b) <= tol
    if isinstance(a, dict):
        return isinstance(b, dict) and list(a) == list(b) and all(close(a[k], b[k], tol) for k in a)
    if isinstance(a, (list, tuple)):
        return isinstance(b, (list, tuple)) and len(a) == len(b) and all(close(x, y, tol) for x, y in zip(a, b))
    return a == b
