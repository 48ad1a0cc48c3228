"""Locked states of emulated devices with clock-locked oscillators: held inputs, bias
oscillators and an external drive (docs/design.md §8, §9).

Model (shared by :mod:`~phasegrad_hw.backends.simulated` and the emulated chips):

* **Held oscillators** (``roles.held`` and ``roles.bias``) are injection-locked by the
  reference clock through programmable phase shifters. The emulators take them as *exactly*
  held at their phases φ_x — the limit of an injection ``held_injection`` much stronger than
  the pull of the network on them, the assumption of the layered engine
  (:mod:`phasegrad_hw.engine.layered`), whose held-load projection keeps that pull
  Σ_f |K_xf| below half the injection. The clock is the reference oscillator (a bias
  oscillator, read at phase 0), so the frame is the reference's: the free oscillators see the
  detunings ω_f − ω_ref, and no gauge pinning beyond the held set is needed.
* **Drive** F_i·sin(ψ − θ_i) on ``roles.drive``: the external signal is synthesised from the
  same clock as the clamp's injection, at phase ψ relative to the reference, and enters the
  free oscillators' equations like the clamp does.

The free oscillators f then obey

    0 = F_f(θ) = ω_f + Σ_j K_fj H(θ_j − θ_f) + A_f sin(φ_f − θ_f) + nudge_f

(A_f the drive amplitude on driven oscillators, 0 elsewhere), solved by damped Newton on the
free block (:func:`solve_free`); its Jacobian J_ff is symmetric for symmetric K and odd H, so
the phase-gradient identity holds with λ = J_ffᵀ⁻¹e (:func:`free_implicit_gradient`). On a
layered device (held → hidden → outputs, biases → outputs) the start comes from the
structure-aware layered solver (:func:`~phasegrad_hw.physics.layered.solve_layered`, the
symmetric part of K with H = sin), then Newton polishes it under the true physics.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from phasegrad_hw.device.model import DeviceModel
from phasegrad_hw.physics import Array, CouplingFunction, jacobian, rhs, wrap
from phasegrad_hw.physics.layered import LayeredNetwork, solve_layered

IntArray = NDArray[np.intp]

_TRUST_RAD = 1.0  # largest Newton step per oscillator (rad)
_HALVINGS = 12  # backtracking trials per Newton step
_DT0 = 1.0  # first pseudo-time step of the layered output solve, in units of 1/max|J_oo|
_DT_GROW = 10.0  # largest growth of the pseudo-time step per iteration


@dataclass(frozen=True)
class Layout:
    """Which oscillators are clock-locked and how the free ones are solved.

    ``held`` the held oscillators (held inputs then bias oscillators, device indices),
    ``free`` the others (ascending), ``drive`` the driven ones; ``net``/``order``/``edge_ij``
    the layered network of the device (network oscillator → device oscillator, network edge →
    device (i, j)) when it has that structure, else None.
    """

    held: IntArray
    free: IntArray
    drive: IntArray
    net: LayeredNetwork | None
    order: IntArray | None
    edge_ij: IntArray | None

    @property
    def n_held_inputs(self) -> int:
        return 0 if self.net is None else self.net.n_in


def layout(model: DeviceModel) -> Layout:
    """The held/free split of ``model`` and its layered structure, if any (every oscillator
    held, bias, hidden or output; edges exactly held → hidden, hidden → output, bias →
    output)."""
    r = model.roles
    held = np.array([*r.held, *r.bias], dtype=np.intp)
    mask = np.zeros(model.n, dtype=bool)
    mask[held] = True
    free = np.flatnonzero(~mask).astype(np.intp)
    drive = np.array(r.drive, dtype=np.intp)
    net = order = edge_ij = None
    order_ = np.array([*r.held, *r.bias, *r.hidden, *r.outputs], dtype=np.intp)
    if r.held and r.hidden and order_.size == model.n and len(set(order_.tolist())) == model.n:
        cand = LayeredNetwork(len(r.held), (len(r.hidden),), len(r.outputs),
                              tuple(model.bias_phases_rad))  # fmt: skip
        ij = order_[cand.edges]
        want = {frozenset(p) for p in ij.tolist()}
        have = {frozenset((e.i, e.j)) for e in model.edges}
        if want == have:
            net, order, edge_ij = cand, order_, ij
    return Layout(held, free, drive, net, order, edge_ij)


def held_phases(model: DeviceModel, inputs_rad: Array) -> Array:
    """Phases (n,) rad with the held inputs at ``inputs_rad`` and the bias oscillators at
    ``bias_phases_rad`` (0 elsewhere)."""
    th = np.zeros(model.n)
    th[model.roles.held] = inputs_rad
    th[model.roles.bias] = model.bias_phases_rad
    return th


def layered_start(lay: Layout, w: Array, K: Array, theta_held: Array) -> Array | None:
    """Free state of a layered device by the layered solver (exactly held inputs, H = sin,
    the symmetric part of K) from the feed-forward start: phases (n,) or None (no lock)."""
    if lay.net is None or lay.order is None or lay.edge_ij is None:
        return None
    net = lay.net
    i, j = lay.edge_ij[:, 0], lay.edge_ij[:, 1]
    k = 0.5 * (K[i, j] + K[j, i])
    omega = w[lay.order[net.n_held :]]
    inputs = theta_held[lay.order[: net.n_in]][None, :]
    eq = solve_layered(net, omega, k, inputs)
    if not eq.converged[0]:
        return None
    th = theta_held.copy()
    th[lay.order] = eq.theta[0]
    th[lay.held] = theta_held[lay.held]
    return th


@dataclass(frozen=True)
class Forcing:
    """Everything acting on the free oscillators besides ω and K: the drive (amplitudes
    ``drive_amp`` (n,), 0 off the driven ones; phase ``drive_phase_rad``) and the clamp as
    keyword arguments of :func:`~phasegrad_hw.physics.rhs` (``nudge_kw``, possibly empty)."""

    drive_amp: Array
    drive_phase_rad: float
    nudge_kw: dict[str, Any]


def free_residual(
    theta: Array, w: Array, K: Array, H: CouplingFunction, free: IntArray, f: Forcing
) -> Array:
    """F_f (n_free,) at phases ``theta`` (n,): model frequency units."""
    out = rhs(theta, w, K, H, **f.nudge_kw)
    out = out + f.drive_amp * np.sin(f.drive_phase_rad - theta)
    return np.asarray(out[free])


def free_jacobian(theta: Array, K: Array, H: CouplingFunction, free: IntArray, f: Forcing) -> Array:
    """J_ff = ∂F_f/∂θ_f (n_free, n_free) at ``theta`` (held oscillators fixed)."""
    J = jacobian(theta, K, H, **f.nudge_kw)
    idx = np.arange(J.shape[0])
    J[idx, idx] -= f.drive_amp * np.cos(f.drive_phase_rad - theta)
    return np.asarray(J[np.ix_(free, free)])


def solve_free(
    theta0: Array,
    w: Array,
    K: Array,
    H: CouplingFunction,
    free: IntArray,
    f: Forcing,
    tol: float,
    max_iter: int,
) -> Array | None:
    """Damped Newton on the free block from ``theta0`` (n,) (held entries are kept):
    the state (n,) with max |F_f| <= ``tol``, or None when it does not converge. Steps are
    capped at 1 rad and halved until ‖F_f‖ decreases; stability is the caller's to judge."""
    th = theta0.copy()
    F = free_residual(th, w, K, H, free, f)
    f2 = float(F @ F)
    for _ in range(max_iter):
        if float(np.abs(F).max(initial=0.0)) <= tol:
            th[free] = wrap(th[free])
            return th
        try:
            step = np.linalg.solve(free_jacobian(th, K, H, free, f), -F)
        except np.linalg.LinAlgError:
            return None
        step *= min(1.0, _TRUST_RAD / max(float(np.abs(step).max()), 1e-300))
        a = 1.0
        for _ in range(_HALVINGS):
            trial = th.copy()
            trial[free] += a * step
            Ft = free_residual(trial, w, K, H, free, f)
            ft2 = float(Ft @ Ft)
            if ft2 < f2 or a < 2.0**-10:
                break
            a *= 0.5
        th, F, f2 = trial, Ft, ft2
    if float(np.abs(F).max(initial=0.0)) <= tol:
        th[free] = wrap(th[free])
        return th
    return None


