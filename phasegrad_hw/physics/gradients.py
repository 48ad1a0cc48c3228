"""Gradients of an output loss with respect to centred frequencies ω^c and couplings K.

* two-phase (equilibrium propagation): ∂L/∂ω^c_k = −lim_{β→0} (θ^β_k − θ*_k)/β, one-sided
  (O(β) error) or centred −(θ^{+β} − θ^{−β})/(2β) (O(β²) error); displacements are wrapped;
* implicit (IFT): ∂L/∂ω^c = −J̃^{−T} e, e = ∂L/∂θ, on the reduced system (reference pinned);
* finite differences on ω^c (each non-reference centred frequency perturbed by ±ε).

Losses pair with nudges (docs/design.md §2): ``linear`` nudge β(θ_tgt − θ) ↔ L = ½Σ(θ − θ_tgt)²;
``injection`` nudge β sin(θ_tgt − θ) ↔ L = Σ(1 − cos(θ − θ_tgt)). Gradients are arrays of
length N with the reference entry 0 (its frequency is not a free parameter of the reduced
system). Everything broadcasts over a leading batch axis.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
from numpy.typing import ArrayLike, NDArray

from phasegrad_hw.physics.coupling import (
    SIN,
    Array,
    CouplingFunction,
    NudgeKind,
    _as_float_array,
    _check_ref,
    jacobian,
    wrap,
)
from phasegrad_hw.physics.equilibrium import solve_equilibrium

Edges = NDArray[np.int64]


def loss(
    theta: ArrayLike, outputs: ArrayLike | slice, target: ArrayLike, kind: NudgeKind = "linear"
) -> Array:
    """Output loss (rad²): ½Σ(θ_o − t)² (linear) or Σ(1 − cos(θ_o − t)) (injection);
    ``outputs`` the output indices, or a slice of them (contiguous outputs: no gather)."""
    th = np.asarray(theta, dtype=np.float64)
    cols = outputs if isinstance(outputs, slice) else np.asarray(outputs)
    d = th[..., cols] - np.asarray(target, dtype=np.float64)
    if kind == "linear":
        return 0.5 * (d**2).sum(axis=-1)
    if kind == "injection":
        return (1.0 - np.cos(d)).sum(axis=-1)
    raise ValueError(f"kind: {kind!r} is not a loss kind; use 'linear' or 'injection'")


def loss_grad_theta(
    theta: ArrayLike, outputs: ArrayLike, target: ArrayLike, kind: NudgeKind = "linear"
) -> Array:
    """e = ∂L/∂θ (length N, zero off the outputs)."""
    th = np.asarray(theta, dtype=np.float64)
    out = np.asarray(outputs)
    d = th[..., out] - np.asarray(target, dtype=np.float64)
    e = np.zeros_like(th)
    e[..., out] = d if kind == "linear" else np.sin(d)
    return e


def nudge_vectors(
    n: int, outputs: ArrayLike, target: ArrayLike, beta: float
) -> tuple[Array, Array]:
    """Per-oscillator (β, target) arrays: β on the outputs, 0 elsewhere."""
    if not np.isfinite(beta) or beta < 0:
        raise ValueError(f"beta: {beta} must be finite and >= 0")
    out = np.asarray(outputs)
    b = np.zeros(n)
    b[out] = beta
    tg = _as_float_array("target", target)
    t = np.zeros((*tg.shape[:-1], n) if tg.ndim > 1 else (n,))
    t[..., out] = tg
    return b, t


# --------------------------------------------------------------------------- two-phase
def two_phase_gradient(
    theta_free: ArrayLike,
    theta_nudged: ArrayLike,
    beta: float,
    theta_minus: ArrayLike | None = None,
    *,
    ref: int | None = 0,
) -> Array:
    """EP estimate of ∂L/∂ω^c from phase readings (rad).

    One-sided: −wrap(θ^β − θ*)/β. Centred (``theta_minus`` = θ^{−β} given, ``theta_nudged``
    = θ^{+β}): −wrap(θ^{+β} − θ^{−β})/(2β). The reference entry is set to 0.
    """
    if not np.isfinite(beta) or beta <= 0:
        raise ValueError(f"beta: {beta} must be finite and > 0 for a two-phase estimate")
    plus = _as_float_array("theta_nudged", theta_nudged)
    if theta_minus is None:
        free = _as_float_array("theta_free", theta_free)
        _same_shape("theta_free", free, plus)
        d, scale = wrap(plus - free), beta
    else:
        minus = _as_float_array("theta_minus", theta_minus)
        _same_shape("theta_minus", minus, plus)
        d, scale = wrap(plus - minus), 2.0 * beta
    return two_phase_from_displacement(
        d, scale, None if ref is None else _check_ref(ref, d.shape[-1])
    )


def two_phase_from_displacement(d: Array, scale: float, ref: int | None) -> Array:
    """−d/scale with the reference entry 0: the two-phase estimate from the wrapped
    displacement d = wrap(θ^β − θ*) (scale β) or wrap(θ^{+β} − θ^{−β}) (scale 2β), rad;
    no validation (the EP rule's hot path, :func:`phasegrad_hw.learning.ep.ep_update`)."""
    g = d / -scale  # (= −d/scale exactly: division rounds symmetrically in sign)
    if ref is not None:
        g[..., ref] = 0.0
    return g


def _same_shape(name: str, a: Array, b: Array) -> None:
    if a.shape != b.shape:
        raise ValueError(f"{name}: shape {a.shape} does not match theta_nudged {b.shape}")


def coupling_gradient_two_phase(
    theta_free: ArrayLike,
    theta_nudged: ArrayLike,
    edges: ArrayLike,
    beta: float,
    theta_minus: ArrayLike | None = None,
    coupling: CouplingFunction = SIN,
) -> Array:
    """EP estimate of ∂L/∂K_e for symmetric edges e = (i, j) (K_ij = K_ji one parameter).

    ∂L/∂K_ij = lim [V(Δ^β_ij) − V(Δ*_ij)]/β with V' = H the coupling potential (for H = sin,
    [cos Δ* − cos Δ^β]/β). Centred: [V(Δ^{+β}) − V(Δ^{−β})]/(2β).
    """
    if not np.isfinite(beta) or beta <= 0:
        raise ValueError(f"beta: {beta} must be finite and > 0 for a two-phase estimate")
    e = _edges(edges)
    plus = _as_float_array("theta_nudged", theta_nudged)
    dp = plus[..., e[:, 1]] - plus[..., e[:, 0]]
    if theta_minus is None:
        free = _as_float_array("theta_free", theta_free)
        d0 = free[..., e[:, 1]] - free[..., e[:, 0]]
        return (coupling.potential(dp) - coupling.potential(d0)) / beta
    minus = _as_float_array("theta_minus", theta_minus)
    dm = minus[..., e[:, 1]] - minus[..., e[:, 0]]
    return (coupling.potential(dp) - coupling.potential(dm)) / (2.0 * beta)


def _edges(edges: ArrayLike) -> Edges:
    e = np.asarray(edges, dtype=np.int64)
    if e.ndim != 2 or e.shape[1] != 2:
        raise ValueError(f"edges: shape {e.shape} must be (E, 2)")
    return e


# --------------------------------------------------------------------------- implicit
def implicit_gradient(
    theta: ArrayLike,
    K: ArrayLike,
    dL_dtheta: ArrayLike,
    coupling: CouplingFunction = SIN,
    *,
    ref: int = 0,
) -> Array:
    """∂L/∂ω^c = −J̃^{−T} e at a free equilibrium θ (reference pinned; entry ref = 0).

    Dense K (N, N) or (B, N, N) with batched θ, or scipy.sparse K for one network.
    """
    th = _as_float_array("theta", theta)
    e = _as_float_array("dL_dtheta", dL_dtheta)
    _same_shape("dL_dtheta", e, th)
    n = th.shape[-1]
    r = _check_ref(ref, n)
    keep = np.arange(n) != r
    g = np.zeros_like(th)
    if sp.issparse(K):
        from phasegrad_hw.physics.sparse import SparseNetwork

        net = SparseNetwork.from_matrix(K)
        d = th[net.cols] - th[net.rows]
        wts = net.weights * coupling.derivative(d)
        J = sp.csr_matrix((wts, (net.rows, net.cols)), shape=(n, n))
        J = J - sp.diags(np.asarray(J.sum(axis=1)).ravel())
        Jr = J.tocsr()[keep][:, keep]
        import scipy.sparse.linalg as spla

        A = (-Jr.T).tocsr()
        pre = spla.LinearOperator(A.shape, matvec=lambda x, dd=1.0 / A.diagonal(): dd * x)
        if net.symmetric and coupling.is_odd:
            x, info = spla.cg(A, e[keep], rtol=1e-13, atol=0.0, maxiter=5000, M=pre)
        else:
            x, info = spla.gmres(A, e[keep], rtol=1e-13, atol=0.0, restart=60, maxiter=500, M=pre)
        if info != 0:
            raise RuntimeError(f"implicit_gradient: iterative solve did not converge (info={info})")
        g[keep] = x  # −J̃^{−T} e  =  (−J̃ᵀ)^{−1} e
        return g
    J = jacobian(th, K, coupling)
    Jr = J[..., keep, :][..., :, keep]
    g[..., keep] = np.linalg.solve(-np.swapaxes(Jr, -1, -2), e[..., keep, None])[..., 0]
    return g


def coupling_gradient_implicit(
    theta: ArrayLike,
    grad_omega: ArrayLike,
    edges: ArrayLike,
    coupling: CouplingFunction = SIN,
) -> Array:
    """∂L/∂K_e for symmetric edges from the frequency gradient g = ∂L/∂ω^c at θ.

    F_i gains K_e H(θ_j − θ_i) and F_j gains K_e H(θ_i − θ_j), so by the adjoint identity
    ∂L/∂K_e = g_i H(θ_j − θ_i) + g_j H(θ_i − θ_j).
    """
    th = _as_float_array("theta", theta)
    g = _as_float_array("grad_omega", grad_omega)
    e = _edges(edges)
    i, j = e[:, 0], e[:, 1]
    d = th[..., j] - th[..., i]
    return g[..., i] * coupling.value(d) + g[..., j] * coupling.value(-d)


# --------------------------------------------------------------------------- finite differences
def finite_difference_gradient(
    omega_c: ArrayLike,
    K: ArrayLike,
    outputs: ArrayLike,
    target: ArrayLike,
    coupling: CouplingFunction = SIN,
    *,
    eps: float = 1e-5,
    ref: int = 0,
    kind: NudgeKind = "linear",
    theta0: ArrayLike | None = None,
) -> Array:
    """Centred finite differences of L(θ*(ω^c)) on each non-reference centred frequency.

    All 2(N−1) perturbed equilibria are solved in one batched call warm-started from the
    unperturbed state (dense K). Raises
    RuntimeError if any perturbed state fails to lock (the derivative would be meaningless).
    """
    w = _as_float_array("omega_c", omega_c)
    if w.ndim != 1:
        raise ValueError(f"omega_c: shape {w.shape} must be (N,)")
    if not np.isfinite(eps) or eps <= 0:
        raise ValueError(f"eps: {eps} must be finite and > 0")
    n = w.shape[0]
    r = _check_ref(ref, n)
    ks = np.flatnonzero(np.arange(n) != r)
    if theta0 is None:
        theta0 = solve_equilibrium(w, K, coupling, ref=r).theta
    W = np.repeat(w[None, :], 2 * len(ks), axis=0)
    W[np.arange(len(ks)), ks] += eps
    W[len(ks) + np.arange(len(ks)), ks] -= eps
    eq = solve_equilibrium(W, K, coupling, ref=r, theta0=theta0)
    if not np.all(eq.ok):
        raise RuntimeError("finite_difference_gradient: a perturbed state did not lock; reduce eps")
    th = eq.theta
    Lv = loss(th, outputs, target, kind)
    g = np.zeros(n)
    g[ks] = (Lv[: len(ks)] - Lv[len(ks) :]) / (2.0 * eps)
    return g


def cosine(a: ArrayLike, b: ArrayLike) -> Array:
    """Cosine similarity along the last axis."""
    x = np.asarray(a, dtype=np.float64)
    y = np.asarray(b, dtype=np.float64)
    return (x * y).sum(-1) / (np.linalg.norm(x, axis=-1) * np.linalg.norm(y, axis=-1))


def scale_error(estimate: ArrayLike, reference: ArrayLike) -> Array:
    """Relative scale error of an estimate along a reference: ⟨est, ref⟩/‖ref‖² − 1."""
    x = np.asarray(estimate, dtype=np.float64)
    y = np.asarray(reference, dtype=np.float64)
    return (x * y).sum(-1) / (y * y).sum(-1) - 1.0
