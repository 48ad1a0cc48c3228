"""Stability calibration: lock check, per-edge phase margins, the smallest eigenvalue of the
identified reduced Laplacian, and the lock range per edge by a detuning sweep.

Physics (docs/design.md §2): a locked state is stable iff the reduced Laplacian −Ã of the phases
relative to the reference (J_ij = K_ij H'(θ_j − θ_i), Ã_ij = J_ij − J_ref,j, see
:func:`phasegrad_hw.calibration.symmetry.relative_matrix`) has eigenvalues with positive
real part (for symmetric K they are the non-zero eigenvalues of the graph Laplacian); for H = sin a
sufficient condition on a connected graph is |Δθ_ij| < π/2 on every edge, so π/2 − |Δθ_ij|
is each edge's phase margin. The smallest eigenvalue λ_min is the relaxation rate of the
slowest mode (settling ∝ 1/λ_min) and shrinks to 0 at the locking edge (a saddle-node).

* Lock check: ``reads`` consecutive reads at the operating point; a slip is a read flagged
  unlocked or a wrapped change between consecutive reads above ``slip_rad``; drift is the
  least-squares slope of the unwrapped phases against the read index (rad/read) and against
  the timestamp (rad/s, when the reads span measurable time).
* Lock range: for every edge, the non-reference end is detuned (ω_k ± t, model units) in
  steps of ``detune_step`` and then by bisection until lock is lost (an unlocked read, a
  slip between two reads at one setting, or a jump of more than ``jump_rad`` from the last
  locked state, i.e. a basin change); the range is bounded by the ω limits where lock
  holds to the limit. Sweeps are shared between edges with the same detuned end. The
  operating point is restored after every sweep and verified at the end.
"""

from __future__ import annotations

import logging
import time

import numpy as np
from pydantic import Field

from phasegrad_hw.calibration.common import (
    Progress,
    edge_dtheta,
    no_progress,
    non_reference,
    operating_point,
    read_locked,
    thresholds,
)
from phasegrad_hw.calibration.symmetry import ProbeData, measure_probes
from phasegrad_hw.config import StrictModel
from phasegrad_hw.device.substrate import OscillatorSubstrate, PhaseReading
from phasegrad_hw.errors import LimitError, LockLostError
from phasegrad_hw.physics import Array, wrap

log = logging.getLogger(__name__)


class StabilityConfig(StrictModel):
    """Options: ``reads``×``averages`` for the lock check; ``slip_rad`` slip threshold;
    detuning sweep ``detune_step`` (model units), ``bisect_steps``, ``jump_rad``,
    ``sweep_averages``; ``delta``/``probe_averages`` for the Laplacian when no symmetry
    result is given; operating point as in :class:`SymmetryConfig`."""

    reads: int = Field(default=20, ge=3, le=10_000)
    averages: int = Field(default=64, ge=1)
    slip_rad: float = Field(default=0.5, gt=0.0, le=3.2)
    sweep: bool = True
    sweep_nodes: list[int] | None = None  # detune only these oscillators (default: all ends)
    detune_step: float = Field(default=0.25, gt=0.0)
    bisect_steps: int = Field(default=5, ge=0, le=30)
    jump_rad: float = Field(default=1.0, gt=0.0, le=3.2)
    sweep_averages: int = Field(default=16, ge=1)
    delta: float = Field(default=0.1, gt=0.0, le=1.0)
    probe_averages: int = Field(default=256, ge=2)
    omega: list[float] | None = None
    amplitude: float | None = Field(default=None, gt=0.0)
    seed: int = 0


class EdgeStability(StrictModel):
    """One edge: Δθ = θ_j − θ_i (rad), margin π/2 − |Δθ| (rad), the detuned end, and the
    detuning range (model units, relative to the operating point) over which lock held;
    ``*_at_limit`` where the ω limit, not loss of lock, ended the sweep."""

    i: int
    j: int
    dtheta_rad: float
    margin_rad: float
    detuned: int | None = None
    detune_lo: float | None = None
    detune_hi: float | None = None
    lo_at_limit: bool = False
    hi_at_limit: bool = False


class StabilityResult(StrictModel):
    """Result of :func:`calibrate_stability`; ``passed`` against the device thresholds."""

    locked: bool
    slips: int
    reads: int
    drift_rad_per_read: list[float]
    drift_rad_per_s: list[float] | None
    max_drift_rad_per_read: float
    min_margin_rad: float
    min_eigenvalue: float
    eigenvalues: list[float]
    edges: list[EdgeStability]
    restored: bool
    passed: bool
    failures: list[str]
    omega: list[float]
    theta: list[float]
    duration_s: float


