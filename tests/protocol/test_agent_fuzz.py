"""Property-based fuzzing of the MQTT agent's request handler (hypothesis), transport-free:
random bytes, random JSON over the request schema with wrong types, deep nesting and huge
values never crash it; it answers with a short, well-formed error reply (or drops what
nobody can be answered for); nothing reaches the device unless the request is valid and in
the session; the next valid request works."""

from __future__ import annotations

import asyncio
import json
import math
from typing import Any

import numpy as np
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from phasegrad_hw.backends.simulated import SimulatedDeviceModel, SimulatedSubstrate
from phasegrad_hw.device.substrate import Capability, PhaseReading
from phasegrad_hw.fleet.agent import Agent
from phasegrad_hw.physics import Array
from phasegrad_hw.wire.mqtt import (
    MAX_BATCH_OPS,
    MAX_DEPTH,
    MAX_ID,
    MAX_MESSAGE_CHARS,
    Reply,
    envelope_problem,
)
from phasegrad_hw.wire.mqtt import BrokerConfig as _Broker

SETTINGS = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
OPS = (
    "hello open set_frequencies set_biases set_couplings clamp release read_phases "
    "read_frequencies make_safe reseed batch set_held_phases set_drive".split()
)
NUMERIC = {"omega", "values", "target", "beta", "averages", "seed", "direction"}
NUMERIC |= {"phases", "amplitude", "phase"}


def model() -> SimulatedDeviceModel:
    return SimulatedDeviceModel.model_validate(
        {
            "n_oscillators": 4,
            "edges": [{"i": i, "j": i + 1, "k": 1.0} for i in range(3)],
            "roles": {"inputs": [0], "hidden": [1, 2], "outputs": [3]},
        }
    )


class Spy(SimulatedSubstrate):
    """Records what reaches the device."""

    def __init__(self) -> None:
        super().__init__(model())
        self.calls: list[str] = []

    async def _apply_biases(self, values: Array) -> None:
        self.calls.append("biases")
        await super()._apply_biases(values)

    async def _apply_frequencies(self, omega: Array) -> None:
        self.calls.append("frequencies")
        await super()._apply_frequencies(omega)

    async def _apply_couplings(self, values: Array) -> None:
        self.calls.append("couplings")
        await super()._apply_couplings(values)

    async def _apply_clamp(self, target: Array, beta: float, direction: int) -> None:
        self.calls.append("clamp")
        await super()._apply_clamp(target, beta, direction)

    async def _apply_release(self) -> None:
        self.calls.append("release")
        await super()._apply_release()

    async def _read(self, averages: int) -> PhaseReading:
        self.calls.append("read")
        return await super()._read(averages)


SPY = Spy()
AGENT = Agent(SPY, _Broker(host="unused"), "fuzz/chip")
LOOP = asyncio.new_event_loop()
NEXT_ID = [0]


def _run(coro: Any) -> Any:
    return LOOP.run_until_complete(asyncio.wait_for(coro, timeout=5))


def _open() -> str:
    raw = json.dumps({"v": 2, "op": "open", "id": 1, "reply_to": "ctl", "will": "a" * 32})
    out = _run(AGENT.handle(raw.encode()))
    assert out is not None
    return str(json.loads(out[1])["result"]["session"])


SESSION = _open()


def _next_id() -> int:
    """An id above the session's high-water mark (a fuzzed request may have raised it; near
    the top of the id range a new session is opened)."""
    global SESSION
    ses = AGENT.sessions.get("ctl")
    if ses is None or ses.nonce != SESSION or ses.closed or ses.hwm > MAX_ID - 1000:
        SESSION = _open()
        ses = AGENT.sessions["ctl"]
    NEXT_ID[0] = max(NEXT_ID[0], ses.hwm) + 1
    return NEXT_ID[0]


