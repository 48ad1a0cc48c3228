"""The chip-scale classification path of the hardware loop (docs/design.md §8).

Layered devices with held inputs take a sample as held phases: a feature x ∈ [−1, 1] (the
tasks' scaling) becomes φ = lo + (hi − lo)·clip((x + 1)/2, 0, 1) with [lo, hi] the device's
``input_phase_range_rad`` (:meth:`~phasegrad_hw.device.model.DeviceModel.input_phases`; the
layered engine's encoding). The readout is argmax sin θ_out and the loss the softmax
cross-entropy on s·sin θ_out (:mod:`phasegrad_hw.physics.multiclass`), so the loss's minimum
is the decision rule.

Equilibrium propagation nudges the outputs with the force −β·∂L/∂θ_out. A device clamps by
injecting the reference toward targets t with strength β·κ (:meth:`PhaseEncoding.clamp`):

* linear clamp βκ(t − θ): t = θ* − g/κ (:func:`~phasegrad_hw.physics.multiclass.clamp_targets`);
* injection βκ sin(t − θ): t = θ* + arcsin(−g/κ);

both with κ = max(1, max_o |g_o|/m(``max_offset_rad``)) (m = the offset itself, or its sine
for an injection) so every target stays within ``max_offset_rad`` of the free phase. Either
way the force at the free state is exactly −β·g, so −Δθ/β (the rule's estimate, with the
rule's β) is the cross-entropy gradient as β → 0.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from typing import Literal

import numpy as np
from numpy.typing import ArrayLike, NDArray
from pydantic import Field

from phasegrad_hw.config import StrictModel
from phasegrad_hw.device.model import DeviceModel
from phasegrad_hw.device.substrate import Capability, ClampTargets, OscillatorSubstrate
from phasegrad_hw.errors import ConfigError
from phasegrad_hw.learning.ep import EPOptimizers, EPRule
from phasegrad_hw.learning.optim import LockBounds, Optimizer, project_locking
from phasegrad_hw.physics import wrap
from phasegrad_hw.physics.multiclass import SoftmaxCE, clamp_targets, decide

Array = NDArray[np.float64]
log = logging.getLogger(__name__)

__all__ = ["ChipScale", "ClampTargets", "PhaseEncoding"]


class PhaseEncoding(StrictModel):
    """Held-input encoding, softmax cross-entropy targets and argmax sin θ readout (module doc).

    ``loss_scale`` s in softmax(s·sin θ_out); ``nudge`` the device's clamp kind
    (``model.nudge``); ``max_offset_rad`` how far a target may sit from the free phase.
    """

    phase_range_rad: tuple[float, float] = (0.0, 0.5 * math.pi)
    loss_scale: float = Field(default=6.0, gt=0.0)
    nudge: Literal["linear", "injection"] = "linear"
    max_offset_rad: float = Field(default=0.25 * math.pi, gt=0.0, lt=0.5 * math.pi)

    @classmethod
    def for_device(cls, model: DeviceModel, loss_scale: float = 6.0) -> PhaseEncoding:
        lo, hi = model.input_phase_range_rad
        return cls(phase_range_rad=(lo, hi), loss_scale=loss_scale, nudge=model.nudge)

    def held_phases(self, x: ArrayLike) -> Array:
        """(..., n_held) features in [−1, 1] → held phases (rad)."""
        lo, hi = self.phase_range_rad
        u = np.clip(0.5 * (np.asarray(x, dtype=np.float64) + 1.0), 0.0, 1.0)
        out: Array = lo + (hi - lo) * u
        return out

    def loss(self, y: int | NDArray[np.int64], out: ArrayLike) -> Array:
        """Cross-entropy per sample at output phases ``out`` (..., n_out)."""
        o = np.atleast_2d(np.asarray(out, dtype=np.float64))
        yy = np.broadcast_to(np.asarray(y, dtype=np.int64), o.shape[:-1])
        v: Array = SoftmaxCE(yy.ravel(), self.loss_scale).value(o.reshape(-1, o.shape[-1]))
        return v.reshape(o.shape[:-1])

    def clamp(self, y: int, free_out: ArrayLike) -> ClampTargets:
        """Targets and gain for class ``y`` at the free output phases (module doc)."""
        th = np.asarray(free_out, dtype=np.float64)[None, :]
        g = SoftmaxCE(np.array([y]), self.loss_scale).grad(th)
        if self.nudge == "linear":
            c = clamp_targets(th, g, self.max_offset_rad)
            return ClampTargets(c.targets[0], float(c.gain[0]))
        kappa = max(1.0, float(np.abs(g).max()) / math.sin(self.max_offset_rad))
        t = wrap(th[0] + np.arcsin(np.clip(-g[0] / kappa, -1.0, 1.0)))
        return ClampTargets(t, kappa)

    def predict(self, out_phases: ArrayLike) -> NDArray[np.int64]:
        """argmax_o sin θ_o per sample."""
        return decide(out_phases)


class ChipScale:
    """The controller's chip-scale state: the optimizer of the EP rule (one per parameter
    set; learning rates × ``lr_decay``^``epoch``) and, on a device with held inputs, the
    locking projections (:func:`~phasegrad_hw.learning.optim.project_locking`) — which also
    requires every substrate to set held phases."""

    def __init__(
        self, substrates: Sequence[OscillatorSubstrate], rule: EPRule, lock: LockBounds | None
    ) -> None:
        model = substrates[0].model
        n, n_edges = model.n, len(model.edges)
        self.rule = rule
        self._opt = EPOptimizers(Optimizer(rule, (1, n)), Optimizer(rule, (1, n_edges)))
        self._opt_key = (rule.lr_decay, 0)  # (lr_decay, epoch) of _opt.lr_scale (1 at epoch 0)
        self.epoch = 0
        self.lock = lock
        if lock is not None:
            for k, s in enumerate(substrates):
                if Capability.HELD_PHASES not in s.capabilities:
                    raise ConfigError(
                        f"substrates[{k}] ({type(s).__name__}): the device has held inputs "
                        "but the substrate cannot set held phases"
                    )
        self._n = n
        self._edges = model.edge_index
        self._held = np.array([*model.roles.held, *model.roles.bias], dtype=np.int64)
        self._free = np.setdiff1d(np.arange(n), self._held)

    def optimizers(self) -> EPOptimizers:
        """The optimizer state with this epoch's learning-rate scale (made once per epoch)."""
        key = (self.rule.lr_decay, self.epoch)
        if self._opt_key != key:
            self._opt = self._opt._replace(lr_scale=self.rule.lr_decay**self.epoch)
            self._opt_key = key
        return self._opt

    def optimizer_state(self) -> dict[str, dict[str, Array | int]] | None:
        """The optimizer's moments (None for SGD, which has none), for a checkpoint."""
        if self.rule.optimizer == "sgd":
            return None
        return {"omega": self._opt.omega.state(), "coupling": self._opt.coupling.state()}

    def load_optimizer_state(self, state: dict[str, dict[str, Array | int]] | None) -> None:
        if state is not None:
            self._opt.omega.load(state["omega"])
            self._opt.coupling.load(state["coupling"])

    def project(self, omega: Array, coupling: Array) -> tuple[Array, Array]:
        """The locking projections on a held-input device, else the parameters unchanged."""
        if self.lock is None:
            return omega, coupling
        w_free, K, n_clip, n_scaled = project_locking(
            self._n, self._edges, self._held, self._free, omega[self._free], coupling, self.lock
        )
        if n_clip or n_scaled:
            log.debug("locking projection: %d ω clipped, %d held loads scaled", n_clip, n_scaled)
        out = omega.copy()
        out[self._free] = w_free
        return out, K
