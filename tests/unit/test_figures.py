"""phasegrad_hw.studies.figures: every figure is written from real study results."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from phasegrad_hw.studies import figures as fg
from phasegrad_hw.studies import verify as v

pytest.importorskip("matplotlib")


@pytest.fixture(scope="module")
def results() -> dict[str, Any]:
    """Small runs of the real studies (shapes as the CLI writes them)."""
    from phasegrad_hw.studies.vowels import VowelStudyOptions, run_vowel_study

    ver = {
        "identity": [asdict(r) for r in v.identity_table((6, 10, 15))],
        "finite_beta": [asdict(r) for r in v.finite_beta_table((0.01, 0.1), networks=3)],
        "asymmetry": [asdict(r) for r in v.asymmetry_table((0.0, 0.05, 0.2), seeds=2)],
    }
    vow = run_vowel_study(
        VowelStudyOptions(seeds=2, epochs=2, params=["omega", "K"], setups=["published"])
    )
    fm = {
        "ep": {"per_seed": [0.9, 1.0]},
        "logistic_regression": {"per_seed": [1.0, 1.0]},
        "published": {"ep_transient_features_per_seed_range": [0.37, 0.68]},
        "options": {"n_classes": 3},
    }
    return {"verify": ver, "vowels": vow, "fm": fm}


def _nontrivial(p: Path) -> None:
    from matplotlib.image import imread

    assert p.is_file() and p.stat().st_size > 10_000
    img = np.asarray(imread(p))
    assert img.ndim == 3 and img.shape[0] > 300 and img.shape[1] > 500
    # drawn content: many distinct colours, not a blank canvas
    assert len(np.unique(img.reshape(-1, img.shape[2]), axis=0)) > 50


def test_write_figures_writes_every_figure(results: dict[str, Any], tmp_path: Path) -> None:
    paths = fg.write_figures(results, tmp_path / "figs")
    names = sorted(p.name for p in paths)
    assert names == [
        "ablation.png",
        "asymmetry.png",
        "finite_beta.png",
        "fm.png",
        "identity.png",
        "seeding.png",
    ]
    for p in paths:
        _nontrivial(p)


def test_partial_results_write_only_their_figures(results: dict[str, Any], tmp_path: Path) -> None:
    paths = fg.write_figures({"verify": {"identity": results["verify"]["identity"]}}, tmp_path)
    assert [p.name for p in paths] == ["identity.png"]
    assert fg.write_figures({}, tmp_path / "none") == []
    assert not (tmp_path / "none").exists()


def test_single_figure_functions(results: dict[str, Any], tmp_path: Path) -> None:
    p = fg.seeding_figure(results["vowels"], tmp_path / "sub" / "seed.png")
    _nontrivial(p)
    p = fg.ablation_figure(results["vowels"], tmp_path / "abl.png")
    _nontrivial(p)


def _clipped(fig: Any, margin_px: float = 2.0) -> list[str]:
    """The axes whose drawn labels, title, tick labels or legend come closer than
    ``margin_px`` (at 100 dpi) to the figure's edge, named by their y label (the layout keeps
    a 3 pt ≈ 4.2 px pad; a label longer than the axes is centred on it and runs past it)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    renderer = canvas.get_renderer()
    box = fig.bbox.padded(-margin_px)
    out = []
    for ax in fig.axes:
        e = ax.get_tightbbox(renderer)  # everything the axes drew
        if e.x0 < box.x0 or e.y0 < box.y0 or e.x1 > box.x1 or e.y1 > box.y1:
            out.append(ax.get_ylabel())
    return out


def test_no_label_is_clipped_at_the_figure_edge(
    results: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every label, title and tick label of every figure lies inside the canvas (the
    ablation figure's left label once ran past the top and bottom edges)."""
    drawn: list[tuple[str, Any]] = []
    save = fg._save

    def keep(fig: Any, path: Path | str) -> Path:
        drawn.append((Path(path).name, fig))
        return save(fig, path)

    monkeypatch.setattr(fg, "_save", keep)
    fg.write_figures(results, tmp_path)
    assert len(drawn) == 6
    for name, fig in drawn:
        assert _clipped(fig) == [], name
