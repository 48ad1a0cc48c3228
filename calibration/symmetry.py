"""Coupling-symmetry calibration: phase response matrix, asymmetry, effective couplings per
edge, and a test for a non-odd coupling function.

Physics (docs/design.md §2). Near a locked state the reduced system (reference pinned) responds
to a change of centred frequencies as dθ̃ = R̃ dω̃^c with R̃ = −J̃⁻¹, where
J_ij = K_ij H'(θ_j − θ_i). With K symmetric and H odd, J and hence R̃ are symmetric; the
phase-gradient identity needs exactly that.

Measurement. Around an operating point ω₀, for each non-reference oscillator k the
frequencies are set to ω₀ ± δ(e_k − e_ref) (a paired perturbation: the mean, hence the
rotating frame, is unchanged) and the phases read with ``averages`` reads each. Where the
device has a frequency counter the actual frequency changes are read too (so transfer-curve
errors and heater crosstalk do not masquerade as asymmetry), and R̃ = ΔΘ · (ΔΩ^c)⁻¹ is the
centred-difference estimate (O(δ²) error). The per-read spread of each read gives the
standard error of every entry of R̃; a Monte-Carlo propagation of it gives the uncertainty
of every derived number (asymmetry, couplings, test statistics).

Identification. The array locks at a common frequency Ω (ω_i + Σ_j K_ij H(θ_j − θ_i) = Ω
for all i, the reference included), so the phases relative to the reference obey
dθ̃/dt = Ã dθ̃ + (dω − dω_ref)[keep] with Ã = (I + 11ᵀ)(−R̃⁻¹), Ã_ij = J_ij − J_ref,j. The
topology fixes the unknown J_ref,j of each column (J_ij = 0 for non-neighbours i of j), so
every J_ij — the reference's row included — is identified (:func:`full_jacobian`).
Effective couplings K_ij = J_ij / H_o'(θ_j − θ_i), H_o the odd part the identity assumes
(H_o = sin → cos Δθ); per-edge asymmetry |k_ij − k_ji| / mean(k_ij, k_ji).

Non-odd test (two statistics, either flags):

1. *Lag pattern in J.* For symmetric K and H(φ) = sin(φ − ψ) (Kuramoto–Sakaguchi),
   ρ_e = ln(J_ij/J_ji) = ln cos(Δ_e − ψ) − ln cos(Δ_e + ψ) ≈ 2ψ tan Δ_e, Δ_e = θ_j − θ_i:
   the log-ratio is tied to the sign and size of Δθ. Random K mismatch adds scatter that is
   uncorrelated with tan Δ. ψ̂ is the Gauss–Newton least-squares fit of ρ_e over the
   identified edges; its standard error s_ψ is from the residual scatter (mismatch + noise).
   Flag if |ψ̂| > ``max_phase_lag_rad`` and |ψ̂|/s_ψ > ``nonodd_z``.
2. *Sum rule per oscillator.* With the measured frequencies (frequency counter or a
   calibrated transfer map), r_i = ω_i + Σ_j K̂_ij H_o(Δ_ij) equals the common Ω on every
   oscillator when H is odd. An even part c = H(0) (−sin ψ for a lag, b0 + b1 for offsets)
   leaves r_i ≈ Ω − c Σ_j K̂_ij a_1/H_o'(Δ_ij) = Ω − c s_i. ĉ is the least-squares slope
   (with intercept Ω); flag if |ĉ|/a_1 > ``max_even_fraction`` and |ĉ|/s_c > ``nonodd_z``.
   With odd H and symmetric K the terms cancel pairwise and Σ_i (ω_i − Ω) = 0 — the global
   sum rule Σ_i ω^c_i + Σ_ij K_ij H(θ_j − θ_i) = 0; the per-oscillator form also works for
   asymmetric K. Fixed per-channel readout offsets δ (TDC skew) add (Jδ)_i to r_i: on the
   CMOS emulator's default 1 ps they bias ĉ by ≈ 0.03 (0.067 measured vs 0.035 without
   offsets, true b0 + b1 = 0.03), hence the default ``max_even_fraction`` of 0.1.

A device *passes* the symmetry check when ‖R̃ − R̃ᵀ‖_F/‖R̃‖_F ≤ ``max_asymmetry``
(device-file thresholds, :class:`phasegrad_hw.device.model.CalibrationThresholds`); ``non_odd`` is
reported beside it.
"""

