"""The phase-gradient identity checked by automatic differentiation of an unrolled solver.

Independent of the implicit (IFT) and finite-difference code of
:mod:`phasegrad_hw.physics.gradients`: the locked state of the reduced system
F̃(θ, ω^c) = ω^c_i + Σ_j K_ij H(θ_j − θ_i) = 0 (i ≠ ref, θ_ref = 0; docs/design.md §2) is
found by Newton iterations written in JAX — the Jacobian itself by forward-mode AD of F̃, not
our analytic one — and reverse-mode AD differentiates the output loss through the unrolled
iterations, L(θ_T(ω^c)). The iterations start from a fixed phase vector (the converged state,
or a perturbed one to differentiate through a real convergence path); their derivative
converges with the iterate, so after enough iterations (float64) ∂L/∂ω^c must agree with
−J̃^{−T} e to rounding. The identity table uses the networks of
:func:`phasegrad_hw.studies.verify.identity_row` (Erdős–Rényi p = 0.6, K = 5·U(0.5, 1.5),
ω ~ N(0, 0.3²), two outputs with targets 0.2 rad from the free phases).

JAX is the optional extra "autograd", imported on first use; importing it here switches JAX
to float64 for the whole process (``jax_enable_x64``).
"""

from __future__ import annotations

import functools
import importlib
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from numpy.typing import ArrayLike

from phasegrad_hw.physics import SIN, Array, CouplingFunction, NudgeKind, solve_equilibrium
from phasegrad_hw.physics import gradients as gr
from phasegrad_hw.studies.verify import DEFAULT_SIZES, _task, verify_network

log = logging.getLogger(__name__)


def _jax() -> tuple[Any, Any]:
    """(jax, jax.numpy) with float64 enabled; a clear error without JAX. Imported by name, so
    type checking does not need JAX installed (it is an optional extra)."""
    try:
        jax = importlib.import_module("jax")
        jnp = importlib.import_module("jax.numpy")
    except ImportError:
        raise RuntimeError(
            "autograd: needs JAX (pip install 'phasegrad-hw[autograd]', CPU wheel)"
        ) from None
    jax.config.update("jax_enable_x64", True)
    return jax, jnp


def _coupling_sum_jax(jnp: Any, H: CouplingFunction, K: Any, th: Any) -> Any:
    """Σ_j K_ij H(θ_j − θ_i) for every i, in JAX, by the angle-addition theorems as matrix–
    vector products (O(N²), and a formulation independent of the numpy one):
    sin(k(θ_j − θ_i) − ψ) = sin kθ_j cos(kθ_i + ψ) − cos kθ_j sin(kθ_i + ψ) and
    cos(θ_j − θ_i) = cos θ_j cos θ_i + sin θ_j sin θ_i."""
    out = H.offset * K.sum(axis=1)
    for k, a in enumerate(H.harmonics, start=1):
        s, c = jnp.sin(k * th), jnp.cos(k * th)
        out = out + a * (
            jnp.cos(k * th + H.phase_lag) * (K @ s) - jnp.sin(k * th + H.phase_lag) * (K @ c)
        )
    if H.cos_offset:
        s, c = jnp.sin(th), jnp.cos(th)
        out = out + H.cos_offset * (c * (K @ c) + s * (K @ s))
    return out


@functools.lru_cache(maxsize=32)
def _compiled(
    n: int, ref: int, coupling: CouplingFunction, kind: NudgeKind, iterations: int
) -> Callable[..., Any]:
    """jit(value_and_grad) of the loss through the unrolled Newton solve, for one shape and
    set-up; arguments (ω^c, K, outputs, targets, x0) → ((L, max |F̃|), ∂L/∂ω^c)."""
    jax, jnp = _jax()
    keep = np.flatnonzero(np.arange(n) != ref)

    def full(x: Any) -> Any:
        return jnp.zeros(n, dtype=jnp.float64).at[keep].set(x)

    def residual(x: Any, om: Any, K: Any) -> Any:
        return (om + _coupling_sum_jax(jnp, coupling, K, full(x)))[keep]

    jac = jax.jacfwd(residual, argnums=0)

    def loss(om: Any, K: Any, outs: Any, tgt: Any, x0: Any) -> tuple[Any, Any]:
        x = x0
        for _ in range(iterations):  # unrolled: AD differentiates every step
            x = x - jnp.linalg.solve(jac(x, om, K), residual(x, om, K))
        d = full(x)[outs] - tgt
        value = 0.5 * (d**2).sum() if kind == "linear" else (1.0 - jnp.cos(d)).sum()
        return value, jnp.abs(residual(x, om, K)).max()

    fn: Callable[..., Any] = jax.jit(jax.value_and_grad(loss, has_aux=True))
    return fn


