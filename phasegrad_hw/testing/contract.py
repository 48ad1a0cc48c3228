"""The substrate contract as an executable suite (docs/design.md §4): any backend author runs

    report = await check_substrate_contract(lambda: MySubstrate(...))

and gets an :class:`AssertionError` naming the broken rule, or a :class:`ContractReport` of
the checks that passed. What is checked, through the public API only (``clamped``, readings,
errors):

* ``safe_exit`` — leaving ``async with`` releases the clamp and puts every bias at its safe
  value: what the device reads afterwards equals an explicitly made safe state and differs
  from the state it was left in;
* ``limits`` — out-of-range ω, biases, couplings, β, targets, directions and averages are
  refused with a :class:`LimitError` naming the field, and nothing reaches the device;
* ``abilities`` — every declared :class:`Capability` works, every other one raises
  :class:`DeviceError`;
* ``read_phases`` — shape (N,), wrapped to [−π, π), the reference at 0, spread ≥ 0;
* ``frequency_map`` — ``set_frequencies`` goes through ``frequency_map`` (a map giving
  out-of-range biases is refused before anything is sent); native devices take ω directly;
* ``clamp`` — clamp/release toggle ``clamped``;
* ``cancelled`` — a task cancelled inside ``async with`` still leaves the device safe;
* ``timeout`` — a hung operation raises :class:`DeviceTimeoutError` within
  ``operation_timeout_s`` (a :class:`~phasegrad_hw.testing.doubles.HangingSubstrate` around
  the backend), and the exit is still safe.

The factory returns a new, unconnected substrate (it may be a coroutine function); the suite
uses one instance across several ``async with`` sessions. ``observer`` is a substrate that
reads the device from the far side of the transport (e.g. the emulated chip behind a board,
bench or agent); without one the suite reconnects the substrate to see what it left behind.
A driver can also be checked against a recorded exchange instead of a live device: any
factory works, including one built on an in-memory transcript of the driver's link.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from phasegrad_hw.device.frequency_map import FrequencyMap
from phasegrad_hw.device.substrate import Capability, OscillatorSubstrate, PhaseReading
from phasegrad_hw.errors import DeviceError, DeviceTimeoutError, LimitError
from phasegrad_hw.physics import Array, wrap
from phasegrad_hw.testing.doubles import HangingSubstrate

_CANCEL_BOUND_S = 60.0  # a cancelled session must end (safely) within this
Factory = Callable[[], OscillatorSubstrate | Awaitable[OscillatorSubstrate]]


@dataclass
class ContractReport:
    """What :func:`check_substrate_contract` verified: ``passed`` check names in order,
    ``tolerance_rad`` the phase tolerance used to compare device states (rad)."""

    device: str
    capabilities: frozenset[Capability]
    tolerance_rad: float
    passed: list[str] = field(default_factory=list)


async def check_substrate_contract(
    factory: Factory,
    *,
    observer: OscillatorSubstrate | None = None,
    averages: int = 32,
    tolerance_rad: float | None = None,
    timeout_s: float = 0.3,
) -> ContractReport:
    """Run every contract check (module docstring) against substrates from ``factory``.

    ``averages`` reads per comparison (capped at the model's ``max_averages``);
    ``tolerance_rad`` the largest phase difference (rad) still counted as the same device
    state (default: from the measured read-to-read scatter, at least 1e-6 rad);
    ``timeout_s`` the ``operation_timeout_s`` given to the hung double.
    """
    sub = await _make(factory)
    ctx = _Context(sub, observer, max(1, min(averages, sub.model.limits.max_averages)))
    async with sub:
        await ctx.go_safe()
        ctx.tol = tolerance_rad if tolerance_rad is not None else await ctx.scatter()
    report = ContractReport(sub.model.name, frozenset(sub.capabilities), ctx.tol)
    checks: list[tuple[str, Callable[[], Awaitable[None]]]] = [
        ("read_phases", ctx.check_read_phases),
        ("clamp", ctx.check_clamp),
        ("limits", ctx.check_limits),
        ("frequency_map", ctx.check_frequency_map),
        ("abilities", ctx.check_abilities),
        ("safe_exit", ctx.check_safe_exit),
        ("cancelled", ctx.check_cancelled),
    ]
    for name, check in checks:
        await _named(name, check())
        report.passed.append(name)
    await _named("timeout", _check_timeout(await _make(factory), timeout_s))
    report.passed.append("timeout")
    return report


async def _make(factory: Factory) -> OscillatorSubstrate:
    made = factory()
    sub = await made if inspect.isawaitable(made) else made
    if not isinstance(sub, OscillatorSubstrate):
        raise AssertionError(f"the factory returned {sub!r}, not an OscillatorSubstrate")
    return sub


async def _named(name: str, check: Awaitable[None]) -> None:
    try:
        await check
    except AssertionError as exc:
        raise AssertionError(f"substrate contract, {name}: {exc}") from exc


def distance(a: PhaseReading, b: PhaseReading) -> float:
    """Largest wrapped phase difference between two readings (rad)."""
    return float(np.abs(wrap(a.phases - b.phases)).max())


class _Context:
    """One substrate under test, its observer and the phase tolerance."""

    def __init__(self, sub: OscillatorSubstrate, observer: OscillatorSubstrate | None, avg: int):
        self.sub = sub
        self.observer = observer
        self.avg = avg
        self.tol = 0.0
        m = sub.model
        self.n, self.ref = m.n, m.roles.reference
        self.outputs = np.asarray(m.roles.outputs)

    # -- device states ------------------------------------------------------------------
    async def go_safe(self) -> None:
        """The safe state, set explicitly: clamp off, every bias at its safe value."""
        await self.sub.release()
        await self.sub.set_biases(self.sub.model.safe_biases())

    def unsafe_omega(self) -> Array:
        """ω (model units) away from any safe state: outputs at ±35 % of the half range."""
        lim = self.sub.model.limits.omega
        w = np.full(self.n, 0.5 * (lim.min + lim.max))
        signs = (-1.0) ** np.arange(len(self.outputs))
        w[self.outputs] += 0.35 * 0.5 * (lim.max - lim.min) * signs
        return w

    async def go_unsafe(self) -> PhaseReading:
        """Move away from the safe state (ω and a clamp); the reading there."""
        await self.sub.set_frequencies(self.unsafe_omega())
        free = await self.sub.read_phases(self.avg)
        beta = 0.5 * self.sub.model.limits.beta_max
        await self.sub.clamp(wrap(free.phases[self.outputs] + 1.0), beta)
        return await self.sub.read_phases(self.avg)

    async def read(self) -> PhaseReading:
        return await self.sub.read_phases(self.avg)

    async def scatter(self) -> float:
        """Tolerance for 'same state' (rad): twice the read-to-read scatter plus four standard
        errors of a difference of two averaged reads, at least 1e-6 rad."""
        a, b = await self.read(), await self.read()
        sem = float(max(a.spread.max(), b.spread.max())) / np.sqrt(self.avg)
        return max(1e-6, 2.0 * distance(a, b) + 4.0 * np.sqrt(2.0) * sem)

    def same(self, a: PhaseReading, b: PhaseReading, what: str) -> None:
        d = distance(a, b)
        if d > self.tol:
            raise AssertionError(f"{what}: phases differ by {d:.3g} rad (tolerance {self.tol:.3g})")

    def differ(self, a: PhaseReading, b: PhaseReading, what: str) -> None:
        d = distance(a, b)
        if d <= 2.0 * self.tol:
            raise AssertionError(
                f"{what}: phases differ by only {d:.3g} rad (need > {2 * self.tol:.3g}); the "
                "check cannot tell the two device states apart"
            )

    # -- checks ---------------------------------------------------------------------------
    async def check_read_phases(self) -> None:
        async with self.sub:
            for avg in (1, self.avg):
                r = await self.sub.read_phases(avg)
                if r.phases.shape != (self.n,) or r.spread.shape != (self.n,):
                    raise AssertionError(
                        f"phases {r.phases.shape}, spread {r.spread.shape}; need ({self.n},)"
                    )
                if not (np.all(np.isfinite(r.phases)) and np.all(r.spread >= 0.0)):
                    raise AssertionError(f"non-finite phases or negative spread: {r}")
                if np.any(r.phases < -np.pi) or np.any(r.phases >= np.pi):
                    raise AssertionError(f"phases not wrapped to [-pi, pi): {r.phases}")
                if r.phases[self.ref] != 0.0:
                    raise AssertionError(f"reference phase {r.phases[self.ref]} is not 0")
                if r.averages != avg or not isinstance(r.locked, bool | np.bool_):
                    raise AssertionError(
                        f"averages {r.averages} (asked {avg}), locked {r.locked!r}"
                    )

    async def check_clamp(self) -> None:
        async with self.sub:
            if self.sub.clamped:
                raise AssertionError("clamped right after connect")
            free = await self.read()
            await self.sub.clamp(
                wrap(free.phases[self.outputs] + 1.0), self.sub.model.limits.beta_max
            )
            if not self.sub.clamped:
                raise AssertionError("clamp() did not set clamped")
            nudged = await self.read()
            await self.sub.release()
            if self.sub.clamped:
                raise AssertionError("release() did not clear clamped")
            self.differ(free, nudged, "a full-strength clamp")
            self.same(free, await self.read(), "after release, the free state")

    async def check_limits(self) -> None:
        m = self.sub.model
        k = int(self.outputs[-1])
        c = m.limits.bias.channel(k)
        w, b = np.zeros(self.n), m.safe_biases()
        w[k] = m.limits.omega.max + 1.0
        b[k] = c.max + 0.1 * (c.max - c.min)
        t = np.zeros(len(self.outputs))
        bad: list[tuple[str, Callable[[], Awaitable[Any]]]] = [
            (f"omega[{k}]", lambda: self.sub.set_frequencies(w)),
            ("omega", lambda: self.sub.set_frequencies(np.zeros(self.n + 1))),
            (f"bias[{k}]", lambda: self.sub.set_biases(b)),
            ("beta", lambda: self.sub.clamp(t, 1.5 * m.limits.beta_max)),
            ("beta", lambda: self.sub.clamp(t, -0.1)),
            ("target", lambda: self.sub.clamp(np.zeros(len(t) + 1), 0.0)),
            ("direction", lambda: self.sub.clamp(t, 0.0, direction=0)),
            ("averages", lambda: self.sub.read_phases(0)),
            ("averages", lambda: self.sub.read_phases(m.limits.max_averages + 1)),
        ]
        kk = np.clip(m.coupling_values(), m.limits.coupling.min, m.limits.coupling.max)
        kk[0] = m.limits.coupling.max * 2.0
        async with self.sub:
            if Capability.COUPLINGS in self.sub.capabilities:  # (declared once connected)
                bad.append(("coupling[0]", lambda: self.sub.set_couplings(kk)))
            await self.go_safe()
            before = await self.read()
            for name, call in bad:
                try:
                    await call()
                except LimitError as exc:
                    if name not in str(exc):
                        raise AssertionError(
                            f"LimitError {exc!s:.200} does not name {name!r}"
                        ) from None
                else:
                    raise AssertionError(f"{name}: an out-of-range value was accepted")
                if self.sub.clamped:
                    raise AssertionError(f"{name}: a refused clamp set clamped")
            self.same(before, await self.read(), "after refused calls, the device state")

    async def check_frequency_map(self) -> None:
        fmap = self.sub.frequency_map
        w1, w2 = self.unsafe_omega(), 0.5 * self.unsafe_omega()
        async with self.sub:
            await self.go_safe()
            if fmap is None:
                await self.sub.set_frequencies(w1)
                r1 = await self.read()
                await self.sub.set_frequencies(w2)
                self.differ(r1, await self.read(), "native set_frequencies with another omega")
                return
            spy = _SpyMap(fmap)
            self.sub.frequency_map = spy
            try:
                await self.sub.set_frequencies(w1)
                if len(spy.asked) != 1 or not np.array_equal(spy.asked[0], w1):
                    raise AssertionError(f"set_frequencies asked the map for {spy.asked}")
                via_map = await self.read()
                await self.sub.set_biases(fmap.bias(w1))
                self.same(via_map, await self.read(), "set_frequencies vs set_biases(map.bias)")
                spy.offset = 10.0 * float(np.ptp(self.sub.model.safe_biases()) + 1.0) + 1e3
                with _raises(LimitError, "bias["):
                    await self.sub.set_frequencies(w2)
                self.same(via_map, await self.read(), "after a refused mapped omega, the state")
            finally:
                self.sub.frequency_map = fmap

    async def check_abilities(self) -> None:
        caps = self.sub.capabilities
        async with self.sub:
            await self.go_safe()
            for cap in Capability:
                if cap in caps:
                    await _ABILITY_WORKS[cap](self)
                else:
                    for call in _ABILITY_CALLS[cap](self):
                        with _raises(DeviceError, ""):
                            await call()

    async def check_safe_exit(self) -> None:
        async with self.sub:
            await self.go_safe()
            left = await self.go_unsafe()
        await self._assert_left_safe(left, "after leaving async with")

    async def check_cancelled(self) -> None:
        busy = asyncio.Event()
        left: list[PhaseReading] = []

        async def session() -> None:
            async with self.sub:
                await self.go_safe()
                left.append(await self.go_unsafe())
                while True:
                    busy.set()
                    await self.sub.read_phases(self.avg)
                    await asyncio.sleep(0)  # a controller's own awaits between operations

        task = asyncio.create_task(session())
        await asyncio.wait_for(busy.wait(), 120.0)
        await asyncio.sleep(0)
        task.cancel()
        await asyncio.wait({task}, timeout=_CANCEL_BOUND_S)
        if not task.done():  # the backend swallowed the cancellation and runs on
            task.cancel()
            raise AssertionError(
                f"the cancelled session still runs after {_CANCEL_BOUND_S:g} s "
                "(a backend operation swallowed the CancelledError)"
            )
        if not task.cancelled():
            exc = task.exception()
            raise AssertionError(f"the cancelled session ended by {exc!r}, not CancelledError")
        await self._assert_left_safe(left[0], "after a cancelled session")

    async def _assert_left_safe(self, unsafe: PhaseReading, what: str) -> None:
        if self.sub.clamped:
            raise AssertionError(f"{what}: still clamped")
        if self.observer is not None:
            after = await self.observer.read_phases(self.avg)
            async with self.sub:
                await self.go_safe()
            safe = await self.observer.read_phases(self.avg)
        else:
            async with self.sub:
                after = await self.read()
                await self.go_safe()
                safe = await self.read()
        self.differ(unsafe, safe, f"{what}: the unsafe and the safe state")
        self.same(after, safe, f"{what}: the device vs its safe state")


# --------------------------------------------------------------------------- abilities
async def _couplings_work(ctx: _Context) -> None:
    m = ctx.sub.model
    lo, hi = m.coupling_bounds()  # signed on invertible edges (docs/design.md §8)
    k = np.clip(m.coupling_values(), lo, hi)
    await ctx.sub.set_frequencies(ctx.unsafe_omega())  # detuned: the phases depend on K
    before = await ctx.read()
    await ctx.sub.set_couplings(np.clip(0.5 * k, lo, None))
    weaker = await ctx.read()
    await ctx.sub.set_couplings(k)
    ctx.differ(before, weaker, "halved couplings")
    ctx.same(before, await ctx.read(), "couplings restored")
    await ctx.go_safe()


async def _held_phases_work(ctx: _Context) -> None:
    """Held inputs follow their set phases; a bad vector is refused before anything is sent."""
    m = ctx.sub.model
    n_held = len(m.roles.held)
    p1 = m.input_phases(np.full(n_held, 0.25))
    p2 = m.input_phases(np.full(n_held, 0.75))
    await ctx.sub.set_held_phases(p1)
    first = await ctx.read()
    await ctx.sub.set_held_phases(p2)
    second = await ctx.read()
    ctx.differ(first, second, "other held phases")
    held = np.asarray(m.roles.held)
    for reading, near, far, name in ((first, p1, p2, "first"), (second, p2, p1, "second")):
        d_near = np.abs(np.angle(np.exp(1j * (reading.phases[held] - near))))
        d_far = np.abs(np.angle(np.exp(1j * (reading.phases[held] - far))))
        if not float(d_near.mean()) < float(d_far.mean()):
            raise AssertionError(f"held phases: the {name} reading does not follow its setting")
    for bad in (np.full(n_held + 1, 0.1), np.full(n_held, np.nan)):
        with _raises(LimitError, "held_phases"):
            await ctx.sub.set_held_phases(bad)
    ctx.same(second, await ctx.read(), "after a refused held-phase vector, the state")
    await ctx.go_safe()


async def _drive_works(ctx: _Context) -> None:
    """A drive moves the driven oscillators; amplitudes past the limit are refused before
    anything is sent; switching it off restores the undriven state."""
    m = ctx.sub.model
    n_drive = len(m.roles.drive)
    await ctx.sub.set_frequencies(ctx.unsafe_omega())
    await ctx.sub.set_drive(np.zeros(n_drive), 0.0)
    off = await ctx.read()
    await ctx.sub.set_drive(np.full(n_drive, 0.5 * m.limits.drive_max), 1.0)
    on = await ctx.read()
    ctx.differ(off, on, "drive on")
    with _raises(LimitError, "drive_amplitude"):
        await ctx.sub.set_drive(np.full(n_drive, 2.0 * m.limits.drive_max), 1.0)
    ctx.same(on, await ctx.read(), "after a refused drive amplitude, the state")
    await ctx.sub.set_drive(np.zeros(n_drive), 0.0)
    ctx.same(off, await ctx.read(), "drive off again")
    await ctx.go_safe()


async def _counter_works(ctx: _Context) -> None:
    f = np.asarray(await ctx.sub.read_frequencies())
    if f.shape != (ctx.n,) or not np.all(np.isfinite(f)):
        raise AssertionError(f"read_frequencies gave {f!r}; need ({ctx.n},) finite")


async def _reseed_works(ctx: _Context) -> None:
    runs = []
    for _ in range(2):
        ctx.sub.reseed(1234)
        await ctx.go_safe()
        await ctx.sub.set_frequencies(ctx.unsafe_omega())
        runs.append(await ctx.sub.read_phases(ctx.avg))
    await ctx.go_safe()
    d = distance(*runs)
    if d > 1e-9:
        raise AssertionError(f"the same seed and settings read {d:.3g} rad apart")


async def _exact_gradient_works(ctx: _Context) -> None:
    theta, locked = ctx.sub.true_state()
    g = ctx.sub.exact_gradient(np.zeros(len(ctx.outputs)))
    if np.shape(theta) != (ctx.n,) or np.shape(g) != (ctx.n,) or not np.all(np.isfinite(g)):
        raise AssertionError(f"true_state {np.shape(theta)}, exact_gradient {np.shape(g)}")
    if not isinstance(locked, bool | np.bool_):
        raise AssertionError(f"true_state's lock flag {locked!r} is not a bool")


async def _call(fn: Callable[[], object]) -> None:
    fn()


_ABILITY_WORKS: dict[Capability, Callable[[_Context], Awaitable[None]]] = {
    Capability.COUPLINGS: _couplings_work,
    Capability.FREQUENCY_COUNTER: _counter_works,
    Capability.RESEED: _reseed_works,
    Capability.EXACT_GRADIENT: _exact_gradient_works,
    Capability.HELD_PHASES: _held_phases_work,
    Capability.DRIVE: _drive_works,
}
_ABILITY_CALLS: dict[Capability, Callable[[_Context], list[Callable[[], Awaitable[Any]]]]] = {
    Capability.COUPLINGS: lambda c: [
        lambda: c.sub.set_couplings(c.sub.model.coupling_values()),
    ],
    Capability.FREQUENCY_COUNTER: lambda c: [c.sub.read_frequencies],
    Capability.RESEED: lambda c: [lambda: _call(lambda: c.sub.reseed(1))],
    Capability.EXACT_GRADIENT: lambda c: [
        lambda: _call(c.sub.true_state),
        lambda: _call(lambda: c.sub.exact_gradient(np.zeros(len(c.outputs)))),
    ],
    Capability.HELD_PHASES: lambda c: [
        lambda: c.sub.set_held_phases(np.zeros(len(c.sub.model.roles.held))),
    ],
    Capability.DRIVE: lambda c: [
        lambda: c.sub.set_drive(np.zeros(len(c.sub.model.roles.drive)), 0.0),
    ],
}


# --------------------------------------------------------------------------- timeout
async def _check_timeout(sub: OscillatorSubstrate, timeout_s: float) -> None:
    """A read that never returns: DeviceTimeoutError after ``timeout_s``, safe exit."""
    hung = HangingSubstrate(sub, on_read=1)
    async with hung:
        bound = hung.operation_timeout_s
        hung.operation_timeout_s = timeout_s
        t0 = time.monotonic()
        try:
            with _raises(DeviceTimeoutError, "read_phases"):
                await hung.read_phases()
        finally:
            hung.operation_timeout_s = bound
        took = time.monotonic() - t0
    if not hung.hanging.is_set():
        raise AssertionError("the double's hung read was never reached")
    if took > timeout_s + 5.0:
        raise AssertionError(f"the hung read took {took:.3g} s, bound {timeout_s} s")
    if hung.clamped or not hung.is_safe:
        raise AssertionError(f"after the timeout the exit was not safe: {hung.names()}")


class _raises:
    """``with _raises(Error, text):`` — the block raises ``Error`` whose message has ``text``."""

    def __init__(self, kind: type[BaseException], text: str) -> None:
        self.kind, self.text = kind, text

    def __enter__(self) -> None:
        return None

    def __exit__(self, et: type[BaseException] | None, exc: BaseException | None, tb: Any) -> bool:
        if exc is None:
            raise AssertionError(f"expected {self.kind.__name__}, nothing was raised")
        if not isinstance(exc, self.kind):
            raise AssertionError(f"expected {self.kind.__name__}, got {et!r}: {exc}") from exc
        if self.text not in str(exc):
            raise AssertionError(f"{self.kind.__name__} {exc!s:.200} does not name {self.text!r}")
        return True


class _SpyMap:
    """A frequency map that records what it is asked and can shift its biases (device
    unit) by ``offset`` — to show that ``set_frequencies`` uses it and checks its output."""

    def __init__(self, inner: FrequencyMap) -> None:
        self.inner = inner
        self.asked: list[Array] = []
        self.offset = 0.0

    @property
    def source(self) -> str:
        return self.inner.source

    def bias(self, omega: Any) -> Array:
        self.asked.append(np.array(omega, dtype=np.float64))
        return self.inner.bias(omega) + self.offset

    def frequency(self, bias: Any) -> Array:
        return self.inner.frequency(np.asarray(bias, dtype=np.float64) - self.offset)
