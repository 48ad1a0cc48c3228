"""Schur-complement Newton for a layered network with one hidden layer (docs/design.md §8).

Given the output phases θ_o, each hidden oscillator sits at the stable root of its own
equation, θ_h = arg Z_h + arcsin(ω_h/|Z_h|) with Z_h = Σ_x K_hx e^{iφ_x} + Σ_o K_ho e^{iθ_o}
(no lock when |ω_h| > |Z_h|). Damped Newton then runs on the outputs alone: its Jacobian is
the Schur complement S = J_oo − J_oh D⁻¹ J_ho of the diagonal hidden block D (model units),
one (n_out × n_out) solve per step. The reduced energy E_r(θ_o) = E(θ_h(θ_o), θ_o) + ν·L(θ_o)
(ν = direction·β per row) is what the line search decreases. Public through
:func:`phasegrad_hw.physics.layered.solve_layered` and
:class:`phasegrad_hw.physics.layered.LayeredBatch`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
from numpy.typing import NDArray

from phasegrad_hw.physics._layered_net import IntArray, LayeredNetwork
from phasegrad_hw.physics.coupling import Array, wrap
from phasegrad_hw.physics.multiclass import OutputLoss
from phasegrad_hw.physics.policy import NewtonPolicy

BoolArray = NDArray[np.bool_]


@dataclass(frozen=True)
class Couplings:
    """The parameters of a one-hidden-layer network split by block (model units).

    ``W`` the hidden → output couplings (n_out, n_h), ``W_in`` the held → hidden ones
    (n_h, n_held), ``u`` the bias field on the outputs Σ_b K_ob e^{iφ_b}.
    """

    w_h: Array
    w_o: Array
    W: Array
    W_in: Array
    u: NDArray[np.complex128]

    @classmethod
    def of(cls, net: LayeredNetwork, omega: Array, K: Array) -> Couplings:
        b_in, b_out, b_bias = net.blocks
        n_h = net.hidden[0]
        W = b_out.view(K)
        u = np.asarray(b_bias.view(K) @ unit(np.asarray(net.bias_phases_rad)), np.complex128)
        return cls(omega[:n_h], omega[n_h:], W, b_in.view(K), u)

    def held_field(self, held: Array) -> NDArray[np.complex128]:
        """Z of the held oscillators on each hidden one (B, n_h), held phases (B, n_held)."""
        out = np.empty((held.shape[0], self.W_in.shape[0]), dtype=np.complex128)
        out.real = np.cos(held) @ self.W_in.T
        out.imag = np.sin(held) @ self.W_in.T
        return out


class Reduced:
    """The reduced (output-only) system of a batch, evaluated on row subsets.

    ``z`` the held field (B, n_h); ``nudge`` ν = direction·β per row (B,), applied with ``loss``.
    F_o = −∂E_r/∂θ_o and S = −∂²E_r/∂θ_o² at the hidden layer's closed-form stable root.
    """

    def __init__(
        self, c: Couplings, z: NDArray[np.complex128], loss: OutputLoss | None, nudge: Array
    ) -> None:
        self.c = c
        self.z = z
        self.loss = loss
        self.nudge = nudge
        self.nudged = loss is not None and bool(np.any(nudge))

    def feed_forward(self) -> Array:
        """Start for the outputs: each layer locked to the layer below, back-action ignored."""
        th_h = lock_to(self.z, self.c.w_h)
        return lock_to(unit(th_h) @ self.c.W.T + self.c.u, self.c.w_o)

    def evaluate(self, th_o: Array, rows: IntArray) -> State:
        """Reduced residual, hidden phases and Jacobian parts at output phases ``th_o``."""
        c = self.c
        eo = unit(th_o)
        zr = self.z[rows]
        Z = zr + eo @ c.W
        R = np.abs(Z)
        Rg = np.maximum(R, 1e-300)
        rho = c.w_h / Rg
        can: BoolArray = np.asarray((np.abs(rho) < 1.0).all(axis=1))
        rc = np.clip(rho, -1.0, 1.0)
        sq = np.sqrt(np.maximum(1.0 - rc * rc, 0.0))  # cos(arcsin ρ)
        # θ_h = arg Z + arcsin ρ: e^{iθ_h} = (Z/|Z|)·(cos(arcsin ρ) + iρ) and F_h = ω_h +
        # |Z| sin(arg Z − θ_h) = ω_h − |Z|ρ, so no transcendental function runs on the (b, n_h)
        # arrays; θ_h itself is taken from e^{iθ_h} only where needed (State.th_h)
        zu = Z / Rg
        if not R.all():
            zu[R == 0.0] = 1.0  # no field: arg Z = 0
        eh = zu * (sq + 1j * rc)
        Fh = c.w_h - R * rc
        G = (eh @ c.W.T + c.u) * eo.conj()  # Σ_j K_oj e^{i(θ_j − θ_o)}
        F = c.w_o + G.imag
        # coupling part of the energy, −Σ_edges K cos(Δ) (held–hidden, hidden–out, bias–out)
        energy = -(zr * eh.conj()).real.sum(axis=1) - G.real.sum(axis=1)
        if self.loss is not None and self.nudged:
            sub = self.loss.take(rows)
            nu = self.nudge[rows]
            F = F - nu[:, None] * sub.grad(th_o)
            energy = energy + nu * sub.value(th_o)
        D = -R * sq
        return State(th_o, F, Fh, can, energy, G.real, D, eo, eh)

    def schur(self, st: State, rows: IntArray, M: Array | None = None) -> Array:
        """S = J_oo − J_oh D⁻¹ J_ho (b, n_out, n_out) at an evaluated state (``M`` = J_oh if
        already at hand). J_oo is diagonal (no output–output couplings): −Σ_j K_oj cos(θ_j − θ_o)
        plus the nudge's −ν ∂²L/∂θ_o²."""
        # one small matrix product per row: numpy hands each to BLAS single-threaded, where one
        # (3b, n_h) @ (n_h, n_out²) product would go multi-threaded and spin on a loaded machine
        J_oh = self.coupling_oh(st) if M is None else M
        S: Array = -np.matmul(J_oh / st.D[:, None, :], np.swapaxes(J_oh, 1, 2))
        idx = np.arange(S.shape[1])
        S[:, idx, idx] -= st.greal
        if self.loss is not None and self.nudged:
            nu = self.nudge[rows]
            S -= nu[:, None, None] * self.loss.take(rows).hessian(st.th_o)
        return S

    def coupling_oh(self, st: State) -> Array:
        """J_oh = K_oh cos(θ_h − θ_o) (b, n_out, n_h)."""
        co, so, ch, sh = st.eo.real, st.eo.imag, st.eh.real, st.eh.imag
        cosd = co[:, :, None] * ch[:, None, :] + so[:, :, None] * sh[:, None, :]
        out: Array = self.c.W * cosd
        return out

    def energy_change(self, new: State, old: State) -> Array:
        """E_r(new) − E_r(old) (B,), phase terms through wrapped displacements."""
        lin = (self.c.w_o * (new.th_o - old.th_o)).sum(axis=1)
        if self.c.w_h.any():  # ω_h = 0 (the default in training): no hidden phase term
            lin += (self.c.w_h * wrap(new.th_h - old.th_h)).sum(axis=1)
        out: Array = new.energy - old.energy - lin
        return out


