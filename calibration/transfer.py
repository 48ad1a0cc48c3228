"""Bias → frequency transfer calibration: per-channel sweep, monotone fit and its inverse,
installed into the substrate so ``set_frequencies`` uses it, saved with the device.

Each channel's bias is swept over its limits with the other channels at their safe values,
and the free-running frequency read with the frequency counter (``counter_reads`` reads
averaged). A ring oscillator's f ∝ (V − V_th)^α/V (Sakurai & Newton 1990) and a heated
resonator's f(P = V²/R) are monotone, so the fit is monotone: pool-adjacent-violators
isotonic regression (removes counter noise that would break monotonicity), then a
shape-preserving piecewise-cubic Hermite interpolant (PCHIP, Fritsch & Carlson, SIAM J.
Numer. Anal. 17(2), 1980) through it; the inverse is the PCHIP of the swapped points.
Accuracy is checked on bias points midway between the sweep points (held out of the fit).

Crosstalk (heaters: ΔT = r_th·X·P, docs/design.md §5) is measured as photonics labs do —
one heater stepped at a time, every ring's frequency read (Milanizadeh et al., "Canceling
thermal cross-talk effects in photonic integrated circuits", J. Lightw. Technol. 37(4),
2019) — and fitted in the power domain: ring i's change against ring j's own shift y_j (∝
heater j's power) by least squares through the origin gives X̂_ij (:func:`crosstalk_column`),
entries kept above ``crosstalk_significance`` standard errors (none on a CMOS array: no
matrix). Slow drift (ambient temperature, ~0.1 model units over a 140-channel calibration)
would enter every entry and be summed over all aggressors by the map; each sweep point is
therefore bracketed by reads of the all-rest state, and changes are taken against their
mean. Own curves are the changes on top of the rest state averaged over the calibration.

Without a frequency counter the curve comes from the phase response
(:func:`transfer_from_phases`): with couplings K̂ identified by the symmetry calibration,
the locked-state equations give every channel's frequency relative to the reference from
one phase read; each channel is swept over the bias range where lock holds.

:func:`install_transfer` assigns the fitted :class:`~phasegrad_hw.device.frequency_map.TransferMap`
to ``substrate.frequency_map``: ``set_frequencies`` then sets ``set_biases(map.bias(ω))``.
"""

from __future__ import annotations

import logging
import time

import numpy as np
from pydantic import Field

from phasegrad_hw.calibration.common import Progress, no_progress, thresholds
from phasegrad_hw.config import StrictModel
from phasegrad_hw.device.frequency_map import ChannelCurve, TransferMap
from phasegrad_hw.device.substrate import Capability, OscillatorSubstrate
from phasegrad_hw.errors import ConfigError, DeviceError, LockLostError
from phasegrad_hw.physics import Array

log = logging.getLogger(__name__)


def isotonic(y: Array, increasing: bool = True) -> Array:
    """Least-squares monotone fit of ``y`` (equal weights) by pool-adjacent-violators."""
    z = np.asarray(y, dtype=np.float64) * (1.0 if increasing else -1.0)
    vals: list[float] = []
    wts: list[int] = []
    for v in z:
        vals.append(float(v))
        wts.append(1)
        while len(vals) > 1 and vals[-2] > vals[-1]:
            w = wts[-2] + wts[-1]
            m = (vals[-2] * wts[-2] + vals[-1] * wts[-1]) / w
            vals[-2:] = [m]
            wts[-2:] = [w]
    out = np.repeat(vals, wts)
    return out * (1.0 if increasing else -1.0)


def install_transfer(sub: OscillatorSubstrate, tmap: TransferMap) -> None:
    """Make ``sub.set_frequencies`` map ω → bias through ``tmap`` (a calibrated
    :class:`~phasegrad_hw.device.frequency_map.TransferMap`)."""
    if len(tmap.channels) != sub.model.n:
        raise ConfigError(f"transfer map: {len(tmap.channels)} channels, device has {sub.model.n}")
    sub.frequency_map = tmap
    log.info("transfer map installed on %s", sub.model.name)