def _check_reply(out: tuple[str, bytes] | None) -> Reply | None:
    """A reply is well-formed, bounded and names a valid client."""
    if out is None:
        return None
    to, payload = out
    rep = Reply.model_validate_json(payload)
    assert rep.boot == AGENT.boot
    if rep.error is not None:
        assert len(rep.error.message) <= MAX_MESSAGE_CHARS
    if not rep.ok:  # an error reply never echoes a big request (a failed batch's reply
        # carries the results of the operations before the failure: those aside)
        results = 0 if rep.result is None else len(json.dumps(rep.result, separators=(",", ":")))
        assert len(payload) - results <= 2048
    assert 1 <= len(to) <= 64
    return rep


def _assert_next_valid_works() -> None:
    before = len(SPY.calls)
    rid = _next_id()
    req = {
        "v": 2,
        "op": "read_phases",
        "id": rid,
        "reply_to": "ctl",
        "session": SESSION,
    }
    rep = _check_reply(_run(AGENT.handle(json.dumps(req).encode())))
    assert rep is not None and rep.ok, rep
    assert SPY.calls[before:] == ["read"]


@SETTINGS
@given(st.binary(max_size=600))
def test_random_bytes(raw: bytes) -> None:
    before = len(SPY.calls)
    rep = _check_reply(_run(AGENT.handle(raw)))
    assert rep is None or not rep.ok  # random bytes are never a valid request in the session
    assert len(SPY.calls) == before
    _assert_next_valid_works()


JUNK = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=30),
    st.lists(st.one_of(st.booleans(), st.text(max_size=5), st.floats(), st.integers()), max_size=6),
)


@st.composite
def request_like(draw: st.DrawFn) -> dict[str, Any]:
    """Requests over the schema: right and wrong types in every field, wrong sessions."""
    op = draw(st.sampled_from(OPS))
    n = 4
    good: dict[str, Any] = {
        "omega": draw(st.lists(st.floats(-0.5, 0.5), min_size=n, max_size=n)),
        "values": draw(st.lists(st.floats(0.0, 1.0), min_size=3, max_size=n)),
        "target": [draw(st.floats(-1.0, 1.0))],
        "beta": draw(st.floats(0.01, 0.2)),
        "averages": draw(st.integers(1, 3)),
        "seed": draw(st.integers(0, 10)),
        "direction": draw(st.sampled_from([1, -1])),
        "phases": [draw(st.floats(-3.0, 3.0))],
        "amplitude": [draw(st.floats(0.0, 1.0))],
        "phase": draw(st.floats(-3.0, 3.0)),
    }
    req: dict[str, Any] = {"v": 2, "op": op, "id": _next_id(), "reply_to": "ctl"}
    req["session"] = draw(st.sampled_from([SESSION, "b" * 32, "not-a-nonce"]))
    for name in draw(st.sets(st.sampled_from(sorted(good)), max_size=3)):
        req[name] = good[name]
    for name in draw(st.sets(st.sampled_from([*sorted(req), *sorted(good)]), max_size=2)):
        req[name] = draw(JUNK)  # a wrong type or value somewhere
    if draw(st.booleans()):
        req.pop(draw(st.sampled_from(sorted(req))), None)
    return req


def _typed_right(req: dict[str, Any]) -> bool:
    """No boolean or string where a number belongs."""
    for k in NUMERIC & req.keys():
        vals = req[k] if isinstance(req[k], list) else [req[k]]
        if any(isinstance(x, (bool, str)) or x is None for x in vals):
            return False
    return True


@SETTINGS
@given(request_like())
def test_requests_over_the_schema(req: dict[str, Any]) -> None:
    raw = json.dumps(req).encode()
    before = len(SPY.calls)
    rep = _check_reply(_run(AGENT.handle(raw)))
    if rep is not None and rep.ok and req.get("op") not in ("hello", "open"):
        assert req.get("session") == SESSION and _typed_right(req)
        assert req.get("op") not in ("set_held_phases", "set_drive")  # SPY has neither
    if req.get("session") != SESSION:
        assert len(SPY.calls) == before  # another session's request never reaches the device
    if not _typed_right(req):
        assert len(SPY.calls) == before
    _assert_next_valid_works()  # (re-opens the session if the fuzzed request replaced it)