@dataclass
class State:
    """Arrays of an evaluated reduced state (rows of a batch)."""

    th_o: Array
    F: Array
    Fh: Array
    can: BoolArray
    energy: Array
    greal: Array
    D: Array
    eo: NDArray[np.complex128]
    eh: NDArray[np.complex128]

    @property
    def th_h(self) -> Array:
        """Hidden phases (b, n_h), rad in (−π, π]."""
        out: Array = np.angle(self.eh)
        return out

    def take(self, rows: IntArray) -> State:
        return State(*(getattr(self, f)[rows] for f in _STATE_FIELDS))

    def put(self, rows: IntArray, other: State, sel: BoolArray) -> None:
        for f in _STATE_FIELDS:
            getattr(self, f)[rows] = getattr(other, f)[sel]


_STATE_FIELDS = ("th_o", "F", "Fh", "can", "energy", "greal", "D", "eo", "eh")


class Solved(NamedTuple):
    """Outcome of :func:`newton` per row: the state, max residual, iterations, flags."""

    state: State
    residual: Array
    iterations: NDArray[np.int64]
    converged: BoolArray
    failed: BoolArray


def newton(sys_: Reduced, st: State, target: Array, pol: NewtonPolicy, iters: int) -> Solved:
    """Damped Newton on the outputs from the evaluated start ``st`` (all rows of the batch).

    Each step solves (−S + μI)·δ = F_o, μ = 0 where −S is positive definite and μ just above
    −λ_min(−S) elsewhere (a descent direction of E_r, so the iteration heads for a stable state),
    limited to ``pol.trust_rad`` and accepted by :func:`_line_search`. Rows stop at
    max |F| <= ``target`` (B,) or when the hidden layer cannot lock (``failed``).
    """
    B = st.th_o.shape[0]
    failed = ~st.can
    res = residual(st, np.arange(B))
    done = res <= target
    its = np.zeros(B, dtype=np.int64)
    eye = np.eye(st.th_o.shape[1])
    for _ in range(iters):
        act = np.flatnonzero(~done & ~failed)
        if act.size == 0:
            break
        its[act] += 1
        cur = st.take(act)
        A = -sys_.schur(cur, act)
        pd = chol_ok(A)
        if not pd.all():
            npd = ~pd
            An = A[npd]
            lam = np.linalg.eigvalsh(An)[:, 0]
            mu = -lam + 1e-3 * (1.0 + np.abs(An).max(axis=(1, 2)))
            A[npd] = An + mu[:, None, None] * eye
        step: Array = np.asarray(np.linalg.solve(A, cur.F[:, :, None])[:, :, 0], np.float64)
        big = np.abs(step).max(axis=1)
        step *= np.minimum(1.0, pol.trust_rad / np.maximum(big, 1e-300))[:, None]
        _line_search(sys_, st, cur, act, step, pd, failed, pol)
        res[act] = residual(st, act)
        done = res <= target
    return Solved(st, res, its, done & ~failed, failed)


