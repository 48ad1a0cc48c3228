"""The equilibrium-propagation update rule — the one copy every trainer uses.

From phase readings of the free state θ*, the nudged state θ^β and (centred mode) θ^{−β}
(docs/design.md §2; seed paper arXiv 2604.10272)::

    g_ω = −wrap(θ^β − θ*)/β            (one-sided, O(β) bias)
        = −wrap(θ^β − θ^{−β})/(2β)     (centred, O(β²) bias)          reference entry 0
    g_K = [V(Δ^β) − V(Δ*)]/β           (V' = H; cos Δ* − cos Δ^β for H = sin; centred: ±β, 2β)
    ω ← Π_ω(ω − η_ω·clip(ḡ_ω)),  K ← Π_K(K − η_K·clip(ḡ_K))     (learnable entries only)

ḡ is the mean over a step's *valid* samples: locked in every phase and no wrapped displacement
above ``basin_jump_rad`` on any channel; Π is the projection onto the device limits. The
hardware controller (:mod:`phasegrad_hw.learning.controller`) and the training engine
(:mod:`phasegrad_hw.engine.ensemble`) call :func:`ep_update`; the engine's compiled kernel is a
compiled copy of it for its case (tests/unit/test_ep_rule.py pins the three together).
"""

from __future__ import annotations

from typing import Literal, NamedTuple

import numpy as np
from numpy.typing import NDArray
from pydantic import Field

from phasegrad_hw.config import StrictModel
from phasegrad_hw.device.model import Limits
from phasegrad_hw.physics import CouplingFunction, wrap
from phasegrad_hw.physics.gradients import (
    coupling_gradient_two_phase,
    two_phase_from_displacement,
)

Array = NDArray[np.float64]
Mask = NDArray[np.bool_]

__all__ = ["EPNetwork", "EPReadings", "EPRule", "EPState", "EPUpdate", "ep_update"]


class EPRule(StrictModel):
    """The EP rule's settings (model units unless stated; defaults: the published vowel run).

    ``params`` what learns (ω, K or both); ``beta`` nudge strength (published 0.1); ``mode``
    one-sided or centred (docs/design.md §2); ``averages`` reads averaged per state (hardware;
    the noiseless engine reads once); ``lr_omega``/``lr_k`` learning rates (published 1e-3);
    ``clip`` element-wise gradient clip (published 2); ``basin_jump_rad`` a wrapped
    displacement above this on any channel is a basin jump (rad) and skips the sample.
    """

    params: Literal["omega", "K", "both"] = "omega"
    beta: float = Field(default=0.1, gt=0.0, le=10.0)
    mode: Literal["one_sided", "centred"] = "one_sided"
    averages: int = Field(default=1, ge=1)
    lr_omega: float = Field(default=1e-3, ge=0.0)
    lr_k: float = Field(default=1e-3, ge=0.0)
    clip: float = Field(default=2.0, gt=0.0)
    basin_jump_rad: float = Field(default=1.0, gt=0.0)

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
    potential gives g_K) and the ``limits`` the parameters are projected onto."""

    edges: NDArray[np.int64]
    reference: int
    coupling: CouplingFunction
    limits: Limits


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


def _masked_mean(g: Array, valid: Mask, all_valid: bool, learn: Mask) -> Array:
    """Mean of g (B, m, P) over valid samples (B, m), zero off ``learn`` (B, P)."""
    if all_valid:
        mean = g.sum(axis=1) / float(g.shape[1])
    else:
        den = np.maximum(valid.sum(axis=1), 1)[:, None].astype(np.float64)
        mean = np.where(valid[..., None], g, 0.0).sum(axis=1) / den
    return np.where(learn, mean, 0.0)


def _step(x: Array, lr: float, g: Array, clip: float, lo: float, hi: float) -> Array:
    """Π(x − lr·clip(g)): clipped gradient step projected onto [lo, hi]."""
    return np.minimum(np.maximum(x - lr * np.minimum(np.maximum(g, -clip), clip), lo), hi)


def ep_update(rule: EPRule, readings: EPReadings, state: EPState, net: EPNetwork) -> EPUpdate:
    """One EP update of B members from m samples each (module docstring); vectorised.

    The inputs are taken as given (the callers validated them: float64 phases, bool masks,
    shapes as documented)."""
    free, plus, minus = readings.free, readings.plus, readings.minus
    centred = rule.mode == "centred"
    if centred and minus is None:
        raise ValueError("readings.minus: the centred rule needs the θ^{−β} readings")
    if free.shape[0] == 1 and free.shape[1] == 1:
        return _update_one(rule, readings, state, net, centred)
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
        new = _step(omega, rule.lr_omega, g_w, rule.clip, lim.omega.min, lim.omega.max)
        omega = np.where(learn_w, new, omega)
    else:
        g_w = np.zeros(omega.shape)
    if learn_k.any():
        gk = coupling_gradient_two_phase(free, plus, net.edges, beta, m_ph, net.coupling)
        g_k = _masked_mean(gk, valid, all_valid, state.learn_coupling)
        new = _step(coupling, rule.lr_k, g_k, rule.clip, lim.coupling.min, lim.coupling.max)
        coupling = np.where(learn_k, new, coupling)
    else:
        g_k = np.zeros(coupling.shape)
    return EPUpdate(omega, coupling, valid, ~ok, jump, updated, g_w, g_k)


def _flag(v: bool) -> Mask:
    """A read-only (1, 1) flag (the one-sample path's validity masks, made once)."""
    a = np.full((1, 1), v)
    a.flags.writeable = False
    return a


_FLAGS = {False: _flag(False), True: _flag(True)}
_MAX, _ANY = np.maximum.reduce, np.logical_or.reduce  # (the reductions without the wrappers)


def _update_one(
    rule: EPRule, readings: EPReadings, state: EPState, net: EPNetwork, centred: bool
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
    if valid:  # (an all-False mask leaves ω as it is; not worth a test on one row)
        learn = state.learn_omega
        if m_ph is not None:
            g = two_phase_from_displacement(wrap(p - m_ph), 2.0 * rule.beta, net.reference)
        else:
            g = two_phase_from_displacement(d_plus, rule.beta, net.reference)
        g_w = np.where(learn, g, 0.0)
        new = _step(omega, rule.lr_omega, g_w, rule.clip, lim.omega.min, lim.omega.max)
        omega = np.where(learn, new, omega)
    else:
        g_w = np.zeros(omega.shape)
    learn = state.learn_coupling
    if valid and _ANY(learn, axis=None):
        gk = coupling_gradient_two_phase(f, p, net.edges, rule.beta, m_ph, net.coupling)
        g_k = np.where(learn, gk, 0.0)
        new = _step(coupling, rule.lr_k, g_k, rule.clip, lim.coupling.min, lim.coupling.max)
        coupling = np.where(learn, new, coupling)
    else:
        g_k = np.zeros(coupling.shape)
    flags = _FLAGS
    return EPUpdate(
        omega, coupling, flags[valid], flags[not ok], flags[jump], flags[valid][0], g_w, g_k
    )