def free_implicit_gradient(J_ff: Array, e_free: Array, n: int, free: IntArray) -> Array:
    """∂L/∂ω (n,) by implicit differentiation on the free block: −J_ffᵀ⁻¹e (0 on held
    oscillators, whose ω does not enter the state)."""
    g = np.zeros(n)
    g[free] = -np.linalg.solve(J_ff.T, e_free)
    return g


def stable(J_ff: Array) -> bool:
    """A stable lock: the symmetric part of J_ff is negative definite (sufficient: then every
    eigenvalue of J_ff has a negative real part)."""
    try:
        np.linalg.cholesky(-0.5 * (J_ff + J_ff.T))
    except np.linalg.LinAlgError:
        return False
    return True


# --------------------------------------------------------------------------- layered, any H
def _fields(K_rows: Array, theta_cols: Array, orders: tuple[int, ...]) -> list[Array]:
    """Z_k = Σ_j K_rj e^{ikθ_j} (rows,) for each harmonic order k."""
    out: list[Array] = []
    for k in orders:
        kt = k * theta_cols
        out.append(K_rows @ np.cos(kt) + 1j * (K_rows @ np.sin(kt)))
    return out


class LayeredSolver:
    """Locked states of a layered held device for any coupling function and asymmetric K
    (the emulated chips): the structure of :func:`~phasegrad_hw.physics.layered.solve_layered`
    generalised.

    With H(φ) = Σ_k a_k sin(kφ − ψ) + b0 + b1 cos φ, the force on a hidden oscillator h
    from its (held and output) neighbours is, with Z_k = Σ_j K_hj e^{ikθ_j} and S = Σ_j K_hj,

        f_h(θ_h) = ω_h + Σ_k a_k Im(e^{−iψ} Z_k e^{−ikθ_h}) + b0·S + b1·Re(Z_1 e^{−iθ_h}),

    a trigonometric polynomial in θ_h alone (no coupling inside the layer). Given the output
    phases every hidden oscillator sits at a stable root of f_h (f_h' < 0), found by 1-D
    Newton from its previous phase and, where that fails, by a grid scan (the down-crossing
    nearest the previous phase: a chip stays in its basin). Newton then runs on the outputs
    alone with the Schur complement S = J_oo − J_oh D⁻¹ J_ho (D = diag f_h'), shifted to a
    descent direction where −S is not positive definite; steps are capped at 1 rad and halved
    until ‖F_o‖ decreases.
    """

    _GRID = 96  # grid points of the fallback root scan

    def __init__(
        self, lay: Layout, w: Array, K: Array, H: CouplingFunction, theta_held: Array
    ) -> None:
        assert lay.net is not None and lay.order is not None
        net, order = lay.net, lay.order
        self.n = w.size
        self.held = order[: net.n_held]
        self.hid = order[net.n_held : net.n_held + net.hidden[0]]
        self.out = order[net.n_held + net.hidden[0] :]
        self.H = H
        self.orders = tuple(range(1, len(H.harmonics) + 1))
        self.a = np.asarray(H.harmonics, dtype=np.float64)
        self.lag = np.exp(-1j * H.phase_lag)
        self.w_h, self.w_o = w[self.hid], w[self.out]
        self.K_hx, self.K_ho = K[np.ix_(self.hid, self.held)], K[np.ix_(self.hid, self.out)]
        self.K_oh, self.K_ox = K[np.ix_(self.out, self.hid)], K[np.ix_(self.out, self.held)]
        self.theta_held = theta_held
        self.z_held = _fields(self.K_hx, theta_held[self.held], self.orders)
        self.s_h = self.K_hx.sum(axis=1) + self.K_ho.sum(axis=1)

    def set_frequencies(self, w: Array) -> None:
        """New detunings (n,) (drift, bias changes) for the same couplings and held phases."""
        self.w_h, self.w_o = w[self.hid], w[self.out]

    # -- hidden layer ----------------------------------------------------------------
    def _hidden_f(self, th: Array, Z: list[Array]) -> tuple[Array, Array]:
        """(f_h, f_h') at hidden phases ``th`` (rows,) or on a grid (rows, g)."""
        col = (slice(None), None) if th.ndim == 2 else (slice(None),)
        f = (self.w_h + self.H.offset * self.s_h)[col] + np.zeros(th.shape)
        d = np.zeros(th.shape)
        for k, ak, Zk in zip(self.orders, self.a, Z, strict=True):
            v = (self.lag * Zk)[col] * np.exp(-1j * k * th)
            f = f + ak * v.imag
            d = d - k * ak * v.real
        b1 = self.H.cos_offset
        if b1:
            u = Z[0][col] * np.exp(-1j * th)
            f = f + b1 * u.real
            d = d + b1 * u.imag
        return f, d

    def feed_forward(self) -> tuple[Array, Array]:
        """Start (θ_o, θ_h): each layer at the sine-part lock to the layer below, the
        back-action of the outputs ignored: θ = arg Z + arcsin(ω/|Z|) (clipped)."""
        z = self.z_held[0]
        th_h = np.angle(z) + np.arcsin(np.clip(self.w_h / np.maximum(np.abs(z), 1e-300), -1, 1))
        zo = self.K_oh @ np.exp(1j * th_h) + self.K_ox @ np.exp(1j * self.theta_held[self.held])
        r = np.maximum(np.abs(zo), 1e-300)
        th_o = np.angle(zo) + np.arcsin(np.clip(self.w_o / r, -1, 1))
        return th_o, th_h

    def hidden_roots(self, th_o: Array, th_h0: Array) -> tuple[Array, Array] | None:
        """Stable roots θ_h (n_h,) given output phases, nearest ``th_h0``; and f_h' there."""
        Zo = _fields(self.K_ho, th_o, self.orders)
        Z = [zh + zo for zh, zo in zip(self.z_held, Zo, strict=True)]
        th = th_h0.copy()
        f, d = self._hidden_f(th, Z)
        for _ in range(8):
            if np.all(np.abs(f) < 1e-13) and np.all(d < 0):
                break
            ok = d < 0
            th = th - np.where(ok, f / np.where(ok, d, -1.0), 0.0)
            f, d = self._hidden_f(th, Z)
        bad = ~((np.abs(f) < 1e-11) & (d < 0))
        if bad.any():  # a few more Newton steps before the scan
            for _ in range(4):
                ok = d < 0
                th = th - np.where(ok, f / np.where(ok, d, -1.0), 0.0)
                f, d = self._hidden_f(th, Z)
            bad = ~((np.abs(f) < 1e-11) & (d < 0))
        if bad.any():
            rows = np.flatnonzero(bad)
            grid = np.linspace(-np.pi, np.pi, self._GRID, endpoint=False)
            sub = [z[rows] for z in Z]
            saved = (self.w_h, self.s_h)
            self.w_h, self.s_h = self.w_h[rows], self.s_h[rows]
            try:
                g = th_h0[rows, None] + grid[None, :]
                fg, _ = self._hidden_f(g, sub)
                down = (fg > 0) & (np.roll(fg, -1, axis=1) <= 0)
                if not down.any(axis=1).all():
                    return None
                dist = np.where(down, np.abs(wrap(g - th_h0[rows, None])), np.inf)
                c = np.argmin(dist, axis=1)
                r = np.arange(rows.size)
                lo, hi = g[r, c], g[r, c] + 2 * np.pi / self._GRID
                flo = fg[r, c]
                for _ in range(40):  # bisection inside the bracket (f(lo) > 0 >= f(hi))
                    mid = 0.5 * (lo + hi)
                    fm, _ = self._hidden_f(mid, sub)
                    up = np.sign(fm) == np.sign(flo)
                    lo, hi = np.where(up, mid, lo), np.where(up, hi, mid)
                    flo = np.where(up, fm, flo)
                th[rows] = 0.5 * (lo + hi)
            finally:
                self.w_h, self.s_h = saved
            f, d = self._hidden_f(th, Z)
            if not np.all(d < 0):
                return None
        return th, d

    # -- outputs ---------------------------------------------------------------------
    def output_residual(self, th_o: Array, th_h: Array, f: Forcing) -> tuple[Array, Array]:
        """(F_o, J_oo diagonal) at outputs ``th_o`` with hidden ``th_h``."""
        dh = th_h[None, :] - th_o[:, None]
        dx = self.theta_held[self.held][None, :] - th_o[:, None]
        F = self.w_o + (self.K_oh * self.H.value(dh)).sum(1) + (self.K_ox * self.H.value(dx)).sum(1)
        diag = -(self.K_oh * self.H.derivative(dh)).sum(1) - (
            self.K_ox * self.H.derivative(dx)
        ).sum(1)
        kw = f.nudge_kw
        if kw:
            b, t = kw["beta"][self.out], kw["target"][self.out]
            if kw["nudge"] == "injection":
                F, diag = F + b * np.sin(t - th_o), diag - b * np.cos(t - th_o)
            else:  # the core's linear clamp β(t − θ) on the wrapped phase (physics.rhs)
                F, diag = F + b * (t - wrap(th_o)), diag - b
        return F, diag

    def solve(
        self,
        th_o: Array,
        th_h: Array,
        f: Forcing,
        tol: float,
        max_iter: int,
        dt0: float = _DT0,
    ) -> Array | None:
        """Locked state (n,) from outputs ``th_o`` and hidden ``th_h`` starts, or None.
        ``dt0`` the first pseudo-time step (× 1/max|J_oo|): large for a start next to the
        state (plain Newton), ~1 for a far one (follow the dynamics first)."""
        hr = self.hidden_roots(th_o, th_h)
        if hr is None:
            return None
        th_h, dh = hr
        F, diag = self.output_residual(th_o, th_h, f)
        f2 = float(F @ F)
        n_o = th_o.size
        dt = dt0 / (1e-3 + float(np.abs(diag).max()))
        for _ in range(max_iter):
            if float(np.abs(F).max()) <= tol:
                break
            d_oh = th_h[None, :] - th_o[:, None]
            J_oh = self.K_oh * self.H.derivative(d_oh)
            J_ho = self.K_ho * self.H.derivative(-d_oh.T)
            S = np.diag(diag) - (J_oh / dh[None, :]) @ J_ho
            # pseudo-transient continuation: (−S + I/Δt)·δ = F follows the outputs' own
            # dynamics toward a stable lock while F is large, and becomes Newton as Δt grows
            step = np.linalg.solve(-S + np.eye(n_o) / dt, F)
            step *= min(1.0, _TRUST_RAD / max(float(np.abs(step).max()), 1e-300))
            cand = self.hidden_roots(th_o + step, th_h)
            if cand is None:
                dt *= 0.25
                if dt < 1e-6:
                    return None
                continue
            th_o = th_o + step
            th_h, dh = cand
            F, diag = self.output_residual(th_o, th_h, f)
            f2_new = float(F @ F)
            dt = min(dt * min(_DT_GROW, np.sqrt(f2 / max(f2_new, 1e-300))), 1e12)
            f2 = f2_new
        if float(np.abs(F).max()) > tol:
            return None
        th = self.theta_held.copy()
        th[self.hid] = wrap(th_h)
        th[self.out] = wrap(th_o)
        return th