@SETTINGS
@given(st.integers(MAX_DEPTH + 1, 5000), st.sampled_from(["[", "{", '{"a":[']), st.booleans())
def test_deep_nesting_is_dropped_unparsed(depth: int, opener: str, close: bool) -> None:
    closer = {"[": "]", "{": "}", '{"a":[': "]}"}[opener]
    raw = (opener * depth + (closer * depth if close else "")).encode()
    dropped = AGENT.stats.dropped
    assert _run(AGENT.handle(raw)) is None
    assert AGENT.stats.dropped == dropped + 1
    _assert_next_valid_works()


def _reference_depth(raw: bytes) -> int:
    """Deepest bracket nesting, byte by byte over the whole payload."""
    depth = level = 0
    for b in raw:
        if b in b"[{":
            level += 1
            depth = max(depth, level)
        elif b in b"]}":
            level -= 1
    return depth


@SETTINGS
@given(
    st.lists(
        st.one_of(
            st.sampled_from([b"[", b"]", b"{", b"}", b'"a":', b"1,", b"[[[[[", b"]]]]]"]),
            st.binary(max_size=8),
        ),
        max_size=3000,
    ),
    st.integers(0, 8),
)
def test_envelope_depth_matches_a_byte_by_byte_count(parts: list[bytes], max_depth: int) -> None:
    """The envelope check's depth (short bracket strings in Python, long ones in numpy) is
    the byte-by-byte nesting depth, unbalanced and stray closers included."""
    raw = b"".join(parts)
    problem = envelope_problem(raw, len(raw), max_depth)
    depth = _reference_depth(raw)
    assert (problem is None) == (depth <= max_depth)
    if problem is not None:
        assert f"nested {depth} deep" in problem


def test_envelope_depth_of_long_bracket_strings() -> None:
    """Past a few thousand brackets (the numpy path) the depth is still exact."""
    cases = [b"[]" * 5000, b"[" * 3000 + b"]" * 3000 + b"{{", b"]" * 5000 + b"[" * 3, b"{" * 9000]
    rng = np.random.default_rng(1)
    cases += [bytes(rng.choice(list(b"[]{}a"), 20_000)) for _ in range(5)]
    for raw in cases:
        depth = _reference_depth(raw)
        assert envelope_problem(raw, len(raw), depth) is None
        assert f"nested {depth} deep" in str(envelope_problem(raw, len(raw), depth - 1))


# --------------------------------------------------------------------------- batches
# (op, fields) of operations that pass the schema and the device limits, with the hooks they
# reach on the device (Spy.calls); ones that pass the schema but not the limits; and ones the
# schema refuses (a whole batch containing one runs nothing).
@st.composite
def good_op(draw: st.DrawFn) -> tuple[dict[str, Any], list[str]]:
    op = draw(st.sampled_from(OPS[2:11]))
    fields: dict[str, Any] = {
        "set_frequencies": {"omega": draw(st.lists(st.floats(-0.5, 0.5), min_size=4, max_size=4))},
        "set_biases": {"values": draw(st.lists(st.floats(-1.0, 1.0), min_size=4, max_size=4))},
        "set_couplings": {"values": draw(st.lists(st.floats(0.5, 2.0), min_size=3, max_size=3))},
        "clamp": {"target": [draw(st.floats(-1.0, 1.0))], "beta": draw(st.floats(0.01, 0.2))},
        "read_phases": {"averages": draw(st.integers(1, 3))},
        "reseed": {"seed": draw(st.integers(0, 10))},
    }.get(op, {})
    calls = {
        "set_frequencies": ["frequencies"],
        "set_biases": ["biases"],
        "set_couplings": ["couplings"],
        "clamp": ["clamp"],
        "release": ["release"],
        "read_phases": ["read"],
        "make_safe": ["release", "biases"],
    }.get(op, [])
    return {"op": op, **fields}, calls