class TransferConfig(StrictModel):
    """``points`` sweep points per channel over its bias limits (plus ``points − 1``
    held-out midpoints when ``validate``), ``counter_reads`` counter reads averaged per
    point, ``install`` the fitted map into the substrate afterwards."""

    points: int = Field(default=25, ge=4, le=10_000)
    counter_reads: int = Field(default=4, ge=1, le=1000)
    validate_fit: bool = True
    install: bool = True
    phase_averages: int = Field(default=1024, ge=1)  # reads per point without a counter
    crosstalk_significance: float = Field(default=5.0, gt=0.0)  # kept above this × std error


class TransferResult(StrictModel):
    """The map, per-channel held-out errors (relative to each span), pass/fail."""

    map: TransferMap
    max_error: float | None
    passed: bool
    duration_s: float


async def _read(sub: OscillatorSubstrate, reads: int) -> Array:
    """Every channel's counter frequency (N,), ``reads`` reads averaged."""
    out = np.asarray(await sub.read_frequencies(), dtype=np.float64)
    for _ in range(reads - 1):
        out = out + np.asarray(await sub.read_frequencies())
    return out / reads


async def _sweep(sub: OscillatorSubstrate, k: int, grid: Array, reads: int) -> tuple[Array, Array]:
    """Channel k stepped through ``grid`` with every other channel at rest (its safe bias),
    the all-rest state read before each point and after the last. Returns the change of every
    channel's frequency (points, N) against the rest state at the same moment (the mean of
    the two bracketing rest reads: slow drift cancels to first order) and the rest reads
    (points + 1, N)."""
    safe = sub.model.safe_biases()
    await sub.set_biases(safe)
    rest = [await _read(sub, reads)]
    step = []
    for v in grid:
        b = safe.copy()
        b[k] = v
        await sub.set_biases(b)
        step.append(await _read(sub, reads))
        await sub.set_biases(safe)
        rest.append(await _read(sub, reads))
    r = np.stack(rest)
    return np.stack(step) - 0.5 * (r[:-1] + r[1:]), r


def fit_channel(bias: Array, omega: Array) -> ChannelCurve:
    """Monotone fit of one channel's own sweep (direction from the end points)."""
    inc = bool(omega[-1] >= omega[0])
    y = isotonic(omega, inc)
    # strict monotonicity for the inverse: break ties by a ramp far below counter resolution
    span = float(abs(y[-1] - y[0])) or 1.0
    y = y + (1.0 if inc else -1.0) * 1e-9 * span * np.arange(len(y))
    return ChannelCurve(bias=bias.tolist(), omega=y.tolist(), increasing=inc)


def crosstalk_column(change: Array, k: int, significance: float) -> Array:
    """Column k of X̂ from channel k's sweep: every channel's frequency change (points, N)
    against k's own shift y, by least squares through the origin (X̂_ik = Σ Δ_i y / Σ y²,
    so X̂_kk = 1); an entry is kept only where it exceeds ``significance`` times its standard
    error (from the fit's residuals: counter noise and what drift the bracketing leaves)."""
    y = change[:, k]
    yy = float(y @ y)
    if yy == 0.0:
        col = np.zeros(change.shape[1])
        col[k] = 1.0
        return col
    col = change.T @ y / yy
    resid = change - np.outer(y, col)
    se = np.sqrt((resid * resid).sum(axis=0) / max(len(y) - 1, 1) / yy)
    out: Array = np.where(np.abs(col) > significance * se, col, 0.0)
    out[k] = 1.0
    return out


