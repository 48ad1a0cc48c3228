"""The retry ladder for locked states under changing settings (docs/design.md §2).

A device read, a training sample or a chip's clock frame needs the locked state *near* the
previous one: (1) the fast undamped edge Newton from the warm start (when the network is on
an edge list with symmetric couplings and odd H), (2) damped Newton
(:func:`~phasegrad_hw.physics.solve_equilibrium`) from the warm start for the rows that
failed, (3) damped Newton from a cold start (θ = 0) for the rows still without a stable
lock — a cold start can find the stable state a warm start jumped past.

A rung accepts a row when its state is converged and stable (``accept="stable"``), or, for a
caller that judges lock from its own linearisation (an emulated chip, which needs the
eigen-decomposition of the Jacobian anyway), when it is converged (``accept="converged"``):
the damped rungs then never compute a stability check nobody reads.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Literal

import numpy as np
from numpy.typing import NDArray

from phasegrad_hw.physics.coupling import SIN, Array, CouplingFunction, NudgeKind
from phasegrad_hw.physics.edge import EdgeNetwork, solve_edges
from phasegrad_hw.physics.equilibrium import solve_equilibrium
from phasegrad_hw.physics.policy import NEWTON, NewtonPolicy

log = logging.getLogger(__name__)

FAST, WARM, COLD, FAILED = 0, 1, 2, -1  # ladder stages (``Locked.stage``)
_ONE = np.zeros(1, dtype=np.intp)  # the rows of a batch of one
_NONE = np.zeros(0, dtype=np.intp)


@dataclass(frozen=True)
class Locked:
    """Ladder result: ``theta`` (B, N) rad (the warm damped state where no lock was found),
    ``ok`` (B,) a stable converged lock (converged only, for ``accept="converged"``),
    ``stage`` (B,) the rung that found it (FAST, WARM, COLD; FAILED)."""

    theta: Array
    ok: NDArray[np.bool_]
    stage: NDArray[np.int8]


@dataclass(frozen=True)
class Nudge:
    """Nudge of the rows: strength ``beta`` (B, N) >= 0 toward ``target`` (B, N) rad, ``kind``
    linear or injection, ``direction`` +1 toward the target, −1 away."""

    beta: Array
    target: Array
    kind: NudgeKind = "linear"
    direction: int = 1


def solve_locked(
    W: Array,
    theta0: Array,
    coupling: CouplingFunction = SIN,
    *,
    K: Array | None = None,
    edges: EdgeNetwork | None = None,
    k: Array | None = None,
    ref: int = 0,
    nudge: Nudge | None = None,
    frame: Literal["pinned", "free"] = "pinned",
    tol: float = NEWTON.tol,
    max_iter: int = NEWTON.max_iter,
    policy: NewtonPolicy = NEWTON,
    accept: Literal["stable", "converged"] = "stable",
) -> Locked:
    """Locked states of B rows by the ladder: frequencies ``W`` (B, N) in the solve frame,
    warm starts ``theta0`` (B, N); couplings as dense ``K`` (B, N, N) and/or as ``edges`` with
    edge couplings ``k`` (B, E) (the fast rung runs only with ``edges``/``k``, the damped
    rungs use ``K`` or build it from the edges). ``frame`` as in :func:`solve_equilibrium`.
    ``accept`` what a rung must reach for a row to be done (``Locked.ok``): "stable" (a
    converged, stable lock) or "converged" (stability left to the caller).
    """
    if K is None and (edges is None or k is None):
        raise ValueError("K: give the coupling matrices or the edges with their couplings")
    B = len(W)
    stage = np.empty(B, dtype=np.int8)
    stage.fill(FAILED)
    ok = np.zeros(B, dtype=bool)
    eq = None
    if edges is not None and k is not None and coupling.is_odd:
        sb = None if nudge is None else nudge.beta * float(nudge.direction)
        eq = solve_edges(
            edges, W, k, theta0, coupling,
            beta=sb, target=None if nudge is None else nudge.target,
            nudge="linear" if nudge is None else nudge.kind, damped=False, tol=tol,
            policy=policy,
        )  # fmt: skip
        ok = eq.converged & eq.stable if accept == "stable" else eq.converged.copy()
        stage[ok] = FAST
        if ok.all():
            return Locked(eq.theta, ok, stage)
    theta = np.array(theta0, dtype=np.float64, copy=True)
    if eq is not None:
        theta[ok] = eq.theta[ok]
    for rung, warm in ((WARM, True), (COLD, False)):
        rows = (_ONE if not ok[0] else _NONE) if B == 1 else np.flatnonzero(~ok)
        if rows.size == 0:
            break
        pick = rows[0] if rows.size == 1 else rows  # one network: the single-network paths
        if K is not None:
            Kr = K[pick]
        else:
            Kd = edges.dense(k[rows])  # type: ignore[union-attr,index]
            Kr = Kd[0] if rows.size == 1 else Kd
        th0 = theta0[pick] if warm else None
        eq = solve_equilibrium(
            W[pick], Kr, coupling, theta0=th0, ref=ref,
            beta=None if nudge is None else nudge.beta[pick],
            target=None if nudge is None else nudge.target[pick],
            nudge="linear" if nudge is None else nudge.kind,
            direction=1 if nudge is None else nudge.direction,
            tol=tol, max_iter=max_iter, frame=frame, policy=policy,
        )  # fmt: skip
        if B == 1:  # one row: scalar bookkeeping
            one = bool(eq.ok if accept == "stable" else eq.converged)
            if warm or one:  # (rows without a lock report the warm damped state)
                theta[0] = eq.theta
            if one:
                ok[0], stage[0] = True, rung
            continue
        good = np.atleast_1d(np.asarray(eq.ok if accept == "stable" else eq.converged, dtype=bool))
        got = np.atleast_2d(eq.theta)
        if warm:  # rows that find no lock report the warm damped state (what a read shows)
            theta[rows] = got
        else:
            theta[rows[good]] = got[good]
        ok[rows[good]] = True
        stage[rows[good]] = rung
    return Locked(theta, ok, stage)