def unrolled_gradient(
    omega_c: ArrayLike,
    K: ArrayLike,
    outputs: ArrayLike,
    target: ArrayLike,
    theta_start: ArrayLike,
    coupling: CouplingFunction = SIN,
    *,
    ref: int = 0,
    iterations: int = 8,
    kind: NudgeKind = "linear",
) -> tuple[Array, float]:
    """(∂L/∂ω^c by reverse-mode AD through ``iterations`` JAX Newton steps, final max |F̃|).

    ``omega_c`` (N,) centred frequencies, ``K`` (N, N), ``theta_start`` (N,) the (constant)
    start of the iterations, θ_ref pinned at 0; loss ½Σ(θ_o − t)² (``kind`` "linear") or
    Σ(1 − cos(θ_o − t)) ("injection"). The reference entry of the gradient is 0. Units: rad
    and rad per time unit, gradient in rad² / (rad per time unit). One compilation per
    (N, ref, coupling, kind, iterations).
    """
    _, jnp = _jax()
    w = np.asarray(omega_c, dtype=np.float64)
    n = w.shape[0]
    if not 0 <= ref < n:
        raise ValueError(f"ref: {ref} is not an oscillator index in [0, {n - 1}]")
    if iterations < 1:
        raise ValueError(f"iterations: {iterations} must be >= 1")
    if kind not in ("linear", "injection"):
        raise ValueError(f"kind: {kind!r}; use 'linear' or 'injection'")
    th0 = np.asarray(theta_start, dtype=np.float64)
    keep = np.arange(n) != ref
    fn = _compiled(n, ref, coupling, kind, iterations)
    (_, res), g = fn(
        jnp.asarray(w),
        jnp.asarray(np.asarray(K, dtype=np.float64)),
        jnp.asarray(np.asarray(outputs, dtype=np.int64)),
        jnp.asarray(np.asarray(target, dtype=np.float64)),
        jnp.asarray(th0[keep] - th0[ref]),
    )
    grad = np.array(g, dtype=np.float64)
    grad[ref] = 0.0
    return grad, float(res)


@dataclass(frozen=True)
class AutogradRow:
    """One network: relative error ‖g_AD − g_IFT‖/‖g_IFT‖ with the iterations started at the
    converged state (``rel_error_warm``) and at a state 0.05 rad (rms) off it
    (``rel_error_perturbed``), the final residual max |F̃| of the unrolled solve, and the
    iterations used."""

    N: int
    rel_error_warm: float
    rel_error_perturbed: float
    residual: float
    iterations: int


def autograd_row(
    n: int, seed: int = 0, iterations: int = 8, start: Literal["both", "warm"] = "both"
) -> AutogradRow:
    """AD through the unrolled Newton solver vs :func:`gradients.implicit_gradient` on the
    identity network of size ``n`` (see the module docstring)."""
    w, K = verify_network(n, seed)
    free = solve_equilibrium(w, K)
    if not free.ok:
        raise RuntimeError(f"autograd: network N={n} seed={seed} did not lock")
    outs, tgt = _task(free.theta, 2, np.random.default_rng([seed, n, 1]))
    ift = gr.implicit_gradient(free.theta, K, gr.loss_grad_theta(free.theta, outs, tgt))
    scale = float(np.linalg.norm(ift))

    def rel(g: Array) -> float:
        return float(np.linalg.norm(g - ift) / scale)

    g_warm, res = unrolled_gradient(w, K, outs, tgt, free.theta, iterations=iterations)
    perturbed = float("nan")
    if start == "both":
        kick = np.random.default_rng([seed, n, 2]).normal(0.0, 0.05, n)
        kick[0] = 0.0
        g_p, res_p = unrolled_gradient(w, K, outs, tgt, free.theta + kick, iterations=iterations)
        perturbed, res = rel(g_p), max(res, res_p)
    return AutogradRow(n, rel(g_warm), perturbed, res, iterations)


def autograd_table(
    sizes: Sequence[int] = DEFAULT_SIZES, seed: int = 0, iterations: int = 8
) -> list[AutogradRow]:
    """:func:`autograd_row` at every size of the identity table (N = 6…200)."""
    return [autograd_row(int(n), seed, iterations) for n in sizes]
