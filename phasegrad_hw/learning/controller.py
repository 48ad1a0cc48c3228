"""The asynchronous equilibrium-propagation controller (hardware in the loop).

One step, per sample and substrate (docs/design.md §2, §4; seed paper arXiv 2604.10272)::

    set ω (inputs written in)  →  free read θ*  →  clamp(targets, β) read θ^β
    [centred: clamp(targets, β, direction=−1) read θ^{−β}]  →  release
    g_ω = −wrap(θ^β − θ*)/β            (one-sided, O(β) bias)
        = −wrap(θ^β − θ^{−β})/(2β)     (centred, O(β²) bias; half the readout-noise std)
    g_K = [V(Δ^β) − V(Δ*)]/β           (V' = H; cos Δ* − cos Δ^β for H = sin)
    ω ← Π_ω(ω − η_ω·clip(g_ω)),  K ← Π_K(K − η_K·clip(g_K))   (Π: projection onto limits)

With single-read phase noise σ (rad) and ``averages`` reads per state, the one-sided
estimate's noise std per channel is ≈ √2·σ/(β·√averages); the centred one's is half that.

Safety: every value is limit-checked before anything is sent; a sample whose free or nudged
reading is not locked, or whose wrapped displacement exceeds ``basin_jump_rad`` on any
channel, is skipped and counted; parameters change only from complete valid readings. If a
substrate raises (or the step is cancelled) the step updates nothing, every substrate in the
step is made safe (clamp released, biases at safe values) and the error propagates unchanged.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Literal, TypeVar

import numpy as np
from numpy.typing import ArrayLike, NDArray
from pydantic import Field

from phasegrad_hw.config import StrictModel
from phasegrad_hw.device.model import DeviceModel
from phasegrad_hw.device.substrate import Capability, OscillatorSubstrate, PhaseReading
from phasegrad_hw.errors import ConfigError, LimitError
from phasegrad_hw.physics import CouplingFunction, wrap
from phasegrad_hw.physics.gradients import coupling_gradient_two_phase, loss

log = logging.getLogger(__name__)
Array = NDArray[np.float64]
T = TypeVar("T")

__all__ = [
    "ControllerStats",
    "EPConfig",
    "EPController",
    "Parameters",
    "Sample",
    "StepReport",
]


class EPConfig(StrictModel):
    """Equilibrium-propagation settings (model units unless stated).

    ``beta`` nudge strength (published 0.1); ``mode`` one-sided or centred (docs/design.md §2);
    ``averages`` reads averaged per state; ``lr_omega``/``lr_k`` learning rates for ω and K
    (published 1e-3); ``params`` what learns; ``edges`` indices into ``model.edges`` of the
    learnable couplings (None: all); ``clip`` element-wise gradient clip (published 2);
    ``basin_jump_rad`` a wrapped displacement above this on any channel is a basin jump (rad).
    """

    beta: float = Field(default=0.1, gt=0.0)
    mode: Literal["one_sided", "centred"] = "one_sided"
    averages: int = Field(default=1, ge=1)
    lr_omega: float = Field(default=1e-3, ge=0.0)
    lr_k: float = Field(default=1e-3, ge=0.0)
    params: Literal["omega", "K", "both"] = "omega"
    edges: list[int] | None = None
    clip: float = Field(default=2.0, gt=0.0)
    basin_jump_rad: float = Field(default=1.0, gt=0.0)


@dataclass
class Parameters:
    """Trainable device parameters: ``omega`` (N,) natural frequencies (model units; the input
    oscillators' entries are overwritten per sample) and ``coupling`` (E,) on ``model.edges``."""

    omega: Array
    coupling: Array

    def copy(self) -> Parameters:
        return Parameters(self.omega.copy(), self.coupling.copy())


@dataclass(frozen=True)
class Sample:
    """One training sample: input-oscillator frequencies (n_inputs,) and the clamp targets
    (n_outputs,) rad — or a function of the free output phases that returns them."""

    input_omega: Array
    targets: Array | Callable[[Array], Array]


@dataclass
class ControllerStats:
    """Running counts since the controller was made."""

    steps: int = 0
    updates: int = 0
    skipped_unlocked: int = 0
    skipped_basin_jump: int = 0
    errors: int = 0

    @property
    def skipped(self) -> int:
        return self.skipped_unlocked + self.skipped_basin_jump


@dataclass(frozen=True)
class StepReport:
    """What one step measured and did.

    ``free_phases`` (n_samples, N) rad, the free reading of each sample; ``free_locked`` its
    lock flag; ``valid`` mask of samples that contributed; ``grad_omega``
    (N,) and ``grad_coupling`` (E,) the valid samples' mean gradient (masked to the learnable
    subset, before clipping; None when nothing was valid or that set does not learn);
    ``loss`` mean over the valid samples of the nudge's loss toward the clamp targets at the
    free state (½Σ(θ_o − t)² linear, Σ(1 − cos(θ_o − t)) injection; rad²; NaN if none).
    """

    free_phases: Array
    free_locked: NDArray[np.bool_]
    valid: NDArray[np.bool_]
    skipped_unlocked: int
    skipped_basin_jump: int
    updated: bool
    grad_omega: Array | None
    grad_coupling: Array | None
    loss: float

    @property
    def n_valid(self) -> int:
        return int(self.valid.sum())


@dataclass
class _Readings:
    free: PhaseReading
    plus: PhaseReading | None = None
    minus: PhaseReading | None = None
    targets: Array | None = None


@dataclass
class _Prepared:
    omega: Array
    targets: Array | Callable[[Array], Array]


def _same_topology(a: DeviceModel, b: DeviceModel) -> bool:
    return (
        a.n == b.n
        and np.array_equal(a.edge_index, b.edge_index)
        and a.roles.inputs == b.roles.inputs
        and a.roles.outputs == b.roles.outputs
        and a.roles.reference == b.roles.reference
    )


class EPController:
    """EP controller over one or several substrates of the same topology.

    ``step(batch)`` measures sample k on substrate k concurrently (``asyncio.gather``),
    averages the valid samples' gradients and updates ``params``; the new parameters reach
    the devices at the next ``step``/``infer``. Substrates must already be connected
    (``async with``); the controller never closes them.
    """

    def __init__(
        self,
        substrates: Sequence[OscillatorSubstrate],
        config: EPConfig,
        params: Parameters,
        *,
        learnable_omega: NDArray[np.bool_] | None = None,
    ) -> None:
        if len(substrates) == 0:
            raise ConfigError("substrates: [] — at least one substrate is required")
        self.substrates = list(substrates)
        self.config = config
        model = self.substrates[0].model
        self.model = model
        for k, s in enumerate(self.substrates[1:], start=1):
            if not _same_topology(model, s.model):
                raise ConfigError(
                    f"substrates[{k}]: model {s.model.name!r} differs in topology or roles from "
                    f"substrates[0] ({model.name!r}); parallel substrates must share one network"
                )
        n, n_edges = model.n, len(model.edges)
        self._inputs = np.asarray(model.roles.inputs, dtype=np.int64)
        self._outputs = model.outputs
        self._ref = model.roles.reference
        self._edge_index = model.edge_index
        om = np.asarray(params.omega, dtype=np.float64)
        kk = np.asarray(params.coupling, dtype=np.float64)
        if om.shape != (n,) or not np.all(np.isfinite(om)):
            raise ConfigError(f"params.omega: shape {om.shape} must be ({n},) and finite")
        if kk.shape != (n_edges,) or not np.all(np.isfinite(kk)):
            raise ConfigError(f"params.coupling: shape {kk.shape} must be ({n_edges},) and finite")
        self.params = Parameters(om.copy(), kk.copy())
        if learnable_omega is None:
            mask = np.zeros(n, dtype=bool)
            mask[model.roles.hidden] = True
            mask[model.roles.outputs] = True
        else:
            mask = np.asarray(learnable_omega, dtype=bool)
            if mask.shape != (n,):
                raise ConfigError(f"learnable_omega: shape {mask.shape} must be ({n},)")
            mask = mask.copy()
        mask[self._ref] = False  # the reference's frequency is not a free parameter
        self.learnable_omega = mask
        self._w_mask = mask.astype(np.float64)
        self._edge_mask = self._edge_subset(config.edges, n_edges)
        self._k_mask = self._edge_mask.astype(np.float64)
        if config.params in ("K", "both"):
            for k, s in enumerate(self.substrates):
                if Capability.COUPLINGS not in s.capabilities:
                    raise ConfigError(
                        f"config.params: {config.params!r} needs couplings, but substrates[{k}] "
                        f"({type(s).__name__}) cannot set couplings; use params='omega'"
                    )
        H = model.coupling()
        # the K gradient needs the coupling potential; a non-odd H has none, so the ideal
        # (odd) part is assumed — the estimate is then biased, as on real hardware
        self._H = H if H.is_odd else CouplingFunction(H.harmonics)
        self._check_beta(config.beta)
        self._written_k: list[Array | None] = [None] * len(self.substrates)
        self.stats = ControllerStats()

    # -- validation ----------------------------------------------------------------
    @staticmethod
    def _edge_subset(edges: list[int] | None, n_edges: int) -> NDArray[np.bool_]:
        m = np.zeros(n_edges, dtype=bool)
        if edges is None:
            m[:] = True
            return m
        for i, e in enumerate(edges):
            if not 0 <= e < n_edges:
                raise ConfigError(
                    f"config.edges[{i}]: {e} is not an edge index (allowed 0…{n_edges - 1})"
                )
            if m[e]:
                raise ConfigError(f"config.edges[{i}]: edge {e} is listed twice")
            m[e] = True
        return m

    def _check_beta(self, beta: float) -> None:
        for k, s in enumerate(self.substrates):
            bmax = s.model.limits.beta_max
            if not 0.0 < beta <= bmax:
                raise LimitError(
                    f"beta: {beta} is outside the limit (0, {bmax}] of substrates[{k}]"
                )

    def _compose(self, input_omega: ArrayLike, sub: OscillatorSubstrate) -> Array:
        """Frequencies for one sample: params.omega with the inputs written in, limit-checked."""
        x = np.asarray(input_omega, dtype=np.float64)
        if x.shape != self._inputs.shape:
            raise LimitError(
                f"input_omega: shape {x.shape} does not match the {len(self._inputs)} inputs"
            )
        w = self.params.omega.copy()
        w[self._inputs] = x
        lim = sub.model.limits.omega
        if not (lim.min <= w.min() and w.max() <= lim.max):  # NaN fails too
            sub.model.check_frequencies(w)  # raises LimitError naming the channel
        return w

    def _prepare(self, batch: Sequence[Sample]) -> list[_Prepared]:
        if len(batch) == 0:
            raise ValueError("batch: empty; a step needs at least one sample")
        if len(batch) > len(self.substrates):
            raise ValueError(
                f"batch: {len(batch)} samples but only {len(self.substrates)} substrates"
            )
        cfg = self.config
        self._check_beta(cfg.beta)
        if cfg.averages > min(s.model.limits.max_averages for s in self.substrates):
            raise LimitError(f"averages: {cfg.averages} exceeds a substrate's max_averages")
        out: list[_Prepared] = []
        for k, smp in enumerate(batch):
            sub = self.substrates[k]
            w = self._compose(smp.input_omega, sub)
            t = smp.targets
            if not callable(t):
                t, _ = sub.model.check_clamp(t, cfg.beta)
            out.append(_Prepared(w, t))
        return out

    # -- device I/O --------------------------------------------------------------------
    async def _write_couplings(self, k: int) -> None:
        sub = self.substrates[k]
        if Capability.COUPLINGS not in sub.capabilities:
            return
        last = self._written_k[k]
        cur = self.params.coupling
        if last is None or not np.array_equal(last, cur):
            await sub.set_couplings(cur)
            self._written_k[k] = cur.copy()

    async def _measure(self, k: int, prep: _Prepared) -> _Readings:
        sub = self.substrates[k]
        cfg = self.config
        await self._write_couplings(k)
        await sub.set_frequencies(prep.omega)
        free = await sub.read_phases(cfg.averages)
        if not free.locked:  # no valid pair can come of it; do not nudge an unlocked device
            return _Readings(free)
        t = prep.targets
        targets = np.asarray(t(free.phases[self._outputs]), dtype=np.float64) if callable(t) else t
        await sub.clamp(targets, cfg.beta)
        plus = await sub.read_phases(cfg.averages)
        minus = None
        if cfg.mode == "centred":
            await sub.clamp(targets, cfg.beta, direction=-1)
            minus = await sub.read_phases(cfg.averages)
        await sub.release()
        return _Readings(free, plus, minus, targets)

    async def _run_all(self, factories: Sequence[Callable[[], Awaitable[T]]]) -> list[T]:
        """Run one coroutine per substrate (k = 0…); on any error or cancellation stop the
        others, make every involved substrate safe, and re-raise."""
        subs = self.substrates[: len(factories)]
        tasks: list[asyncio.Future[T]] = []
        try:
            if len(factories) == 1:
                return [await factories[0]()]
            tasks = [asyncio.ensure_future(f()) for f in factories]
            return list(await asyncio.gather(*tasks))
        except BaseException as exc:
            self.stats.errors += 1
            log.warning(
                "step aborted (%s: %s); making %d substrate(s) safe",
                type(exc).__name__,
                exc,
                len(subs),
            )
            await _shielded(self._cleanup(tasks, subs))
            raise

    @staticmethod
    async def _cleanup(
        tasks: Sequence[asyncio.Future[T]], subs: Sequence[OscillatorSubstrate]
    ) -> None:
        for t in tasks:
            t.cancel()
        if tasks:
            await asyncio.wait(tasks)
        results = await asyncio.gather(*(s.make_safe() for s in subs), return_exceptions=True)
        for k, r in enumerate(results):
            if isinstance(r, BaseException):
                log.error("substrates[%d]: make_safe failed: %s: %s", k, type(r).__name__, r)

    # -- public API ----------------------------------------------------------------
    async def infer(self, input_omega: ArrayLike, device: int = 0) -> PhaseReading:
        """Free phases (rad) under the current parameters with the given input frequencies."""
        sub = self.substrates[device]
        w = self._compose(input_omega, sub)

        async def run() -> PhaseReading:
            await self._write_couplings(device)
            await sub.set_frequencies(w)
            return await sub.read_phases(self.config.averages)

        try:
            return await run()
        except BaseException as exc:
            self.stats.errors += 1
            log.warning(
                "infer aborted (%s: %s); making substrates[%d] safe",
                type(exc).__name__,
                exc,
                device,
            )
            await _shielded(self._cleanup([], [sub]))
            raise

    async def infer_many(self, input_omega: ArrayLike) -> tuple[Array, NDArray[np.bool_]]:
        """Free phases (n, N) rad and lock flags (n,) for inputs (n, n_inputs), spread over
        all substrates in parallel chunks."""
        x = np.asarray(input_omega, dtype=np.float64)
        if x.ndim != 2:
            raise LimitError(f"input_omega: shape {x.shape} must be (n, {len(self._inputs)})")
        ws = [
            self._compose(xi, self.substrates[i % len(self.substrates)]) for i, xi in enumerate(x)
        ]
        phases = np.empty((len(x), self.model.n))
        locked = np.empty(len(x), dtype=bool)
        m = len(self.substrates)
        avg = self.config.averages

        def reader(k: int, w: Array) -> Callable[[], Awaitable[PhaseReading]]:
            async def run() -> PhaseReading:
                sub = self.substrates[k]
                await self._write_couplings(k)
                await sub.set_frequencies(w)
                return await sub.read_phases(avg)

            return run

        for start in range(0, len(x), m):
            chunk = ws[start : start + m]
            readings = await self._run_all([reader(k, w) for k, w in enumerate(chunk)])
            for k, r in enumerate(readings):
                phases[start + k] = r.phases
                locked[start + k] = r.locked
        return phases, locked

    async def step(self, batch: Sequence[Sample]) -> StepReport:
        """One EP step: sample k on substrate k; update params from the valid samples."""
        prepared = self._prepare(batch)  # raises before anything is sent
        self.stats.steps += 1
        readings = await self._run_all(
            [partial(self._measure, k, p) for k, p in enumerate(prepared)]
        )
        return self._update(readings)

    # -- gradient and update --------------------------------------------------------
    def _update(self, readings: list[_Readings]) -> StepReport:
        cfg = self.config
        beta = cfg.beta
        n = len(readings)
        if n == 1:
            free = readings[0].free.phases[None, :]
        else:
            free = np.stack([r.free.phases for r in readings])
        free_locked = np.array([r.free.locked for r in readings], dtype=bool)
        valid = np.zeros(n, dtype=bool)
        n_unlocked = n_jump = 0
        learn_w = cfg.params in ("omega", "both")
        learn_k = cfg.params in ("K", "both")
        g_w_sum: Array | None = None
        g_k_sum: Array | None = None
        loss_sum = 0.0
        for i, r in enumerate(readings):
            plus, minus = r.plus, r.minus
            if not (
                r.free.locked
                and plus is not None
                and plus.locked
                and (minus is None or minus.locked)
            ):
                n_unlocked += 1
                continue
            th0 = r.free.phases
            d = wrap(plus.phases - th0)  # wrapped displacement θ^β − θ* (rad)
            jump = float(np.abs(d).max())
            if minus is not None:
                jump = max(jump, float(np.abs(wrap(minus.phases - th0)).max()))
            if jump > cfg.basin_jump_rad:
                n_jump += 1
                log.debug("sample %d skipped: basin jump, max |displacement| %.3f rad", i, jump)
                continue
            valid[i] = True
            loss_sum += float(loss(th0, self._outputs, r.targets, self.model.nudge))  # type: ignore[arg-type]
            m_ph = None if minus is None else minus.phases
            if learn_w:
                # two-phase estimate (gradients.two_phase_gradient), reusing the displacement
                g = -d / beta if m_ph is None else -wrap(plus.phases - m_ph) / (2.0 * beta)
                g_w_sum = g if g_w_sum is None else g_w_sum + g
            if learn_k:
                gk = coupling_gradient_two_phase(
                    th0, plus.phases, self._edge_index, beta, m_ph, self._H
                )
                g_k_sum = gk if g_k_sum is None else g_k_sum + gk
        self.stats.skipped_unlocked += n_unlocked
        self.stats.skipped_basin_jump += n_jump
        n_valid = int(valid.sum())
        if n_valid == 0:
            return StepReport(
                free, free_locked, valid, n_unlocked, n_jump, False, None, None, float("nan")
            )
        new_omega, new_k = self.params.omega, self.params.coupling
        g_w: Array | None = None
        g_k: Array | None = None
        if g_w_sum is not None:
            g_w = g_w_sum * self._w_mask / n_valid  # zero off the learnable oscillators
            lim = self.model.limits.omega
            new_omega = np.clip(
                self.params.omega - cfg.lr_omega * np.clip(g_w, -cfg.clip, cfg.clip),
                lim.min,
                lim.max,
            )
        if g_k_sum is not None:
            g_k = g_k_sum * self._k_mask / n_valid
            lim_k = self.model.limits.coupling
            new_k = np.clip(
                self.params.coupling - cfg.lr_k * np.clip(g_k, -cfg.clip, cfg.clip),
                lim_k.min,
                lim_k.max,
            )
        self.params = Parameters(new_omega, new_k)
        self.stats.updates += 1
        return StepReport(
            free, free_locked, valid, n_unlocked, n_jump, True, g_w, g_k, loss_sum / n_valid
        )


async def _shielded(coro: Awaitable[None]) -> None:
    """Run ``coro`` to completion even if the calling task is cancelled (then re-raise)."""
    task = asyncio.ensure_future(coro)
    cancelled = False
    while not task.done():
        try:
            await asyncio.shield(task)
        except asyncio.CancelledError:
            if task.done():
                break
            cancelled = True
    if not task.cancelled() and task.exception() is not None:
        log.error("cleanup failed: %r", task.exception())
    if cancelled:
        raise asyncio.CancelledError
