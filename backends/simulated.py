"""The ideal simulated device: the core Kuramoto physics behind the substrate contract.

Every read solves the (possibly nudged) locked state by the physics retry ladder
(:func:`~phasegrad_hw.physics.ladder.solve_locked`, warm-started), then adds the
optional seeded Gaussian readout noise (``readout_noise_rad`` per single read) and readout
quantisation (``quantisation_rad``), wrapping at ±π like a phase detector.

A device with held inputs (``roles.held``, ``roles.bias``) or a drive (``roles.drive``)
declares ``held_phases``/``drive`` and is solved on its free oscillators with the held ones
exactly at their phases and the drive injected from the clock (:mod:`~phasegrad_hw.backends.
_held`: the layered solver for the start of a layered device, Newton on the free block);
``true_state``/``exact_gradient`` use the same model.

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

from phasegrad_hw.backends import _held
from phasegrad_hw.device.model import DeviceModel
from phasegrad_hw.device.substrate import Capability, OscillatorSubstrate, PhaseReading
from phasegrad_hw.physics import Array, centred, wrap
from phasegrad_hw.physics.edge import EdgeNetwork
from phasegrad_hw.physics.gradients import implicit_gradient, loss_grad_theta
from phasegrad_hw.physics.ladder import Nudge, solve_locked


class SimulatedDeviceModel(DeviceModel):
    """The ideal device on the core physics, with optional seeded readout noise.

    ``readout_noise_rad`` rms Gaussian noise per single read (rad); ``quantisation_rad`` the
    readout LSB (rad, 0 = none). Biases are the frequencies themselves (unit ``model``).
    """

    backend: Literal["simulated"] = "simulated"
    readout_noise_rad: float = Field(default=0.0, ge=0.0, le=3.2)
    quantisation_rad: float = Field(default=0.0, ge=0.0, le=3.2)
    settle_s: float = Field(default=0.0, ge=0.0)


def _solve_rows(
    sub: SimulatedSubstrate,
    W: Array,
    K: Array,
    ke: Array | None,
    th0: Array,
    clamp: tuple[Array, Array] | None,
    direction: int,
) -> tuple[Array, NDArray[np.bool_]]:
    """Locked states of B independent settings of ``sub``'s model by the physics retry ladder
    (:func:`~phasegrad_hw.physics.ladder.solve_locked`): centred ω (B, N), K (B, N, N), edge
    couplings (B, E) for the fast edge rung (None: skip it), warm starts (B, N), clamp
    (β ≥ 0, targets), each (B, N), or None."""
    nudge = None if clamp is None else Nudge(clamp[0], clamp[1], sub.model.nudge, direction)
    res = solve_locked(
        W, th0, sub.H, K=K, edges=None if ke is None else sub._fast, k=ke,
        ref=sub.model.roles.reference, nudge=nudge,
    )  # fmt: skip
    return res.theta, res.ok


class SimulatedSubstrate(OscillatorSubstrate):
    """Ideal oscillator network. Biases are frequencies (model units)."""

    operation_timeout_s = None  # computation in this process: nothing to time out
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
        # the fast edge rung of the ladder, for H = a·sin (a > 0) on the model's edges
        pure_sine = len(self.H.harmonics) == 1 and self.H.is_odd and self.H.harmonics[0] > 0
        e = model.edge_index
        self._fast = (
            EdgeNetwork(model.n, e[:, 0], e[:, 1], model.roles.reference) if pure_sine else None
        )
        self._ke: Array | None = None
        self._refresh_edges()
        r = model.roles
        caps = set(type(self).capabilities)
        if r.held:
            caps.add(Capability.HELD_PHASES)
        if r.drive:
            caps.add(Capability.DRIVE)
        self.capabilities = frozenset(caps)
        self._lay = _held.layout(model) if (r.held or r.drive) else None
        self.held_rad = model.input_phases(np.zeros(len(r.held)))
        self.drive: tuple[Array, float] = (np.zeros(model.n), 0.0)
        self._lsolver: tuple[tuple[int, bytes], _held.LayeredSolver] | None = None
        self._k_version = 0  # bumped by every coupling change (the layered solver's cache key)

    def _refresh_edges(self) -> None:
        """Edge couplings K_e for the fast edge rung, or None if K is asymmetric / has a zero
        (or H is not a pure sine)."""
        e = self.model.edge_index
        k = self.K[e[:, 0], e[:, 1]]
        usable = np.array_equal(k, self.K[e[:, 1], e[:, 0]]) and bool(np.all(k > 0))
        self._ke = k.copy() if (self._fast is not None and usable) else None

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
        self._k_version += 1
        self._refresh_edges()

    async def _apply_clamp(self, target: Array, beta: float, direction: int) -> None:
        b = np.zeros(self.model.n)
        t = np.zeros(self.model.n)
        b[self.model.outputs] = beta
        t[self.model.outputs] = target
        self._clamp = (b, t, direction)

    async def _apply_release(self) -> None:
        self._clamp = None

    async def _apply_held_phases(self, phases_rad: Array) -> None:
        self.held_rad = phases_rad.copy()

    async def _apply_drive(self, amplitude: Array, phase_rad: float) -> None:
        a = np.zeros(self.model.n)
        a[self.model.roles.drive] = amplitude
        self.drive = (a, float(phase_rad))

    async def _read(self, averages: int) -> PhaseReading:
        theta, locked = self.solve()
        return await self._reading(theta, locked, averages)

    async def _reading(self, theta: Array, locked: bool, averages: int) -> PhaseReading:
        """Noisy, quantised, wrapped reading of the noise-free state ``theta`` (rad)."""
        theta = theta - theta[self.model.roles.reference]  # read against the reference
        sigma = self.model.readout_noise_rad
        if sigma > 0:
            samples = theta[None, :] + sigma * self.rng.standard_normal((averages, self.model.n))
        elif averages == 1:
            samples = theta[None, :]  # (a view: wrap below makes the new array)
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

    def _forced(self) -> bool:
        """Held oscillators or a drive switched on: the free-block solver of
        :mod:`~phasegrad_hw.backends._held` instead of the ladder."""
        r = self.model.roles  # (no drive oscillators: nothing can switch a drive on)
        return bool(r.held) or (bool(r.drive) and bool(np.any(self.drive[0])))

    def _free_frame(self) -> tuple[Array, Array]:
        """(ω in the solve frame (n,), phases of the held oscillators (n,)): detunings from the
        reference (the clock) with held inputs, else the centred ω with the reference at 0."""
        if self.model.roles.held:
            return self.omega - self.omega[self.model.roles.reference], _held.held_phases(
                self.model, self.held_rad
            )
        return centred(self.omega), np.zeros(self.model.n)

    def _forcing(self, clamp: bool = True) -> _held.Forcing:
        kw: dict[str, Any] = {}
        if clamp and self._clamp is not None:
            b, t, d = self._clamp
            kw = {"beta": b * d, "target": t, "nudge": self.model.nudge}
        return _held.Forcing(self.drive[0], self.drive[1], kw)

    def _free_set(self) -> NDArray[np.intp]:
        lay = self._lay
        if lay is not None and self.model.roles.held:
            return lay.free
        return np.flatnonzero(np.arange(self.model.n) != self.model.roles.reference)

    def _solve_forced(self, clamp: bool = True) -> tuple[Array, bool]:
        """Locked state with held oscillators / a drive (:mod:`~phasegrad_hw.backends._held`).
        Layered held device: the free state by the layered solver from its feed-forward start
        (deterministic, as the engine's), a nudged one by the layered Newton from the warm
        state; others by Newton on the free block from the warm start, then the held phases."""
        w, th_held = self._free_frame()
        free = self._free_set()
        f = self._forcing(clamp)
        lay = self._lay
        warm = self.theta.copy()
        if lay is not None:
            warm[lay.held] = th_held[lay.held]
        if lay is not None and lay.net is not None and not np.any(self.drive[0]):
            key = (self._k_version, self.held_rad.tobytes())
            if self._lsolver is None or self._lsolver[0] != key:
                self._lsolver = (key, _held.LayeredSolver(lay, w, self.K, self.H, th_held))
            ls = self._lsolver[1]
            ls.set_frequencies(w)
            near = (warm[ls.out], warm[ls.hid])
            starts: list[tuple[tuple[Array, Array], float]] = [(near, 1e6), (near, 1.0)]
            if not f.nudge_kw:
                start = _held.layered_start(lay, w, self.K, th_held)
                if start is not None:
                    starts.insert(0, ((start[ls.out], start[ls.hid]), 1e6))
            for (th_o, th_h), dt0 in starts:
                th = ls.solve(th_o, th_h, f, 1e-10, 200, dt0)
                if th is not None and _held.stable(
                    _held.free_jacobian(th, self.K, self.H, free, f)
                ):
                    return th, True
            return warm, False
        for s0 in (warm, th_held):
            th = _held.solve_free(s0, w, self.K, self.H, free, f, 1e-10, 50)
            if th is not None and _held.stable(_held.free_jacobian(th, self.K, self.H, free, f)):
                return th, True
        return warm, False

    def solve(self) -> tuple[Array, bool]:
        """Noise-free locked state under the present settings (the physics retry ladder:
        fast edge Newton from the warm start, then damped Newton warm, then cold)."""
        if self._forced():
            th_f, locked = self._solve_forced()
            if locked:
                self.theta = th_f
            return th_f, locked
        c = self._clamp
        theta, ok = _solve_rows(
            self,
            centred(self.omega)[None, :],
            self.K[None],
            None if self._ke is None else self._ke[None],
            self.theta[None, :],
            None if c is None else (c[0][None, :], c[1][None, :]),
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
        if self._forced():  # the clamp acts on the wrapped phase error (backends._held)
            t = np.asarray(target, dtype=np.float64)
            e = _held.loss_grad(theta, self.model.outputs, t, self.model.nudge)
            free = self._free_set()
            J = _held.free_jacobian(theta, self.K, self.H, free, self._forcing(clamp=False))
            return _held.free_implicit_gradient(J, e[free], self.model.n, free)
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
        if self._forced():  # held inputs or a drive: solved chip by chip
            return await super()._read(averages)
        theta, locked = await self.batch._solve(self)
        return await self._reading(theta, locked, averages)


class SimulatedBatch:
    """``size`` independent virtual chips of one device model, solved in batched calls.

    ``chips[k]`` is an ordinary substrate (settings, clamp, noise RNG seeded with
    ``SeedSequence([seed, k])`` unless reseeded). Reads issued while other chips' reads are
    pending are collected until the event loop has run every ready task once, then solved in
    one ladder call (:func:`~phasegrad_hw.physics.ladder.solve_locked`) per nudge direction
    — the same states, to rounding, as solving chip by chip.
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
        clamp = None
        if direction:
            beta = np.stack([c._clamp[0] for c in chips])  # type: ignore[index]
            target = np.stack([c._clamp[1] for c in chips])  # type: ignore[index]
            clamp = (beta, target)
        theta, ok = _solve_rows(chips[0], W, K, ke, th0, clamp, direction or 1)
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