async def calibrate_transfer(
    sub: OscillatorSubstrate,
    cfg: TransferConfig | None = None,
    progress: Progress = no_progress,
    *,
    couplings: Array | None = None,
) -> TransferResult:
    """Sweep, fit, validate and (optionally) install every channel's transfer curve and the
    crosstalk matrix: by the frequency counter, or — without one — from the phase response
    with the identified ``couplings`` (N, N) K̂ (:func:`transfer_from_phases`)."""
    cfg = cfg or TransferConfig()
    if Capability.FREQUENCY_COUNTER not in sub.capabilities:
        if couplings is None:
            raise DeviceError(
                f"{sub.model.name}: transfer calibration needs a frequency counter "
                "(capability 'frequency_counter') or identified couplings (run the symmetry "
                "calibration first); this device has neither"
            )
        return await transfer_from_phases(sub, couplings, cfg, progress)
    t0 = time.perf_counter()
    model = sub.model
    lim = model.limits.bias
    n = model.n
    safe = model.safe_biases()
    grids: list[Array] = []
    changes: list[Array] = []
    held_out: list[tuple[Array, Array]] = []
    rest: list[Array] = []
    try:
        for k in range(n):
            progress(f"bias sweep channel {k + 1}/{n}", k / n)
            c = lim.channel(k)
            grids.append(np.linspace(c.min, c.max, cfg.points))
            change, r = await _sweep(sub, k, grids[-1], cfg.counter_reads)
            changes.append(change)
            rest.append(r)
            if cfg.validate_fit:
                mid = 0.5 * (grids[-1][1:] + grids[-1][:-1])
                change, r = await _sweep(sub, k, mid, cfg.counter_reads)
                held_out.append((mid, change))
                rest.append(r)
    finally:
        await sub.set_biases(safe)
    at_rest = np.concatenate(rest).mean(axis=0)  # the rest state averaged over the calibration
    channels = [
        fit_channel(g, at_rest[k] + ch[:, k])
        for k, (g, ch) in enumerate(zip(grids, changes, strict=True))
    ]
    X = np.stack(
        [crosstalk_column(ch, k, cfg.crosstalk_significance) for k, ch in enumerate(changes)],
        axis=1,
    )
    coupled = bool(np.any(X != np.eye(n)))
    log.info(
        "%s: %d crosstalk entries kept (largest %.3g)",
        model.name,
        int(np.count_nonzero(X - np.eye(n))),
        float(np.abs(X - np.eye(n)).max()),
    )
    tmap = TransferMap(
        device=model.name,
        unit=lim.unit,
        channels=channels,
        crosstalk_matrix=X.tolist() if coupled else None,
        rest_bias=safe.tolist() if coupled else None,
    )
    if cfg.validate_fit:
        at_safe = tmap.frequency(safe)
        for k, (mid, meas) in enumerate(held_out):
            b = np.tile(safe, (len(mid), 1))
            b[:, k] = mid
            pred = np.stack([tmap.frequency(row) for row in b]) - at_safe
            curve = channels[k]
            span = abs(curve.omega[-1] - curve.omega[0]) or 1.0
            curve.error = float(np.abs(pred - meas).max() / span)
            curve.holdout_bias = mid.tolist()
            curve.holdout_residual = (pred[:, k] - meas[:, k]).tolist()
    return _finish(sub, tmap, cfg.install, progress, t0)


