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
currently accepts one hidden layer. The Newton lives in :mod:`._layered_newton`; a
:class:`LayeredBatch` shares the held field between the free and the nudged solves of a batch and
runs the +β and −β states of a centred estimate as one Newton run.

Gradients. ∂E/∂ω_f = −θ_f and ∂E/∂K_ij = −cos(θ_j − θ_i), so equilibrium propagation gives
∂L/∂ω_f = −(θ^a_f − θ^b_f)/Δβ and ∂L/∂K_ij = −[cos Δ^a_ij − cos Δ^b_ij]/Δβ, with (a, b, Δβ) =
(+β, −β, 2β) centred or (+β, free, β) one-sided; displacements are wrapped. The implicit
reference: λ = J⁻ᵀ ∂L/∂θ (free block), ∂L/∂ω = −λ, ∂L/∂K_ij = −(λ_i − λ_j) sin(θ_j − θ_i)
(λ = 0 on held oscillators).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from typing import NamedTuple

import numpy as np
from numpy.typing import ArrayLike, NDArray

from phasegrad_hw.physics._layered_net import (
    ROLE_BIAS,
    ROLE_HIDDEN,
    ROLE_INPUT,
    ROLE_OUTPUT,
    Block,
    IntArray,
    LayeredNetwork,
)
from phasegrad_hw.physics._layered_newton import Couplings, Reduced, newton, stable_rows
from phasegrad_hw.physics.coupling import Array, wrap
from phasegrad_hw.physics.multiclass import OutputLoss
from phasegrad_hw.physics.policy import NEWTON
from phasegrad_hw.physics.result import Equilibrium

log = logging.getLogger(__name__)

