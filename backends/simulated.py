"""The ideal simulated device: the core Kuramoto physics behind the substrate contract.

Every read solves the (possibly nudged) locked state by warm-started Newton, then adds the
optional seeded Gaussian readout noise (``readout_noise_rad`` per single read) and readout
quantisation (``quantisation_rad``), wrapping at ±π like a phase detector.
"""

from __future__ import annotations

import asyncio

import numpy as np

from phasegrad_hw.gradients import implicit_gradient, loss_grad_theta
from phasegrad_hw.models import SimulatedDeviceModel
from phasegrad_hw.physics import Array, centred, solve_equilibrium, wrap
from phasegrad_hw.substrate import Capability, OscillatorSubstrate, PhaseReading


class SimulatedSubstrate(OscillatorSubstrate):
    """Ideal oscillator network. Biases are frequencies (model units)."""

    capabilities = frozenset({Capability.COUPLINGS, Capability.FREQUENCY_COUNTER, Capability.EXACT_GRADIENT})
    model: SimulatedDeviceModel

    def __init__(self, model: SimulatedDeviceModel, seed: int | None = None) -> None:
        super().__init__(model)
        self.rng = np.random.default_rng(model.seed if seed is None else seed)
        self.omega = model.safe_biases()
        self.K = model.coupling_matrix()
        self.H = model.coupling()
        self.theta = np.zeros(model.n)
        self._clamp: tuple[Array, Array, int] | None = None

    # -- hooks --------------------------------------------------------------------
    async def _apply_frequencies(self, omega: Array) -> None:
        self.omega = omega.copy()

    async def _apply_biases(self, values: Array) -> None:
        self.omega = values.copy()

    async def _apply_couplings(self, values: Array) -> None:
        e = self.model.edge_index
        ratio = np.array([1.0 if s.k_ji is None or s.k == 0 else s.k_ji / s.k for s in self.model.edges])
        self.K[e[:, 0], e[:, 1]] = values
        self.K[e[:, 1], e[:, 0]] = values * ratio

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
        samples = theta[None, :] + self.model.readout_noise_rad * self.rng.standard_normal((averages, self.model.n))
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

    # -- physics ------------------------------------------------------------------
    def solve(self) -> tuple[Array, bool]:
        """Noise-free locked state under the present settings (warm-started)."""
        kw = {}
        if self._clamp is not None:
            b, t, d = self._clamp
            kw = {"beta": b, "target": t, "direction": d}
        eq = solve_equilibrium(
            centred(self.omega), self.K, self.H, theta0=self.theta, ref=self.model.roles.reference,
            nudge=self.model.nudge, **kw,  # type: ignore[arg-type]
        )
        if not eq.ok:
            # a cold start can find the stable state a warm start jumped past
            eq2 = solve_equilibrium(centred(self.omega), self.K, self.H, ref=self.model.roles.reference,
                                    nudge=self.model.nudge, **kw)  # type: ignore[arg-type]
            if eq2.ok:
                eq = eq2
        if eq.ok:
            self.theta = eq.theta
        return eq.theta, bool(eq.ok)

    def exact_gradient(self, target: Array) -> Array:
        """∂L/∂ω^c by implicit differentiation at the free state (for testing estimates)."""
        saved = self._clamp
        self._clamp = None
        try:
            theta, _ = self.solve()
        finally:
            self._clamp = saved
        e = loss_grad_theta(theta, self.model.outputs, target, self.model.nudge)
        return implicit_gradient(theta, self.K, e, self.H, ref=self.model.roles.reference)
