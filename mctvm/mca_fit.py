"""MCALIB regression: digits lost (K) and t_min from Monte Carlo Arithmetic trials.

This is a numpy/scipy port of the MCALIB R script (``R/mca.r`` in
github.com/mfrechtling/mcalib) that the MCDA paper (appendix A.1) uses.  It
reproduces that script on its own reference data (``mcalib-linpack.res``):
K = 5.14556, 95 % CI half-width 0.01353642, t_min = 13, intercept 1.549679.

The model, for trials run at virtual precisions t = 1..t_max:

* Theta_t = s_t / |mu_t|, the relative standard deviation of the trials at t,
  with ``s_t`` the *sample* standard deviation (n - 1 denominator, R's ``sd``);
* K_t = log2(Theta_t) + t, the binary digits lost at t (paper eq. 6);
* log10(Theta_t) = m t + c with the slope fixed at m = -log10(2); the intercept
  c minimises sum_t 0.75^(t_max - t) * huber_k(e_t), e_t = log10(Theta_t) - (m t + c),
  k = 1.345 * sd(e) (sample sd of the residuals of *all* kept t, outliers
  included; it does not depend on c, so the objective is convex in c);
  the search interval is c0 -/+ 2 log10(2) with c0 = log10(Theta_tmax) - m t_max;
* a t is an outlier when |e_t| > log10(sqrt(2)) (half a binary digit);
  t_min is one above the highest outlier, scanning down from t_max - 1 (the
  R script's ``find.tmin``: t_max itself is never tested); with no outlier,
  t_min is the first t;
* K = mean(K_t for t >= t_min) and its 95 % CI half-width is
  qnorm(0.975) * sd(K_t) / sqrt(n) (normal quantile, sample sd over the
  K_t values, R's ``get.int``).

Where the paper's text and the R script differ, this follows the script (it
is what the paper ran, and only it reproduces the reference numbers): the
paper's Algorithm 1 takes t_min as the lowest t that is *not* an outlier
(that gives t_min = 1 on the reference data), and its eq. 7 divides the sum
of K_t by t_max - t_min rather than by their count (K = 5.2742 there).  The
script's optimize() stops at tol ~1.2e-4; the bounded Brent search here is
run to 1e-10, which agrees with the script's intercept to 1e-7.

The exponent convention of the noise that produced the trials (paper 2^(E-t),
Verificarlo 2^(E+1-t), MCALIB 2^(E+2-t)) shifts K by whole bits; the fit does
not change K for it but carries the label through to every report.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from statistics import NormalDist
from typing import Mapping, Sequence

import numpy as np

__all__ = [
    "DEFAULT_CONVENTION",
    "HUBER_K",
    "GAMMA",
    "SLOPE",
    "OUTLIER_MARGIN",
    "MCAFit",
    "read_mcalib",
    "relative_std",
    "fit",
    "fit_rsd",
    "fit_from_file",
]

DEFAULT_CONVENTION = "paper: 2^(E-t)"
HUBER_K = 1.345  # Huber tuning constant, in units of sd(residuals)
GAMMA = 0.75  # weight 0.75^(t_max - t)
SLOPE = -math.log10(2.0)  # fixed slope of log10(Theta) against t
OUTLIER_MARGIN = math.log10(math.sqrt(2.0))  # half a binary digit, in log10
_Z975 = NormalDist().inv_cdf(0.975)  # R's qnorm(0.975) = 1.959964
_XATOL = 1e-10  # Brent tolerance on the intercept (R's optimize uses ~1.2e-4)


# --------------------------------------------------------------------------- reading


def read_mcalib(path, series: str | None = None):
    """Read an MCALIB result file (CSV ``Type, t, x`` with a header line).

    Blank lines are skipped; spaces after commas are allowed.  ``x`` may be
    ``NA``/``nan``/``inf`` (such trials make that t's statistics undefined and
    it is dropped by the fit, as in R).  If the file holds more than one
    ``Type``, pass ``series`` to pick one.

    Returns ``(t_values, samples)``: the sorted distinct t as an int array and
    a dict mapping each t to a float64 array of its trials.  Raises
    ``ValueError`` naming the file and line for a malformed row.
    """
    path = Path(path)
    with path.open("r", encoding="utf-8") as fh:
        lines = fh.read().splitlines()

    def where(lineno: int) -> str:
        return f"{path}:{lineno}"

    header_at = next((i for i, ln in enumerate(lines) if ln.strip()), None)
    if header_at is None:
        raise ValueError(f"{path}: empty file; expected a header line 'Type, t, x'")
    header = [h.strip().strip('"').lower() for h in lines[header_at].split(",")]
    if header != ["type", "t", "x"]:
        raise ValueError(
            f"{where(header_at + 1)}: expected the header 'Type, t, x', "
            f"got {lines[header_at]!r}"
        )
    rows: dict[str, dict[int, list[float]]] = {}
    for n, line in enumerate(lines[header_at + 1 :], start=header_at + 2):
        if not line.strip():
            continue
        fields = [f.strip().strip('"') for f in line.split(",")]
        if len(fields) != 3:
            raise ValueError(
                f"{where(n)}: expected 3 comma-separated fields 'Type, t, x', "
                f"got {len(fields)}: {line!r}"
            )
        kind, t_txt, x_txt = fields
        try:
            t_f = float(t_txt)
        except ValueError:
            t_f = math.nan
        if not (math.isfinite(t_f) and t_f.is_integer() and t_f >= 1):
            raise ValueError(
                f"{where(n)}: t must be a positive integer, got {t_txt!r} in {line!r}"
            )
        try:
            x = math.nan if x_txt.upper() == "NA" else float(x_txt)
        except ValueError:
            raise ValueError(
                f"{where(n)}: x must be a number, got {x_txt!r} in {line!r}"
            ) from None
        rows.setdefault(kind, {}).setdefault(int(t_f), []).append(x)
    if not rows:
        raise ValueError(f"{path}: no data rows after the header")
    if series is None:
        if len(rows) > 1:
            raise ValueError(
                f"{path}: holds several series {sorted(rows)}; pass series=... to pick one"
            )
        series = next(iter(rows))
    if series not in rows:
        raise ValueError(f"{path}: no series {series!r}; present: {sorted(rows)}")
    data = rows[series]
    t_values = np.array(sorted(data), dtype=np.int64)
    samples = {int(t): np.asarray(data[t], dtype=np.float64) for t in t_values}
    return t_values, samples


# --------------------------------------------------------------------------- statistics


def relative_std(samples: Mapping[int, Sequence[float]]):
    """Per-t relative standard deviation and digits lost.

    Theta_t = s / |mu| with ``s`` the sample standard deviation (ddof=1, R's
    ``sd``; the population sd gives K = 5.14486 on the reference data instead
    of 5.14556), and K_t = log2(Theta_t) + t (paper eq. 6; positive = digits
    lost).  As in the R script, a t whose statistics are undefined (fewer than
    2 trials, non-finite values, sd = 0, or mean = 0) is left out.

    Returns ``(t, rsd, k_t)`` as arrays sorted by t.
    """
    ts, rsds = [], []
    for t in sorted(samples):
        x = np.asarray(samples[t], dtype=np.float64)
        if x.size < 2 or not np.all(np.isfinite(x)):
            continue
        mu = float(np.mean(x))
        sd = float(np.std(x, ddof=1))
        if not (sd > 0.0 and mu != 0.0):
            continue
        ts.append(int(t))
        rsds.append(sd / abs(mu))
    t_arr = np.asarray(ts, dtype=np.int64)
    rsd = np.asarray(rsds, dtype=np.float64)
    return t_arr, rsd, np.log2(rsd) + t_arr


# --------------------------------------------------------------------------- fit


@dataclass
class MCAFit:
    """Result of the MCALIB regression (one row per kept t)."""

    t: np.ndarray  # virtual precisions kept
    rsd: np.ndarray  # Theta_t (sample sd / |mean|)
    k_t: np.ndarray  # log2(Theta_t) + t
    intercept: float  # c in log10(Theta) = slope * t + c
    slope: float  # fixed at -log10(2)
    t_min: int
    digits_lost: float  # K: mean of k_t over t >= t_min
    ci_halfwidth: float  # 95 % CI half-width of K (normal quantile)
    outlier: np.ndarray  # |residual| > log10(sqrt 2)
    weights: np.ndarray  # 0.75^(t_max - t)
    residual: np.ndarray | None = None  # log10(Theta_t) - (slope t + c)
    huber_k: float = math.nan  # 1.345 * sd(residual)
    dropped: tuple = ()  # t values left out (undefined statistics)
    convention: str = DEFAULT_CONVENTION

    @property
    def used(self) -> np.ndarray:
        """Mask of the t that enter K (t >= t_min)."""
        return self.t >= self.t_min

    @property
    def predicted(self) -> np.ndarray:
        """The regression line, as a relative standard deviation."""
        return 10.0 ** (self.slope * self.t + self.intercept)

    def as_table(self) -> list[dict]:
        """One dict per t: t, rsd, log10_rsd, predicted, residual, k_t, weight, outlier, used."""
        pred = self.slope * self.t + self.intercept
        log_rsd = np.log10(self.rsd)
        return [
            {
                "t": int(self.t[i]),
                "rsd": float(self.rsd[i]),
                "log10_rsd": float(log_rsd[i]),
                "predicted": float(10.0 ** pred[i]),
                "residual": float(log_rsd[i] - pred[i]),
                "k_t": float(self.k_t[i]),
                "weight": float(self.weights[i]),
                "outlier": bool(self.outlier[i]),
                "used": bool(self.t[i] >= self.t_min),
            }
            for i in range(len(self.t))
        ]

    def summary(self) -> str:
        """One line: K with its CI, t_min, the line, and the convention."""
        return (
            f"K = {self.digits_lost:.5f} +/- {self.ci_halfwidth:.5f} digits lost "
            f"(95% CI), t_min = {self.t_min}, log10(rsd) = {self.slope:.6f} t "
            f"+ {self.intercept:.6f}; convention {self.convention}"
        )

    def __str__(self) -> str:
        head = f"{'t':>4} {'rsd':>12} {'line':>12} {'resid':>8} {'K_t':>8} {'weight':>8}  note"
        out = [head]
        for r in self.as_table():
            note = "outlier" if r["outlier"] else ""
            if not r["used"]:
                note = (note + " " if note else "") + "(below t_min)"
            out.append(
                f"{r['t']:>4} {r['rsd']:>12.4e} {r['predicted']:>12.4e} "
                f"{r['residual']:>8.4f} {r['k_t']:>8.4f} {r['weight']:>8.4g}  {note}".rstrip()
            )
        if self.dropped:
            out.append(f"dropped t (undefined statistics): {list(self.dropped)}")
        out.append(self.summary())
        return "\n".join(out)


def _huber(e: np.ndarray, k: float) -> np.ndarray:
    a = np.abs(e)
    return np.where(a <= k, 0.5 * e * e, k * a - 0.5 * k * k)


def _fit_intercept(t: np.ndarray, y: np.ndarray, w: np.ndarray,
                   slope: float) -> tuple[float, float]:
    """Weighted-Huber intercept by bounded Brent; returns (intercept, huber k)."""
    base = y - slope * t  # residual = base - c
    k = HUBER_K * float(np.std(base, ddof=1)) if len(t) > 1 else 0.0
    if not k > 0.0:
        # All residuals equal (or one point): the Huber loss with k = 0 is flat,
        # but every k > 0 has the common value as its exact minimiser.
        return float(np.mean(base)), k
    from scipy import optimize  # imported lazily: scipy is slow to import

    c0 = base[-1]
    lo, hi = c0 + 2.0 * slope, c0 - 2.0 * slope  # c0 -/+ 2 log10(2)
    res = optimize.minimize_scalar(
        lambda c: float(np.sum(w * _huber(base - c, k))),
        bounds=(lo, hi),
        method="bounded",
        options={"xatol": _XATOL},
    )
    return float(res.x), k


def _find_tmin(t: np.ndarray, resid: np.ndarray) -> int:
    # R find.tmin: for i in (len-1):1, first |residual| > margin -> t[i+1].
    for i in range(len(t) - 2, -1, -1):
        if abs(resid[i]) > OUTLIER_MARGIN:
            return int(t[i + 1])
    return int(t[0])


def fit_rsd(t, rsd, *, max_t: int | None = None, convention: str = DEFAULT_CONVENTION,
            dropped: Sequence[int] = ()) -> MCAFit:
    """MCALIB fit from per-t relative standard deviations (see the module docstring).

    ``t`` and ``rsd`` are parallel arrays (rsd > 0); ``max_t`` keeps only
    t <= max_t.  Raises ``ValueError`` if no t is left.
    """
    t = np.asarray(t, dtype=np.int64)
    rsd = np.asarray(rsd, dtype=np.float64)
    if t.shape != rsd.shape or t.ndim != 1:
        raise ValueError(
            f"t and rsd must be 1-D arrays of the same length, got {t.shape} and {rsd.shape}"
        )
    order = np.argsort(t, kind="stable")
    t, rsd = t[order], rsd[order]
    if max_t is not None:
        keep = t <= max_t
        t, rsd = t[keep], rsd[keep]
    if t.size == 0:
        raise ValueError("no virtual precision t with a defined relative standard deviation to fit"
                         + (f" at t <= {max_t}" if max_t is not None else ""))
    if np.any(~np.isfinite(rsd)) or np.any(rsd <= 0):
        raise ValueError("rsd must be finite and > 0 for every t")
    if len(np.unique(t)) != len(t):
        raise ValueError(f"duplicate t values in {t.tolist()}")
    y = np.log10(rsd)
    k_t = np.log2(rsd) + t
    weights = GAMMA ** (t[-1] - t).astype(np.float64)
    intercept, huber_k = _fit_intercept(t, y, weights, SLOPE)
    resid = y - (SLOPE * t + intercept)
    t_min = _find_tmin(t, resid)
    used = k_t[t >= t_min]
    k_mean = float(np.mean(used))
    if used.size > 1:
        ci = float(_Z975 * np.std(used, ddof=1) / math.sqrt(used.size))
    else:
        ci = math.nan
    return MCAFit(
        t=t, rsd=rsd, k_t=k_t, intercept=intercept, slope=SLOPE, t_min=t_min,
        digits_lost=k_mean, ci_halfwidth=ci, outlier=np.abs(resid) > OUTLIER_MARGIN,
        weights=weights, residual=resid, huber_k=huber_k,
        dropped=tuple(int(x) for x in dropped), convention=convention,
    )


def fit(t_values, samples: Mapping[int, Sequence[float]], *, max_t: int | None = None,
        convention: str = DEFAULT_CONVENTION) -> MCAFit:
    """MCALIB fit of the trials ``samples[t]`` for each t in ``t_values``.

    t with undefined statistics (see ``relative_std``) are left out and listed
    in ``MCAFit.dropped``; ``max_t`` keeps only t <= max_t; ``convention`` is
    a label carried into the result and its report.
    """
    wanted = [int(t) for t in t_values if max_t is None or int(t) <= max_t]
    missing = [t for t in wanted if t not in samples]
    if missing:
        raise ValueError(f"no samples for t = {missing}; samples has t = {sorted(samples)}")
    t, rsd, _ = relative_std({t: samples[t] for t in wanted})
    dropped = sorted(set(wanted) - set(t.tolist()))
    return fit_rsd(t, rsd, max_t=max_t, convention=convention, dropped=dropped)


def fit_from_file(path, *, series: str | None = None, max_t: int | None = None,
                  convention: str = DEFAULT_CONVENTION) -> MCAFit:
    """``fit(*read_mcalib(path))`` with the same options."""
    t_values, samples = read_mcalib(path, series=series)
    return fit(t_values, samples, max_t=max_t, convention=convention)
