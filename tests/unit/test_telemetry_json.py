"""Telemetry's JSON conversion of the controller's records."""

from __future__ import annotations

import json

import numpy as np

from phasegrad_hw.fleet.telemetry import to_jsonable
from phasegrad_hw.learning.controller import StepReport


def test_a_step_report_becomes_an_object_with_its_field_names() -> None:
    rep = StepReport(
        np.array([[0.0, -0.1, 0.2]]),
        np.array([True]),
        np.array([True]),
        0,
        0,
        True,
        np.array([0.0, 0.5, np.nan]),
        None,
        0.25,
        np.array([[-0.2, 0.2]]),
    )
    out = to_jsonable(rep)
    assert isinstance(out, dict)
    assert list(out) == list(StepReport._fields)
    assert out["free_phases"] == [[0.0, -0.1, 0.2]]
    assert out["grad_omega"] == [0.0, 0.5, None]  # NaN → null
    assert out["grad_coupling"] is None and out["loss"] == 0.25 and out["updated"] is True
    assert json.loads(json.dumps(out)) == out