from __future__ import annotations

import logging
import time

import numpy as np
from numpy.typing import NDArray
from pydantic import Field

from phasegrad_hw.calibration.common import (
    Progress,
    no_progress,
    non_reference,
    operating_point,
    read_locked,
    thresholds,
)
from phasegrad_hw.config import StrictModel
from phasegrad_hw.device.model import CalibrationThresholds
from phasegrad_hw.device.substrate import Capability, OscillatorSubstrate
from phasegrad_hw.physics import Array, CouplingFunction, centred, wrap

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------- models
class SymmetryConfig(StrictModel):
    """Options of the symmetry measurement.

    ``delta`` ± frequency perturbation of the pilot pass (model units);
    ``probe_phase_rad`` δθ of the phase-localised main probes (0 = plain probes only);
    ``pilot_averages``/``averages`` reads per state in the pilot/main pass (>= 2, so the
    spread is measured; capped at the device's ``max_averages``, the
    rest made up by repeats); ``repeats`` ± pairs per oscillator;
    ``omega`` an explicit operating point, else a seeded one of ``amplitude``;
    ``mc_draws`` Monte-Carlo draws for the uncertainties.
    """

    delta: float = Field(default=0.1, gt=0.0, le=1.0)
    probe_phase_rad: float = Field(default=0.25, ge=0.0, le=0.5)
    pilot_averages: int = Field(default=64, ge=2)
    averages: int = Field(default=4096, ge=2)
    repeats: int = Field(default=16, ge=1, le=1000)
    dither: float = Field(default=0.0, ge=0.0, le=1.0)
    omega: list[float] | None = None
    amplitude: float | None = Field(default=None, gt=0.0)
    seed: int = 0
    mc_draws: int = Field(default=400, ge=20, le=100_000)
    use_counter: bool = True


class EdgeCoupling(StrictModel):
    """One edge of the JSON ``symmetry`` part: K_ij (j onto i), K_ji, |k_ij − k_ji|/mean."""

    i: int
    j: int
    k_ij: float
    k_ji: float
    asymmetry: float


class SymmetrySummary(StrictModel):
    """The ``symmetry`` part of the report JSON (exactly these keys)."""

    asymmetry: float
    uncertainty: float
    passed: bool
    non_odd: bool
    edges: list[EdgeCoupling]


class EdgeDetail(StrictModel):
    """Every model edge: identified couplings (None where not identifiable), their
    Monte-Carlo standard errors, the phase difference Δθ = θ_j − θ_i (rad)."""

    i: int
    j: int
    k_ij: float | None
    k_ji: float | None
    k_ij_sigma: float | None
    k_ji_sigma: float | None
    asymmetry: float | None
    asymmetry_sigma: float | None
    dtheta_rad: float


class NonOddTest(StrictModel):
    """The two non-odd statistics (see the module docstring)."""

    phase_lag_rad: float | None
    phase_lag_se: float | None
    phase_lag_z: float | None
    lag_edges: int
    even_fraction: float | None
    even_se: float | None
    even_z: float | None
    flagged_lag: bool
    flagged_even: bool
    statistic: str = (
        "lag: Gauss-Newton fit of ln(J_ij/J_ji) = ln cos(dθ-psi) - ln cos(dθ+psi) over edges, "
        "z = psi/se(residuals); even: c = -sum(r_i s_i)/sum(s_i^2), "
        "r_i = w^c_i + sum_j K_ij H_o(dθ_ij), s_i = sum_j K_ij a1/H_o'(dθ_ij)"
    )


