"""Descriptor distances with the numerics of the official HPatches code, made fast.

The official code computes

* verification distances per pair with ``scipy.spatial.distance.euclidean`` / ``cityblock`` on
  float32 rows (the difference is taken in float32);
* matching and retrieval distances with ``scipy.spatial.distance.cdist`` in float64 from the
  float32 descriptors.

A brute-force float64 ``cdist`` over 10,000 x 20,000 pairs is what makes the official code slow.
Here every distance *matrix* is an approximation with a per-row error bound (a float32 GEMM for
L2), and every decision that depends on the exact value -- an argmin, or a comparison with a
positive's distance -- is re-checked with the exact float64 formula whenever the approximation
is within its error bound. The decisions are therefore those of the exact computation.

Distances are registered by name (``L2``, ``L1``); a new one is one class plus one line.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import ClassVar

import numpy as np
import torch
from numpy.typing import NDArray

F32 = NDArray[np.float32]
F64 = NDArray[np.float64]

_ROW_CHUNK = 1 << 16


class Distance:
    """Interface of a descriptor distance. Subclasses implement the four primitives."""

    name: ClassVar[str]

    def rows(self, a: F32, b: F32) -> F32:
        """Per-pair distance with the verification numerics (scipy's float32 results).

        Shape: (M, D), (M, D) -> (M,) float32."""
        raise NotImplementedError

    def exact(self, a: F32, b: F32) -> F64:
        """Per-pair distance with ``cdist``'s float64 numerics. Shape: (M, D), (M, D) -> (M,)."""
        raise NotImplementedError

    def approx_keys(self, x: F32, y: F32) -> tuple[NDArray[np.floating], F64, F64]:
        """Approximate comparison keys of all pairs, up to a per-row shift, and an error bound.

        A key is a monotone function of the distance (:meth:`key`). For every pair,
        ``|keys[i, j] + shift[i] - key(exact(x[i], y[j]))| <= tol[i]``. The shift lets L2 skip
        adding ``|x_i|^2`` to every entry.

        Shape: (Nx, D), (Ny, D) -> keys (Nx, Ny) float32 or float64, shift (Nx,), tol (Nx,).
        """
        raise NotImplementedError

    def key(self, d: F64) -> F64:
        """Monotone map from exact distances to the key space of :meth:`approx_keys`."""
        raise NotImplementedError

    def key_tol(self, d: F64) -> F64:
        """Bound on the rounding of :meth:`key` itself."""
        return np.abs(self.key(d)) * 4.5e-16

    # ------------------------------------------------------------------ derived operations

    def rows_indexed(self, matrix: F32, ia: NDArray[np.int64], ib: NDArray[np.int64]) -> F32:
        """:meth:`rows` of ``matrix[ia]`` against ``matrix[ib]``, gathered chunk by chunk (so
        the copies stay in cache) on two threads. Shape: (R, D), (M,), (M,) -> (M,)."""
        out = np.empty(len(ia), dtype=np.float32)
        step = 8192

        def work(lo: int, hi: int) -> None:
            buf_a = np.empty((step, matrix.shape[1]), dtype=matrix.dtype)
            buf_b = np.empty_like(buf_a)
            for s in range(lo, hi, step):
                n = min(step, hi - s)
                np.take(matrix, ia[s : s + n], axis=0, out=buf_a[:n])
                np.take(matrix, ib[s : s + n], axis=0, out=buf_b[:n])
                out[s : s + n] = self.rows(buf_a[:n], buf_b[:n])

        half = (len(ia) // 2 // step + 1) * step
        with ThreadPoolExecutor(2) as pool:
            list(pool.map(lambda r: work(*r), [(0, min(half, len(ia))), (min(half, len(ia)), len(ia))]))
        return out

    def nearest(self, x: F32, y: F32, chunk: int = 2048) -> tuple[NDArray[np.int64], F64]:
        """Index and exact distance of the nearest ``y`` row for every ``x`` row.

        Equals ``argmin(cdist(x, y), axis=1)`` (the first index on exact ties) and the distance
        at that index. Shape: (Nx, D), (Ny, D) -> (Nx,), (Nx,).
        """
        idx = np.empty(len(x), dtype=np.int64)
        dist = np.empty(len(x), dtype=np.float64)
        for s in range(0, len(x), chunk):
            xc = x[s : s + chunk]
            keys, _, tol = self.approx_keys(xc, y)
            kmin = keys.min(axis=1).astype(np.float64)
            # Any column whose approximate key is within twice the bound of the row minimum
            # can hold the exact minimum; all of them are re-checked exactly.
            band = np.nextafter((kmin + 2.0 * tol).astype(keys.dtype), np.inf)
            mask = keys <= band[:, None]
            single = np.count_nonzero(mask, axis=1) == 1
            # Rows with one candidate: the approximate argmin is the exact one.
            rows1 = np.flatnonzero(single)
            best = np.argmin(keys[rows1], axis=1) if len(rows1) else np.zeros(0, np.int64)
            idx[s + rows1] = best
            dist[s + rows1] = self.exact(xc[rows1], y[best])
            multi = np.flatnonzero(~single)
            if len(multi):
                rr, c = np.nonzero(mask[multi])
                r = multi[rr]
                d = self.exact(xc[r], y[c])
                order = np.lexsort((c, d, r))
                r, c, d = r[order], c[order], d[order]
                first = np.ones(len(r), dtype=bool)
                first[1:] = r[1:] != r[:-1]
                idx[s + r[first]] = c[first]
                dist[s + r[first]] = d[first]
        return idx, dist


DISTANCES: dict[str, type[Distance]] = {}


def register(cls: type[Distance]) -> type[Distance]:
    """Class decorator adding a distance to :data:`DISTANCES` under ``cls.name``."""
    DISTANCES[cls.name] = cls
    return cls


def get_distance(name: str) -> Distance:
    """Instantiate a registered distance (``L2`` or ``L1``); ValueError for unknown names."""
    try:
        return DISTANCES[name]()
    except KeyError:
        raise ValueError(f"unknown distance {name!r}; choose from {', '.join(DISTANCES)}") from None


def _seq_sum(terms: F64) -> F64:
    """Row sums accumulated left to right, like the scalar loop of scipy's C ``cdist``.

    Shape: (M, D) -> (M,).
    """
    if terms.shape[1] == 0:
        return np.zeros(terms.shape[0])
    acc = terms[:, 0].copy()
    for k in range(1, terms.shape[1]):
        acc += terms[:, k]
    return acc


@register
class L2(Distance):
    """Euclidean distance; keys are squared distances."""

    name = "L2"

    def rows(self, a: F32, b: F32) -> F32:
        out = np.empty(len(a), dtype=np.float32)
        for s in range(0, len(a), _ROW_CHUNK):
            # scipy's euclidean takes u - v in float32 and returns a float32 norm (BLAS nrm2,
            # accumulated in double by OpenBLAS): the float32 rounding of the exact norm.
            diff = (a[s : s + _ROW_CHUNK] - b[s : s + _ROW_CHUNK]).astype(np.float64)
            out[s : s + _ROW_CHUNK] = np.sqrt(np.einsum("ij,ij->i", diff, diff)).astype(np.float32)
        return out

    def exact(self, a: F32, b: F32) -> F64:
        diff = a.astype(np.float64) - b.astype(np.float64)
        return np.sqrt(_seq_sum(diff * diff))

    def approx_keys(self, x: F32, y: F32) -> tuple[NDArray[np.float32], F64, F64]:
        x32 = np.ascontiguousarray(x, dtype=np.float32)
        y32 = np.ascontiguousarray(y, dtype=np.float32)
        nx = np.einsum("ij,ij->i", x32.astype(np.float64), x32.astype(np.float64))
        ny = np.einsum("ij,ij->i", y32.astype(np.float64), y32.astype(np.float64))
        keys = x32 @ y32.T  # float32 GEMM: the only O(Nx Ny D) work
        keys *= -2.0
        keys += ny.astype(np.float32)[None, :]
        # float32 dot products of length D: |error| <= (D + 2) 2^-24 |x| |y| (worst case, far
        # above the typical error), plus the float32 rounding of ny and of the sum.
        u = 2.0**-24
        dim = max(x.shape[1], 1)
        ymax = float(np.sqrt(ny.max())) if len(ny) else 0.0
        xn = np.sqrt(nx)
        tol = 2.0 * (dim + 4) * u * xn * ymax + 3.0 * u * ymax * ymax + 1e-15 * (nx + ymax * ymax) + 1e-30
        return keys, nx, tol

    def key(self, d: F64) -> F64:
        return d * d


@register
class L1(Distance):
    """Manhattan (cityblock) distance; keys are distances."""

    name = "L1"

    def rows(self, a: F32, b: F32) -> F32:
        out = np.empty(len(a), dtype=np.float32)
        for s in range(0, len(a), _ROW_CHUNK):
            # scipy's cityblock: float32 difference, float32 numpy sum.
            diff = np.abs(a[s : s + _ROW_CHUNK] - b[s : s + _ROW_CHUNK])
            out[s : s + _ROW_CHUNK] = diff.sum(axis=1, dtype=np.float32)
        return out

    def exact(self, a: F32, b: F32) -> F64:
        return _seq_sum(np.abs(a.astype(np.float64) - b.astype(np.float64)))

    def approx_keys(self, x: F32, y: F32) -> tuple[F64, F64, F64]:
        xt = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float64))
        yt = torch.from_numpy(np.ascontiguousarray(y, dtype=np.float64))
        keys = torch.cdist(xt, yt, p=1.0).numpy()
        nx = np.abs(x).sum(axis=1, dtype=np.float64)
        ymax = float(np.abs(y).sum(axis=1, dtype=np.float64).max()) if len(y) else 0.0
        tol = 1e-13 * (nx + ymax) + 1e-30
        return keys, np.zeros(len(x)), tol

    def key(self, d: F64) -> F64:
        return d
