"""Kuramoto physics: coupling functions, dynamics, locked states (one solver family) and
the gradients the two-phase method is checked against. Imports nothing above it."""

from phasegrad_hw.physics.coupling import (
    SIN,
    Array,
    CouplingFunction,
    NudgeKind,
    centred,
    energy,
    jacobian,
    phase_differences,
    rhs,
    wrap,
)
from phasegrad_hw.physics.equilibrium import solve_equilibrium
from phasegrad_hw.physics.policy import NEWTON, NewtonPolicy
from phasegrad_hw.physics.result import Equilibrium
from phasegrad_hw.physics.sparse import SparseNetwork

__all__ = [
    "SIN",
    "Array",
    "CouplingFunction",
    "NEWTON",
    "Equilibrium",
    "NewtonPolicy",
    "NudgeKind",
    "SparseNetwork",
    "centred",
    "energy",
    "jacobian",
    "phase_differences",
    "rhs",
    "solve_equilibrium",
    "wrap",
]