class SymmetryResult(StrictModel):
    """Full result of :func:`calibrate_symmetry`."""

    summary: SymmetrySummary
    max_asymmetry: float
    asymmetry_floor: float
    max_edge_asymmetry: float | None
    edge_asymmetry_passed: bool
    edges: list[EdgeDetail]
    nonodd: NonOddTest
    indices: list[int]  # oscillators of the reduced system (rows/columns of the response)
    response: list[list[float]]  # R̃ (rad per model frequency unit)
    response_sigma: list[list[float]]
    omega: list[float]  # operating point (model units, as set)
    omega_measured: list[float] | None  # frequency counter at the operating point
    theta: list[float]  # phases there (rad)
    delta: float
    averages: int
    frequencies_measured: bool
    reads: int
    duration_s: float

    def couplings(self) -> tuple[Array, Array]:
        """(K̂, σ) as (N, N) arrays, NaN where not identified."""
        n = len(self.theta)
        K = np.full((n, n), np.nan)
        S = np.full((n, n), np.nan)
        for e in self.edges:
            for a, b, k, s in ((e.i, e.j, e.k_ij, e.k_ij_sigma), (e.j, e.i, e.k_ji, e.k_ji_sigma)):
                if k is not None:
                    K[a, b] = k
                    S[a, b] = np.nan if s is None else s
        return K, S

    def identified_laplacian(self) -> Array:
        """−Ã (model frequency units): the reduced Laplacian of the dynamics of the phases
        relative to the reference (its eigenvalues are the relaxation rates; see
        :func:`relative_matrix`)."""
        return -relative_matrix(np.asarray(self.response))


# --------------------------------------------------------------------------- analysis
def asymmetry(R: Array) -> Array:
    """‖R − Rᵀ‖_F / ‖R‖_F over the last two axes (0 for a symmetric matrix)."""
    A = R - np.swapaxes(R, -1, -2)
    return np.asarray(np.linalg.norm(A, axis=(-2, -1)) / np.linalg.norm(R, axis=(-2, -1)))


def relative_matrix(R: Array) -> Array:
    """Ã = (I + 11ᵀ)(−R̃⁻¹): the linearised dynamics of the phases relative to the
    reference, dθ̃/dt = Ã dθ̃ + (dω − dω_ref)[keep] (batched over leading axes).

    With R̃ the response to *centred* frequencies, (ω^c)[keep] = (I − 11ᵀ/N)(ω − ω_ref)[keep]
    and (I − 11ᵀ/N)⁻¹ = I + 11ᵀ (n = N − 1)."""
    n = R.shape[-1]
    Jc = -np.linalg.inv(R)
    return np.asarray(Jc + Jc.sum(axis=-2, keepdims=True) * np.ones((n, 1)))