LIMIT_OPS = [
    {"op": "set_frequencies", "omega": [0.1, 5.0, 0.1, 0.1]},
    {"op": "set_biases", "values": [0.0, 0.0, -7.5, 0.0]},
    {"op": "set_couplings", "values": [1.0, 9.0, 1.0]},
    {"op": "set_couplings", "values": [1.0, 1.0]},
    {"op": "clamp", "target": [0.1], "beta": 5.0},
    {"op": "clamp", "target": [0.1, 0.2], "beta": 0.1},
    {"op": "read_phases", "averages": 10**6},
]
INVALID_OPS = [
    {"op": "set_frequencies", "omega": [0.1, True, 0.1, 0.1]},
    {"op": "set_biases", "values": ["0.1"] * 4},
    {"op": "read_phases", "averages": 0},
    {"op": "release", "extra": 1},
    {"op": "hello"},
    {"op": "batch", "ops": []},
    {"op": "make_safe", "will": "a" * 32},
    {"op": "explode"},
    {"values": [0.1] * 4},
    [],
]


@st.composite
def batch_like(draw: st.DrawFn) -> tuple[list[Any], list[str] | None, int | None]:
    """A batch; the device calls it should cause (None: refused whole) and the index of the
    operation that should stop it (None: none)."""
    ops: list[Any] = []
    calls: list[str] = []
    failed: int | None = None
    valid = True
    for i in range(draw(st.integers(1, MAX_BATCH_OPS + 3))):
        kind = draw(st.sampled_from(["good"] * 8 + ["limit", "invalid"]))
        if kind == "good":
            op, c = draw(good_op())
            if failed is None:
                calls += c
        elif kind == "limit":
            op = draw(st.sampled_from(LIMIT_OPS))
            failed = i if failed is None else failed
        else:
            op, valid = draw(st.sampled_from(INVALID_OPS)), False
        ops.append(op)
    if len(ops) > MAX_BATCH_OPS:
        valid = False
    return ops, calls if valid else None, failed if valid else None


@SETTINGS
@given(batch_like())
def test_batches_run_in_order_up_to_the_first_failure(
    case: tuple[list[Any], list[str] | None, int | None],
) -> None:
    ops, calls, failed = case
    req = {"v": 2, "op": "batch", "id": _next_id(), "reply_to": "ctl", "session": SESSION}
    before = len(SPY.calls)
    dropped = AGENT.stats.dropped
    raw = json.dumps(req | {"ops": ops}).encode()
    rep = _check_reply(_run(AGENT.handle(raw)))
    if len(raw) > AGENT.max_payload_bytes:  # over the size limit: dropped unparsed, no reply
        assert rep is None and AGENT.stats.dropped == dropped + 1
        assert len(SPY.calls) == before
        _assert_next_valid_works()
        return
    assert rep is not None
    if calls is None:  # refused whole: nothing reached the device
        assert rep.error is not None and rep.error.kind == "invalid" and rep.result is None
        assert len(SPY.calls) == before
    else:
        assert SPY.calls[before:] == calls
        assert rep.result is not None
        if failed is None:
            assert rep.ok and len(rep.result["results"]) == len(ops)
        else:
            assert not rep.ok and rep.error is not None and rep.error.kind == "limit"
            assert rep.result["failed"] == failed and len(rep.result["results"]) == failed
            assert rep.error.message.startswith(f"operation {failed} ({ops[failed]['op']}) of")
    _assert_next_valid_works()


