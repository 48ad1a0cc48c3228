"""The phase-gradient identity checked by automatic differentiation (JAX).

Reverse-mode AD through an unrolled Newton solver written in JAX (its Jacobian by forward-mode
AD, not the library's analytic one) gives ∂L/∂ω^c of the locked state; it must agree with the
implicit gradient −J̃^{−T}e to rounding, and with the two-phase estimate −(θ^β − θ*)/β of
equilibrium propagation as β → 0 (docs/design.md §2). Needs the optional extra "autograd"
(``pip install 'phasegrad-hw[autograd]'``); without JAX it says so and exits cleanly.
"""

import importlib.util

import numpy as np

from phasegrad_hw.physics import gradients as gr
from phasegrad_hw.physics import solve_equilibrium
from phasegrad_hw.studies.verify import verify_network


def main() -> None:
    if importlib.util.find_spec("jax") is None:
        print("skipped: JAX is not installed (pip install 'phasegrad-hw[autograd]')")
        return
    from phasegrad_hw.studies.autograd import autograd_row, unrolled_gradient

    print("   N   |AD − IFT|/|IFT| (warm)   (perturbed start)   residual")
    for n in (6, 20):
        r = autograd_row(n, seed=0)
        print(
            f"{n:4d}   {r.rel_error_warm:22.2e}   {r.rel_error_perturbed:17.2e}   {r.residual:8.1e}"
        )
    # the same AD gradient against equilibrium propagation's two-phase estimate
    w, K = verify_network(20, 0)
    free = solve_equilibrium(w, K)
    outs = np.array([4, 7])
    tgt = free.theta[outs] + 0.2
    g_ad, _ = unrolled_gradient(w, K, outs, tgt, free.theta)
    beta = 1e-4
    b = np.zeros(len(w))
    b[outs] = beta
    t = np.zeros(len(w))
    t[outs] = tgt
    plus = solve_equilibrium(w, K, theta0=free.theta, beta=b, target=t)
    minus = solve_equilibrium(w, K, theta0=free.theta, beta=b, target=t, direction=-1)
    g_ep = gr.two_phase_gradient(free.theta, plus.theta, beta, minus.theta)
    cos = gr.cosine(g_ep[1:], g_ad[1:])
    print(f"N = 20: cosine(two-phase β = {beta:g} centred, AD) = {cos:.9f}")


if __name__ == "__main__":
    main()
