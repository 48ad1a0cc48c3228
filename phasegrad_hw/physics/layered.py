"""Layered oscillator networks with held inputs, bias oscillators and signed couplings
(docs/design.md §2 and §8): description, structure-aware locked-state solver, EP and implicit
gradients.

Physics. Held oscillators x (inputs and biases) follow a strong injection from the reference
clock and sit at programmed phases φ_x; they fix the rotating frame, so no gauge pinning is
needed. Free oscillators f (hidden layers, outputs) obey, in the frame of the reference (model
time units, phases in rad),

    dθ_f/dt = ω_f + Σ_j K_fj sin(θ_j − θ_f) − β_dir·∂L/∂θ_f         (nudge on outputs only)

with K symmetric and signed (a negative K is an inverted tap: K sin(θ_j + π − θ_f) =
−K sin(θ_j − θ_f)). This is the gradient flow of E + β·L with the energy

    E = −Σ_f ω_f θ_f − ½ Σ_{i,j} K_ij cos(θ_j − θ_i)      (pairs with at least one free end).

Topology: held → first hidden layer (all-to-all, inputs and biases), hidden_l → hidden_{l+1},
last hidden → outputs, and bias → every later free layer; no coupling inside a layer.

Solver (one hidden layer). Given the output phases, each hidden oscillator's equation involves
only itself: with Z_h = Σ_x K_hx e^{iφ_x} + Σ_o K_ho e^{iθ_o}, F_h = ω_h + |Z_h| sin(arg Z_h − θ_h),
whose stable root is θ_h = arg Z_h + arcsin(ω_h/|Z_h|) (∂F_h/∂θ_h = −|Z_h|·√(1 − (ω_h/|Z_h|)²) < 0;
no lock when |ω_h| > |Z_h|). The hidden layer is eliminated exactly, and damped Newton runs on the
outputs alone: its Jacobian is the Schur complement S = J_oo − J_oh D⁻¹ J_ho of the diagonal
hidden block D, so each step is one (n_out × n_out) solve. Stability of the full free block:
−J is positive definite iff −D > 0 and −S is positive definite (Cholesky), both with the shift of
:data:`~phasegrad_hw.physics.policy.NEWTON`. Several hidden layers make the Jacobian
block-tridiagonal (eliminate layer by layer); :class:`LayeredNetwork` describes them, the solver
currently accepts one hidden layer.

Gradients. ∂E/∂ω_f = −θ_f and ∂E/∂K_ij = −cos(θ_j − θ_i), so equilibrium propagation gives
∂L/∂ω_f = −(θ^a_f − θ^b_f)/Δβ and ∂L/∂K_ij = −[cos Δ^a_ij − cos Δ^b_ij]/Δβ, with (a, b, Δβ) =
(+β, −β, 2β) centred or (+β, free, β) one-sided; displacements are wrapped. The implicit
reference: λ = J⁻ᵀ ∂L/∂θ (free block), ∂L/∂ω = −λ, ∂L/∂K_ij = −(λ_i − λ_j) sin(θ_j − θ_i)
(λ = 0 on held oscillators).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from functools import cached_property

import numpy as np
from numpy.typing import ArrayLike, NDArray

from phasegrad_hw.physics.coupling import Array, wrap
from phasegrad_hw.physics.multiclass import OutputLoss
from phasegrad_hw.physics.policy import NEWTON
from phasegrad_hw.physics.result import Equilibrium

log = logging.getLogger(__name__)

IntArray = NDArray[np.intp]
ROLE_INPUT, ROLE_BIAS, ROLE_HIDDEN, ROLE_OUTPUT = "input", "bias", "hidden", "output"


@dataclass(frozen=True)
class Block:
    """A dense block of edges: every (row, col) pair, row-major in the coupling vector.

    ``rows`` are oscillators of a free layer, ``cols`` of the layer below (or biases);
    couplings ``K[start:stop].reshape(len(rows), len(cols))``.
    """

    name: str
    rows: IntArray
    cols: IntArray
    start: int

    @property
    def stop(self) -> int:
        return self.start + self.rows.size * self.cols.size

    def view(self, K: Array) -> Array:
        """This block of a coupling vector ``K`` (..., E) as (..., rows, cols)."""
        return K[..., self.start : self.stop].reshape(*K.shape[:-1], self.rows.size, self.cols.size)


@dataclass(frozen=True)
class LayeredNetwork:
    """Frozen description of a layered network (sizes only; parameters live in arrays).

    Oscillator order: inputs, biases, hidden layer 1, …, outputs. ``bias_phases_rad`` are the
    phases at which the bias oscillators are held (rad). Parameters are ω (n_free,) for the free
    oscillators (hidden then outputs, model units) and K (n_edges,) on :attr:`edges`, block by
    block (:attr:`blocks`): held → hidden 1, then per later free layer: previous → it, bias → it.
    """

    n_in: int
    hidden: tuple[int, ...]
    n_out: int
    bias_phases_rad: tuple[float, ...] = (0.0, math.pi / 2)

    def __post_init__(self) -> None:
        if self.n_in < 1 or self.n_out < 1:
            raise ValueError(f"n_in, n_out: need >= 1, got {self.n_in}, {self.n_out}")
        if len(self.hidden) < 1 or min(self.hidden) < 1:
            raise ValueError(f"hidden: need at least one layer of size >= 1, got {self.hidden}")
        if not all(math.isfinite(p) for p in self.bias_phases_rad):
            raise ValueError(f"bias_phases_rad: {self.bias_phases_rad} must be finite")

    @property
    def n_bias(self) -> int:
        return len(self.bias_phases_rad)

    @property
    def n_held(self) -> int:
        return self.n_in + self.n_bias

    @property
    def n_free(self) -> int:
        return sum(self.hidden) + self.n_out

    @property
    def n(self) -> int:
        return self.n_held + self.n_free

    @cached_property
    def layers(self) -> tuple[IntArray, ...]:
        """Oscillator indices per layer: held (inputs + biases), hidden layers, outputs."""
        sizes = (self.n_held, *self.hidden, self.n_out)
        bounds = np.cumsum((0, *sizes))
        return tuple(np.arange(bounds[k], bounds[k + 1]) for k in range(len(sizes)))

    @property
    def inputs(self) -> IntArray:
        return np.arange(self.n_in)

    @property
    def biases(self) -> IntArray:
        return np.arange(self.n_in, self.n_held)

    @property
    def held(self) -> IntArray:
        return self.layers[0]

    @property
    def free(self) -> IntArray:
        return np.arange(self.n_held, self.n)

    @property
    def outputs(self) -> IntArray:
        return self.layers[-1]

    @cached_property
    def roles(self) -> NDArray[np.str_]:
        """Role of every oscillator: "input", "bias", "hidden" or "output"."""
        r = np.empty(self.n, dtype="<U6")
        r[self.inputs] = ROLE_INPUT
        r[self.biases] = ROLE_BIAS
        r[self.n_held : self.outputs[0]] = ROLE_HIDDEN
        r[self.outputs] = ROLE_OUTPUT
        return r

    @cached_property
    def blocks(self) -> tuple[Block, ...]:
        out: list[Block] = []
        start = 0
        first = self.layers[1]
        out.append(Block("held->hidden1", first, self.held, start))
        start = out[-1].stop
        for k in range(2, len(self.layers)):
            name = "output" if k == len(self.layers) - 1 else f"hidden{k}"
            prev = "hidden" + str(k - 1)
            out.append(Block(f"{prev}->{name}", self.layers[k], self.layers[k - 1], start))
            start = out[-1].stop
            out.append(Block(f"bias->{name}", self.layers[k], self.biases, start))
            start = out[-1].stop
        return tuple(out)

    @cached_property
    def edges(self) -> IntArray:
        """(n_edges, 2) oscillator pairs (i, j), i in the later layer, j below it."""
        parts = [
            np.stack(np.meshgrid(b.rows, b.cols, indexing="ij"), axis=-1).reshape(-1, 2)
            for b in self.blocks
        ]
        return np.concatenate(parts).astype(np.intp)

    @property
    def n_edges(self) -> int:
        return self.blocks[-1].stop

    def held_phases(self, inputs_rad: ArrayLike) -> Array:
        """Held phases (B, n_held): the input phases (B, n_in) followed by the bias phases."""
        x = np.asarray(inputs_rad, dtype=np.float64)
        if x.ndim != 2 or x.shape[1] != self.n_in:
            raise ValueError(f"inputs_rad: shape {x.shape} must be (B, {self.n_in})")
        bias = np.broadcast_to(np.asarray(self.bias_phases_rad), (x.shape[0], self.n_bias))
        return np.concatenate([x, bias], axis=1)

    def check_params(self, omega: ArrayLike, K: ArrayLike) -> tuple[Array, Array]:
        w = np.asarray(omega, dtype=np.float64)
        k = np.asarray(K, dtype=np.float64)
        if w.shape != (self.n_free,):
            raise ValueError(f"omega: shape {w.shape} must be ({self.n_free},)")
        if k.shape != (self.n_edges,):
            raise ValueError(f"K: shape {k.shape} must be ({self.n_edges},)")
        if not (np.isfinite(w).all() and np.isfinite(k).all()):
            raise ValueError("omega, K: entries must be finite")
        return w, k


# --------------------------------------------------------------------------- residual, Jacobian
def free_residual(
    net: LayeredNetwork,
    omega: ArrayLike,
    K: ArrayLike,
    theta: ArrayLike,
    loss: OutputLoss | None = None,
    beta: float = 0.0,
    direction: int = 1,
) -> Array:
    """F_f = dθ_f/dt of every free oscillator (B, n_free) from the edge list (any depth)."""
    w, k = net.check_params(omega, K)
    th = np.asarray(theta, dtype=np.float64)
    i, j = net.edges[:, 0], net.edges[:, 1]
    s = k * np.sin(th[:, j] - th[:, i])  # force on i from j; j feels −s
    FT = np.zeros((net.n, th.shape[0]))  # oscillator-major, so np.add.at takes an index array
    np.add.at(FT, i, s.T)
    np.add.at(FT, j, -s.T)
    Ff: Array = FT[net.n_held :].T + w
    if loss is not None and beta:
        Ff[:, -net.n_out :] -= direction * beta * loss.grad(th[:, net.outputs])
    return Ff


def free_jacobian(
    net: LayeredNetwork,
    K: ArrayLike,
    theta: ArrayLike,
    loss: OutputLoss | None = None,
    beta: float = 0.0,
    direction: int = 1,
) -> Array:
    """∂F_f/∂θ_f of the free block (B, n_free, n_free), dense, from the edge list."""
    k = np.asarray(K, dtype=np.float64)
    th = np.asarray(theta, dtype=np.float64)
    B, h = th.shape[0], net.n_held
    i, j = net.edges[:, 0], net.edges[:, 1]
    c = k * np.cos(th[:, j] - th[:, i])
    JT = np.zeros((net.n * net.n, B))  # flat (row, col) index first, for np.add.at
    np.add.at(JT, i * net.n + j, c.T)
    np.add.at(JT, j * net.n + i, c.T)
    J = np.ascontiguousarray(JT.T).reshape(B, net.n, net.n)
    diag = -J.sum(axis=2)
    J = J[:, h:, h:].copy()
    idx = np.arange(net.n_free)
    J[:, idx, idx] = diag[:, h:]
    if loss is not None and beta:
        o = slice(net.n_free - net.n_out, net.n_free)
        J[:, o, o] -= direction * beta * loss.hessian(th[:, net.outputs])
    return J


# --------------------------------------------------------------------------- solver
class _OneHidden:
    """The reduced (output-only) system of one hidden layer, evaluated on row subsets.

    With the hidden layer at its closed-form stable root, F_o = −∂E_r/∂θ_o and S = −∂²E_r/∂θ_o²
    for the reduced energy E_r(θ_o) = E(θ_h(θ_o), θ_o) + direction·β·L(θ_o).
    """

    def __init__(
        self,
        net: LayeredNetwork,
        omega: Array,
        K: Array,
        held: Array,
        loss: OutputLoss | None,
        beta: float,
        direction: int,
    ) -> None:
        b_in, b_out, b_bias = net.blocks
        n_h = net.hidden[0]
        self.w_h, self.w_o = omega[:n_h], omega[n_h:]
        self.W = b_out.view(K)  # (n_out, n_h)
        n_o = self.W.shape[0]
        self.WW = (self.W[:, None, :] * self.W[None, :, :]).reshape(n_o * n_o, n_h).T.copy()
        self.z = np.exp(1j * held) @ b_in.view(K).T  # (B, n_h) field of the held oscillators
        self.u = b_bias.view(K) @ np.exp(1j * np.asarray(net.bias_phases_rad))  # (n_out,)
        self.loss = loss
        self.nudge = direction * beta if loss is not None else 0.0

    def feed_forward(self) -> Array:
        """Start for the outputs: each layer locked to the layer below, back-action ignored."""
        th_h = _lock_to(self.z, self.w_h)
        return _lock_to(np.exp(1j * th_h) @ self.W.T + self.u, self.w_o)

    def evaluate(self, th_o: Array, rows: IntArray) -> _State:
        """Reduced residual, hidden phases and Jacobian parts at output phases ``th_o``."""
        eo = np.exp(1j * th_o)
        zr = self.z[rows]
        Z = zr + eo @ self.W
        R = np.abs(Z)
        rho = self.w_h / np.maximum(R, 1e-300)
        can = (np.abs(rho) < 1.0).all(axis=1)
        rc = np.clip(rho, -1.0, 1.0)
        ang = np.angle(Z)
        th_h = ang + np.arcsin(rc)
        eh = np.exp(1j * th_h)
        Fh = self.w_h + R * np.sin(ang - th_h)
        G = (eh @ self.W.T + self.u) * eo.conj()  # Σ_j K_oj e^{i(θ_j − θ_o)}
        F = self.w_o + G.imag
        # coupling part of the energy, −Σ_edges K cos(Δ) (held–hidden, hidden–out, bias–out)
        energy = -(zr * eh.conj()).real.sum(axis=1) - G.real.sum(axis=1)
        if self.loss is not None and self.nudge:
            sub = self.loss.take(rows)
            F = F - self.nudge * sub.grad(th_o)
            energy = energy + self.nudge * sub.value(th_o)
        D = -R * np.sqrt(np.maximum(1.0 - rc * rc, 0.0))
        return _State(th_o, th_h, F, Fh, can, energy, G.real, D, eo, eh)

    def schur(self, st: _State, rows: IntArray) -> Array:
        """S = J_oo − J_oh D⁻¹ J_ho (b, n_out, n_out) at an evaluated state."""
        # (J_oh D⁻¹ J_ho)_oq = Σ_h K_oh K_qh cos(θ_h − θ_o) cos(θ_h − θ_q)/D_h
        #   = ½ Re[e^{−i(θ_o+θ_q)} P_oq] + ½ cos(θ_o − θ_q) Q_oq,
        # P = K diag(e^{2iθ_h}/D) Kᵀ, Q = K diag(1/D) Kᵀ: one (3b, n_h) @ (n_h, n_out²) product
        b, n_o = st.F.shape
        inv = 1.0 / st.D
        e2 = st.eh * st.eh * inv
        stack = np.stack([e2.real, e2.imag, inv], axis=1).reshape(3 * b, -1)  # (3b, n_h)
        prod = (stack @ self.WW).reshape(b, 3, n_o, n_o)
        ec = st.eo.conj()
        pair = ec[:, :, None] * ec[:, None, :]
        cos_oq = (st.eo[:, :, None] * ec[:, None, :]).real
        S: Array = -0.5 * (pair.real * prod[:, 0] - pair.imag * prod[:, 1] + cos_oq * prod[:, 2])
        idx = np.arange(n_o)
        S[:, idx, idx] -= st.greal
        if self.loss is not None and self.nudge:
            S -= self.nudge * self.loss.take(rows).hessian(st.th_o)
        return S

    def coupling_oh(self, st: _State) -> Array:
        """J_oh = K_oh cos(θ_h − θ_o) (b, n_out, n_h)."""
        co, so, ch, sh = st.eo.real, st.eo.imag, st.eh.real, st.eh.imag
        cosd = co[:, :, None] * ch[:, None, :] + so[:, :, None] * sh[:, None, :]
        out: Array = self.W * cosd
        return out

    def energy_change(self, new: _State, old: _State) -> Array:
        """E_r(new) − E_r(old) (B,), phase terms through wrapped displacements."""
        lin = (self.w_h * wrap(new.th_h - old.th_h)).sum(axis=1)
        lin += (self.w_o * (new.th_o - old.th_o)).sum(axis=1)
        out: Array = new.energy - old.energy - lin
        return out


@dataclass
class _State:
    """Arrays of an evaluated reduced state (rows of a batch)."""

    th_o: Array
    th_h: Array
    F: Array
    Fh: Array
    can: NDArray[np.bool_]
    energy: Array
    greal: Array
    D: Array
    eo: NDArray[np.complex128]
    eh: NDArray[np.complex128]

    def take(self, rows: IntArray) -> _State:
        return _State(*(getattr(self, f)[rows] for f in _STATE_FIELDS))

    def put(self, rows: IntArray, other: _State, sel: NDArray[np.bool_]) -> None:
        for f in _STATE_FIELDS:
            getattr(self, f)[rows] = getattr(other, f)[sel]


_STATE_FIELDS = ("th_o", "th_h", "F", "Fh", "can", "energy", "greal", "D", "eo", "eh")


def solve_layered(
    net: LayeredNetwork,
    omega: ArrayLike,
    K: ArrayLike,
    inputs_rad: ArrayLike,
    *,
    theta0: ArrayLike | None = None,
    loss: OutputLoss | None = None,
    beta: float = 0.0,
    direction: int = 1,
    tol: float | None = None,
    max_iter: int | None = None,
) -> Equilibrium:
    """Stable locked states of a batch of B samples (held input phases ``inputs_rad`` (B, n_in)).

    ``omega`` (n_free,), ``K`` (n_edges,) shared by the batch; ``theta0`` a warm start (B, n)
    (only its output entries are used: the hidden layer is solved exactly given the outputs);
    without it the start is the feed-forward state (each layer locked to the one below, the
    back-action of the outputs on the hidden layer ignored) — a deterministic start, so the
    free state is a function of the parameters and the input;
    ``loss`` with ``beta`` >= 0 nudges the outputs by −direction·β·∂L/∂θ_out (``direction`` −1
    gives the −β state of a centred estimate). Newton numbers (tolerance, iterations, trust
    region, Armijo factor and line-search trials, rounding floor, stability shift) come from
    ``NEWTON`` unless ``tol`` / ``max_iter`` are given.

    Each step solves (−S + μI)·δ = F_o with μ = 0 where −S is positive definite (plain Newton)
    and μ just above −λ_min(−S) elsewhere (a descent direction of the reduced energy, so the
    iteration heads for a stable state instead of a saddle); a step is accepted by Armijo on the
    reduced energy, or on ‖F_o‖² for a plain Newton step (where energy differences fall below
    rounding). Returns an :class:`Equilibrium` with ``theta`` (B, n) (held entries at their
    phases), ``residual`` max |F_f| (B,; NaN where no lock), ``converged``, ``stable`` (B,) and
    ``margin`` (smallest eigenvalue of −J, lazily). Never raises for a sample that cannot lock:
    it comes back with ``converged`` False.
    """
    if len(net.hidden) != 1:
        raise ValueError(
            f"solve_layered: {len(net.hidden)} hidden layers; the solver handles one (several "
            "hidden layers give a block-tridiagonal Newton system, docs/design.md §8)"
        )
    if direction not in (1, -1):
        raise ValueError(f"direction: {direction!r} must be +1 or -1")
    if not (beta >= 0 and math.isfinite(beta)):
        raise ValueError(f"beta: {beta!r} must be a finite number >= 0")
    w, k = net.check_params(omega, K)
    held = net.held_phases(inputs_rad)
    B, n_o = held.shape[0], net.n_out
    pol = NEWTON
    tol_ = pol.tol if tol is None else float(tol)
    iters = pol.max_iter if max_iter is None else int(max_iter)
    sys_ = _OneHidden(net, w, k, held, loss, beta, direction)
    if theta0 is None:
        th_o = sys_.feed_forward()
    else:
        t0 = np.asarray(theta0, dtype=np.float64)
        if t0.shape != (B, net.n):
            raise ValueError(f"theta0: shape {t0.shape} must be ({B}, {net.n})")
        th_o = wrap(t0[:, net.outputs])
    # rounding floor: scale = 1 + max|ω| + largest coupling row sum (+ nudge force)
    rowsum = np.zeros(net.n)
    np.add.at(rowsum, net.edges[:, 0], np.abs(k))
    np.add.at(rowsum, net.edges[:, 1], np.abs(k))
    scale = np.full(B, 1.0 + np.abs(w).max() + rowsum[net.n_held :].max())
    st = sys_.evaluate(th_o, np.arange(B))
    if loss is not None and beta:
        scale += beta * np.abs(loss.grad(th_o)).max(axis=1)
    target = np.maximum(tol_, pol.rounding_floor(1.0, net.n_free) * scale)
    failed = ~st.can
    res = _residual(st)
    done = res <= target
    its = np.zeros(B, dtype=np.int64)
    eye = np.eye(n_o)
    for _ in range(iters):
        act = np.flatnonzero(~done & ~failed)
        if act.size == 0:
            break
        its[act] += 1
        cur = st.take(act)
        A = -sys_.schur(cur, act)
        pd = _chol_ok(A)
        if not pd.all():
            npd = ~pd
            An = A[npd]
            lam = np.linalg.eigvalsh(An)[:, 0]
            mu = -lam + 1e-3 * (1.0 + np.abs(An).max(axis=(1, 2)))
            A[npd] = An + mu[:, None, None] * eye
        step = np.linalg.solve(A, cur.F[:, :, None])[:, :, 0]
        big = np.abs(step).max(axis=1)
        step *= np.minimum(1.0, pol.trust_rad / np.maximum(big, 1e-300))[:, None]
        f2 = (cur.F * cur.F).sum(axis=1)
        slope = -(cur.F * step).sum(axis=1)  # dE_r/dα at α = 0 (< 0: descent)
        alpha = np.ones(act.size)
        pend = np.arange(act.size)
        for h in range(pol.line_search_trials):
            rows = act[pend]
            trial = sys_.evaluate(cur.th_o[pend] + alpha[pend, None] * step[pend], rows)
            a = alpha[pend]
            dE = sys_.energy_change(trial, cur.take(pend))
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
        res[act] = _residual(st.take(act))
        done = res <= target
    st.th_o[:] = wrap(st.th_o)
    converged = done & ~failed
    stable = np.zeros(B, dtype=bool)
    ok_rows = np.flatnonzero(~failed)
    if ok_rows.size:
        sub = st.take(ok_rows)
        S = sys_.schur(sub, ok_rows)
        M = sys_.coupling_oh(sub)
        jmax = np.maximum(np.abs(sub.D).max(axis=1), np.abs(M).max(axis=(1, 2)))
        jmax = np.maximum(jmax, np.abs(S).max(axis=(1, 2)))
        shift = pol.stability_shift * (jmax + 1e-300)
        stable[ok_rows] = (sub.D < -shift[:, None]).all(axis=1) & _chol_ok(
            -S - shift[:, None, None] * eye
        )
    theta = np.empty((B, net.n))
    theta[:, net.held] = held
    theta[:, net.layers[1]] = wrap(st.th_h)
    theta[:, net.outputs] = st.th_o
    res_out = np.where(failed, np.nan, res)

    def margin() -> Array:
        Jf = free_jacobian(net, k, theta, loss, beta, direction)
        out: Array = np.asarray(np.linalg.eigvalsh(-Jf)[:, 0], dtype=np.float64)
        return out

    if not converged.all():
        log.debug("solve_layered: %d of %d samples not converged", (~converged).sum(), B)
    return Equilibrium(theta, res_out, its, converged, stable, margin)


def _lock_to(field: NDArray[np.complex128], omega: Array) -> Array:
    """Stable phase of oscillators of detuning ω in a field Σ K e^{iφ}: arg + arcsin(ω/|field|)."""
    r = np.maximum(np.abs(field), 1e-300)
    out: Array = np.angle(field) + np.arcsin(np.clip(omega / r, -1.0, 1.0))
    return out


def _residual(st: _State) -> Array:
    r: Array = np.maximum(np.abs(st.F).max(axis=1), np.abs(st.Fh).max(axis=1))
    return np.where(st.can, r, np.inf)


def _chol_ok(A: Array) -> NDArray[np.bool_]:
    """Per matrix of a stack (b, n, n): does a Cholesky factorisation succeed (positive
    definite)? Column-by-column, vectorised over the stack (n is the small output count)."""
    b, n = A.shape[0], A.shape[1]
    L = np.zeros_like(A)
    ok = np.ones(b, dtype=bool)
    with np.errstate(over="ignore", invalid="ignore"):  # a failed row may overflow: not PD
        _chol_columns(A, L, ok, n)
    return ok


def _chol_columns(A: Array, L: Array, ok: NDArray[np.bool_], n: int) -> None:
    for k in range(n):
        lk = L[:, k, :k]
        d = A[:, k, k] - (lk * lk).sum(axis=1)
        ok &= d > 0
        piv = np.sqrt(np.where(d > 0, d, 1.0))
        L[:, k, k] = piv
        if k + 1 < n:
            below = A[:, k + 1 :, k] - np.matmul(L[:, k + 1 :, :k], lk[:, :, None])[:, :, 0]
            L[:, k + 1 :, k] = below / piv[:, None]


# --------------------------------------------------------------------------- gradients
def edge_cos(net: LayeredNetwork, theta: Array) -> Array:
    """cos(θ_j − θ_i) on every edge (B, n_edges), block by block (outer products)."""
    c, s = np.cos(theta), np.sin(theta)
    out = np.empty((theta.shape[0], net.n_edges))
    for b in net.blocks:
        ci, si = c[:, b.rows], s[:, b.rows]
        cj, sj = c[:, b.cols], s[:, b.cols]
        blk = ci[:, :, None] * cj[:, None, :] + si[:, :, None] * sj[:, None, :]
        out[:, b.start : b.stop] = blk.reshape(theta.shape[0], -1)
    return out


def ep_gradient(
    net: LayeredNetwork, theta_a: ArrayLike, theta_b: ArrayLike, span: float
) -> tuple[Array, Array]:
    """EP estimate per sample: (∂L/∂ω (B, n_free), ∂L/∂K (B, n_edges)).

    Centred: ``theta_a`` the +β state, ``theta_b`` the −β state, ``span`` = 2β; one-sided:
    ``theta_b`` the free state, ``span`` = β. ∂L/∂ω_f = −wrap(θ^a_f − θ^b_f)/span,
    ∂L/∂K_ij = −[cos(θ^a_j − θ^a_i) − cos(θ^b_j − θ^b_i)]/span.
    """
    if not span > 0:
        raise ValueError(f"span: {span!r} must be > 0")
    ta = np.asarray(theta_a, dtype=np.float64)
    tb = np.asarray(theta_b, dtype=np.float64)
    g_w: Array = -wrap(ta[:, net.n_held :] - tb[:, net.n_held :]) / span
    g_k = -(edge_cos(net, ta) - edge_cos(net, tb)) / span
    return g_w, g_k


def implicit_gradient(
    net: LayeredNetwork, K: ArrayLike, theta: ArrayLike, loss: OutputLoss
) -> tuple[Array, Array]:
    """Implicit-function reference at free states ``theta`` (B, n): (∂L/∂ω, ∂L/∂K) per sample.

    λ = J⁻ᵀ e with J the dense free-block Jacobian and e = ∂L/∂θ (outputs); ∂L/∂ω = −λ,
    ∂L/∂K_ij = −(λ_i − λ_j) sin(θ_j − θ_i), λ = 0 on held oscillators.
    """
    th = np.asarray(theta, dtype=np.float64)
    J = free_jacobian(net, K, th)
    e = np.zeros((th.shape[0], net.n_free))
    e[:, -net.n_out :] = loss.grad(th[:, net.outputs])
    lam_f = np.asarray(np.linalg.solve(np.swapaxes(J, 1, 2), e[:, :, None])[:, :, 0], np.float64)
    lam = np.zeros_like(th)
    lam[:, net.n_held :] = lam_f
    i, j = net.edges[:, 0], net.edges[:, 1]
    g_k: Array = -(lam[:, i] - lam[:, j]) * np.sin(th[:, j] - th[:, i])
    return -lam_f, g_k