def test_huge_and_deep_payloads_are_dropped_and_bool_or_str_numbers_refused() -> None:
    dropped = AGENT.stats.dropped
    assert _run(AGENT.handle(b"[" * 1000 + b"]" * 1000)) is None  # the 2 KB attack
    big = {"v": 2, "op": "set_frequencies", "id": _next_id(), "reply_to": "ctl"}
    big |= {"session": SESSION, "omega": [0.1] * 500_000}  # ~2.5 MB
    assert _run(AGENT.handle(json.dumps(big).encode())) is None
    assert AGENT.stats.dropped == dropped + 2
    before = len(SPY.calls)
    for bad in ([True] * 4, ["0.1"] * 4, [0.1, 0.1, 0.1, None], [0.1, 0.1, 0.1, float("nan")]):
        req = {"v": 2, "op": "set_frequencies", "id": _next_id(), "reply_to": "ctl"}
        req |= {"session": SESSION, "omega": bad}
        rep = _check_reply(_run(AGENT.handle(json.dumps(req).encode())))
        assert rep is not None and not rep.ok and rep.error is not None
        assert rep.error.kind == "invalid"
    long = {"v": 2, "op": "set_frequencies", "id": _next_id(), "reply_to": "ctl"}
    long |= {"session": SESSION, "omega": ["x" * 1200] * 3}  # big, but under the size limit
    rep = _check_reply(_run(AGENT.handle(json.dumps(long).encode())))
    assert rep is not None and rep.error is not None and len(rep.error.message) < 500
    assert "x" * 100 not in rep.error.message  # quoted as an excerpt only
    assert len(json.dumps(long)) < AGENT.max_payload_bytes  # it was parsed, not dropped
    assert len(SPY.calls) == before
    assert np.all(np.isfinite(SPY.omega))
    _assert_next_valid_works()


# --------------------------------------------------------------------------- held inputs, drive
def held_model() -> SimulatedDeviceModel:
    """5 oscillators: bias 0 (reference) and 1, held input 2, hidden 3 (driven), output 4."""
    return SimulatedDeviceModel.model_validate(
        {
            "backend": "simulated",
            "name": "held-5",
            "n_oscillators": 5,
            "edges": [
                {"i": 0, "j": 3, "k": 1.0},
                {"i": 1, "j": 3, "k": 1.0},
                {"i": 2, "j": 3, "k": 1.0},
                {"i": 3, "j": 4, "k": 1.0},
            ],
            "roles": {
                "inputs": [],
                "held": [2],
                "bias": [0, 1],
                "hidden": [3],
                "outputs": [4],
                "reference": 0,
                "drive": [3],
            },
            "input_encoding": "phase",
            "bias_phases_rad": [0.0, 1.5],
            "readout_noise_rad": 0.0,
        }
    )


class HeldSpy(SimulatedSubstrate):
    """The simulated device with held inputs and a drive, recording what reaches those
    hooks."""

    def __init__(self, model: SimulatedDeviceModel | None = None) -> None:
        super().__init__(model or held_model())
        assert {Capability.HELD_PHASES, Capability.DRIVE} <= self.capabilities
        self.held_log: list[list[float]] = []
        self.drive_log: list[tuple[list[float], float]] = []

    async def _apply_held_phases(self, phases_rad: Array) -> None:
        self.held_log.append(phases_rad.tolist())
        await super()._apply_held_phases(phases_rad)

    async def _apply_drive(self, amplitude: Array, phase_rad: float) -> None:
        self.drive_log.append((amplitude.tolist(), phase_rad))
        await super()._apply_drive(amplitude, phase_rad)


HELD = HeldSpy()
HELD_AGENT = Agent(HELD, _Broker(host="unused"), "fuzz/held")
HELD_SESSION: list[str] = []
HELD_ID = [1]


def _held_request(fields: dict[str, Any]) -> bytes:
    if not HELD_SESSION:
        raw = json.dumps({"v": 2, "op": "open", "id": 1, "reply_to": "ctl", "will": "c" * 32})
        out = _run(HELD_AGENT.handle(raw.encode()))
        assert out is not None
        HELD_SESSION.append(json.loads(out[1])["result"]["session"])
    HELD_ID[0] += 1
    head = {"v": 2, "id": HELD_ID[0], "reply_to": "ctl", "session": HELD_SESSION[0]}
    return json.dumps(head | fields).encode()


