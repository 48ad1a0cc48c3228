"""The calibration report: a Pydantic :class:`CalibrationReport` (JSON), PNG figures and a
short text summary with pass/fail against the device file's thresholds.

Figures (matplotlib, Agg backend, imported only when figures are drawn):

* ``response_matrix.png`` — the measured phase response R̃ = ∂θ/∂ω^c (reference removed)
  and its antisymmetric part R̃ − R̃ᵀ (own colour scale; the norm ratio in its title);
* ``edge_asymmetry.png`` — per-edge |k_ij − k_ji|/mean with ±1σ bars and the threshold, and
  identified K_ij against K_ji;
* ``transfer_curves.png`` — each channel's bias → ω sweep with its monotone fit, and the
  held-out residuals in % of the channel's span with the threshold;
* ``lock_margins.png`` — per-edge phase margin π/2 − |Δθ| with the threshold, and the lock
  range of each edge's detuned end.

Nothing is written partially: figures are drawn into a temporary directory inside the
output directory and renamed into place together with the JSON only when all of them exist.

Maps that training uses are saved next to the device file — the transfer map as
``<stem>.transfer.json``, the noise choice (:class:`NoiseSettings`: β, averages, estimate
mode) as ``<stem>.noise.json`` — except when the device file lies inside the package's own
``examples/`` folder (:func:`map_home`): then they stay in the output directory and
``train`` is pointed at them with ``--transfer DIR/transfer.json --noise DIR/noise.json``.
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
import shutil
import tempfile
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import ConfigDict, Field, ValidationError

from phasegrad_hw.calibration.noise import NoiseResult
from phasegrad_hw.calibration.stability import StabilityResult
from phasegrad_hw.calibration.symmetry import SymmetryResult, SymmetrySummary
from phasegrad_hw.calibration.transfer import TransferResult
from phasegrad_hw.config import StrictModel, atomic_write_text, format_validation_error
from phasegrad_hw.device.model import CalibrationThresholds
from phasegrad_hw.errors import ConfigError

log = logging.getLogger(__name__)

FIGURES = {
    "response_matrix.png": "Phase response R = dθ/dω (reference removed) and its "
    "antisymmetric part R − Rᵀ (own colour scale, ratio in the title)",
    "edge_asymmetry.png": "Per-edge coupling asymmetry |k_ij − k_ji|/mean (±1σ) against the "
    "threshold; identified K_ij vs K_ji",
    "transfer_curves.png": "Bias → frequency sweep per channel with its monotone fit; "
    "held-out residuals in % of each channel's span",
    "lock_margins.png": "Per-edge phase margin π/2 − |Δθ| against the threshold; detuning "
    "range over which lock held",
    "noise_choice.png": "Noise v(A) of a centred difference against averages with its fit; "
    "predicted cosine of each (β, A) candidate, the chosen one with its measured cosine, and "
    "(mini-batch calibration) the lock-margin bound on β",
}


class CalibrationReport(StrictModel):
    """Everything a calibration run found; ``symmetry`` is the exact JSON part the CLI
    promises, ``symmetry_details`` the full analysis."""

    device: str
    created: str
    thresholds: CalibrationThresholds
    symmetry: SymmetrySummary | None = None
    symmetry_details: SymmetryResult | None = None
    stability: StabilityResult | None = None
    transfer: TransferResult | None = None
    noise: NoiseResult | None = None
    figures: dict[str, str] = {}
    passed: bool = True

    @classmethod
    def new(cls, device: str, thresholds: CalibrationThresholds) -> CalibrationReport:
        now = _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")
        return cls(device=device, created=now, thresholds=thresholds)

    def checks(self) -> list[tuple[str, bool, str]]:
        """(name, passed, one-line detail) per check that ran."""
        out: list[tuple[str, bool, str]] = []
        th = self.thresholds
        if self.symmetry_details is not None:
            s = self.symmetry_details
            out.append(
                (
                    "symmetry",
                    s.summary.passed,
                    f"asymmetry ‖R−Rᵀ‖/‖R‖ = {s.summary.asymmetry:.4f} ± "
                    f"{s.summary.uncertainty:.4f} (threshold {th.max_asymmetry}, noise floor "
                    f"{s.asymmetry_floor:.4f})",
                )
            )
            if s.max_edge_asymmetry is not None:
                out.append(
                    (
                        "edge asymmetry",
                        s.edge_asymmetry_passed,
                        f"max |k_ij−k_ji|/mean = {s.max_edge_asymmetry:.3f} over "
                        f"{len(s.summary.edges)} identified edges "
                        f"(threshold {th.max_edge_asymmetry})",
                    )
                )
            n = s.nonodd
            lag = (
                "n/a"
                if n.phase_lag_rad is None
                else f"ψ̂ = {n.phase_lag_rad:+.3f} ± {n.phase_lag_se:.3f} rad"
            )
            even = (
                "n/a (frequencies unknown)"
                if n.even_fraction is None
                else f"even part H(0)/a1 = {n.even_fraction:+.3f} ± {n.even_se:.3f}"
            )
            out.append(
                (
                    "odd coupling",
                    not s.summary.non_odd,
                    f"{lag} (limit {th.max_phase_lag_rad}); {even} "
                    f"(limit {th.max_even_fraction}); z > {th.nonodd_z} flags",
                )
            )
        if self.stability is not None:
            st = self.stability
            out.append(
                (
                    "stability",
                    st.passed,
                    f"{'locked' if st.locked else 'NOT locked'}, {st.slips} slips in "
                    f"{st.reads} reads, drift {st.max_drift_rad_per_read:.2g} rad/read, "
                    f"min margin {st.min_margin_rad:.3f} rad, λ_min {st.min_eigenvalue:.3g}"
                    + ("" if st.passed else " — " + "; ".join(st.failures)),
                )
            )
        if self.transfer is not None:
            t = self.transfer
            err = "n/a" if t.max_error is None else f"{100 * t.max_error:.3f} %"
            out.append(
                (
                    "transfer",
                    t.passed,
                    f"{len(t.map.channels)} channels, max held-out error {err} of span "
                    f"(threshold {100 * th.max_transfer_error:.2f} %)",
                )
            )
        if self.noise is not None:
            nz = self.noise
            detail = (
                f"σ ≈ {np.mean(nz.sigma_rad[1:]):.3g} rad/read; β = {nz.beta:.3g}, "
                f"{nz.averages} averages → cosine {nz.measured_cosine:.4f} measured "
                f"(predicted {nz.predicted_cosine:.4f}, target {nz.target_cosine})"
            )
            if nz.batch is not None:
                b, lk = nz.batch, nz.batch.lock
                detail = (
                    f"{b.task}, batch {b.batch_size} ({b.samples} samples, "
                    f"{b.skipped_samples} skipped): β = {nz.beta:.3g}, {nz.averages} averages "
                    f"→ batch-mean cosine {nz.measured_cosine:.4f} measured (predicted "
                    f"{nz.predicted_cosine:.4f}, target {nz.target_cosine}); lock margin "
                    f"β·κ ≤ {lk.strength_bound:.3g} ({100 * lk.quantile:.0f} % quantile, "
                    f"κ {min(lk.gains):.2g}–{max(lk.gains):.2g}) → β ≤ {lk.beta_bound:.3g} "
                    f"(safety {lk.safety:g}); {1e3 * nz.estimate_time_s:.1f} ms per sample"
                )
            out.append(("noise/β", nz.passed, detail))
        return out

    def finalise(self) -> CalibrationReport:
        self.passed = all(ok for _, ok, _ in self.checks())
        return self

    def summary_text(self) -> str:
        lines = [f"Calibration of {self.device} ({self.created})"]
        for name, ok, detail in self.checks():
            lines.append(f"  {name:<15} {'PASS' if ok else 'FAIL'}  {detail}")
        lines.append(f"  {'overall':<15} {'PASS' if self.passed else 'FAIL'}")
        return "\n".join(lines)

    def to_json(self) -> str:
        return self.model_dump_json(indent=2)


# --------------------------------------------------------------------------- noise map
class NoiseSettings(StrictModel):
    """What ``calibrate noise`` chose for a device and ``train`` uses (docs/design.md §2:
    readout noise is the real enemy): nudge strength ``beta`` (model units), reads averaged
    per state ``averages``, estimate ``mode`` (the routine verifies centred differences), and
    the gradient cosine it predicted and measured. Non-finite numbers are refused."""

    model_config = ConfigDict(**StrictModel.model_config, allow_inf_nan=False)

    device: str
    created: str
    beta: float = Field(gt=0.0, le=10.0)
    averages: int = Field(ge=1, le=1_000_000)
    mode: Literal["one_sided", "centred"] = "centred"
    predicted_cosine: float | None = None
    measured_cosine: float | None = None

    @classmethod
    def from_result(cls, device: str, created: str, nz: NoiseResult) -> NoiseSettings:
        return cls(
            device=device,
            created=created,
            beta=nz.beta,
            averages=nz.averages,
            mode="centred",
            predicted_cosine=nz.predicted_cosine,
            measured_cosine=nz.measured_cosine,
        )

    def save(self, path: str | Path) -> None:
        atomic_write_text(Path(path), self.model_dump_json(indent=2) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> NoiseSettings:
        """Read a noise map; any problem → :class:`ConfigError` (one line, field named)."""
        p = Path(path)
        try:
            data = json.loads(p.read_text())
        except OSError as exc:
            raise ConfigError(f"--noise: {p}: cannot read ({exc.strerror})") from None
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ConfigError(f"--noise: {p}: not valid JSON ({exc})") from None
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            first = format_validation_error(exc, f"--noise: {p}: ").splitlines()[0]
            raise ConfigError(first) from None


def noise_path(device_file: str | Path) -> Path:
    """Where a device file's noise map lives: ``<stem>.noise.json`` next to it."""
    p = Path(device_file)
    return p.with_name(p.stem + ".noise.json")


