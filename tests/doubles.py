"""Test doubles that implement the substrate contract (reusable by every test module).

* :class:`ScriptedSubstrate` wraps any substrate, records every hook call, tracks whether the
  device is safe (clamp released, biases at their safe values) and injects faults on chosen
  calls: raise on the n-th read or clamp, hang on the n-th read (for cancellation), report
  an unlocked reading, or add a phase jump to the outputs (a basin jump).
* :class:`FaultySubstrate` / :class:`HangingSubstrate`: the two common scripts.
* :func:`model_2_5_2`: the published 2+5+2 vowel topology as a simulated device model.
* :func:`blobs` a tiny two-class task (a ``phasegrad_hw.learning.tasks.Dataset``) and
  :func:`model_tiny` a 5-oscillator device that learns it in a few epochs.
"""

from __future__ import annotations

import asyncio
from typing import Any

import numpy as np
from numpy.typing import NDArray

from phasegrad_hw.backends.simulated import SimulatedDeviceModel
from phasegrad_hw.device.substrate import OscillatorSubstrate, PhaseReading
from phasegrad_hw.errors import DeviceTimeoutError
from phasegrad_hw.learning.tasks import Dataset
from phasegrad_hw.physics import wrap

Array = NDArray[np.float64]


# --------------------------------------------------------------------------- substrates
class ScriptedSubstrate(OscillatorSubstrate):
    """A recording, fault-injecting wrapper around ``inner`` (same model and capabilities).

    Counters are 1-based and count calls of the hook (``reads`` read_phases calls,
    ``clamps`` clamp calls). ``fail_read``/``fail_clamp``: {n: exception} raised on the n-th
    call (after recording it, before the inner device sees it). ``hang_read``: the n-th read
    sets ``hanging`` and waits forever. ``unlocked_reads``: reads reported as not locked.
    ``jump_reads``: {n: rad} added to the output phases of the n-th read.
    """

    def __init__(
        self,
        inner: OscillatorSubstrate,
        *,
        fail_read: dict[int, BaseException] | None = None,
        fail_clamp: dict[int, BaseException] | None = None,
        hang_read: set[int] | None = None,
        unlocked_reads: set[int] | None = None,
        jump_reads: dict[int, float] | None = None,
    ) -> None:
        super().__init__(inner.model)
        self.inner = inner
        self.capabilities = inner.capabilities
        self.fail_read = fail_read or {}
        self.fail_clamp = fail_clamp or {}
        self.hang_read = hang_read or set()
        self.unlocked_reads = unlocked_reads or set()
        self.jump_reads = jump_reads or {}
        self.calls: list[tuple[str, Any]] = []
        self.reads = 0
        self.clamps = 0
        self.biases: Array | None = None
        self.clamp_active = False
        self.hanging = asyncio.Event()

    # -- state checks ---------------------------------------------------------------
    @property
    def is_safe(self) -> bool:
        """No clamp applied and the last biases written are the model's safe values."""
        return (
            not self.clamp_active
            and self.biases is not None
            and np.array_equal(self.biases, self.model.safe_biases())
        )

    def names(self) -> list[str]:
        return [c[0] for c in self.calls]

    def reseed(self, seed: int) -> None:
        self.calls.append(("reseed", seed))
        fn = getattr(self.inner, "reseed", None)
        if callable(fn):
            fn(seed)

    # -- hooks ----------------------------------------------------------------------
    async def _apply_frequencies(self, omega: Array) -> None:
        self.calls.append(("frequencies", omega.copy()))
        self.biases = None
        await self.inner._apply_frequencies(omega)

    async def _apply_biases(self, values: Array) -> None:
        self.calls.append(("biases", values.copy()))
        self.biases = values.copy()
        await self.inner._apply_biases(values)

    async def _apply_couplings(self, values: Array) -> None:
        self.calls.append(("couplings", values.copy()))
        await self.inner._apply_couplings(values)

    async def _apply_clamp(self, target: Array, beta: float, direction: int) -> None:
        self.clamps += 1
        self.calls.append(("clamp", (target.copy(), beta, direction)))
        if self.clamps in self.fail_clamp:
            raise self.fail_clamp[self.clamps]
        self.clamp_active = True
        await self.inner._apply_clamp(target, beta, direction)

    async def _apply_release(self) -> None:
        self.calls.append(("release", None))
        self.clamp_active = False
        await self.inner._apply_release()

    async def _read(self, averages: int) -> PhaseReading:
        self.reads += 1
        n = self.reads
        self.calls.append(("read", averages))
        if n in self.fail_read:
            raise self.fail_read[n]
        if n in self.hang_read:
            self.hanging.set()
            await asyncio.Event().wait()
        r = await self.inner._read(averages)
        if n in self.unlocked_reads:
            r = PhaseReading(r.phases, r.spread, False, r.timestamp, r.averages, r.settle_s)
        if n in self.jump_reads:
            ph = r.phases.copy()
            ph[self.model.outputs] = wrap(ph[self.model.outputs] + self.jump_reads[n])
            r = PhaseReading(ph, r.spread, r.locked, r.timestamp, r.averages, r.settle_s)
        return r

    async def _read_frequencies(self) -> Array:
        return await self.inner._read_frequencies()


