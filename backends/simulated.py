"""The ideal simulated device: the core Kuramoto physics behind the substrate contract.

Every read solves the (possibly nudged) locked state by warm-started Newton, then adds the
optional seeded Gaussian readout noise (``readout_noise_rad`` per single read) and readout
quantisation (``quantisation_rad``), wrapping at ±π like a phase detector.

:class:`SimulatedBatch` holds many independent virtual chips (:class:`SimulatedChip`, each a
full substrate with its own settings and noise RNG); reads that the chips await concurrently
(e.g. under ``asyncio.gather``) are solved together in one vectorised Newton call.
"""

from __future__ import annotations

import asyncio
from typing import Any, Literal

import numpy as np
from numpy.typing import NDArray
from pydantic import Field

from phasegrad_hw.device.model import DeviceModel
from phasegrad_hw.device.substrate import Capability, OscillatorSubstrate, PhaseReading
from phasegrad_hw.physics import Array, CouplingFunction, centred, solve_equilibrium, wrap
from phasegrad_hw.physics.gradients import implicit_gradient, loss_grad_theta


class SimulatedDeviceModel(DeviceModel):
    """The ideal device on the core physics, with optional seeded readout noise.

    ``readout_noise_rad`` rms Gaussian noise per single read (rad); ``quantisation_rad`` the
    readout LSB (rad, 0 = none). Biases are the frequencies themselves (unit ``model``).
    """

    backend: Literal["simulated"] = "simulated"
    readout_noise_rad: float = Field(default=0.0, ge=0.0, le=3.2)
    quantisation_rad: float = Field(default=0.0, ge=0.0, le=3.2)
    settle_s: float = Field(default=0.0, ge=0.0)


_EPS = float(np.finfo(np.float64).eps)