def examples_dir() -> Path:
    """The package's own example folder (a source checkout's ``examples/``)."""
    import phasegrad_hw

    return Path(phasegrad_hw.__file__).resolve().parents[1] / "examples"


def map_home(device: str) -> Path | None:
    """The device file next to which calibration maps are saved, or None: a URI, or a file
    inside :func:`examples_dir` (the package's examples are never written to)."""
    if "://" in device:
        return None
    p = Path(device).resolve()
    if p.is_relative_to(examples_dir()):
        return None
    return p


# --------------------------------------------------------------------------- figures
def _fig_response(s: SymmetryResult, path: Path) -> None:
    import matplotlib.pyplot as plt

    R = np.asarray(s.response)
    A = R - R.T
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.4), constrained_layout=True)
    labels = [str(i) for i in s.indices]
    panels = (
        (axes[0], R, "R = ∂θ/∂ω^c (rad per model unit)"),
        (axes[1], A, f"R − Rᵀ, own scale  (‖R−Rᵀ‖/‖R‖ = {s.summary.asymmetry:.3f})"),
    )
    for ax, M, title in panels:
        vmax = float(np.abs(M).max()) or 1.0
        im = ax.imshow(M, cmap="RdBu_r", vmin=-vmax, vmax=vmax)
        ax.set_xticks(range(len(labels)), labels)
        ax.set_yticks(range(len(labels)), labels)
        ax.set_xlabel("perturbed oscillator k")
        ax.set_ylabel("phase of oscillator i")
        ax.set_title(title, fontsize=10)
        fig.colorbar(im, ax=ax, shrink=0.85)
    fig.suptitle(
        "Phase response matrix (reference removed); symmetric ⇔ identity holds", fontsize=11
    )
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _fig_edges(s: SymmetryResult, th: CalibrationThresholds, path: Path) -> None:
    import matplotlib.pyplot as plt

    es = [e for e in s.edges if e.asymmetry is not None]
    fig, axes = plt.subplots(
        1, 2, figsize=(12, 4.4), gridspec_kw={"width_ratios": [2.2, 1]}, constrained_layout=True
    )
    ax = axes[0]
    x = np.arange(len(es))
    a = np.array([e.asymmetry for e in es], dtype=float)
    sd = np.array([e.asymmetry_sigma or 0.0 for e in es], dtype=float)
    ax.bar(
        x,
        100 * a,
        yerr=100 * sd,
        color=np.where(a > th.max_edge_asymmetry, "tab:red", "tab:blue"),
        capsize=2,
    )
    ax.axhline(
        100 * th.max_edge_asymmetry,
        color="k",
        ls="--",
        lw=1,
        label=f"threshold {100 * th.max_edge_asymmetry:.0f} %",
    )
    ax.set_xticks(x, [f"{e.i}–{e.j}" for e in es], rotation=60, fontsize=8)
    ax.set_ylabel("|k_ij − k_ji| / mean  (%)")
    ax.set_title("Per-edge coupling asymmetry (±1σ from readout noise)", fontsize=10)
    ax.legend(fontsize=8)
    ax = axes[1]
    kij = np.array([e.k_ij for e in es], dtype=float)
    kji = np.array([e.k_ji for e in es], dtype=float)
    ax.scatter(kij, kji, s=18)
    lo, hi = float(min(kij.min(), kji.min())), float(max(kij.max(), kji.max()))
    ax.plot([lo, hi], [lo, hi], "k--", lw=1, label="K_ij = K_ji")
    ax.set_xlabel("identified K_ij (j onto i)")
    ax.set_ylabel("identified K_ji (i onto j)")
    ax.set_title("Effective couplings, both directions", fontsize=10)
    ax.legend(fontsize=8)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _fig_transfer(t: TransferResult, th: CalibrationThresholds, path: Path) -> None:
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 1, figsize=(9, 7), sharex=True, constrained_layout=True)
    cmap = plt.get_cmap("tab10")
    for k, c in enumerate(t.map.channels):
        b = np.asarray(c.bias)
        col = cmap(k % 10)
        axes[0].plot(b, c.omega, "o", ms=3, color=col)
        fine = np.linspace(b.min(), b.max(), 200)
        axes[0].plot(fine, c.forward()(fine), "-", lw=1, color=col, label=f"ch {k}")
        if c.holdout_bias is not None and c.holdout_residual is not None:
            span = abs(c.omega[-1] - c.omega[0]) or 1.0
            axes[1].plot(
                c.holdout_bias, 100 * np.asarray(c.holdout_residual) / span, ".-", lw=0.8, color=col
            )
    axes[0].set_ylabel("ω (model units)")
    axes[0].set_title(
        "Bias sweep (points) and monotone PCHIP fit (lines), per channel", fontsize=10
    )
    axes[0].legend(fontsize=7, ncol=5)
    for s in (1, -1):
        axes[1].axhline(s * 100 * th.max_transfer_error, color="k", ls="--", lw=1)
    axes[1].set_ylabel("fit − held-out measurement\n(% of channel span)")
    axes[1].set_xlabel(f"bias ({t.map.unit})")
    axes[1].set_title("Fit residuals at held-out midpoints (dashed: threshold)", fontsize=10)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _fig_margins(st: StabilityResult, th: CalibrationThresholds, path: Path) -> None:
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 1, figsize=(11, 7), sharex=True, constrained_layout=True)
    x = np.arange(len(st.edges))
    m = np.array([e.margin_rad for e in st.edges])
    axes[0].bar(x, m, color=np.where(m < th.min_phase_margin_rad, "tab:red", "tab:green"))
    axes[0].axhline(
        th.min_phase_margin_rad,
        color="k",
        ls="--",
        lw=1,
        label=f"threshold {th.min_phase_margin_rad} rad",
    )
    axes[0].set_ylabel("π/2 − |Δθ_ij|  (rad)")
    axes[0].set_title(
        f"Per-edge phase margin at the operating point (λ_min of the identified "
        f"reduced Laplacian = {st.min_eigenvalue:.3g})",
        fontsize=10,
    )
    axes[0].legend(fontsize=8)
    lo = np.array([np.nan if e.detune_lo is None else e.detune_lo for e in st.edges])
    hi = np.array([np.nan if e.detune_hi is None else e.detune_hi for e in st.edges])
    axes[1].vlines(x, lo, hi, lw=6, color="tab:blue", alpha=0.7)
    for k, e in enumerate(st.edges):
        if e.hi_at_limit:
            axes[1].plot(k, hi[k], "^", color="tab:orange", ms=6)
        if e.lo_at_limit:
            axes[1].plot(k, lo[k], "v", color="tab:orange", ms=6)
    axes[1].axhline(0, color="k", lw=0.8)
    axes[1].set_ylabel("detuning of the edge's\nnon-reference end (model units)")
    axes[1].set_title(
        "Lock range per edge (bars: lock held; orange triangles: ω limit "
        "reached before lock was lost)",
        fontsize=10,
    )
    axes[1].set_xticks(x, [f"{e.i}–{e.j}\n(ω{e.detuned})" for e in st.edges], fontsize=7)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _fig_noise(nz: NoiseResult, path: Path) -> None:
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4), constrained_layout=True)
    a = np.asarray(nz.noise_averages, dtype=np.float64)
    grid = np.geomspace(max(a.min(), 1.0), a.max(), 50)
    axes[0].loglog(a, nz.noise_variances, "o", label="measured")
    axes[0].loglog(grid, [nz.noise.var(float(x)) for x in grid], "-", label="fit v(A)")
    axes[0].set_xlabel("averages A")
    axes[0].set_ylabel("v(A)" + (" (coupling space)" if nz.batch is not None else " (rad²)"))
    axes[0].legend(fontsize=8)
    axes[0].set_title("Noise of a centred difference", fontsize=10)
    ok = [c for c in nz.candidates if c.predicted_cosine is not None]
    if ok:
        axes[1].scatter(
            [c.beta for c in ok],
            [c.predicted_cosine for c in ok],
            c=[np.log10(c.averages or 1) for c in ok],
            label="candidates (colour: log₁₀ A)",
        )
    axes[1].plot([nz.beta], [nz.measured_cosine], "r*", ms=12, label="chosen, measured")
    axes[1].axhline(nz.target_cosine, color="k", ls="--", lw=1, label="target")
    if nz.batch is not None:
        axes[1].axvline(nz.batch.lock.beta_bound, color="C3", lw=1, label="lock-margin bound")
    axes[1].set_xscale("log")
    axes[1].set_xlabel("β (model units)")
    what = "batch-mean cosine" if nz.batch is not None else "cosine"
    axes[1].set_ylabel(what)
    axes[1].legend(fontsize=8)
    axes[1].set_title(f"Chosen β = {nz.beta:.3g}, {nz.averages} averages", fontsize=10)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def draw_figures(report: CalibrationReport, directory: Path) -> dict[str, str]:
    """Draw every figure the report has data for into ``directory``; name → caption."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    out: dict[str, str] = {}
    th = report.thresholds
    jobs: list[tuple[str, Any]] = []
    if report.symmetry_details is not None:
        s = report.symmetry_details
        jobs.append(("response_matrix.png", lambda p: _fig_response(s, p)))
        if any(e.asymmetry is not None for e in s.edges):
            jobs.append(("edge_asymmetry.png", lambda p: _fig_edges(s, th, p)))
    if report.transfer is not None:
        t = report.transfer
        jobs.append(("transfer_curves.png", lambda p: _fig_transfer(t, th, p)))
    if report.stability is not None:
        st = report.stability
        jobs.append(("lock_margins.png", lambda p: _fig_margins(st, th, p)))
    if report.noise is not None:
        nz = report.noise
        jobs.append(("noise_choice.png", lambda p: _fig_noise(nz, p)))
    for name, draw in jobs:
        draw(directory / name)
        out[name] = FIGURES[name]
    return out


def save_report(
    report: CalibrationReport,
    out_dir: str | Path,
    json_path: str | Path | None = None,
    *,
    figures: bool = True,
) -> list[Path]:
    """Write figures, ``report.json`` and ``summary.txt`` into ``out_dir`` (and the JSON to
    ``json_path`` too); all-or-nothing (temporary directory, then renames)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    report.finalise()
    tmp = Path(tempfile.mkdtemp(prefix=".calibration-", dir=out))
    written: list[Path] = []
    try:
        if figures:
            report.figures = draw_figures(report, tmp)
        (tmp / "report.json").write_text(report.to_json())
        (tmp / "summary.txt").write_text(report.summary_text() + "\n")
        for f in sorted(tmp.iterdir()):
            dest = out / f.name
            f.replace(dest)
            written.append(dest)
        if json_path is not None:
            jp = Path(json_path)
            atomic_write_text(jp, report.to_json())
            written.append(jp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    log.info("calibration report written to %s", out)
    return written


# --------------------------------------------------------------------------- runner
ROUTINES = ("transfer", "symmetry", "stability", "noise")


async def run_calibration(
    sub: Any,
    which: str | list[str] = "all",
    *,
    seed: int = 0,
    progress: Any = None,
    task_samples: Any = None,
    batch_size: int | None = None,
) -> CalibrationReport:
    """Run the chosen routines on a connected substrate, in the order transfer (installs
    the map) → symmetry → stability (reusing the identified Laplacian) → noise. The caller
    owns the connection (``async with``), so an interruption leaves the device safe.
    ``task_samples`` (:class:`~phasegrad_hw.calibration.noise.TaskSamples`, needed on a
    held-input device) and ``batch_size`` make ``noise`` choose for mini-batch training."""
    from phasegrad_hw.calibration.common import no_progress, thresholds
    from phasegrad_hw.calibration.noise import NoiseConfig, calibrate_noise
    from phasegrad_hw.calibration.stability import StabilityConfig, calibrate_stability
    from phasegrad_hw.calibration.symmetry import SymmetryConfig, calibrate_symmetry
    from phasegrad_hw.calibration.transfer import calibrate_transfer
    from phasegrad_hw.device.substrate import Capability

    names = list(ROUTINES) if which == "all" else ([which] if isinstance(which, str) else which)
    bad = [n for n in names if n not in ROUTINES]
    if bad:
        raise ValueError(f"routine: {bad[0]!r} — allowed: {', '.join(ROUTINES)}, all")
    prog = progress or no_progress
    report = CalibrationReport.new(sub.model.name, thresholds(sub.model))
    s = None
    if "transfer" in names:
        if Capability.FREQUENCY_COUNTER in sub.capabilities:
            report.transfer = await calibrate_transfer(sub, None, lambda m, f: prog(m, f))
        else:
            # no counter: identify the couplings first, then read frequencies off the
            # locked-state equations while sweeping each bias
            s = await calibrate_symmetry(sub, SymmetryConfig(seed=seed), lambda m, f: prog(m, f))
            report.transfer = await calibrate_transfer(
                sub, None, lambda m, f: prog(m, f), couplings=s.couplings()[0]
            )
    lap = None
    if "symmetry" in names:
        s = await calibrate_symmetry(sub, SymmetryConfig(seed=seed), lambda m, f: prog(m, f))
        report.symmetry_details = s
        report.symmetry = s.summary
        lap = s.identified_laplacian()
    if "stability" in names:
        report.stability = await calibrate_stability(
            sub, StabilityConfig(seed=seed), lambda m, f: prog(m, f), laplacian=lap
        )
    if "noise" in names:
        ncfg = NoiseConfig(seed=seed)
        if batch_size is not None:
            ncfg = ncfg.model_copy(update={"batch_size": batch_size})
        report.noise = await calibrate_noise(
            sub, ncfg, lambda m, f: prog(m, f), samples=task_samples
        )
    return report.finalise()