class FaultySubstrate(ScriptedSubstrate):
    """Raises ``error`` on read number ``on_read`` (default 2: between free and nudged read)."""

    def __init__(
        self, inner: OscillatorSubstrate, on_read: int = 2, error: BaseException | None = None
    ) -> None:
        err = error if error is not None else DeviceTimeoutError("phase meter did not answer")
        super().__init__(inner, fail_read={on_read: err})


class HangingSubstrate(ScriptedSubstrate):
    """Hangs forever on read number ``on_read`` (default 2); ``hanging`` is set when it does."""

    def __init__(self, inner: OscillatorSubstrate, on_read: int = 2) -> None:
        super().__init__(inner, hang_read={on_read})


# --------------------------------------------------------------------------- models
def model_2_5_2(seed: int = 0, **overrides: Any) -> SimulatedDeviceModel:
    """The 2+5+2 vowel topology (contracts): inputs 0, 1 (0 = reference), hidden 2–6 chained,
    outputs 7, 8; K = 2·U(0.5, 1.5) on layer edges, 2·U(0.5, 1.0) on the chain."""
    rng = np.random.default_rng(seed)
    layer = [(i, h) for i in (0, 1) for h in range(2, 7)] + [
        (h, o) for h in range(2, 7) for o in (7, 8)
    ]
    chain = [(h, h + 1) for h in range(2, 6)]
    k = np.concatenate(
        [2 * rng.uniform(0.5, 1.5, len(layer)), 2 * rng.uniform(0.5, 1.0, len(chain))]
    )
    data: dict[str, Any] = {
        "backend": "simulated",
        "name": "test-2-5-2",
        "n_oscillators": 9,
        "edges": [
            {"i": i, "j": j, "k": float(v)} for (i, j), v in zip(layer + chain, k, strict=True)
        ],
        "roles": {"inputs": [0, 1], "hidden": [2, 3, 4, 5, 6], "outputs": [7, 8], "reference": 0},
    }
    data.update(overrides)
    return SimulatedDeviceModel.model_validate(data)


# --------------------------------------------------------------------------- tasks
def blobs(n_train: int = 40, n_test: int = 20, seed: int = 0, sep: float = 0.6) -> Dataset:
    """Two Gaussian classes in 2-D, min–max scaled to [−1, 1] on the train split."""
    rng = np.random.default_rng([seed, 0xB10B])
    n = n_train + n_test
    y = np.arange(n) % 2
    centres = np.array([[-sep, sep], [sep, -sep]])
    x = centres[y] + 0.35 * rng.standard_normal((n, 2))
    perm = rng.permutation(n)
    x, y = x[perm], y[perm]
    lo, hi = x[:n_train].min(axis=0), x[:n_train].max(axis=0)
    xs = 2 * (x - lo) / (hi - lo) - 1
    return Dataset(
        "blobs",
        ("a", "b"),
        xs[:n_train],
        y[:n_train].astype(np.int64),
        xs[n_train:],
        y[n_train:].astype(np.int64),
    )


def model_tiny(**overrides: Any) -> SimulatedDeviceModel:
    """A 5-oscillator device that learns the :func:`blobs` task in a few epochs: inputs 0
    (reference) and 1, hidden 2, outputs 3 and 4; output 3 follows input 0 and output 4
    follows input 1 through strong edges, so ω on the outputs sets the decision threshold."""
    data: dict[str, Any] = {
        "backend": "simulated",
        "name": "test-tiny",
        "n_oscillators": 5,
        "edges": [
            {"i": 0, "j": 2, "k": 1.0},
            {"i": 1, "j": 2, "k": 1.0},
            {"i": 2, "j": 3, "k": 1.0},
            {"i": 2, "j": 4, "k": 1.0},
            {"i": 1, "j": 4, "k": 2.0},
            {"i": 0, "j": 3, "k": 2.0},
        ],
        "roles": {"inputs": [0, 1], "hidden": [2], "outputs": [3, 4], "reference": 0},
    }
    data.update(overrides)
    return SimulatedDeviceModel.model_validate(data)