NUMBERISH = st.one_of(
    st.floats(-20.0, 20.0), st.integers(-5, 5), st.booleans(), st.text(max_size=4), st.none()
)


@st.composite
def held_or_drive(draw: st.DrawFn) -> dict[str, Any]:
    """set_held_phases / set_drive with right and wrong lengths, types and values, alone or
    inside a batch."""
    vec = st.lists(NUMBERISH, max_size=3) | st.lists(st.floats(-4.0, 4.0), min_size=1, max_size=1)
    if draw(st.booleans()):
        op: dict[str, Any] = {"op": "set_held_phases", "phases": draw(vec)}
    else:
        op = {"op": "set_drive", "amplitude": draw(vec), "phase": draw(NUMBERISH)}
    if draw(st.booleans()):
        op.pop(draw(st.sampled_from(sorted(op))))
    if draw(st.booleans()):
        op[draw(st.sampled_from(["extra", "phases", "phase"]))] = draw(JUNK)
    return op


def _expected(op: dict[str, Any]) -> str:
    """``ok``, ``invalid`` (schema) or ``limit`` (device limits) for one operation."""
    m = HELD.model

    def finite(x: int | float) -> bool:
        try:
            return math.isfinite(x)  # (an int beyond float's range overflows: not a number)
        except OverflowError:
            return False

    def numbers(v: Any) -> bool:
        return isinstance(v, list) and all(
            isinstance(x, (int, float)) and not isinstance(x, bool) and finite(x) for x in v
        )

    if op.get("op") == "set_held_phases":
        if set(op) != {"op", "phases"} or not numbers(op["phases"]):
            return "invalid"
        return "ok" if len(op["phases"]) == len(m.roles.held) else "limit"
    keys = {"op", "amplitude", "phase"}
    if set(op) != keys or not numbers(op["amplitude"]) or not numbers([op["phase"]]):
        return "invalid"
    a = op["amplitude"]
    fine = len(a) == len(m.roles.drive) and all(0.0 <= x <= m.limits.drive_max for x in a)
    return "ok" if fine else "limit"


@SETTINGS
@given(held_or_drive(), st.booleans())
@example({"op": "set_drive", "amplitude": [], "phase": -(2**63) - 1}, False)  # beyond int64
@example({"op": "set_drive", "amplitude": [0.0], "phase": 10**400}, False)  # beyond float
def test_held_phases_and_drive_are_checked_before_the_device(
    op: dict[str, Any], batched: bool
) -> None:
    """Numbers only (no booleans, strings, null), lengths from the device (roles.held,
    roles.drive), amplitudes in [0, drive_max]: anything else is refused with a short reply
    and nothing reaches the device; a valid one reaches it exactly."""
    want = _expected(op)
    fields = {"op": "batch", "ops": [op]} if batched else op
    held, drive = len(HELD.held_log), len(HELD.drive_log)
    raw = _held_request(fields)
    out = _run(HELD_AGENT.handle(raw))
    if envelope_problem(raw, HELD_AGENT.max_payload_bytes) is not None:
        # brackets inside a string count toward the depth limit (no valid request has
        # them): such a payload is dropped unparsed, and nothing reaches the device
        assert out is None and (len(HELD.held_log), len(HELD.drive_log)) == (held, drive)
        return
    assert out is not None
    rep = Reply.model_validate_json(out[1])
    if rep.error is not None:
        assert len(rep.error.message) <= MAX_MESSAGE_CHARS
    if want == "ok":
        assert rep.ok, rep
        if op["op"] == "set_held_phases":
            assert HELD.held_log[held:] == [HELD.model.check_held_phases(op["phases"]).tolist()]
        else:
            assert HELD.drive_log[drive:] == [(op["amplitude"], op["phase"])]
    else:
        assert not rep.ok and rep.error is not None and rep.error.kind == want, (op, rep)
        assert len(HELD.held_log) == held and len(HELD.drive_log) == drive