class _EdgeNewton:
    """Fast locked-state solver for symmetric K and H = a·sin φ on a small network.

    Undamped Newton on the edge list (D = θ S, F = ω^c − S (aK sin D) + nudge,
    J = −S diag(aK cos D) Sᵀ + diag(nudge′)) with a 1 rad trust region, batched over rows.
    A converged state is stable when every edge has cos Δθ > 0 and the nudge does not
    push away (−J̃ is then a reduced weighted Laplacian plus a non-negative diagonal on a
    connected graph, so positive definite); otherwise stability is checked by eigenvalues.
    Rows that do not converge within ``max_iter`` report ``ok`` False; the caller falls
    back to :func:`solve_equilibrium` (damped Newton with line search) for those.
    """

    def __init__(self, model: SimulatedDeviceModel, max_iter: int = 25) -> None:
        e = model.edge_index
        n, m = model.n, len(e)
        S = np.zeros((n, m))
        S[e[:, 0], np.arange(m)] = -1.0
        S[e[:, 1], np.arange(m)] = 1.0
        self.S = S
        self.ref = model.roles.reference
        self.keep = np.flatnonzero(np.arange(n) != self.ref)
        self.Sk = S[self.keep]
        self.n = n
        self.max_iter = max_iter
        self.linear = model.nudge == "linear"
        self._diag = np.arange(n - 1)

    def solve(
        self, W: Array, k: Array, theta0: Array, beta: Array | None, target: Array | None
    ) -> tuple[Array, NDArray[np.bool_]]:
        """θ (B, N) and ok (B,) for centred ω (B, N), edge weights a·K (B, E) > 0, warm
        start (B, N), signed per-oscillator β (B, N) or None, targets (B, N)."""
        if len(W) == 1:
            th1, ok1 = self._solve_one(
                W[0],
                k[0],
                theta0[0],
                None if beta is None else beta[0],
                None if target is None else target[0],
            )
            return th1[None, :], np.array([ok1])
        S, Sk, keep = self.S, self.Sk, self.keep
        th = theta0 - theta0[:, self.ref : self.ref + 1]
        scale = 1.0 + np.abs(W).max(axis=1) + 2.0 * k.sum(axis=1)
        tol = np.maximum(1e-12, 64.0 * _EPS * scale * np.sqrt(self.n))
        done = np.zeros(len(W), dtype=bool)
        nd: Array | None = None
        for _ in range(self.max_iter):
            D = th @ S
            F = W - (k * np.sin(D)) @ S.T
            if beta is not None and target is not None:
                d = target - th
                if self.linear:
                    F = F + beta * d
                    nd = -beta
                else:
                    F = F + beta * np.sin(d)
                    nd = -beta * np.cos(d)
            Fk = F[:, keep]
            done = np.abs(Fk).max(axis=1) <= tol
            if done.all():
                break
            J = -np.einsum("ne,me,be->bnm", Sk, Sk, k * np.cos(D), optimize=False)
            if nd is not None:
                idx = np.arange(len(keep))
                J[:, idx, idx] += nd[:, keep]
            try:
                step = np.linalg.solve(J, -Fk[..., None])[..., 0]
            except np.linalg.LinAlgError:
                return th, np.zeros(len(W), dtype=bool)
            big = np.abs(step).max(axis=1, keepdims=True)
            step *= np.minimum(1.0, 1.0 / np.maximum(big, 1e-300))
            step[done] = 0.0
            th[:, keep] += step
        if not np.all(np.isfinite(th)):
            return th, np.zeros(len(W), dtype=bool)
        D = th @ S
        c = np.cos(D)
        push = nd is not None and bool(np.any(nd > 0))
        stable = np.all(c > 0.0, axis=1) & (not push)
        check = np.flatnonzero(done & ~stable)
        if check.size:  # eigenvalues of −J̃ for the rows the sufficient test cannot clear
            J = -np.einsum("ne,me,be->bnm", Sk, Sk, k[check] * c[check], optimize=False)
            if nd is not None:
                idx = np.arange(len(keep))
                J[:, idx, idx] += nd[check][:, keep]
            lam = np.linalg.eigvalsh(-0.5 * (J + np.swapaxes(J, 1, 2)))[:, 0]
            stable[check] = lam > 1e-10 * (np.abs(J).max(axis=(1, 2)) + 1e-300)
        th[:, keep] = wrap(th[:, keep])
        return th, done & stable

    def _solve_one(
        self, w: Array, k: Array, theta0: Array, beta: Array | None, target: Array | None
    ) -> tuple[Array, bool]:
        """The same iteration for one network (2-D linear algebra, no batch overhead)."""
        S, Sk, keep = self.S, self.Sk, self.keep
        th = theta0 - theta0[self.ref]
        tol = max(
            1e-12,
            64.0 * _EPS * (1.0 + float(np.abs(w).max()) + 2.0 * float(k.sum())) * np.sqrt(self.n),
        )
        nudged = beta is not None and target is not None
        nd: Array | None = None
        done = False
        for _ in range(self.max_iter):
            D = th @ S
            F = w - S @ (k * np.sin(D))
            if nudged:
                d = target - th
                if self.linear:
                    F = F + beta * d
                    nd = -beta  # type: ignore[operator]
                else:
                    F = F + beta * np.sin(d)
                    nd = -beta * np.cos(d)  # type: ignore[operator]
            Fk = F[keep]
            if float(np.abs(Fk).max()) <= tol:
                done = True
                break
            J = (Sk * (k * np.cos(D))) @ Sk.T  # −J̃ without the nudge
            if nd is not None:
                J[self._diag, self._diag] -= nd[keep]
            try:
                step = np.linalg.solve(J, Fk)  # J̃ s = −F̃  ⇔  (−J̃) s = F̃
            except np.linalg.LinAlgError:
                return th, False
            big = float(np.abs(step).max())
            if big > 1.0:
                step = step / big
            th[keep] += step
        if not done or not np.all(np.isfinite(th)):
            return th, False
        c = np.cos(th @ S)
        stable = bool(np.all(c > 0.0)) and (nd is None or not bool(np.any(nd > 0)))
        if not stable:
            A = (Sk * (k * c)) @ Sk.T
            if nd is not None:
                A[self._diag, self._diag] -= nd[keep]
            lam = float(np.linalg.eigvalsh(0.5 * (A + A.T))[0])
            stable = lam > 1e-10 * (float(np.abs(A).max()) + 1e-300)
        th[keep] = wrap(th[keep])
        return th, stable