def _slips(phases: Array, locked: list[bool], slip_rad: float) -> int:
    steps = np.abs(wrap(np.diff(phases, axis=0)))
    return int((steps > slip_rad).any(axis=1).sum() + (~np.asarray(locked)).sum())


def _drift(phases: Array, stamps: Array) -> tuple[Array, Array | None]:
    """Slopes of the unwrapped phases (rad/read, rad/s)."""
    un = np.unwrap(phases, axis=0)
    k = np.arange(len(un), dtype=np.float64)
    kc = k - k.mean()
    per_read = (kc @ (un - un.mean(0))) / (kc @ kc)
    t = stamps - stamps.mean()
    per_s = None
    if float(t @ t) > 1e-12:
        per_s = (t @ (un - un.mean(0))) / (t @ t)
    return per_read, per_s


async def _lost(
    sub: OscillatorSubstrate, prev: PhaseReading, cfg: StabilityConfig
) -> tuple[bool, PhaseReading]:
    a = await sub.read_phases(cfg.sweep_averages)
    b = await sub.read_phases(cfg.sweep_averages)
    if not (a.locked and b.locked):
        return True, b
    if float(np.abs(wrap(b.phases - a.phases)).max()) > cfg.slip_rad:
        return True, b
    if float(np.abs(wrap(a.phases - prev.phases)).max()) > cfg.jump_rad:
        return True, b
    return False, b


async def _sweep_node(
    sub: OscillatorSubstrate,
    omega0: Array,
    base: PhaseReading,
    k: int,
    sign: float,
    cfg: StabilityConfig,
) -> tuple[float, bool]:
    """Largest detuning (≥ 0, model units) of oscillator k in direction ``sign`` that keeps
    lock, and whether the ω limit ended the sweep. Restores ``omega0`` on the way out."""
    lim = sub.model.limits.omega
    room = (lim.max - omega0[k]) if sign > 0 else (omega0[k] - lim.min)
    good, prev = 0.0, base
    bad: float | None = None
    try:
        t = cfg.detune_step
        while True:
            t_eff = min(t, room)
            w = omega0.copy()
            w[k] += sign * t_eff
            await sub.set_frequencies(w)
            lost, rd = await _lost(sub, prev, cfg)
            if lost:
                bad = t_eff
                break
            good, prev = t_eff, rd
            if t_eff >= room:
                return good, True
            t += cfg.detune_step
        for _ in range(cfg.bisect_steps):
            mid = 0.5 * (good + bad)
            w = omega0.copy()
            w[k] += sign * mid
            # come from the locked side so the warm state follows the branch
            await sub.set_frequencies(omega0.copy() + sign * good * np.eye(len(w))[k])
            await sub.read_phases(cfg.sweep_averages)
            await sub.set_frequencies(w)
            lost, rd = await _lost(sub, prev, cfg)
            if lost:
                bad = mid
            else:
                good, prev = mid, rd
        return good, False
    finally:
        await sub.set_frequencies(omega0)
        try:
            await read_locked(sub, cfg.sweep_averages)
        except LockLostError:
            log.warning("stability: oscillator %d did not re-lock at once after the sweep", k)