def full_jacobian(
    R: Array, keep: NDArray[np.int64], n: int, edges: NDArray[np.int64] | None = None
) -> Array:
    """J (…, N, N), J_ij = K_ij H'(θ_j − θ_i), identified from R̃ (…, n, n).

    The array locks at a common frequency Ω: ω_i + Σ_j K_ij H(θ_j − θ_i) = Ω for every i,
    so relative to the reference Ã_ij = J_ij − J_ref,j (i ≠ j) and Ã_jj = J_jj − J_ref,j,
    J_jj = −Σ_m J_jm (:func:`relative_matrix`). Each column is known up to J_ref,j; the
    topology fixes it: J_ij = 0 for every non-neighbour i of j, so J_ref,j = −mean Ã_ij over
    them (least squares), or J_ref,j = 0 when j is not a neighbour of the reference; then
    J_ij = Ã_ij + J_ref,j and J_j,ref from the diagonal. Columns
    without a non-neighbour stay NaN; the diagonal is NaN. Without ``edges`` every pair is
    taken as a possible edge (nothing identifiable beyond Ã)."""
    A = relative_matrix(R)
    lead = A.shape[:-2]
    m = len(keep)
    adj = np.zeros((n, n), dtype=bool)
    if edges is not None:
        adj[edges[:, 0], edges[:, 1]] = True
        adj[edges[:, 1], edges[:, 0]] = True
    else:
        adj[:] = True
    ref = int(np.setdiff1d(np.arange(n), keep)[0])
    sub = adj[np.ix_(keep, keep)]  # neighbour structure within the reduced set
    J = np.full((*lead, n, n), np.nan)
    for c in range(m):
        if not adj[ref, keep[c]]:
            jref = np.zeros(lead)  # not a neighbour of the reference: J_ref,j = 0 exactly
        else:
            zero_rows = np.flatnonzero(~sub[:, c] & (np.arange(m) != c))
            if zero_rows.size == 0:
                continue
            jref = -A[..., zero_rows, c].mean(axis=-1)
        col = A[..., :, c] + jref[..., None]
        J[..., keep, keep[c]] = col
        J[..., ref, keep[c]] = jref
    idx = np.arange(n)
    # J_j,ref = −J_jj − Σ_{m≠j,ref} J_jm with J_jj = Ã_jj + J_ref,j (the diagonal of col)
    for r_ in range(m):
        j = keep[r_]
        row = J[..., j, :].copy()
        diag = row[..., j]
        others = np.delete(row, [j, ref], axis=-1)
        J[..., j, ref] = -diag - np.sum(
            np.where(adj[j][np.delete(idx, [j, ref])], others, 0.0), axis=-1
        )
    J[..., idx, idx] = np.nan
    # known zeros stay zero (non-edges): noise there is not a coupling
    J[..., ~adj & ~np.eye(n, dtype=bool)] = np.where(
        np.isnan(J[..., ~adj & ~np.eye(n, dtype=bool)]), np.nan, 0.0
    )
    return J


def reduced_jacobian(dtheta: Array, domega: Array) -> Array:
    """J̃ = −ΔΩ ΔΘ⁻¹ with the finite-probe correction (batched over leading axes).

    Probe j moves θ_j by ±δ_j (others ≈ fixed); for H = sin the centred difference then
    measures K_ij cos Δ · sin δ_j/δ_j in column j (2K cos Δ sin δ over 2δ), so column j is
    scaled by δ_j/sin δ_j, δ_j = ΔΘ_jj/2. Exact for phase-localised probes, ≈ 1 for the
    small plain pilot probes.
    """
    J = -domega @ np.linalg.inv(dtheta)
    half = 0.5 * np.diagonal(dtheta, axis1=-2, axis2=-1)
    small = np.abs(half) < 1e-9
    fac = np.where(small, 1.0, half / np.where(small, 1.0, np.sin(half)))
    return np.asarray(J * fac[..., None, :])


def _lag_fit(rho: Array, d: Array) -> tuple[float, float]:
    """ψ̂ and its standard error from ρ_e = ln cos(Δ_e − ψ) − ln cos(Δ_e + ψ) + ε_e."""
    psi = 0.0
    for _ in range(30):
        m = np.log(np.cos(d - psi)) - np.log(np.cos(d + psi))
        x = np.tan(d - psi) + np.tan(d + psi)
        sxx = float(x @ x)
        if sxx <= 0:
            return float("nan"), float("nan")
        step = float(x @ (rho - m)) / sxx
        psi = float(np.clip(psi + step, -1.2, 1.2))
        if abs(step) < 1e-12:
            break
    m = np.log(np.cos(d - psi)) - np.log(np.cos(d + psi))
    x = np.tan(d - psi) + np.tan(d + psi)
    res = rho - m
    dof = max(len(rho) - 1, 1)
    se = float(np.sqrt((res @ res) / dof / (x @ x)))
    return psi, se


