"""Physics-core speed against the published fsolve method, measured in the same run.

* one equilibrium at N = 9, 50, 200, 500, 1000 (ours vs :func:`baselines.fsolve_equilibrium`
  at the published method's tolerance, fsolve's default xtol = 1.49012e-08, unless
  ``--baseline-xtol`` says otherwise; targets ≥ 3× at N = 9, ≥ 20× at N = 200). The JSON's
  ``baseline_ratio`` table holds the same-run ratio (baseline time / ours) in wall and CPU
  time (CPU time of this process: insensitive to other load on a shared machine);
* one EP gradient (free + nudged state, one-sided) at N = 9 and 50, ours vs fsolve;
* batched equilibria, B = 256 networks of N = 9 on one core (target ≥ 100 000 per second);
* sparse ring + long-range networks (mean degree ≈ 10), N = 10 000 and 100 000: free
  equilibrium plus a centred gradient (two nudged states) (target < 10 s at N = 100 000).

Networks: Erdős–Rényi p = 0.6, K = 5·U(0.5, 1.5), ω ~ N(0, 0.3²) (docs/design.md §2). BLAS
is restricted to one thread before numpy is imported. Times are medians of interleaved
repeats (ours and baseline alternate, so machine load hits both). Usage::

    python benchmarks/bench_core.py [--out benchmarks/results/core.json] [--quick]
        [--baseline-xtol 1.49012e-08]
"""

from __future__ import annotations

import os

for _v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_v] = "1"

import argparse  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from baselines import PUBLISHED_XTOL, fsolve_equilibrium, fsolve_nudged  # noqa: E402

from phasegrad_hw.physics import gradients as gr
from phasegrad_hw.physics import graphs as nw
from phasegrad_hw.physics import solve_equilibrium

REPO = Path(__file__).resolve().parents[1]


