"""The equilibrium-propagation update rule — the one copy every trainer uses.

From phase readings of the free state θ*, the nudged state θ^β and (centred mode) θ^{−β}
(docs/design.md §2; seed paper arXiv 2604.10272)::

    g_ω = −wrap(θ^β − θ*)/β            (one-sided, O(β) bias)
        = −wrap(θ^β − θ^{−β})/(2β)     (centred, O(β²) bias)          reference entry 0
    g_K = [V(Δ^β) − V(Δ*)]/β           (V' = H; cos Δ* − cos Δ^β for H = sin; centred: ±β, 2β)
    ω ← Π_ω(ω − Δ_ω(clip(ḡ_ω))),  K ← Π_K(K − Δ_K(clip(ḡ_K)))     (learnable entries only)

ḡ is the mean over a step's *valid* samples (a mini-batch): locked in every phase and no
wrapped displacement above ``basin_jump_rad`` on any channel; Δ the optimizer step
(:class:`~phasegrad_hw.learning.optim.Optimizer`: SGD η·g, momentum or Adam; η decays by
``lr_decay`` per epoch); Π the projection onto the device limits (per edge: [−max, max] on
invertible edges, docs/design.md §8). The
hardware controller (:mod:`phasegrad_hw.learning.controller`) and the training engine
(:mod:`phasegrad_hw.engine.ensemble`) call :func:`ep_update`; the engine's compiled kernel is a
compiled copy of it for its case (tests/unit/test_ep_rule.py pins the three together).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal, NamedTuple

import numpy as np
from numpy.typing import NDArray
from pydantic import Field

from phasegrad_hw.config import StrictModel
from phasegrad_hw.device.model import Limits
from phasegrad_hw.device.substrate import PhaseReading
from phasegrad_hw.learning.optim import Optimizer
from phasegrad_hw.physics import CouplingFunction, wrap
from phasegrad_hw.physics.gradients import (
    coupling_gradient_two_phase,
    two_phase_from_displacement,
)

Array = NDArray[np.float64]
Mask = NDArray[np.bool_]

__all__ = [
    "EPNetwork",
    "EPOptimizers",
    "EPReadings",
    "EPRule",
    "EPState",
    "EPUpdate",
    "ep_update",
    "stack_readings",
]


class EPRule(StrictModel):
    """The EP rule's settings (model units unless stated; defaults: the published vowel run).

    ``params`` what learns (ω, K or both); ``beta`` nudge strength (published 0.1); ``mode``
    one-sided or centred (docs/design.md §2); ``averages`` reads averaged per state (hardware;
    the noiseless engine reads once); ``lr_omega``/``lr_k`` learning rates (published 1e-3);
    ``clip`` element-wise gradient clip (published 2); ``basin_jump_rad`` a wrapped
    displacement above this on any channel is a basin jump (rad) and skips the sample;
    ``optimizer`` SGD (published), momentum or Adam (``momentum``, ``adam_*``), with the
    learning rates × ``lr_decay`` per epoch (:class:`~phasegrad_hw.learning.optim.Optimizer`).
    """

    params: Literal["omega", "K", "both"] = "omega"
    beta: float = Field(default=0.1, gt=0.0, le=10.0)
    mode: Literal["one_sided", "centred"] = "one_sided"
    averages: int = Field(default=1, ge=1)
    lr_omega: float = Field(default=1e-3, ge=0.0)
    lr_k: float = Field(default=1e-3, ge=0.0)
    clip: float = Field(default=2.0, gt=0.0)
    basin_jump_rad: float = Field(default=1.0, gt=0.0)
    optimizer: Literal["sgd", "momentum", "adam"] = "sgd"
    momentum: float = Field(default=0.9, ge=0.0, lt=1.0)
    adam_b1: float = Field(default=0.9, ge=0.0, lt=1.0)
    adam_b2: float = Field(default=0.999, ge=0.0, lt=1.0)
    adam_eps: float = Field(default=1e-8, gt=0.0)
    lr_decay: float = Field(default=1.0, gt=0.0, le=1.0)  # learning-rate factor per epoch

    @property
    def learns_omega(self) -> bool:
        return self.params in ("omega", "both")

    @property
    def learns_coupling(self) -> bool:
        return self.params in ("K", "both")


class EPReadings(NamedTuple):
    """Phase readings (rad) of B members × m samples: ``free`` θ*, ``plus`` θ^β, ``minus``
    θ^{−β} (centred mode, else None), each (B, m, N); ``locked`` (B, m) every phase of the
    sample locked (entries of unlocked samples are ignored)."""

    free: Array
    plus: Array
    minus: Array | None
    locked: Mask


class EPState(NamedTuple):
    """Parameters of B members: ``omega`` (B, N), ``coupling`` (B, E), and which entries
    learn: ``learn_omega`` (B, N), ``learn_coupling`` (B, E)."""

    omega: Array
    coupling: Array
    learn_omega: Mask
    learn_coupling: Mask


class EPNetwork(NamedTuple):
    """What the rule needs of the device: ``edges`` (E, 2) index pairs (i, j) with
    Δ = θ_j − θ_i, the ``reference`` oscillator, the odd coupling function ``coupling`` (its
    potential gives g_K) and the ``limits`` the parameters are projected onto; ``k_bounds``
    per-edge coupling limits (lo (E,), hi (E,)) replacing ``limits.coupling`` (signed edges)."""

    edges: NDArray[np.int64]
    reference: int
    coupling: CouplingFunction
    limits: Limits
    k_bounds: tuple[Array, Array] | None = None


class EPOptimizers(NamedTuple):
    """Optimizer state of the rule (one per parameter set, shapes (B, N) and (B, E)) and the
    learning-rate scale of this epoch (``lr_decay``^epoch)."""

    omega: Optimizer
    coupling: Optimizer
    lr_scale: float = 1.0


class EPUpdate(NamedTuple):
    """Result of one update: new ``omega`` (B, N) and ``coupling`` (B, E); ``valid``,
    ``unlocked`` and ``basin_jump`` (B, m) per sample; ``updated`` (B,) at least one valid
    sample; ``grad_omega`` (B, N) and ``grad_coupling`` (B, E) the valid samples' mean
    gradient on the learnable entries (0 elsewhere), before clipping."""

    omega: Array
    coupling: Array
    valid: Mask
    unlocked: Mask
    basin_jump: Mask
    updated: Mask
    grad_omega: Array
    grad_coupling: Array


def _flag(v: bool) -> Mask:
    """A read-only (1, 1) flag (the one-sample path's validity masks, made once)."""
    a = np.full((1, 1), v)
    a.flags.writeable = False
    return a


SAMPLE_FLAGS = {False: _flag(False), True: _flag(True)}
"""One sample's lock/validity flag by value, read-only (1, 1) (one member, one sample); its
row ``SAMPLE_FLAGS[v][0]`` (1,) is a read-only view (the controller's one-sample report)."""


def stack_readings(
    readings: Sequence[tuple[PhaseReading, PhaseReading | None, PhaseReading | None]],
    centred: bool,
    n: int,
) -> tuple[Array, Array, Array | None, Mask]:
    """One member's step as rule inputs: (free (m, N), plus (1, m, N), minus (1, m, N) or
    None, locked (1, m)) from (free, plus, minus) readings per sample; a sample that was not
    nudged (its free read did not lock) carries its free phases as filler and is not locked."""
    m = len(readings)
    minus = None
    if m == 1:  # (views of the readings' phases; the rule does not write into them)
        f, p, mi = readings[0]
        free = np.asarray(f.phases, dtype=np.float64).reshape(1, n)
        plus = np.asarray((f if p is None else p).phases, dtype=np.float64).reshape(1, 1, n)
        if centred:
            minus = np.asarray((f if mi is None else mi).phases, np.float64).reshape(1, 1, n)
        ok = f.locked and p is not None and p.locked and (mi is None or mi.locked)
        return free, plus, minus, SAMPLE_FLAGS[bool(ok)]
    else:
        free = np.stack([f.phases for f, _, _ in readings]).reshape(m, n)
        plus = np.stack([(f if p is None else p).phases for f, p, _ in readings])[None]
        if centred:
            minus = np.stack([(f if mi is None else mi).phases for f, _, mi in readings])[None]
    locked = np.array(
        [
            [
                f.locked and p is not None and p.locked and (mi is None or mi.locked)
                for f, p, mi in readings
            ]
        ],
        dtype=bool,
    )
    return free, plus, minus, locked


def _masked_mean(g: Array, valid: Mask, all_valid: bool, learn: Mask) -> Array:
    """Mean of g (B, m, P) over valid samples (B, m), zero off ``learn`` (B, P)."""
    if all_valid:
        mean = g.sum(axis=1) / float(g.shape[1])
    else:
        den = np.maximum(valid.sum(axis=1), 1)[:, None].astype(np.float64)
        mean = np.where(valid[..., None], g, 0.0).sum(axis=1) / den
    return np.where(learn, mean, 0.0)


def _step(
    x: Array,
    lr: float,
    g: Array,
    clip: float,
    lo: float | Array,
    hi: float | Array,
    opt: Optimizer | None = None,
) -> Array:
    """Π(x − Δ(clip(g))): clipped gradient step (SGD lr·g, or ``opt``) projected onto
    [lo, hi]."""
    gc = np.minimum(np.maximum(g, -clip), clip)
    d = lr * gc if opt is None else opt.step(gc, lr)
    return np.minimum(np.maximum(x - d, lo), hi)


def _k_limits(net: EPNetwork) -> tuple[float | Array, float | Array]:
    if net.k_bounds is not None:
        return net.k_bounds
    return net.limits.coupling.min, net.limits.coupling.max


def ep_update(
    rule: EPRule,
    readings: EPReadings,
    state: EPState,
    net: EPNetwork,
    opt: EPOptimizers | None = None,
) -> EPUpdate:
    """One EP update of B members from m samples each (module docstring); vectorised.

    ``opt`` the optimizer state (None: plain SGD at the rule's learning rates). The inputs are
    taken as given (the callers validated them: float64 phases, bool masks, shapes as
    documented)."""
    free, plus, minus = readings.free, readings.plus, readings.minus
    centred = rule.mode == "centred"
    if centred and minus is None:
        raise ValueError("readings.minus: the centred rule needs the θ^{−β} readings")
    if free.shape[0] == 1 and free.shape[1] == 1:
        return _update_one(rule, readings, state, net, centred, opt)
    sc = 1.0 if opt is None else opt.lr_scale
    beta = rule.beta
    ok = np.asarray(readings.locked, dtype=bool)
    d_plus = wrap(plus - free)  # wrapped displacements (rad)
    disp = np.abs(d_plus).max(axis=-1)
    if centred:
        assert minus is not None
        disp = np.maximum(disp, np.abs(wrap(minus - free)).max(axis=-1))
    jump = (disp > rule.basin_jump_rad) & ok
    valid = ok & ~jump
    all_valid = bool(valid.all())
    updated = valid.any(axis=1)
    m_ph = minus if centred else None
    learn_w = state.learn_omega & updated[:, None]
    learn_k = state.learn_coupling & updated[:, None]
    omega, coupling = state.omega, state.coupling
    lim = net.limits
    if learn_w.any():
        if m_ph is not None:
            g = two_phase_from_displacement(wrap(plus - m_ph), 2.0 * beta, net.reference)
        else:
            g = two_phase_from_displacement(d_plus, beta, net.reference)
        g_w = _masked_mean(g, valid, all_valid, state.learn_omega)
        o_w = None if opt is None else opt.omega
        new = _step(omega, sc * rule.lr_omega, g_w, rule.clip, lim.omega.min, lim.omega.max, o_w)
        omega = np.where(learn_w, new, omega)
    else:
        g_w = np.zeros(omega.shape)
    if learn_k.any():
        gk = coupling_gradient_two_phase(free, plus, net.edges, beta, m_ph, net.coupling)
        g_k = _masked_mean(gk, valid, all_valid, state.learn_coupling)
        lo, hi = _k_limits(net)
        o_k = None if opt is None else opt.coupling
        new = _step(coupling, sc * rule.lr_k, g_k, rule.clip, lo, hi, o_k)
        coupling = np.where(learn_k, new, coupling)
    else:
        g_k = np.zeros(coupling.shape)
    return EPUpdate(omega, coupling, valid, ~ok, jump, updated, g_w, g_k)


_MAX = np.maximum.reduce  # (the reduction without the wrapper)


def _update_one(
    rule: EPRule,
    readings: EPReadings,
    state: EPState,
    net: EPNetwork,
    centred: bool,
    opt: EPOptimizers | None,
) -> EPUpdate:
    """:func:`ep_update` for one member and one sample (a single device's step): the same
    arithmetic on the (1, N) and (1, E) rows — the mean over one valid sample is its
    gradient — with the sample's validity as Python scalars (fewer array operations; the
    (1, 1) masks are shared read-only constants)."""
    f, p = readings.free[0, 0], readings.plus[0, 0]
    d_plus = wrap(p - f)  # wrapped displacement (rad)
    ok = bool(readings.locked[0, 0])
    jump = False
    m_ph = None
    if ok:  # (an unlocked sample is skipped whatever its displacement)
        lim_b = rule.basin_jump_rad
        jump = bool(_MAX(np.abs(d_plus)) > lim_b)
        if centred:
            assert readings.minus is not None
            m_ph = readings.minus[0, 0]
            jump = jump or bool(_MAX(np.abs(wrap(m_ph - f))) > lim_b)
    valid = ok and not jump
    omega, coupling = state.omega, state.coupling
    lim = net.limits
    sc = 1.0 if opt is None else opt.lr_scale
    if valid:  # (an all-False mask leaves ω as it is; not worth a test on one row)
        learn = state.learn_omega
        if m_ph is not None:
            g = two_phase_from_displacement(wrap(p - m_ph), 2.0 * rule.beta, net.reference)
        else:
            g = two_phase_from_displacement(d_plus, rule.beta, net.reference)
        g_w = np.where(learn, g, 0.0)
        o_w = None if opt is None else opt.omega
        new = _step(omega, sc * rule.lr_omega, g_w, rule.clip, lim.omega.min, lim.omega.max, o_w)
        omega = np.where(learn, new, omega)
    else:
        g_w = np.zeros(omega.shape)
    learn = state.learn_coupling
    if valid and np.count_nonzero(learn):
        gk = coupling_gradient_two_phase(f, p, net.edges, rule.beta, m_ph, net.coupling)
        g_k = np.where(learn, gk, 0.0)
        lo, hi = _k_limits(net)
        o_k = None if opt is None else opt.coupling
        new = _step(coupling, sc * rule.lr_k, g_k, rule.clip, lo, hi, o_k)
        coupling = np.where(learn, new, coupling)
    else:
        g_k = np.zeros(coupling.shape)
    flags = SAMPLE_FLAGS
    return EPUpdate(
        omega, coupling, flags[valid], flags[not ok], flags[jump], flags[valid][0], g_w, g_k
    )