def _even_fit(r: Array, s: Array) -> tuple[Array, Array]:
    """Fit r_i = Ω − c s_i (batched over leading axes): ĉ and its residual standard error."""
    rc = r - r.mean(-1, keepdims=True)
    sc = s - s.mean(-1, keepdims=True)
    c = -(rc * sc).sum(-1) / (sc * sc).sum(-1)
    res = rc + c[..., None] * sc
    dof = max(r.shape[-1] - 2, 1)
    se = np.sqrt((res * res).sum(-1) / dof / (sc * sc).sum(-1))
    return c, se


# --------------------------------------------------------------------------- measurement
class ProbeData(StrictModel):
    """Raw centred differences of one probe set: column k of ``dtheta`` (rad, reduced
    oscillators) answers the centred-frequency change in column k of ``domega`` (model
    units); ``sigma`` the standard error of every ``dtheta`` entry (rad)."""

    dtheta: list[list[float]]
    sigma: list[list[float]]
    domega: list[list[float]]
    reads: int


async def measure_probes(
    sub: OscillatorSubstrate,
    omega0: Array,
    probes: Array,
    averages: int,
    repeats: int = 1,
    use_counter: bool = True,
    progress: Progress = no_progress,
    dither: float = 0.0,
    seed: int = 0,
) -> ProbeData:
    """Centred differences for frequency probes (columns of ``probes``: centred changes of
    the non-reference frequencies, model units): states ω₀ ± u_k with u_k[keep] = p_k and
    u_k[ref] = −Σ p_k (mean unchanged). Leaves the device at ``omega0``."""
    model = sub.model
    keep = non_reference(model)
    ref = model.roles.reference
    n = len(keep)
    counter = use_counter and Capability.FREQUENCY_COUNTER in sub.capabilities
    dTheta = np.zeros((n, n))
    var = np.zeros((n, n))
    dOmega = np.zeros((n, n))
    reads = 0
    lim = model.limits.omega
    rng = np.random.default_rng([seed, 0xD17])
    try:
        for col in range(n):
            progress(f"probe {col + 1}/{n}", col / n)
            u = np.zeros(model.n)
            u[keep] = probes[:, col]
            u[ref] = -probes[:, col].sum()
            th_sum = np.zeros(n)
            w_sum = np.zeros(model.n)
            v_sum = np.zeros(n)
            for rep in range(repeats):
                # dither: each repeat around a slightly different point (zero mean), so
                # readout quantisation (TDC LSB) is averaged instead of adding a fixed bias
                shift = dither * rng.standard_normal(model.n) if rep or repeats > 1 else 0.0
                states = []
                for sign in (1.0, -1.0):
                    w = np.clip(omega0 + shift + sign * u, lim.min, lim.max)
                    await sub.set_frequencies(w)
                    f = await sub.read_frequencies() if counter else w
                    rd = await read_locked(sub, averages)
                    reads += 1
                    states.append((rd, np.asarray(f, dtype=np.float64)))
                (rp, fp), (rm, fm) = states
                th_sum += wrap(rp.phases - rm.phases)[keep]
                w_sum += fp - fm
                v_sum += (rp.spread[keep] ** 2 + rm.spread[keep] ** 2) / averages
            dTheta[:, col] = th_sum / repeats
            dOmega[:, col] = centred(w_sum / repeats)[keep]
            var[:, col] = v_sum / repeats**2
    finally:
        await sub.set_frequencies(omega0)
    return ProbeData(
        dtheta=dTheta.tolist(), sigma=np.sqrt(var).tolist(), domega=dOmega.tolist(), reads=reads
    )