def _network(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng([seed, n])
    K = nw.erdos_renyi(n, rng)
    return nw.random_frequencies(n, rng), K


def _timed(fn: Callable[[], Any], number: int) -> tuple[float, float]:
    """(wall, CPU) seconds per call."""
    t0, c0 = time.perf_counter(), time.process_time()
    for _ in range(number):
        fn()
    return (time.perf_counter() - t0) / number, (time.process_time() - c0) / number


def _compare(
    ours: Callable[[], Any],
    base: Callable[[], Any],
    repeats: int,
    number: int,
    base_repeats: int | None = None,
) -> dict[str, float]:
    """Median seconds per call (wall and CPU) of ours and the baseline, interleaved;
    ``ratio`` = baseline / ours in wall time, ``cpu_ratio`` in CPU time."""
    to: list[tuple[float, float]] = []
    tb: list[tuple[float, float]] = []
    br = repeats if base_repeats is None else base_repeats
    ours()
    for k in range(repeats):
        to.append(_timed(ours, number))
        if k < br:
            tb.append(_timed(base, 1 if base_repeats is not None else number))
    (o, oc), (b, bc) = np.median(to, axis=0).tolist(), np.median(tb, axis=0).tolist()
    return {
        "ours_s": o,
        "fsolve_s": b,
        "ratio": b / o,
        "ours_cpu_s": oc,
        "fsolve_cpu_s": bc,
        "cpu_ratio": bc / oc,
    }


def bench_single(sizes: list[int], quick: bool, xtol: float) -> list[dict[str, Any]]:
    rows = []
    for n in sizes:
        w, K = _network(n)
        eq = solve_equilibrium(w, K)
        th_b, res_b = fsolve_equilibrium(w, K, xtol=xtol)
        big = n >= 500
        reps, num = (3, 1) if big else ((5, 20) if n <= 50 else (5, 3))
        if quick:
            reps, num = (1, 1) if big else (3, max(1, num // 4))

        def ours(w: np.ndarray = w, K: np.ndarray = K) -> object:
            return solve_equilibrium(w, K)

        def base(w: np.ndarray = w, K: np.ndarray = K) -> object:
            return fsolve_equilibrium(w, K, xtol=xtol)

        r = _compare(ours, base, reps, num, base_repeats=1 if big else None)
        rows.append(
            {
                "N": n,
                **r,
                "ours_residual": float(eq.residual),
                "fsolve_residual": res_b,
                "ours_ok": bool(eq.ok),
                "max_abs_theta_diff": float(np.abs(eq.theta - th_b).max()),
            }
        )
    return rows


def bench_ep_gradient(
    sizes: list[int], quick: bool, xtol: float, beta: float = 1e-3
) -> list[dict[str, Any]]:
    rows = []
    for n in sizes:
        w, K = _network(n, seed=1)
        outs = np.array([n - 2, n - 1])
        th_free = solve_equilibrium(w, K).theta
        tgt = th_free[outs] + 0.2
        b, t = gr.nudge_vectors(n, outs, tgt, beta)

        def ours(
            w: np.ndarray = w, K: np.ndarray = K, b: np.ndarray = b, t: np.ndarray = t
        ) -> np.ndarray:
            free = solve_equilibrium(w, K)
            nud = solve_equilibrium(w, K, beta=b, target=t, theta0=free.theta)
            return gr.two_phase_gradient(free.theta, nud.theta, beta)

        def base(
            w: np.ndarray = w, K: np.ndarray = K, b: np.ndarray = b, t: np.ndarray = t
        ) -> np.ndarray:
            free, _ = fsolve_equilibrium(w, K, xtol=xtol)
            nud = fsolve_nudged(w, K, b, t, free, xtol=xtol)
            return gr.two_phase_gradient(free, nud, beta)

        cos = float(gr.cosine(ours(), base()))
        r = _compare(ours, base, 3 if quick else 5, 5 if quick else 20)
        rows.append({"N": n, "beta": beta, **r, "cos_ours_vs_fsolve": cos})
    return rows


def bench_batched(B: int = 256, n: int = 9, quick: bool = False) -> dict[str, Any]:
    rng = np.random.default_rng(7)
    Ks = np.stack([nw.erdos_renyi(n, rng) for _ in range(B)])
    W = np.stack([nw.random_frequencies(n, rng) for _ in range(B)])
    eq = solve_equilibrium(W, Ks)
    times = [
        _timed(lambda: solve_equilibrium(W, Ks), 3 if quick else 10)
        for _ in range(3 if quick else 7)
    ]
    t = float(np.median(times))
    return {
        "B": B,
        "N": n,
        "seconds_per_batch": t,
        "equilibria_per_s": B / t,
        "ok_fraction": float(eq.ok.mean()),
        "max_residual": float(eq.residual.max()),
    }


def bench_sparse(sizes: list[int], beta: float = 0.1) -> list[dict[str, Any]]:
    rows = []
    for n in sizes:
        rng = np.random.default_rng(n)
        K = nw.sparse_ring_network(n, rng, mean_degree=10.0)
        w = nw.random_frequencies(n, rng)
        t0 = time.perf_counter()
        free = solve_equilibrium(w, K)
        t1 = time.perf_counter()
        outs = np.array([n - 2, n - 1])
        b, t = gr.nudge_vectors(n, outs, free.theta[outs] + 0.2, beta)
        plus = solve_equilibrium(w, K, beta=b, target=t, theta0=free.theta)
        minus = solve_equilibrium(w, K, beta=b, target=t, theta0=free.theta, direction=-1)
        g = gr.two_phase_gradient(free.theta, plus.theta, beta, minus.theta)
        t2 = time.perf_counter()
        rows.append(
            {
                "N": n,
                "edges": int(K.nnz // 2),
                "equilibrium_s": t1 - t0,
                "centred_gradient_s": t2 - t1,
                "total_s": t2 - t0,
                "ok": bool(free.ok and plus.ok and minus.ok),
                "residual": float(free.residual),
                "grad_norm": float(np.linalg.norm(g)),
            }
        )
    return rows


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks/results/core.json")
    ap.add_argument("--quick", action="store_true", help="fewer repeats, no N ≥ 500 / 100 000")
    ap.add_argument(
        "--baseline-xtol",
        type=float,
        default=PUBLISHED_XTOL,
        help="fsolve xtol of the baseline (default: fsolve's own, as the published code calls "
        "it; 1e-12 matches our residual and is slower)",
    )
    a = ap.parse_args(argv)
    single_sizes = [9, 50, 200] if a.quick else [9, 50, 200, 500, 1000]
    sparse_sizes = [10_000] if a.quick else [10_000, 100_000]
    doc: dict[str, Any] = {
        "python": platform.python_version(),
        "numpy": np.__version__,
        "machine": platform.machine(),
        "cpu_count": os.cpu_count(),
        "baseline": {
            "method": "scipy.optimize.fsolve on the reduced system, no Jacobian (published)",
            "fsolve_xtol": a.baseline_xtol,
            "published_default_xtol": a.baseline_xtol == PUBLISHED_XTOL,
        },
        "single_equilibrium": bench_single(single_sizes, a.quick, a.baseline_xtol),
        "ep_gradient": bench_ep_gradient([9, 50], a.quick, a.baseline_xtol),
        "batched": bench_batched(quick=a.quick),
        "sparse": bench_sparse(sparse_sizes),
    }
    single = {r["N"]: r for r in doc["single_equilibrium"]}
    doc["baseline_ratio"] = [
        {
            "N": n,
            "wall_ratio": r["ratio"],
            "cpu_ratio": r["cpu_ratio"],
            "fsolve_residual": r["fsolve_residual"],
        }
        for n, r in single.items()
    ]
    doc["targets"] = {
        "ratio_N9_ge_3": single[9]["ratio"] >= 3.0,
        "ratio_N200_ge_20": single[200]["ratio"] >= 20.0,
        "batched_ge_100k_per_s": doc["batched"]["equilibria_per_s"] >= 1e5,
        "sparse_100k_lt_10s": (
            doc["sparse"][-1]["total_s"] < 10.0 if doc["sparse"][-1]["N"] == 100_000 else None
        ),
    }
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(doc, indent=2))
    print(json.dumps({k: doc[k] for k in ("baseline_ratio", "batched", "targets")}, indent=1))
    return doc


if __name__ == "__main__":
    main()