def _solve_rows(
    fast: _EdgeNewton | None,
    model: SimulatedDeviceModel,
    H: CouplingFunction,
    W: Array,
    K: Array,
    ke: Array | None,
    th0: Array,
    beta: Array | None,
    target: Array | None,
    direction: int,
) -> tuple[Array, NDArray[np.bool_]]:
    """Locked states of B independent settings: centred ω (B, N), K (B, N, N), edge weights
    (B, E) for the fast path (None: skip it), warm starts (B, N), β ≥ 0 and targets (B, N)
    or None. Fast edge Newton → damped Newton from the warm start → damped Newton cold."""
    theta = th0.copy()
    ok = np.zeros(len(W), dtype=bool)
    if fast is not None and ke is not None:
        sb = None if beta is None else beta * float(direction)
        th, ok = fast.solve(W, ke, th0, sb, target)
        theta[ok] = th[ok]
    rest = np.flatnonzero(~ok)
    if rest.size:
        ref, nudge = model.roles.reference, model.nudge
        kw: dict[str, Any] = {}
        if beta is not None:
            kw = {"beta": beta[rest], "target": target[rest], "direction": direction}  # type: ignore[index]
        eq = solve_equilibrium(W[rest], K[rest], H, theta0=th0[rest], ref=ref, nudge=nudge, **kw)
        theta[rest] = eq.theta
        ok[rest] = eq.ok
        bad = rest[~np.asarray(eq.ok, dtype=bool)]
        if bad.size:  # a cold start can find the stable state a warm start jumped past
            if beta is not None:
                kw = {"beta": beta[bad], "target": target[bad], "direction": direction}  # type: ignore[index]
            eq2 = solve_equilibrium(W[bad], K[bad], H, ref=ref, nudge=nudge, **kw)
            good = np.asarray(eq2.ok, dtype=bool)
            theta[bad[good]] = eq2.theta[good]
            ok[bad[good]] = True
    return theta, ok


