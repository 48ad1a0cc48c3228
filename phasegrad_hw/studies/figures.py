"""Figures of the studies' results (PNG; matplotlib imported on first use, Agg backend).

One function per figure, each taking the JSON-ready result of a study and a path:

* :func:`identity_figure` — 1 − cosine of the two-phase estimate to finite differences and
  to the implicit gradient per network size (rows of ``verify.run_all()["identity"]``);
* :func:`finite_beta_figure` — cosine and scale error at finite β, one-sided vs centred
  (``["finite_beta"]``);
* :func:`asymmetry_figure` — cosine vs random coupling asymmetry with the published values
  (``["asymmetry"]``);
* :func:`ablation_figure` — converged seeds and mean accuracies per set-up of the vowel study
  (``run_vowel_study(...)["rows"]``);
* :func:`seeding_figure` — random vs spectral initialisation, converged seeds per parameter set;
* :func:`fm_figure` — per-seed FM test accuracies, EP and logistic regression, with the
  published ranges (:func:`phasegrad_hw.studies.fm.run_fm_study`).

:func:`write_figures` writes every figure whose input is present in a results dict
``{"verify": …, "vowels": …, "fm": …}`` into a directory. Frequencies and β in rad per
model time unit, phases in rad, accuracies in % (docs/design.md §2, §9).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

log = logging.getLogger(__name__)

__all__ = [
    "ablation_figure",
    "asymmetry_figure",
    "finite_beta_figure",
    "fm_figure",
    "identity_figure",
    "seeding_figure",
    "write_figures",
]

Rows = Sequence[Mapping[str, Any]]
_FLOOR = 1e-17  # 1 − cos below this is drawn at the floor (log axes)


def _figure(ncols: int = 1, width: float = 6.0) -> tuple[Figure, list[Axes]]:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width * ncols if ncols > 1 else width, 4.2), layout="constrained")
    axes = [fig.add_subplot(1, ncols, k + 1) for k in range(ncols)]
    return fig, axes


def _save(fig: Figure, path: Path | str) -> Path:
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(p, dpi=120)
    log.info("figure written: %s", p)
    return p


def _one_minus(c: Sequence[float]) -> Any:
    return np.maximum(1.0 - np.asarray(c, dtype=np.float64), _FLOOR)


def identity_figure(rows: Rows, path: Path | str) -> Path:
    """1 − cos(two-phase, FD) and 1 − cos(two-phase, IFT) vs network size N."""
    fig, (ax,) = _figure()
    n = [r["N"] for r in rows]
    ax.semilogy(n, _one_minus([r["cos_tp_fd"] for r in rows]), "o-", label="vs finite differences")
    ax.semilogy(n, _one_minus([r["cos_tp_ift"] for r in rows]), "s--", label="vs implicit (IFT)")
    ax.set_xscale("log")
    ax.set_xlabel("network size N (oscillators)")
    ax.set_ylabel(f"1 − cosine (dimensionless; floor {_FLOOR:.0e})")
    ax.set_title("phase-gradient identity, β = 1e-4 (rad/time unit)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    return _save(fig, path)


def finite_beta_figure(rows: Rows, path: Path | str) -> Path:
    """Mean/worst 1 − cos and mean |scale error| vs β, one-sided and centred."""
    fig, (a1, a2) = _figure(2, 5.0)
    for mode, mk in (("one_sided", "o"), ("centred", "s")):
        rs = sorted((r for r in rows if r["mode"] == mode), key=lambda r: r["beta"])
        if not rs:
            continue
        b = [r["beta"] for r in rs]
        a1.loglog(b, _one_minus([r["mean_cos"] for r in rs]), mk + "-", label=f"{mode} mean")
        a1.loglog(b, _one_minus([r["worst_cos"] for r in rs]), mk + ":", label=f"{mode} worst")
        se = np.maximum([100.0 * r["mean_scale_error"] for r in rs], 1e-12)
        a2.loglog(b, se, mk + "-", label=mode)
    a1.set_xlabel("nudge strength β (rad/time unit)")
    a1.set_ylabel("1 − cosine to IFT (dimensionless)")
    a1.set_title("finite β: direction")
    a2.set_xlabel("nudge strength β (rad/time unit)")
    a2.set_ylabel("mean |scale error| (%)")
    a2.set_title("finite β: magnitude")
    for a in (a1, a2):
        a.grid(True, which="both", alpha=0.3)
        a.legend(fontsize=8)
    return _save(fig, path)


def asymmetry_figure(rows: Rows, path: Path | str) -> Path:
    """cos(two-phase, true gradient) ± std over seeds vs asymmetry, published values marked."""
    fig, (ax,) = _figure()
    a = np.asarray([100.0 * r["asymmetry"] for r in rows])
    c = np.asarray([r["mean_cos"] for r in rows])
    s = np.asarray([r["std_cos"] for r in rows])
    ax.errorbar(a, c, yerr=s, fmt="o-", capsize=3, label="this code (mean ± std over seeds)")
    pub = [(100.0 * r["asymmetry"], r["published"]) for r in rows if r.get("published")]
    if pub:
        px, py = zip(*pub, strict=True)
        ax.plot(px, py, "kx", markersize=9, label="published (arXiv 2604.10272)")
    ax.set_xlabel("relative coupling asymmetry, antisymmetric perturbation of K (%)")
    ax.set_ylabel("cosine(two-phase, true gradient) (dimensionless)")
    ax.set_title("identity under asymmetric coupling, N = 15")
    ax.grid(True, alpha=0.3)
    ax.legend()
    return _save(fig, path)


def _setup_label(r: Mapping[str, Any]) -> str:
    return f"{r['loss']} / {r['readout']}"


def ablation_figure(result: Mapping[str, Any], path: Path | str) -> Path:
    """Grouped bars per (parameters, init): converged seeds (final-epoch training accuracy
    > 60 %, the published criterion) and the mean test accuracy over all seeds, one bar per
    set-up (loss / readout)."""
    rows: Rows = result["rows"]
    groups = list(dict.fromkeys(f"{r['params']}\n{r['init']}" for r in rows))
    setups = list(dict.fromkeys(_setup_label(r) for r in rows))
    fig, (a1, a2) = _figure(2, 6.0)
    width = 0.8 / max(len(setups), 1)
    x = np.arange(len(groups))
    for k, s in enumerate(setups):
        succ = np.full(len(groups), np.nan)
        acc = np.full(len(groups), np.nan)
        for r in rows:
            if _setup_label(r) == s:
                g = groups.index(f"{r['params']}\n{r['init']}")
                succ[g] = r["success"]
                acc[g] = 100.0 * r["all_mean_acc"]
        a1.bar(x + (k - (len(setups) - 1) / 2) * width, succ, width, label=s)
        a2.bar(x + (k - (len(setups) - 1) / 2) * width, acc, width, label=s)
    from matplotlib.ticker import MaxNLocator

    seeds = max(int(r["seeds"]) for r in rows)
    # two short lines: one long label is taller than the axes and is clipped at the edge
    a1.set_ylabel(f"converged seeds (of {seeds})\nfinal training accuracy > 60 %")
    a1.yaxis.set_major_locator(MaxNLocator(integer=True))  # counts of seeds
    a1.set_ylim(0, 1.25 * seeds)  # headroom for the legend above the bars
    a2.set_ylabel("mean test accuracy\nover all seeds (%)")
    a2.set_ylim(0, 125)
    a2.set_yticks(np.arange(0, 101, 20))
    a2.axhline(50.0, color="k", lw=0.8, ls=":")
    for a in (a1, a2):
        a.set_xticks(x, groups, fontsize=8)
        a.set_xlabel("learned parameters / initialisation")
        a.legend(fontsize=7, loc="upper left", ncols=max(1, min(len(setups), 3)))
        a.grid(True, axis="y", alpha=0.3)
    a1.set_title(f"vowel ablation ({rows[0]['task']}, {rows[0]['epochs']} epochs)")
    return _save(fig, path)


def seeding_figure(result: Mapping[str, Any], path: Path | str) -> Path:
    """Random vs spectral initialisation: fraction of converged seeds (final-epoch training
    accuracy > 60 %) per readout and parameter set, for every configuration run with both
    initialisations."""
    rows: Rows = result["rows"]

    def key(r: Mapping[str, Any]) -> str:
        return f"{r['readout']}\n{r['params']}"

    paired = {key(r) for r in rows if r["init"] == "random"} & {
        key(r) for r in rows if r["init"] == "spectral"
    }
    keys = [k for k in dict.fromkeys(key(r) for r in rows) if k in paired]
    fig, (ax,) = _figure(1, max(6.0, 0.75 * len(keys)))
    x = np.arange(len(keys))
    for k, init in enumerate(("random", "spectral")):
        frac = np.full(len(keys), np.nan)
        for r in rows:
            if r["init"] == init and key(r) in paired:
                frac[keys.index(key(r))] = 100.0 * r["success"] / r["seeds"]
        ax.bar(x + (k - 0.5) * 0.4, frac, 0.4, label=f"{init} init")
    ax.set_xticks(x, keys, fontsize=8)
    ax.set_xlabel("readout (decision rule) and learned parameters")
    ax.set_ylabel("converged seeds (final training accuracy > 60 %) (%)")
    ax.set_ylim(0, 105)
    ax.set_title("spectral seeding vs random initialisation (vowels)")
    ax.grid(True, axis="y", alpha=0.3)
    ax.legend()
    return _save(fig, path)


def fm_figure(result: Mapping[str, Any], path: Path | str) -> Path:
    """Per-seed FM test accuracies of EP and logistic regression, published EP ranges."""
    fig, (ax,) = _figure()
    ep = 100.0 * np.asarray(result["ep"]["per_seed"])
    lr = 100.0 * np.asarray(result["logistic_regression"]["per_seed"])
    seeds = np.arange(ep.size)
    ax.plot(seeds, ep, "o-", label=f"EP, driven bank (mean {ep.mean():.1f} %)")
    ax.plot(seeds, lr, "s--", label=f"logistic regression (mean {lr.mean():.1f} %)")
    pub = result.get("published", {})
    for key, colour, name in (
        ("ep_transient_features_per_seed_range", "tab:red", "published EP, transient"),
        ("ep_quasi_static_per_seed_range", "tab:gray", "published EP, quasi-static"),
    ):
        if key in pub:
            lo, hi = pub[key]
            ax.axhspan(100.0 * lo, 100.0 * hi, color=colour, alpha=0.2, label=name)
    n_cls = int(result.get("options", {}).get("n_classes", 3))
    ax.axhline(100.0 / n_cls, color="k", lw=0.8, ls=":", label="chance")
    ax.set_xticks(seeds)
    ax.set_xlabel("seed")
    ax.set_ylabel("test accuracy (%)")
    ax.set_ylim(0, 105)
    ax.set_title(f"FM classification, {n_cls} classes")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    return _save(fig, path)


def write_figures(results: Mapping[str, Any], directory: Path | str) -> list[Path]:
    """Every figure whose input is in ``results`` (keys ``verify`` — the dict of
    ``verify.run_all`` —, ``vowels`` — of ``run_vowel_study`` —, ``fm`` — of
    ``run_fm_study``) as PNGs in ``directory``; returns the paths written."""
    d = Path(directory)
    out: list[Path] = []
    ver = results.get("verify") or {}
    if ver.get("identity"):
        out.append(identity_figure(ver["identity"], d / "identity.png"))
    if ver.get("finite_beta"):
        out.append(finite_beta_figure(ver["finite_beta"], d / "finite_beta.png"))
    if ver.get("asymmetry"):
        out.append(asymmetry_figure(ver["asymmetry"], d / "asymmetry.png"))
    vow = results.get("vowels") or {}
    if vow.get("rows"):
        out.append(ablation_figure(vow, d / "ablation.png"))
        if {r["init"] for r in vow["rows"]} >= {"random", "spectral"}:
            out.append(seeding_figure(vow, d / "seeding.png"))
    fm = results.get("fm") or {}
    if fm.get("ep"):
        out.append(fm_figure(fm, d / "fm.png"))
    if not out:
        log.warning("write_figures: no known results in keys %s", sorted(results))
    return out