__all__ = [
    "ROLE_BIAS",
    "ROLE_HIDDEN",
    "ROLE_INPUT",
    "ROLE_OUTPUT",
    "Block",
    "IntArray",
    "LayeredBatch",
    "LayeredNetwork",
    "edge_cos",
    "ep_gradient",
    "free_jacobian",
    "free_residual",
    "implicit_gradient",
    "solve_layered",
]


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
class LayeredBatch:
    """Locked states of one batch of B samples (held input phases ``inputs_rad`` (B, n_in)) at
    fixed parameters ``omega`` (n_free,), ``K`` (n_edges,); one hidden layer.

    The held oscillators' field on the hidden layer and the couplings split by block are computed
    once and shared by every solve of the batch: :meth:`solve` (free or nudged) and
    :meth:`nudged_pair` (the +β and −β states of a centred estimate in one Newton run of 2B
    rows).
    """

    def __init__(
        self, net: LayeredNetwork, omega: ArrayLike, K: ArrayLike, inputs_rad: ArrayLike
    ) -> None:
        if len(net.hidden) != 1:
            raise ValueError(
                f"solve_layered: {len(net.hidden)} hidden layers; the solver handles one (several "
                "hidden layers give a block-tridiagonal Newton system, docs/design.md §8)"
            )
        self.net = net
        self.omega, self.K = net.check_params(omega, K)
        self.held = net.held_phases(inputs_rad)
        self.couplings = Couplings.of(net, self.omega, self.K)
        self.z = self.couplings.held_field(self.held)
        # rounding floor: scale = 1 + max|ω| + largest coupling row sum (+ nudge force)
        rowsum = np.zeros(net.n)
        np.add.at(rowsum, net.edges[:, 0], np.abs(self.K))
        np.add.at(rowsum, net.edges[:, 1], np.abs(self.K))
        self.scale = 1.0 + np.abs(self.omega).max() + rowsum[net.n_held :].max()

    @property
    def size(self) -> int:
        """B, the number of samples."""
        return int(self.held.shape[0])

    def solve(
        self,
        theta0: ArrayLike | None = None,
        loss: OutputLoss | None = None,
        beta: float = 0.0,
        direction: int = 1,
        tol: float | None = None,
        max_iter: int | None = None,
    ) -> Equilibrium:
        """The locked states of the batch (arguments as :func:`solve_layered`)."""
        _check_nudge(beta, direction)
        B = self.size
        nudge = np.full(B, direction * beta) if loss is not None else np.zeros(B)
        part = _Part(slice(0, B), loss, beta, direction)
        th_o = None if theta0 is None else self._outputs(theta0)
        (eq,) = self._run(self.z, th_o, loss, nudge, (part,), tol, max_iter)
        return eq

    def nudged_pair(
        self,
        theta0: ArrayLike,
        loss: OutputLoss,
        beta: float,
        tol: float | None = None,
        max_iter: int | None = None,
    ) -> tuple[Equilibrium, Equilibrium]:
        """(+β state, −β state), both from ``theta0`` (B, n) (the free states), in one run.

        Row for row the same Newton as two :meth:`solve` calls with ``direction`` +1 and −1.
        """
        _check_nudge(beta, 1)
        B = self.size
        th_o = self._outputs(theta0)
        both = np.concatenate([np.arange(B), np.arange(B)])
        nudge = np.concatenate([np.full(B, beta), np.full(B, -beta)])
        parts = (_Part(slice(0, B), loss, beta, 1), _Part(slice(B, 2 * B), loss, beta, -1))
        z, th = self.z[both], th_o[both]
        plus, minus = self._run(z, th, loss.take(both), nudge, parts, tol, max_iter)
        return plus, minus

    def _outputs(self, theta0: ArrayLike) -> Array:
        """The output phases of a warm start (B, n), wrapped."""
        t0 = np.asarray(theta0, dtype=np.float64)
        if t0.shape != (self.size, self.net.n):
            raise ValueError(f"theta0: shape {t0.shape} must be ({self.size}, {self.net.n})")
        return wrap(t0[:, self.net.outputs])

    def _run(
        self,
        z: NDArray[np.complex128],
        th_o: Array | None,
        loss: OutputLoss | None,
        nudge: Array,
        parts: tuple[_Part, ...],
        tol: float | None,
        max_iter: int | None,
    ) -> list[Equilibrium]:
        net, pol = self.net, NEWTON
        sys_ = Reduced(self.couplings, z, loss, nudge)
        if th_o is None:
            th_o = sys_.feed_forward()
        n_rows = th_o.shape[0]
        st = sys_.evaluate(th_o, np.arange(n_rows))
        scale = np.full(n_rows, self.scale)
        if loss is not None and sys_.nudged:
            scale += np.abs(nudge) * np.abs(loss.grad(th_o)).max(axis=1)
        tol_ = pol.tol if tol is None else float(tol)
        target = np.maximum(tol_, pol.rounding_floor(1.0, net.n_free) * scale)
        sol = newton(sys_, st, target, pol, pol.max_iter if max_iter is None else int(max_iter))
        sol.state.th_o[:] = wrap(sol.state.th_o)
        stable = stable_rows(sys_, sol.state, sol.failed, pol)
        theta = np.empty((n_rows, net.n))
        theta[:, net.held] = self.held[np.arange(n_rows) % self.size]
        theta[:, net.layers[1]] = wrap(sol.state.th_h)
        theta[:, net.outputs] = sol.state.th_o
        res_out = np.where(sol.failed, np.nan, sol.residual)
        if not sol.converged.all():
            log.debug("solve_layered: %d of %d rows not converged", (~sol.converged).sum(), n_rows)
        return [
            Equilibrium(
                theta[p.rows],
                res_out[p.rows],
                sol.iterations[p.rows],
                sol.converged[p.rows],
                stable[p.rows],
                _margin(net, self.K, theta[p.rows], p),
            )
            for p in parts
        ]


class _Part(NamedTuple):
    """Rows of a Newton run that form one result, with the nudge they carry."""

    rows: slice
    loss: OutputLoss | None
    beta: float
    direction: int


def _margin(net: LayeredNetwork, K: Array, theta: Array, p: _Part) -> Callable[[], Array]:
    """Smallest eigenvalue of −J (dense free block) per sample, computed when asked for."""

    def margin() -> Array:
        Jf = free_jacobian(net, K, theta, p.loss, p.beta, p.direction)
        out: Array = np.asarray(np.linalg.eigvalsh(-Jf)[:, 0], dtype=np.float64)
        return out

    return margin


def _check_nudge(beta: float, direction: int) -> None:
    if direction not in (1, -1):
        raise ValueError(f"direction: {direction!r} must be +1 or -1")
    if not (beta >= 0 and math.isfinite(beta)):
        raise ValueError(f"beta: {beta!r} must be a finite number >= 0")


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
    batch = LayeredBatch(net, omega, K, inputs_rad)
    return batch.solve(theta0, loss, beta, direction, tol, max_iter)


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