class SimulatedSubstrate(OscillatorSubstrate):
    """Ideal oscillator network. Biases are frequencies (model units)."""

    capabilities = frozenset(
        {
            Capability.COUPLINGS,
            Capability.FREQUENCY_COUNTER,
            Capability.EXACT_GRADIENT,
            Capability.RESEED,
        }
    )
    model: SimulatedDeviceModel

    def __init__(self, model: SimulatedDeviceModel, seed: int | None = None) -> None:
        super().__init__(model)
        self.rng = np.random.default_rng(model.seed if seed is None else seed)
        self.omega = model.safe_biases()
        self.K = model.coupling_matrix()
        self.H = model.coupling()
        self.theta = np.zeros(model.n)
        self._clamp: tuple[Array, Array, int] | None = None
        pure_sine = len(self.H.harmonics) == 1 and self.H.is_odd and self.H.harmonics[0] > 0
        self._fast = _EdgeNewton(model) if pure_sine else None
        self._ke: Array | None = None
        self._refresh_edges()

    def _refresh_edges(self) -> None:
        """Edge weights a·K_e for the fast solver, or None if K is asymmetric / has a zero."""
        e = self.model.edge_index
        k = self.K[e[:, 0], e[:, 1]]
        usable = np.array_equal(k, self.K[e[:, 1], e[:, 0]]) and bool(np.all(k > 0))
        self._ke = self.H.harmonics[0] * k if (self._fast is not None and usable) else None

    # -- hooks --------------------------------------------------------------------
    async def _apply_frequencies(self, omega: Array) -> None:
        self.omega = omega.copy()

    async def _apply_biases(self, values: Array) -> None:
        self.omega = values.copy()

    async def _apply_couplings(self, values: Array) -> None:
        e = self.model.edge_index
        ratio = np.array(
            [1.0 if s.k_ji is None or s.k == 0 else s.k_ji / s.k for s in self.model.edges]
        )
        self.K[e[:, 0], e[:, 1]] = values
        self.K[e[:, 1], e[:, 0]] = values * ratio
        self._refresh_edges()

    async def _apply_clamp(self, target: Array, beta: float, direction: int) -> None:
        b = np.zeros(self.model.n)
        t = np.zeros(self.model.n)
        b[self.model.outputs] = beta
        t[self.model.outputs] = target
        self._clamp = (b, t, direction)

    async def _apply_release(self) -> None:
        self._clamp = None

    async def _read(self, averages: int) -> PhaseReading:
        theta, locked = self.solve()
        return await self._reading(theta, locked, averages)

    async def _reading(self, theta: Array, locked: bool, averages: int) -> PhaseReading:
        """Noisy, quantised, wrapped reading of the noise-free state ``theta`` (rad)."""
        sigma = self.model.readout_noise_rad
        if sigma > 0:
            samples = theta[None, :] + sigma * self.rng.standard_normal((averages, self.model.n))
        else:
            samples = np.repeat(theta[None, :], averages, axis=0)
        q = self.model.quantisation_rad
        if q > 0:
            samples = np.round(samples / q) * q
        samples = wrap(samples)
        samples[:, self.model.roles.reference] = 0.0
        if self.model.settle_s:
            await asyncio.sleep(self.model.settle_s)
        return PhaseReading.from_samples(samples, locked=locked, settle_s=self.model.settle_s)

    async def _read_frequencies(self) -> Array:
        return self.omega.copy()

    def reseed(self, seed: int) -> None:
        """Restart the readout-noise RNG from ``seed`` and forget the warm start, so every read
        from here on depends only on ``seed`` and the settings (exactly resumable runs)."""
        self.rng = np.random.default_rng(seed)
        self.theta = np.zeros(self.model.n)

    # -- physics ------------------------------------------------------------------
    def _nudge_kwargs(self) -> dict[str, Any]:
        if self._clamp is None:
            return {}
        b, t, d = self._clamp
        return {"beta": b, "target": t, "direction": d}

    def solve(self) -> tuple[Array, bool]:
        """Noise-free locked state under the present settings (warm-started; fast edge
        Newton first, then damped Newton, then a cold start)."""
        c = self._clamp
        theta, ok = _solve_rows(
            self._fast,
            self.model,
            self.H,
            centred(self.omega)[None, :],
            self.K[None],
            None if self._ke is None else self._ke[None],
            self.theta[None, :],
            None if c is None else c[0][None, :],
            None if c is None else c[1][None, :],
            1 if c is None else c[2],
        )
        if ok[0]:
            self.theta = theta[0]
        return theta[0], bool(ok[0])

    def true_state(self) -> tuple[Array, bool]:
        """The noise-free free-running locked state (rad) and whether it is locked."""
        saved = self._clamp
        self._clamp = None
        try:
            return self.solve()
        finally:
            self._clamp = saved

    def exact_gradient(self, target: Array) -> Array:
        """∂L/∂ω^c by implicit differentiation at the free state (for testing estimates)."""
        theta, _ = self.true_state()
        e = loss_grad_theta(theta, self.model.outputs, target, self.model.nudge)
        return implicit_gradient(theta, self.K, e, self.H, ref=self.model.roles.reference)


