"""The asynchronous equilibrium-propagation controller (hardware in the loop).

One step, per sample and substrate (docs/design.md §2, §4; seed paper arXiv 2604.10272)::

    set ω (inputs written in)  →  free read θ*  →  clamp(targets, β) read θ^β
    [centred: clamp(targets, β, direction=−1) read θ^{−β}]  →  release

then the readings of the step go through the one EP rule, :func:`phasegrad_hw.learning.ep.ep_update`
(two-phase gradient, validity, mean over valid samples, clip, optimizer step, projection onto
the limits). A step's samples (a mini-batch) are measured in rounds of one per substrate.
Chip scale (docs/design.md §8): a sample may carry held input phases (set before its free
read) and loss-gradient targets with a clamp gain (:class:`~phasegrad_hw.learning.chip.
ClampTargets`, strength β·gain); a held-input device gets the locking projections after
every update (:class:`~phasegrad_hw.learning.chip.ChipScale`).
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
from typing import TypeVar

import numpy as np
from numpy.typing import ArrayLike, NDArray

from phasegrad_hw.device.model import DeviceModel
from phasegrad_hw.device.substrate import (
    Capability,
    ClampTargets,
    EPPhases,
    OscillatorSubstrate,
    PhaseReading,
)
from phasegrad_hw.errors import ConfigError, LimitError
from phasegrad_hw.learning.chip import ChipScale
from phasegrad_hw.learning.ep import (
    SAMPLE_FLAGS,
    EPNetwork,
    EPReadings,
    EPState,
    ep_update,
    stack_readings,
)
from phasegrad_hw.learning.records import (
    ControllerStats,
    DriveSetting,
    EPConfig,
    Parameters,
    Sample,
    StepReport,
)
from phasegrad_hw.learning.safety import make_safe_all, shielded
from phasegrad_hw.physics import CouplingFunction
from phasegrad_hw.physics.gradients import loss

log = logging.getLogger(__name__)
Array = NDArray[np.float64]
T = TypeVar("T")

__all__ = [
    "ControllerStats",
    "DriveSetting",
    "EPConfig",
    "EPController",
    "Parameters",
    "Sample",
    "StepReport",
]


@dataclass
class _Prepared:
    omega: Array
    targets: Array | Callable[[Array], Array | ClampTargets]
    held: Array | None = None
    drive: DriveSetting | None = None


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
        o = self._outputs  # the outputs as a slice when contiguous (the loss reads a view)
        contiguous = len(o) > 0 and np.array_equal(o, np.arange(o[0], o[0] + len(o)))
        self._output_cols: NDArray[np.int64] | slice = (
            slice(int(o[0]), int(o[0]) + len(o)) if contiguous else o
        )
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
        self._edge_mask = self._edge_subset(config.edges, n_edges)
        self._no_omega = np.zeros((1, n), dtype=bool)  # masks of a rule that does not learn ω/K
        self._no_coupling = np.zeros((1, n_edges), dtype=bool)
        self._learn_w = mask[None]  # the rule's (1, N) and (1, E) masks, made once
        self._learn_k = self._edge_mask[None]
        self._no_targets = np.full(len(self._outputs), np.nan)  # a sample not nudged (report)
        self._no_targets.flags.writeable = False
        if config.rule.params in ("K", "both"):
            for k, s in enumerate(self.substrates):
                if Capability.COUPLINGS not in s.capabilities:
                    raise ConfigError(
                        f"config.rule.params: {config.rule.params!r} needs couplings, but "
                        f"substrates[{k}] ({type(s).__name__}) cannot set couplings; "
                        "use params='omega'"
                    )
        H = model.coupling()
        # the K gradient needs the coupling potential; a non-odd H has none, so the ideal
        # (odd) part is assumed — the estimate is then biased, as on real hardware
        self._net = EPNetwork(
            self._edge_index,
            self._ref,
            H if H.is_odd else CouplingFunction(H.harmonics),
            model.limits,
        )
        self._check_beta(config.rule.beta)
        self._written_k: list[Array | None] = [None] * len(self.substrates)
        self._written_w: list[Array | None] = [None] * len(self.substrates)
        self.stats = ControllerStats()
        self.chip = ChipScale(self.substrates, config.rule, config.lock_bounds(model))
        self._net = self._net._replace(k_bounds=model.coupling_bounds())

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
        cfg = self.config.rule
        self._check_beta(cfg.beta)
        if cfg.averages > min(s.model.limits.max_averages for s in self.substrates):
            raise LimitError(f"averages: {cfg.averages} exceeds a substrate's max_averages")
        out: list[_Prepared] = []
        for k, smp in enumerate(batch):
            sub = self.substrates[k % len(self.substrates)]
            w = self._compose(smp.input_omega, sub)
            t = smp.targets
            if not callable(t):
                t, _ = sub.model.check_clamp(t, cfg.beta)
            held = smp.held_phases
            if self.chip.lock is not None or held is not None:
                held = sub.model.check_held_phases(np.zeros(0) if held is None else held)
            out.append(_Prepared(w, t, held, self._check_drive(smp.drive, sub)))
        return out

    @staticmethod
    def _check_drive(drive: DriveSetting | None, sub: OscillatorSubstrate) -> DriveSetting | None:
        """A sample's drive, limit-checked before anything is sent (None: no drive)."""
        if drive is None:
            return None
        if Capability.DRIVE not in sub.capabilities:
            raise ConfigError(
                f"sample drive: {type(sub).__name__} ({sub.model.name!r}) cannot apply a drive"
            )
        return sub.model.check_drive(*drive)

    # -- device I/O --------------------------------------------------------------------
    async def _write(
        self,
        k: int,
        omega: Array | None,
        held: Array | None = None,
        drive: DriveSetting | None = None,
    ) -> None:
        """A sample's settings on substrate k: couplings when they changed since the last
        write; frequencies always (they carry the inputs), or when they changed on a
        held-input device (one ω for every sample: its inputs are held phases); then the
        sample's held phases and drive, when it has them."""
        sub = self.substrates[k]
        last = self._written_k[k]
        cur = self.params.coupling
        # (equal bytes: the same values; a mere ±0 difference costs one more write)
        if Capability.COUPLINGS in sub.capabilities and (
            last is None or last.tobytes() != cur.tobytes()
        ):
            await sub.set_couplings(cur)
            self._written_k[k] = cur.copy()
        if omega is not None:  # (None: the caller sets frequencies itself)
            last_w = self._written_w[k] if self.chip.lock is not None else None
            if last_w is None or not np.array_equal(last_w, omega):
                self._written_w[k] = None  # (unknown until the write completes)
                await sub.set_frequencies(omega)
                self._written_w[k] = omega.copy()
        if held is not None:
            await sub.set_held_phases(held)
        if drive is not None:
            await sub.set_drive(*drive)

    def forget_writes(self) -> None:
        """Write every setting again at the next use (after a reseed or make_safe reset the
        devices' biases)."""
        self._written_w = [None] * len(self.substrates)

    async def _measure(self, k: int, prep: _Prepared) -> EPPhases:
        cfg = self.config.rule
        await self._write(k, prep.omega, prep.held, prep.drive)
        return await self.substrates[k].measure_ep(
            None, prep.targets, cfg.beta, cfg.averages, cfg.mode == "centred"
        )

    async def _run_all(self, factories: Sequence[Callable[[], Awaitable[T]]], what: str) -> list[T]:
        """Run one coroutine per substrate (k = 0…); on any error or cancellation stop the
        others, make every involved substrate safe, and re-raise (the log names ``what``
        was interrupted: ``"step"``, ``"evaluation"``)."""
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
                "%s aborted (%s: %s); making %d substrate(s) safe",
                what,
                type(exc).__name__,
                exc,
                len(subs),
            )
            self.forget_writes()
            await shielded(make_safe_all(tasks, subs))
            raise

    # -- public API ----------------------------------------------------------------
    async def infer(
        self, input_omega: ArrayLike, device: int = 0, drive: DriveSetting | None = None
    ) -> PhaseReading:
        """Free phases (rad) under the current parameters with the given input frequencies
        (and drive, for a driven device)."""
        sub = self.substrates[device]
        w = self._compose(input_omega, sub)
        drv = self._check_drive(drive, sub)

        async def run() -> PhaseReading:
            await self._write(device, w, drive=drv)
            return await sub.read_phases(self.config.rule.averages)

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
            self.forget_writes()
            await shielded(make_safe_all([], [sub]))
            raise

    async def infer_many(
        self,
        input_omega: ArrayLike,
        held_phases: ArrayLike | None = None,
        drive_amplitude: ArrayLike | None = None,
    ) -> tuple[Array, NDArray[np.bool_]]:
        """Free phases (n, N) rad and lock flags (n,) for inputs (n, n_inputs) — held phases
        (n, n_held) rad on a held-input device, ``drive_amplitude`` (n, n_drive) each sample's
        drive (phase 0) on a driven device: sample i on substrate i % m, the substrates in
        parallel."""
        x = np.asarray(input_omega, dtype=np.float64)
        if x.ndim != 2:
            raise LimitError(f"input_omega: shape {x.shape} must be (n, {len(self._inputs)})")
        m = len(self.substrates)
        ws = [self._compose(xi, self.substrates[i % m]) for i, xi in enumerate(x)]
        fs: list[DriveSetting | None] = [None] * len(x)
        if drive_amplitude is not None:
            a = np.asarray(drive_amplitude, dtype=np.float64)
            fs = [self._check_drive((a[i], 0.0), self.substrates[i % m]) for i in range(len(x))]
        hs: list[Array | None] = [None] * len(x)
        if held_phases is not None:
            h = np.asarray(held_phases, dtype=np.float64)
            hs = [self.model.check_held_phases(hi) for hi in h.reshape(len(x), -1)]
        phases = np.empty((len(x), self.model.n))
        locked = np.empty(len(x), dtype=bool)
        avg = self.config.rule.averages

        async def share(k: int) -> list[PhaseReading]:
            """Substrate k's samples k, k + m, … in order: a remote one in a few exchanges;
            with held phases or a drive per sample, one sample at a time."""
            sub = self.substrates[k]
            if held_phases is None and drive_amplitude is None:
                await self._write(k, None)
                return await sub.read_phases_at(np.asarray(ws[k::m]), avg)
            out: list[PhaseReading] = []
            for i in range(k, len(ws), m):
                await self._write(k, ws[i], hs[i], fs[i])
                out.append(await sub.read_phases(avg))
            return out

        shares = await self._run_all(
            [partial(share, k) for k in range(min(m, len(ws)))], "evaluation"
        )
        for k, rs in enumerate(shares):
            phases[k::m] = [r.phases for r in rs]
            locked[k::m] = [r.locked for r in rs]
        return phases, locked

    async def step(self, batch: Sequence[Sample]) -> StepReport:
        """One EP step: sample k on substrate k; update params from the valid samples."""
        prepared = self._prepare(batch)  # raises before anything is sent
        self.stats.steps += 1
        readings: list[EPPhases] = []
        m = len(self.substrates)
        for start in range(0, len(prepared), m):  # rounds of one sample per substrate
            chunk = prepared[start : start + m]
            readings += await self._run_all(
                [partial(self._measure, k, p) for k, p in enumerate(chunk)], "step"
            )
        return self._update(readings)

    # -- gradient and update --------------------------------------------------------
    def _update(self, readings: list[EPPhases]) -> StepReport:
        """The step's readings through the EP rule (one member, the step's samples)."""
        rule = self.config.rule
        free, plus, minus, locked = stack_readings(
            [(r.free, r.plus, r.minus) for r in readings], rule.mode == "centred", self.model.n
        )
        one = len(readings) == 1
        if one:  # (a single device's step: no list-to-array conversions)
            free_locked = SAMPLE_FLAGS[bool(readings[0].free.locked)][0]
        else:
            free_locked = np.array([r.free.locked for r in readings], dtype=bool)
        p = self.params
        learn_w = self._learn_w if rule.learns_omega else self._no_omega
        learn_k = self._learn_k if rule.learns_coupling else self._no_coupling
        upd = ep_update(
            rule,
            EPReadings(free[None], plus, minus, locked),
            EPState(p.omega[None], p.coupling[None], learn_w, learn_k),
            self._net,
            self.chip.optimizers(),
        )
        valid = upd.valid[0]
        if one:
            n_unlocked, n_jump = int(upd.unlocked[0, 0]), int(upd.basin_jump[0, 0])
            t = readings[0].targets
            targets = np.array(self._no_targets if t is None else t, np.float64, ndmin=2)
        else:
            n_unlocked = int(np.count_nonzero(upd.unlocked))
            n_jump = int(np.count_nonzero(upd.basin_jump))
            nan = self._no_targets
            targets = np.array(
                [nan if r.targets is None else r.targets for r in readings], np.float64
            )
        if n_jump:
            for i in np.flatnonzero(upd.basin_jump[0]):
                log.debug("sample %d skipped: basin jump", i)
        self.stats.skipped_unlocked += n_unlocked
        self.stats.skipped_basin_jump += n_jump
        if not upd.updated[0]:
            return StepReport(
                free, free_locked, valid, n_unlocked, n_jump, False, None, None, float("nan"),
                targets,
            )  # fmt: skip
        if n_unlocked + n_jump == 0:  # every sample valid: no gathers
            losses = loss(free, self._output_cols, targets, self.model.nudge)
        else:
            ok = valid.nonzero()[0]
            losses = loss(free[ok], self._output_cols, targets[ok], self.model.nudge)
        omega, coupling = self.chip.project(upd.omega[0], upd.coupling[0])
        self.params = Parameters(omega, coupling)
        self.stats.updates += 1
        return StepReport(
            free,
            free_locked,
            valid,
            n_unlocked,
            n_jump,
            True,
            upd.grad_omega[0] if rule.learns_omega else None,
            upd.grad_coupling[0] if rule.learns_coupling else None,
            sum(losses.tolist()) / len(losses),  # (in sample order, as a running sum)
            targets,
        )
