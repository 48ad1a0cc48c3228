# mypy: disallow-untyped-defs=False
"""Optional compiled kernels for :mod:`phasegrad_hw.engine.ensemble` (used when numba is installed).

The locked states come from the one compiled Newton, :func:`phasegrad_hw.physics._kernels.newton`,
run undamped from a warm start (at most ``fast_iters`` iterations, ``trust_rad`` trust region,
tolerance max(tol, rounding floor), numbers from ``NEWTON``), a state accepted when every
edge has cos Δθ > 0. The update is the compiled copy of the EP rule
(:func:`phasegrad_hw.learning.ep.ep_update`) for the engine's case — one-sided, H = sin,
linear nudge, one sample per step — pinned to it by tests/unit/test_ep_rule.py. A member
whose fast solve fails is reported (:attr:`Status.FAST_FAILED`) and left untouched, so the
engine redoes its step on the robust numpy/physics path.

numba's on-disk cache (``cache=True``) is keyed on this file's content only: after a change to
:mod:`phasegrad_hw.physics._kernels` (compiled into these kernels), delete this package's
``__pycache__/*.nbi`` so the kernels are rebuilt.

Arguments are grouped in NamedTuples (:class:`Net`, :class:`Rule`, :class:`Targets`,
:class:`Members`, :class:`Epoch`, :class:`EpochOut`). The Newton policy (``NEWTON``) is not an
argument: the entry points are compiled for it (:func:`compiled_for`), so its numbers are
constants the compiler folds, and the hot path takes arrays out of their groups once, outside
its loops (each extraction is a reference-count update), and hands arrays, not groups, to what
it calls once per solve. Python passes the groups as plain tuples (:func:`plain`).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from enum import IntEnum
from typing import Any, NamedTuple

import numpy as np
from numba import njit, prange

from phasegrad_hw.physics._kernels import (
    EPS,
    NUDGE_LINEAR,
    NUDGE_NONE,
    Graph,
    Newton,
    Nudge,
    Stop,
    Work,
    edges_stable,
    make_graph,
    make_work,
    newton,
    newton_policy,
    wrap,
)
from phasegrad_hw.physics.policy import NEWTON


class Status(IntEnum):
    """Outcome of one member step."""

    NOT_RUN = -1  # the epoch stopped before this step
    UPDATED = 0  # valid pair: parameters updated
    BASIN_JUMP = 2  # displacement above basin_jump_rad: skipped
    FAST_FAILED = 3  # the fast solve failed: member untouched, redo on the robust path


class Net(NamedTuple):
    """Topology (:class:`~phasegrad_hw.physics._kernels.Graph`) and roles (index arrays)."""

    graph: Graph
    inputs: np.ndarray
    outputs: np.ndarray


class Rule(NamedTuple):
    """The EP rule's numbers (:class:`~phasegrad_hw.learning.ep.EPRule`) and the projection
    bounds (device limits): β, learning rates, clip, basin-jump threshold (rad), ω and K
    limits (model units)."""

    beta: float
    lr_w: float
    lr_k: float
    clip: float
    basin: float
    w_lo: float
    w_hi: float
    k_lo: float
    k_hi: float


class Targets(NamedTuple):
    """Clamp targets: ``tmode`` 0 template table, 1 quadratic / 2 hinge phase-difference loss;
    ``table`` (classes, n_out) rad; ``margin`` rad."""

    tmode: int
    table: np.ndarray
    margin: float


class Members(NamedTuple):
    """Trainable state of every member (updated in place): ω (B, N), K (B, E), masks."""

    omega: np.ndarray
    coupling: np.ndarray
    learn_w: np.ndarray
    learn_k: np.ndarray


class Epoch(NamedTuple):
    """One epoch's inputs: input frequencies (n, n_in), labels (n,), order (B, T); warm
    starts: theta_prev (B, N) last free state, cache (B, n, N) free state per sample."""

    xin: np.ndarray
    y: np.ndarray
    order: np.ndarray
    theta_prev: np.ndarray
    cache: np.ndarray


class EpochOut(NamedTuple):
    """free_out (B, T, n_out) free output phases, status (B, T) :class:`Status`, stop (B,)
    first failed step or −1."""

    free_out: np.ndarray
    status: np.ndarray
    stop: np.ndarray


class Fixed(NamedTuple):
    """The argument groups that stay fixed over a training run (:class:`Net`, :class:`Rule`,
    :class:`Targets`), as the entry points take them (:func:`plain`), and the kernels
    compiled for the Newton policy."""

    net: tuple[Any, ...]
    rule: tuple[Any, ...]
    targets: tuple[Any, ...]
    kernels: Kernels


def plain(group: tuple[Any, ...]) -> tuple[Any, ...]:
    """A group (a NamedTuple, nested ones too) as plain tuples in field order: how the entry
    points take their groups from Python. numba resolves a plain tuple's type in C and a
    NamedTuple's in Python (~5 µs per call for the engine's six groups); the kernels rebuild
    the NamedTuples (:func:`_named`), so their code reads fields by name."""
    return tuple(plain(x) if isinstance(x, tuple) else x for x in group)


def fixed_args(model, rule, encoding) -> Fixed:
    """Kernel tuples for a device model, an :class:`~phasegrad_hw.learning.ep.EPRule` and an
    encoding: topology and roles, the rule with the device limits as projection bounds, the
    clamp-target encoding, and the kernels compiled for the Newton policy
    :data:`~phasegrad_hw.physics.policy.NEWTON`."""
    edges = model.edge_index
    roles = model.roles
    outputs = np.asarray(roles.outputs, dtype=np.int64)
    lim = model.limits
    diff = encoding.readout == "difference"
    groups = (
        Net(
            make_graph(model.n, edges[:, 0], edges[:, 1], roles.reference),
            np.asarray(roles.inputs, dtype=np.int64),
            outputs,
        ),
        Rule(
            rule.beta,
            rule.lr_omega,
            rule.lr_k,
            rule.clip,
            rule.basin_jump_rad,
            lim.omega.min,
            lim.omega.max,
            lim.coupling.min,
            lim.coupling.max,
        ),  # fmt: skip
        Targets(
            {"quadratic": 1, "hinge": 2}[encoding.difference_loss] if diff else 0,
            np.ascontiguousarray(encoding.templates(len(outputs)), dtype=np.float64),
            float(encoding.margin),
        ),
    )
    net, rule_t, targets = plain(groups)
    return Fixed(net, rule_t, targets, compiled_for(newton_policy(NEWTON)))


class _Work(NamedTuple):
    nw: Work  # the Newton solver's arrays
    nudge: Nudge  # linear nudge of strength β on the outputs toward tgt (free: unused)
    w: np.ndarray
    wc: np.ndarray
    fth: np.ndarray
    pth: np.ndarray
    gout: np.ndarray
    dth: np.ndarray


@njit(cache=True)
def _workspace(net, beta):
    g = net.graph
    n = g.red.shape[0]
    outputs = net.outputs
    bet = np.zeros(n)
    for o in range(outputs.shape[0]):
        bet[outputs[o]] = beta
    tgt = np.zeros(n)
    return _Work(
        make_work(n, g.ei.shape[0]),
        Nudge(bet, tgt),
        np.empty(n),
        np.empty(n),
        np.empty(n),
        np.empty(n),
        np.empty(outputs.shape[0]),
        np.empty(n),
    )


@njit(cache=True, inline="always")
def _stop(wc, kk, pol):
    """Undamped stop: residual max(tol, rounding floor) for centred frequencies wc and edge
    couplings kk (scale 1 + max|ω| + 2ΣK), at most ``fast_iters`` iterations."""
    n = wc.shape[0]
    ksum = 0.0
    wmax = 0.0
    for e in range(kk.shape[0]):
        ksum += kk[e]
    for i in range(n):
        wmax = max(wmax, abs(wc[i]))
    floor = pol.floor_factor * EPS * (1.0 + wmax + 2.0 * ksum) * math.sqrt(n)
    return Stop(max(pol.tol, floor), 0.0, pol.fast_iters)


@njit(cache=True, inline="always")
def _accept(done, ei, ej, sn, cs, th, ref):
    """The fast path's verdict on an undamped :func:`newton` run that returned ``done``: True
    when it converged with every edge at cos Δθ > 0, judged from the last evaluated node
    sines/cosines ``sn``/``cs`` (exact at θ when the residual test ended the run, within
    ``step_done_rad`` of θ when a tiny step did). θ (N,) is wrapped either way."""
    stable = edges_stable(ei, ej, sn, cs)
    for i in range(th.shape[0]):
        if i != ref:
            th[i] = wrap(th[i])
    return done and stable


@njit(cache=True, inline="always")
def _centre(w, out):
    n = w.shape[0]
    mu = 0.0
    for i in range(n):
        mu += w[i]
    mu /= n
    for i in range(n):
        out[i] = w[i] - mu


@njit(cache=True, inline="always")
def rule_step(rule, g, fth, pth, dth, b, omega, coupling, learn_w, learn_k):
    """The EP rule for one member b and one sample (one-sided, H = sin), in place on row b of
    ω (B, N) and K (B, E): d = wrap(θ^β − θ*), skipped if max|d| > basin; g_ω = −d/β
    (reference 0), g_K = [cos Δ* − cos Δ^β]/β; each clipped to ±clip, stepped and projected
    onto the limits (learnable entries only)."""
    n = fth.shape[0]
    jump = 0.0
    for i in range(n):
        d = wrap(pth[i] - fth[i])
        dth[i] = d
        jump = max(jump, abs(d))
    if jump > rule.basin:
        return Status.BASIN_JUMP
    beta, clip = rule.beta, rule.clip
    lr_w, w_lo, w_hi = rule.lr_w, rule.w_lo, rule.w_hi
    lr_k, k_lo, k_hi = rule.lr_k, rule.k_lo, rule.k_hi
    ref, ei, ej = g.ref, g.ei, g.ej
    for i in range(n):
        if learn_w[b, i] and i != ref:
            gw = -dth[i] / beta
            gw = min(max(gw, -clip), clip)
            omega[b, i] = min(max(omega[b, i] - lr_w * gw, w_lo), w_hi)
        elif learn_w[b, i]:
            omega[b, i] = min(max(omega[b, i], w_lo), w_hi)
    for e in range(coupling.shape[1]):
        if learn_k[b, e]:
            dp = pth[ej[e]] - pth[ei[e]]
            df = fth[ej[e]] - fth[ei[e]]
            gk = (math.cos(df) - math.cos(dp)) / beta
            gk = min(max(gk, -clip), clip)
            coupling[b, e] = min(max(coupling[b, e] - lr_k * gk, k_lo), k_hi)
    return Status.UPDATED


@njit(cache=True)
def rule_update(rule, g, free, plus, mem, status):
    """:func:`rule_step` for every member b from its readings free[b], plus[b] (N,)."""
    dth = np.empty(free.shape[1])
    omega, coupling, learn_w, learn_k = mem
    for b in range(free.shape[0]):
        status[b] = rule_step(rule, g, free[b], plus[b], dth, b, omega, coupling, learn_w, learn_k)


@njit(cache=True, inline="always")
def _set_targets(tg, outputs, fth, yy, gout, tgt):
    """Clamp targets of the outputs for label yy at the free state fth (into tgt)."""
    n_out = outputs.shape[0]
    tmode = tg.tmode
    if tmode == 0:
        table = tg.table
        for o in range(n_out):
            tgt[outputs[o]] = table[yy, o]
        return
    margin = tg.margin
    oy = fth[outputs[yy]]
    tot = 0.0
    for o in range(n_out):
        if o == yy:
            continue
        r = wrap(oy - fth[outputs[o]]) + 2.0 * margin
        if tmode == 2 and r < 0.0:
            r = 0.0
        gout[o] = -r
        tot += r
    gout[yy] = tot
    for o in range(n_out):
        tgt[outputs[o]] = wrap(fth[outputs[o]] - gout[o])


@njit(cache=True, inline="always")
def _member_epoch(b, net, rule, tg, pol, mem, ep, out):
    """One member's online epoch: samples ep.order[b, t] in turn, warm-started from
    ``cache[b, sample]`` (its free state for that sample last epoch) or else its last free
    state. Each step: the free state, the clamp targets, the nudged state (started where the
    free one ended: its node sines/cosines are known), then :func:`rule_step`. On a fast-path
    failure the member stops (out.stop[b] = t, member untouched from that step on) so the
    engine finishes its epoch on the robust path.

    The groups are taken apart once, before the sample loop, and the step is written out in
    it: every array handed to an inlined function per sample costs a reference-count update."""
    g = net.graph
    inputs, outputs = net.inputs, net.outputs
    omega, coupling, learn_w, learn_k = mem
    xin, y, order, theta_prev, cache = ep
    free_out, status, stop = out
    n = omega.shape[1]
    ws = _workspace(net, rule.beta)
    nw, nudge = ws.nw, ws.nudge
    ei, ej, ref = g.ei, g.ej, g.ref
    sn, cs = nw.sn, nw.cs
    tgt = nudge.tgt
    w, wc, fth, pth, gout, dth = ws.w, ws.wc, ws.fth, ws.pth, ws.gout, ws.dth
    kk = coupling[b]
    stop[b] = -1
    for t in range(order.shape[1]):
        smp = order[b, t]
        if math.isnan(cache[b, smp, 0]):
            for i in range(n):
                fth[i] = theta_prev[b, i]
        else:
            for i in range(n):
                fth[i] = cache[b, smp, i]
        for i in range(n):
            w[i] = omega[b, i]
        for a in range(inputs.shape[0]):
            w[inputs[a]] = xin[smp, a]
        _centre(w, wc)
        lim = _stop(wc, kk, pol)
        done, _ = newton(g, nw, wc, kk, fth, nudge, NUDGE_NONE, pol, lim, False, False)
        if not _accept(done, ei, ej, sn, cs, fth, ref):
            status[b, t] = Status.FAST_FAILED
            stop[b] = t
            break
        for o in range(outputs.shape[0]):
            free_out[b, t, o] = fth[outputs[o]]
        _set_targets(tg, outputs, fth, y[smp], gout, tgt)
        for i in range(n):
            pth[i] = fth[i]
        done, _ = newton(g, nw, wc, kk, pth, nudge, NUDGE_LINEAR, pol, lim, True, False)
        if not _accept(done, ei, ej, sn, cs, pth, ref):
            status[b, t] = Status.FAST_FAILED
            stop[b] = t
            break
        status[b, t] = rule_step(rule, g, fth, pth, dth, b, omega, coupling, learn_w, learn_k)
        for i in range(n):
            theta_prev[b, i] = fth[i]
            cache[b, smp, i] = fth[i]


class Kernels(NamedTuple):
    """The engine's entry points compiled for one Newton ``policy``, whose numbers are
    compile-time constants in them (numba folds them; its on-disk cache keys on them, as the
    kernels' closure contents, so a changed :data:`~phasegrad_hw.physics.policy.NEWTON`
    recompiles).

    ``solve_many(net, W, k, theta0)``: free states (M, N) and ok flags for frequencies
    W (M, N), couplings k (M, E). ``train_epoch(net, rule, targets, members, epoch, out)``: a
    whole online epoch of every member (:class:`Epoch` in, :class:`EpochOut` out; one online
    step is a one-sample epoch); ``train_epoch_parallel`` the same with members spread over
    threads (identical results: members are independent and each runs sequentially). Every
    group is passed as :func:`plain` makes it."""

    policy: Newton
    solve_many: Callable[..., Any]
    train_epoch: Callable[..., Any]
    train_epoch_parallel: Callable[..., Any]


@njit(cache=True, inline="always")
def _named(net, rule, tg, mem, ep, out):
    """The groups an entry point took as plain tuples (:func:`plain`) as NamedTuples again (no
    copies)."""
    return (
        Net(Graph(*net[0]), net[1], net[2]),
        Rule(*rule),
        Targets(*tg),
        Members(*mem),
        Epoch(*ep),
        EpochOut(*out),
    )


@njit(cache=True)
def _member_epoch_call(b, net, rule, tg, pol, mem, ep, out):
    """:func:`_member_epoch` as a called function (numba's parallel loops cannot take it
    inlined); ``pol`` is then a run-time argument."""
    _member_epoch(b, net, rule, tg, pol, mem, ep, out)


def _make_train_epoch(pol: Newton, parallel: bool) -> Callable[..., Any]:
    if parallel:

        @njit(cache=True, parallel=True)
        def train_epoch_parallel(net, rule, tg, mem, ep, out):
            # a parallel loop body takes arrays and scalars, not tuples holding arrays: the
            # groups are taken apart here and rebuilt inside the loop (no copies)
            ei, ej, red, elo, ehi, ref = net[0]
            inputs, outputs = net[1], net[2]
            tmode, table, margin = tg
            omega, coupling, learn_w, learn_k = mem
            xin, y, order, theta_prev, cache = ep
            free_out, status, stop = out
            for b in prange(omega.shape[0]):
                _member_epoch_call(
                    b,
                    Net(Graph(ei, ej, red, elo, ehi, ref), inputs, outputs),
                    Rule(*rule),
                    Targets(tmode, table, margin),
                    pol,
                    Members(omega, coupling, learn_w, learn_k),
                    Epoch(xin, y, order, theta_prev, cache),
                    EpochOut(free_out, status, stop),
                )

        return train_epoch_parallel

    @njit(cache=True)
    def train_epoch(net_t, rule_t, tg_t, mem_t, ep_t, out_t):
        net, rule, tg, mem, ep, out = _named(net_t, rule_t, tg_t, mem_t, ep_t, out_t)
        for b in range(mem.omega.shape[0]):
            _member_epoch(b, net, rule, tg, pol, mem, ep, out)

    return train_epoch


@functools.cache
def compiled_for(pol: Newton) -> Kernels:
    """The :class:`Kernels` for policy ``pol`` (one set per policy and process)."""

    @njit(cache=True)
    def solve_many(net, W, k, theta0):
        g = Graph(*net[0])
        M, n = W.shape
        th = theta0.copy()
        ok = np.zeros(M, dtype=np.bool_)
        nw = make_work(n, g.ei.shape[0])
        wc = np.empty(n)
        free = Nudge(np.zeros(n), np.zeros(n))
        for r in range(M):
            _centre(W[r], wc)
            stop = _stop(wc, k[r], pol)
            done, _ = newton(g, nw, wc, k[r], th[r], free, NUDGE_NONE, pol, stop, False, False)
            ok[r] = _accept(done, g.ei, g.ej, nw.sn, nw.cs, th[r], g.ref)
        return th, ok

    return Kernels(
        pol,
        solve_many,
        _make_train_epoch(pol, False),
        _make_train_epoch(pol, True),
    )