def _probe_scale(
    omega0: Array, probes: Array, keep: NDArray[np.int64], ref: int, lo: float, hi: float
) -> float:
    """Largest factor ≤ 1 that keeps ω₀ ± scale·u inside [lo, hi] (5 % headroom)."""
    u = np.zeros(len(omega0))
    u[keep] = np.abs(probes).max(axis=1)
    u[ref] = np.abs(probes.sum(axis=0)).max()
    room = np.minimum(omega0 - lo, hi - omega0) * 0.95
    with np.errstate(divide="ignore"):
        f = np.where(u > 0, room / u, np.inf)
    return float(min(1.0, f.min()))


async def calibrate_symmetry(
    sub: OscillatorSubstrate,
    cfg: SymmetryConfig | None = None,
    progress: Progress = no_progress,
) -> SymmetryResult:
    """Measure the response around an operating point and analyse it (module docstring).

    Two passes: a pilot with plain probes δ·e_k (``pilot_averages``) gives a rough
    J̃₁ = −R̃₁⁻¹; the main pass uses *phase-localised* probes p_k = −J̃₁ e_k δθ, which move
    (nearly) only oscillator k's phase, by δθ = ``probe_phase_rad``. Then ΔΘ ≈ δθ·I is well
    conditioned, and the noise of J̃ = −ΔΩ ΔΘ⁻¹ is ≈ ‖J̃ row‖·σ_θ/δθ instead of the
    ‖J̃‖²·σ_θ/δ of inverting plain probes — orders of magnitude fewer reads for the same
    coupling accuracy.
    """
    cfg = cfg or SymmetryConfig()
    t0 = time.perf_counter()
    model = sub.model
    cap = model.limits.max_averages
    if cfg.averages > cap or cfg.pilot_averages > cap:
        # the device reads at most ``cap`` per call: more repeats make up the difference
        extra = -(-cfg.averages // cap)
        cfg = cfg.model_copy(
            update={
                "averages": max(2, min(cfg.averages, cap)),
                "pilot_averages": max(2, min(cfg.pilot_averages, cap)),
                "repeats": cfg.repeats * extra,
            }
        )
    th = thresholds(model)
    keep = non_reference(model)
    ref = model.roles.reference
    lim = model.limits.omega
    progress("operating point", 0.0)
    omega0, base = await operating_point(
        sub,
        None if cfg.omega is None else np.asarray(cfg.omega),
        amplitude=cfg.amplitude,
        seed=cfg.seed,
        averages=cfg.averages,
    )
    counter = cfg.use_counter and Capability.FREQUENCY_COUNTER in sub.capabilities
    omega_meas = np.asarray(await sub.read_frequencies()) if counter else None
    n = len(keep)
    pilot_p = cfg.delta * np.eye(n)
    pilot_p *= _probe_scale(omega0, pilot_p, keep, ref, lim.min, lim.max)
    pilot = await measure_probes(
        sub,
        omega0,
        pilot_p,
        cfg.pilot_averages,
        1,
        cfg.use_counter,
        lambda m, f: progress("pilot " + m, 0.05 + 0.25 * f),
    )
    reads = pilot.reads
    if cfg.probe_phase_rad > 0:
        J1 = -np.asarray(pilot.domega) @ np.linalg.inv(np.asarray(pilot.dtheta))
        probes = -J1 * cfg.probe_phase_rad
        probes *= _probe_scale(omega0, probes, keep, ref, lim.min, lim.max)
        main = await measure_probes(
            sub,
            omega0,
            probes,
            cfg.averages,
            cfg.repeats,
            cfg.use_counter,
            lambda m, f: progress("main " + m, 0.3 + 0.65 * f),
            dither=cfg.dither,
            seed=cfg.seed,
        )
        reads += main.reads
    else:
        main = pilot
    after = await read_locked(sub, cfg.averages)
    theta = np.angle(np.exp(1j * base.phases) + np.exp(1j * after.phases))
    progress("analysis", 0.95)
    known_omega = omega_meas is not None or sub.map_source not in ("device", "nominal")
    result = analyse(
        model_edges=model.edge_index,
        n=model.n,
        keep=keep,
        probes=main,
        theta=theta,
        omega_c=centred(omega0 if omega_meas is None else omega_meas) if known_omega else None,
        harmonics=tuple(model.coupling_function.harmonics),
        cfg=cfg,
        th_max=th,
    )
    result.omega = omega0.tolist()
    result.omega_measured = None if omega_meas is None else omega_meas.tolist()
    result.frequencies_measured = counter
    result.reads = reads + 2
    result.duration_s = time.perf_counter() - t0
    progress("symmetry done", 1.0)
    log.info(
        "symmetry: asymmetry %.4f ± %.4f, non-odd %s",
        result.summary.asymmetry,
        result.summary.uncertainty,
        result.summary.non_odd,
    )
    return result


def analyse(
    *,
    model_edges: NDArray[np.int64],
    n: int,
    keep: NDArray[np.int64],
    probes: ProbeData,
    theta: Array,
    omega_c: Array | None,
    harmonics: tuple[float, ...],
    cfg: SymmetryConfig,
    th_max: CalibrationThresholds,
) -> SymmetryResult:
    """Asymmetry, couplings and non-odd statistics from a measured R̃ (pure numerics)."""
    Ho = CouplingFunction(harmonics)
    a1 = harmonics[0]
    rng = np.random.default_rng(cfg.seed + 7919)
    dT = np.asarray(probes.dtheta)
    sT = np.asarray(probes.sigma)
    dW = np.asarray(probes.domega)
    noise = sT[None] * rng.standard_normal((cfg.mc_draws, *dT.shape))
    Jt = reduced_jacobian(dT, dW)
    Jd = reduced_jacobian(dT[None] + noise, dW[None])
    R: Array = np.asarray(-np.linalg.inv(Jt), dtype=np.float64)
    draws: Array = np.asarray(-np.linalg.inv(Jd), dtype=np.float64)
    sigma = np.std(draws, axis=0)
    # floor: what a perfectly symmetric device would show at this noise
    Rs = 0.5 * (R + R.T)
    floor_draws = Rs[None] + (draws - R[None])[::-1]
    a = float(asymmetry(R))
    a_sd = float(np.std(asymmetry(draws)))
    floor = float(np.mean(asymmetry(floor_draws)))

    D = theta[None, :] - theta[:, None]  # D[i, j] = θ_j − θ_i
    D = wrap(D)
    Hp = Ho.derivative(D)
    J = full_jacobian(R, keep, n, model_edges)
    Jd = full_jacobian(draws, keep, n, model_edges)
    K = J / Hp
    Kd = Jd / Hp[None]

    edges: list[EdgeDetail] = []
    summary_edges: list[EdgeCoupling] = []
    lag_rho, lag_d = [], []
    for i, j in model_edges:
        kij, kji = K[i, j], K[j, i]
        d = float(D[i, j])

        def opt(x: float) -> float | None:
            return None if not np.isfinite(x) else float(x)

        asym = asym_sd = None
        if np.isfinite(kij) and np.isfinite(kji):
            asym = float(abs(kij - kji) / (0.5 * (kij + kji)))
            ad = np.abs(Kd[:, i, j] - Kd[:, j, i]) / (0.5 * (Kd[:, i, j] + Kd[:, j, i]))
            asym_sd = float(np.std(ad))
            summary_edges.append(
                EdgeCoupling(i=int(i), j=int(j), k_ij=float(kij), k_ji=float(kji), asymmetry=asym)
            )
            if J[i, j] > 0 and J[j, i] > 0:
                lag_rho.append(float(np.log(J[i, j] / J[j, i])))
                lag_d.append(d)
        edges.append(
            EdgeDetail(
                i=int(i),
                j=int(j),
                k_ij=opt(kij),
                k_ji=opt(kji),
                k_ij_sigma=opt(float(np.std(Kd[:, i, j]))) if np.isfinite(kij) else None,
                k_ji_sigma=opt(float(np.std(Kd[:, j, i]))) if np.isfinite(kji) else None,
                asymmetry=asym,
                asymmetry_sigma=asym_sd,
                dtheta_rad=d,
            )
        )

    # --- non-odd statistic 1: lag pattern of ln(J_ij/J_ji) against Δθ
    psi = psi_se = psi_z = None
    flagged_lag = False
    if len(lag_rho) >= 3:
        p, se = _lag_fit(np.asarray(lag_rho), np.asarray(lag_d))
        if np.isfinite(p):
            psi, psi_se = p, se
            psi_z = abs(p) / se if se > 0 else float("inf")
            flagged_lag = abs(p) > th_max.max_phase_lag_rad and psi_z > th_max.nonodd_z

    # --- non-odd statistic 2: per-oscillator sum rule with measured frequencies
    c = c_se = c_z = None
    flagged_even = False
    adj = np.zeros((n, n), dtype=bool)
    adj[model_edges[:, 0], model_edges[:, 1]] = True
    adj[model_edges[:, 1], model_edges[:, 0]] = True
    rows = np.flatnonzero([np.all(np.isfinite(K[i, adj[i]])) for i in range(n)])
    if omega_c is not None and len(rows) >= 3:
        Kz = np.where(np.isfinite(K) & adj, K, 0.0)
        Kdz = np.where(np.isfinite(Kd) & adj[None], Kd, 0.0)
        Hv = Ho.value(D)
        r = omega_c[rows] + (Kz * Hv).sum(-1)[rows]
        s = (Kz * a1 / Hp).sum(-1)[rows]
        rd = omega_c[rows][None] + (Kdz * Hv[None]).sum(-1)[:, rows]
        sd = (Kdz * a1 / Hp[None]).sum(-1)[:, rows]
        c0, se_res = _even_fit(r, s)
        cd, _ = _even_fit(rd, sd)
        c = float(c0) / a1
        c_se = float(np.hypot(float(se_res), float(np.std(cd)))) / abs(a1)
        c_z = abs(c) / c_se if c_se > 0 else float("inf")
        flagged_even = abs(c) > th_max.max_even_fraction and c_z > th_max.nonodd_z

    non_odd = bool(flagged_lag or flagged_even)
    edge_asyms = [e.asymmetry for e in summary_edges]
    max_edge = max(edge_asyms) if edge_asyms else None
    summary = SymmetrySummary(
        asymmetry=a,
        uncertainty=a_sd,
        passed=bool(a <= th_max.max_asymmetry),
        non_odd=non_odd,
        edges=summary_edges,
    )
    if floor > th_max.max_asymmetry:
        log.warning(
            "symmetry: noise floor %.3g exceeds the threshold %.3g; raise averages/delta",
            floor,
            th_max.max_asymmetry,
        )
    return SymmetryResult(
        summary=summary,
        max_asymmetry=th_max.max_asymmetry,
        asymmetry_floor=floor,
        max_edge_asymmetry=max_edge,
        edge_asymmetry_passed=bool(max_edge is None or max_edge <= th_max.max_edge_asymmetry),
        edges=edges,
        nonodd=NonOddTest(
            phase_lag_rad=psi,
            phase_lag_se=psi_se,
            phase_lag_z=psi_z,
            lag_edges=len(lag_rho),
            even_fraction=c,
            even_se=c_se,
            even_z=c_z,
            flagged_lag=flagged_lag,
            flagged_even=flagged_even,
        ),
        indices=keep.tolist(),
        response=R.tolist(),
        response_sigma=sigma.tolist(),
        omega=[],
        omega_measured=None,
        theta=theta.tolist(),
        delta=cfg.delta,
        averages=cfg.averages,
        frequencies_measured=omega_c is not None,
        reads=0,
        duration_s=0.0,
    )