def _line_search(
    sys_: Reduced,
    st: State,
    cur: State,
    act: IntArray,
    step: Array,
    pd: BoolArray,
    failed: BoolArray,
    pol: NewtonPolicy,
) -> None:
    """Backtrack along ``step`` from ``cur`` (the rows ``act`` of ``st``), halving α.

    A trial is accepted by Armijo on the reduced energy, or on ‖F_o‖² for a plain Newton step
    (where energy differences fall below rounding); the last trial is taken whatever it gives,
    and a row whose hidden layer cannot lock there is marked in ``failed``. Updates ``st``.
    """
    f2 = (cur.F * cur.F).sum(axis=1)
    slope = -(cur.F * step).sum(axis=1)  # dE_r/dα at α = 0 (< 0: descent)
    alpha = np.ones(act.size)
    pend = np.arange(act.size)
    for h in range(pol.line_search_trials):
        rows = act[pend]
        trial = sys_.evaluate(cur.th_o[pend] + alpha[pend, None] * step[pend], rows)
        a = alpha[pend]
        dE = sys_.energy_change(trial, cur if h == 0 else cur.take(pend))
        ok_e = dE <= pol.armijo * a * slope[pend]
        ok_f = pd[pend] & ((trial.F * trial.F).sum(axis=1) <= (1.0 - pol.armijo * a) * f2[pend])
        last = h == pol.line_search_trials - 1
        take = trial.can & (ok_e | ok_f | last)
        st.put(rows[take], trial, take)
        if last:
            failed[rows[~trial.can]] = True
        pend = pend[~take]
        if pend.size == 0:
            break
        alpha[pend] *= 0.5


def stable_rows(sys_: Reduced, st: State, failed: BoolArray, pol: NewtonPolicy) -> BoolArray:
    """Is the full free block stable at each row? −J is positive definite iff −D > 0 and −S is
    (Cholesky), both with the shift ``pol.stability_shift``·max|J| (J of the row)."""
    B, n_o = st.th_o.shape
    stable = np.zeros(B, dtype=bool)
    ok_rows = np.flatnonzero(~failed)
    if ok_rows.size:
        sub = st.take(ok_rows)
        M = sys_.coupling_oh(sub)
        S = sys_.schur(sub, ok_rows, M)
        jmax = np.maximum(np.abs(sub.D).max(axis=1), np.abs(M).max(axis=(1, 2)))
        jmax = np.maximum(jmax, np.abs(S).max(axis=(1, 2)))
        shift = pol.stability_shift * (jmax + 1e-300)
        stable[ok_rows] = (sub.D < -shift[:, None]).all(axis=1) & chol_ok(
            -S - shift[:, None, None] * np.eye(n_o)
        )
    return stable


def unit(theta: Array) -> NDArray[np.complex128]:
    """e^{iθ} from a cosine and a sine (numpy's complex exp is several times slower)."""
    out = np.empty(theta.shape, dtype=np.complex128)
    out.real = np.cos(theta)
    out.imag = np.sin(theta)
    return out


def lock_to(field: NDArray[np.complex128], omega: Array) -> Array:
    """Stable phase of oscillators of detuning ω in a field Σ K e^{iφ}: arg + arcsin(ω/|field|)."""
    r = np.maximum(np.abs(field), 1e-300)
    out: Array = np.angle(field) + np.arcsin(np.clip(omega / r, -1.0, 1.0))
    return out


def residual(st: State, rows: IntArray) -> Array:
    """max |F| over outputs and hidden oscillators at ``rows`` (inf where the layer cannot
    lock)."""
    r: Array = np.maximum(np.abs(st.F[rows]).max(axis=1), np.abs(st.Fh[rows]).max(axis=1))
    return np.where(st.can[rows], r, np.inf)


def chol_ok(A: Array) -> BoolArray:
    """Per matrix of a stack (b, n, n): does a Cholesky factorisation succeed (positive
    definite)? LAPACK on the whole stack first (the common case: every matrix is); when one
    is not, column by column, vectorised over the stack (n is the small output count)."""
    try:
        if np.isfinite(np.linalg.cholesky(A)).all():
            return np.ones(A.shape[0], dtype=bool)
    except np.linalg.LinAlgError:
        pass
    b, n = A.shape[0], A.shape[1]
    L = np.zeros_like(A)
    ok = np.ones(b, dtype=bool)
    with np.errstate(over="ignore", invalid="ignore"):  # a failed row may overflow: not PD
        _chol_columns(A, L, ok, n)
    return ok


def _chol_columns(A: Array, L: Array, ok: BoolArray, n: int) -> None:
    for k in range(n):
        lk = L[:, k, :k]
        d = A[:, k, k] - (lk * lk).sum(axis=1)
        ok &= d > 0
        piv = np.sqrt(np.where(d > 0, d, 1.0))
        L[:, k, k] = piv
        if k + 1 < n:
            below = A[:, k + 1 :, k] - np.matmul(L[:, k + 1 :, :k], lk[:, :, None])[:, :, 0]
            L[:, k + 1 :, k] = below / piv[:, None]