class SimulatedChip(SimulatedSubstrate):
    """One virtual chip of a :class:`SimulatedBatch`; behaves like a :class:`SimulatedSubstrate`
    (same noise stream for the same seed) but its reads are solved together with those of the
    other chips that are waiting at the same moment."""

    def __init__(self, model: SimulatedDeviceModel, batch: SimulatedBatch, seed: int) -> None:
        super().__init__(model, seed)
        self.batch = batch

    async def _read(self, averages: int) -> PhaseReading:
        theta, locked = await self.batch._solve(self)
        return await self._reading(theta, locked, averages)


class SimulatedBatch:
    """``size`` independent virtual chips of one device model, solved in batched calls.

    ``chips[k]`` is an ordinary substrate (settings, clamp, noise RNG seeded with
    ``SeedSequence([seed, k])`` unless reseeded). Reads issued while other chips' reads are
    pending are collected until the event loop has run every ready task once, then solved in
    one :func:`solve_equilibrium` call per nudge direction — the same states, to rounding,
    as solving chip by chip.
    """

    def __init__(self, model: SimulatedDeviceModel, size: int, seed: int | None = None) -> None:
        if size < 1:
            raise ValueError(f"size: {size} chips; need at least 1")
        base = model.seed if seed is None else seed
        self.model = model
        self.chips = [
            SimulatedChip(model, self, int(np.random.SeedSequence([base, k]).generate_state(1)[0]))
            for k in range(size)
        ]
        self._pending: list[tuple[SimulatedChip, asyncio.Future[tuple[Array, bool]]]] = []
        self._scheduled = False
        self.solves = 0  # batched solve calls made (for tests and benchmarks)

    def __len__(self) -> int:
        return len(self.chips)

    async def _solve(self, chip: SimulatedChip) -> tuple[Array, bool]:
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[tuple[Array, bool]] = loop.create_future()
        self._pending.append((chip, fut))
        if not self._scheduled:
            self._scheduled = True
            loop.call_soon(self._flush)
        return await fut

    def _flush(self) -> None:
        self._scheduled = False
        pending = [(c, f) for c, f in self._pending if not f.done()]
        self._pending = []
        groups: dict[int, list[tuple[SimulatedChip, asyncio.Future[tuple[Array, bool]]]]] = {}
        for c, f in pending:
            groups.setdefault(0 if c._clamp is None else c._clamp[2], []).append((c, f))
        for direction, members in groups.items():
            try:
                results = self.solve_chips([c for c, _ in members], direction)
            except Exception as exc:  # deliver the failure to every waiting read
                for _, f in members:
                    f.set_exception(exc)
                continue
            for (_, f), r in zip(members, results, strict=True):
                f.set_result(r)

    def solve_chips(
        self, chips: list[SimulatedChip], direction: int = 0
    ) -> list[tuple[Array, bool]]:
        """Noise-free states of ``chips`` (all free if ``direction`` is 0, else all clamped
        with that direction) in one batched solve, warm-started per chip."""
        self.solves += 1
        W = np.stack([centred(c.omega) for c in chips])
        K = np.stack([c.K for c in chips])
        th0 = np.stack([c.theta for c in chips])
        ke = None
        if all(c._ke is not None for c in chips):
            ke = np.stack([c._ke for c in chips])  # type: ignore[misc]
        beta = target = None
        if direction:
            beta = np.stack([c._clamp[0] for c in chips])  # type: ignore[index]
            target = np.stack([c._clamp[1] for c in chips])  # type: ignore[index]
        fast = chips[0]._fast
        theta, ok = _solve_rows(
            fast, self.model, chips[0].H, W, K, ke, th0, beta, target, direction or 1
        )
        out: list[tuple[Array, bool]] = []
        for k, c in enumerate(chips):
            if ok[k]:
                c.theta = theta[k].copy()
            out.append((theta[k].copy(), bool(ok[k])))
        return out

    def reseed(self, seed: int) -> None:
        """Reseed every chip: chip k gets ``SeedSequence([seed, k])``."""
        for k, c in enumerate(self.chips):
            c.reseed(int(np.random.SeedSequence([seed, k]).generate_state(1)[0]))