async def transfer_from_phases(
    sub: OscillatorSubstrate,
    couplings: Array,
    cfg: TransferConfig | None = None,
    progress: Progress = no_progress,
) -> TransferResult:
    """Transfer curves without a frequency counter (see the module docstring).

    The array locks at a common Ω: ω_i + Σ_j K_ij H_o(θ_j − θ_i) = Ω, so one phase read
    gives every frequency relative to the reference, u_i = ω_i − ω_ref =
    F_ref − F_i, F_i = Σ_j K̂_ij H_o(θ_j − θ_i). Channel k ≠ ref is swept from its safe bias
    outwards in both directions until lock is lost; ω_k(V) = u_k(V) (the baseline
    ω_ref(safe) = 0 — only differences matter in the rotating frame). For the reference,
    ω_ref(V) = mean_m [u_m(safe) − u_m(V)]. The map covers the lockable bias range only;
    accuracy is limited by that of K̂ (iterate with the symmetry calibration, whose
    probes then use this map).
    """
    from phasegrad_hw.calibration.common import odd_coupling, read_locked

    cfg = cfg or TransferConfig()
    t0 = time.perf_counter()
    model = sub.model
    ref = model.roles.reference
    K = np.where(np.isfinite(couplings), couplings, 0.0)
    Ho = odd_coupling(model)
    safe = model.safe_biases()
    others = np.arange(model.n) != ref

    async def rel() -> Array | None:
        try:
            rd = await read_locked(
                sub, min(cfg.phase_averages, model.limits.max_averages), retries=1
            )
        except LockLostError:
            return None
        th = rd.phases
        F = (K * Ho.value(th[None, :] - th[:, None])).sum(-1)
        return np.asarray(F[ref] - F)

    channels: list[ChannelCurve] = []
    try:
        await sub.set_biases(safe)
        u0 = await rel()
        if u0 is None:
            raise LockLostError(f"{model.name}: not locked at the safe biases")

        async def value(k: int, v: float) -> float | None:
            b = safe.copy()
            b[k] = v
            await sub.set_biases(b)
            u = await rel()
            if u is None:
                return None
            return float(u[k]) if k != ref else float(np.mean((u0 - u)[others]))

        for k in range(model.n):
            progress(f"phase-response sweep channel {k + 1}/{model.n}", k / model.n)
            c = model.limits.bias.channel(k)
            grid = np.linspace(c.min, c.max, 2 * cfg.points - 1)  # even: fit, odd: held out
            start = int(np.argmin(np.abs(grid - safe[k])))
            got: dict[int, float] = {}
            for step in (1, -1):
                g = start
                while 0 <= g < len(grid):
                    val = await value(k, float(grid[g]))
                    if val is None:
                        break
                    got[g] = val
                    g += step
                await sub.set_biases(safe)
            idx = sorted(got)
            fit_idx = [g for g in idx if g % 2 == 0]
            hold = [
                g
                for g in idx
                if g % 2 == 1 and min(fit_idx, default=g) < g < max(fit_idx, default=g)
            ]
            if len(fit_idx) < 4:
                raise LockLostError(f"channel {k}: lock holds over fewer than 4 sweep points")
            curve = fit_channel(grid[fit_idx], np.array([got[g] for g in fit_idx]))
            if cfg.validate_fit and hold:
                pred = curve.forward()(grid[hold])
                meas = np.array([got[g] for g in hold])
                span = abs(curve.omega[-1] - curve.omega[0]) or 1.0
                curve.error = float(np.abs(pred - meas).max() / span)
                curve.holdout_bias = grid[hold].tolist()
                curve.holdout_residual = (pred - meas).tolist()
            channels.append(curve)
    finally:
        await sub.set_biases(safe)
    tmap = TransferMap(
        device=model.name, unit=model.limits.bias.unit, channels=channels, source="phase_response"
    )
    return _finish(sub, tmap, cfg.install, progress, t0)


def _finish(
    sub: OscillatorSubstrate, tmap: TransferMap, install: bool, progress: Progress, t0: float
) -> TransferResult:
    """The result of a transfer calibration: the worst channel's fit error against the device's
    threshold; with ``install`` the map becomes ``sub.frequency_map``."""
    errs = [c.error for c in tmap.channels if c.error is not None]
    max_err = max(errs) if errs else None
    if install:
        install_transfer(sub, tmap)
    progress("transfer done", 1.0)
    return TransferResult(
        map=tmap,
        max_error=max_err,
        passed=bool(max_err is None or max_err <= thresholds(sub.model).max_transfer_error),
        duration_s=time.perf_counter() - t0,
    )