async def calibrate_stability(
    sub: OscillatorSubstrate,
    cfg: StabilityConfig | None = None,
    progress: Progress = no_progress,
    *,
    laplacian: Array | None = None,
) -> StabilityResult:
    """Lock check, margins, λ_min (of ``laplacian`` = −J̃ if given, e.g. from
    :meth:`SymmetryResult.identified_laplacian`, else measured) and lock ranges."""
    cfg = cfg or StabilityConfig()
    t0 = time.perf_counter()
    model = sub.model
    th = thresholds(model)
    edges = model.edge_index
    ref = model.roles.reference
    keep = non_reference(model)
    progress("operating point", 0.0)
    omega0, first = await operating_point(
        sub,
        None if cfg.omega is None else np.asarray(cfg.omega),
        amplitude=cfg.amplitude,
        seed=cfg.seed,
        averages=cfg.averages,
    )
    # -- lock check
    readings = [first]
    for r in range(cfg.reads - 1):
        progress(f"lock check read {r + 2}/{cfg.reads}", 0.05 + 0.15 * r / cfg.reads)
        readings.append(await sub.read_phases(cfg.averages))
    P = np.stack([rd.phases for rd in readings])
    stamps = np.array([rd.timestamp for rd in readings])
    slips = _slips(P, [rd.locked for rd in readings], cfg.slip_rad)
    per_read, per_s = _drift(P, stamps)
    theta = np.angle(np.exp(1j * P).mean(axis=0))
    d = edge_dtheta(theta, edges)
    margins = np.pi / 2 - np.abs(d)
    # -- identified reduced Laplacian
    progress("reduced Laplacian", 0.2)
    if laplacian is None:
        probes: ProbeData = await measure_probes(
            sub,
            omega0,
            cfg.delta * np.eye(len(keep)),
            cfg.probe_averages,
            progress=lambda m, f: progress("Laplacian " + m, 0.2 + 0.2 * f),
        )
        lap_c = np.asarray(probes.domega) @ np.linalg.inv(np.asarray(probes.dtheta))
        laplacian = lap_c + lap_c.sum(axis=0, keepdims=True)  # −Ã = (I + 11ᵀ)(ΔΩ ΔΘ⁻¹)
    eig = np.sort(np.linalg.eigvals(laplacian).real)
    # -- lock ranges
    edge_out = [
        EdgeStability(i=int(i), j=int(j), dtheta_rad=float(x), margin_rad=float(m))
        for (i, j), x, m in zip(edges, d, margins, strict=True)
    ]
    if cfg.sweep:
        nodes = sorted({int(j) if j != ref else int(i) for i, j in edges})
        if cfg.sweep_nodes is not None:
            nodes = [k for k in nodes if k in set(cfg.sweep_nodes)]
        ranges: dict[int, tuple[float, float, bool, bool]] = {}
        for c, k in enumerate(nodes):
            progress(f"detuning sweep oscillator {k}", 0.4 + 0.55 * c / len(nodes))
            hi, hi_lim = await _sweep_node(sub, omega0, first, k, 1.0, cfg)
            lo, lo_lim = await _sweep_node(sub, omega0, first, k, -1.0, cfg)
            ranges[k] = (-lo, hi, lo_lim, hi_lim)
        for e in edge_out:
            k = e.j if e.j != ref else e.i
            if k not in ranges:
                continue
            lo_v, hi_v, lo_l, hi_l = ranges[k]
            e.detuned, e.detune_lo, e.detune_hi = k, lo_v, hi_v
            e.lo_at_limit, e.hi_at_limit = lo_l, hi_l
    # -- restore and verify
    await sub.set_frequencies(omega0)
    restored = False
    try:
        back = await read_locked(sub, cfg.averages)
        restored = float(np.abs(wrap(back.phases - theta)).max()) < cfg.jump_rad
    except (LockLostError, LimitError):
        restored = False
    failures = []
    if slips:
        failures.append(f"{slips} phase slip(s) in {cfg.reads} reads")
    max_drift = float(np.abs(per_read).max())
    if max_drift > th.max_drift_rad_per_read:
        failures.append(f"drift {max_drift:.3g} rad/read > {th.max_drift_rad_per_read}")
    if float(margins.min()) < th.min_phase_margin_rad:
        worst = int(np.argmin(margins))
        failures.append(
            f"edge {edges[worst][0]}–{edges[worst][1]} phase margin "
            f"{margins[worst]:.3g} rad < {th.min_phase_margin_rad}"
        )
    if float(eig[0]) < th.min_eigenvalue:
        failures.append(f"smallest Laplacian eigenvalue {eig[0]:.3g} < {th.min_eigenvalue}")
    if not restored:
        failures.append("operating point not restored after the sweep")
    progress("stability done", 1.0)
    return StabilityResult(
        locked=all(rd.locked for rd in readings),
        slips=slips,
        reads=cfg.reads,
        drift_rad_per_read=per_read.tolist(),
        drift_rad_per_s=None if per_s is None else per_s.tolist(),
        max_drift_rad_per_read=max_drift,
        min_margin_rad=float(margins.min()),
        min_eigenvalue=float(eig[0]),
        eigenvalues=eig.tolist(),
        edges=edge_out,
        restored=restored,
        passed=not failures,
        failures=failures,
        omega=omega0.tolist(),
        theta=theta.tolist(),
        duration_s=time.perf_counter() - t0,
    )
