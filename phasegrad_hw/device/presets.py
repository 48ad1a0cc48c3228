"""Layered oscillator network builders (inputs → hidden layers → outputs).

The published vowel network (arXiv 2604.10272; docs/design.md §2 and contracts) is 2+5+2:
oscillators 0, 1 are inputs (0 is also the phase reference), 2…6 hidden (chained 2–3–4–5–6),
7, 8 outputs. Edges: every input–hidden pair, every hidden–output pair, then the hidden chain,
in that order. Couplings K = k_scale·U(0.5, 1.5) on the layer-to-layer edges and
k_scale·U(0.5, 1.0) on the chain, k_scale = 2 (model units, rad per time unit).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from phasegrad_hw.device.model import DeviceModel
from phasegrad_hw.device.registry import model_class

Builder = Callable[[np.random.Generator], DeviceModel]


def layered_edges(
    n_inputs: int, hidden: Sequence[int], n_outputs: int, chain: bool = True
) -> tuple[list[tuple[int, int]], list[tuple[int, int]]]:
    """(layer edges, chain edges) of a layered network; oscillators numbered layer by layer.

    Consecutive layers are connected all-to-all; with ``chain`` each hidden layer is also a
    path (h0–h1–…). Returns pairs (i, j) with i < j.
    """
    if n_inputs < 1 or n_outputs < 1 or not hidden or any(h < 1 for h in hidden):
        raise ValueError(
            f"layers: inputs={n_inputs}, hidden={list(hidden)}, outputs={n_outputs} "
            "— every layer needs >= 1 oscillator and at least one hidden layer"
        )
    sizes = [n_inputs, *hidden, n_outputs]
    starts = np.cumsum([0, *sizes])
    layer_edges: list[tuple[int, int]] = []
    for a in range(len(sizes) - 1):
        for i in range(starts[a], starts[a + 1]):
            for j in range(starts[a + 1], starts[a + 2]):
                layer_edges.append((int(i), int(j)))
    chain_edges: list[tuple[int, int]] = []
    if chain:
        for a in range(1, len(sizes) - 1):
            for i in range(starts[a], starts[a + 1] - 1):
                chain_edges.append((int(i), int(i + 1)))
    return layer_edges, chain_edges


def layered(
    n_inputs: int,
    hidden: Sequence[int] | int,
    n_outputs: int,
    rng: np.random.Generator,
    *,
    k_scale: float = 2.0,
    k_range: tuple[float, float] = (0.5, 1.5),
    chain_range: tuple[float, float] = (0.5, 1.0),
    chain: bool = True,
    name: str | None = None,
) -> DeviceModel:
    """A simulated layered device with random couplings (published ranges by default); the
    model class is the ``simulated`` backend's, loaded through the registry (the device layer
    does not import backends).

    Draw order (reproducible under ``rng``): all layer-edge couplings, then chain couplings.
    Reference = oscillator 0 (an input). Limits: ω ∈ [−3, 3], K ∈ [0.01, 8].
    """
    hid = [hidden] if isinstance(hidden, int) else list(hidden)
    le, ce = layered_edges(n_inputs, hid, n_outputs, chain)
    k_layer = k_scale * rng.uniform(*k_range, len(le))
    k_chain = k_scale * rng.uniform(*chain_range, len(ce))
    n = n_inputs + sum(hid) + n_outputs
    edges = [
        {"i": i, "j": j, "k": float(k)}
        for (i, j), k in zip([*le, *ce], np.concatenate([k_layer, k_chain]), strict=True)
    ]
    return model_class("simulated").model_validate(
        {
            "backend": "simulated",
            "name": name or f"layered-{n_inputs}-{'-'.join(map(str, hid))}-{n_outputs}",
            "n_oscillators": n,
            "edges": edges,
            "roles": {
                "inputs": list(range(n_inputs)),
                "hidden": list(range(n_inputs, n_inputs + sum(hid))),
                "outputs": list(range(n - n_outputs, n)),
                "reference": 0,
            },
        }
    )


def vowel_2_5_2(rng: np.random.Generator) -> DeviceModel:
    """The published 2+5+2 vowel network with freshly drawn couplings."""
    return layered(2, 5, 2, rng, name="simulated-2-5-2")


def vowel_2_8_2(rng: np.random.Generator) -> DeviceModel:
    """The 2+8+2 variant (hidden chain of 8) with the same coupling ranges."""
    return layered(2, 8, 2, rng, name="simulated-2-8-2")


def builder(hidden: int) -> Builder:
    """A vowel-network builder with ``hidden`` chained hidden oscillators (2+h+2)."""

    def build(rng: np.random.Generator) -> DeviceModel:
        return layered(2, hidden, 2, rng, name=f"simulated-2-{hidden}-2")

    return build


#: Backends whose edges can carry an inverted tap (signed K, docs/design.md §8): the ideal
#: simulated device; CMOS (the complementary output of a differential ring oscillator);
#: optical (a coupler followed by a phase shifter).
SIGNED_BACKENDS: frozenset[str] = frozenset({"simulated", "cmos", "optical"})


def layered_chip(
    backend: str,
    sizes: tuple[int, int, int],
    bias_phases_rad: Sequence[float],
    K: Sequence[float],
    *,
    name: str | None = None,
    seed: int = 0,
    held_injection: float = 20.0,
) -> DeviceModel:
    """A layered device with held inputs (docs/design.md §8) for ``backend``: oscillators
    numbered held inputs, bias oscillators, hidden layer, outputs; edges held → hidden,
    hidden → output, bias → output in the order of
    :class:`phasegrad_hw.physics.layered.LayeredNetwork` with couplings ``K`` (model units);
    every edge invertible where the backend has inverted taps (:data:`SIGNED_BACKENDS`), else
    |K| is used. The reference is the first bias oscillator (held at phase 0); the other
    fields take the backend's defaults."""
    from phasegrad_hw.physics.layered import LayeredNetwork

    n_in, n_h, n_out = sizes
    phases = tuple(float(p) for p in bias_phases_rad)
    if not phases or phases[0] != 0.0:
        raise ValueError(f"bias_phases_rad: {list(phases)} — need >= 1, the first at 0 rad")
    net = LayeredNetwork(n_in, (n_h,), n_out, phases)
    k = np.asarray(K, dtype=np.float64)
    if k.shape != (net.n_edges,):
        raise ValueError(f"K: shape {k.shape} must be ({net.n_edges},)")
    signed = backend in SIGNED_BACKENDS
    edges = [
        {"i": int(i), "j": int(j), "k": float(v if signed else abs(v)), "invertible": signed}
        for (i, j), v in zip(net.edges.tolist(), k, strict=True)
    ]
    data = {
        "backend": backend,
        "name": name or f"{backend}-{n_in}-{n_h}-{n_out}",
        "n_oscillators": net.n,
        "edges": edges,
        "roles": {
            "held": net.inputs.tolist(),
            "bias": net.biases.tolist(),
            "hidden": net.layers[1].tolist(),
            "outputs": net.outputs.tolist(),
            "reference": int(net.biases[0]),
        },
        "seed": seed,
        "input_encoding": "phase",
        "input_phase_range_rad": [0.0, 0.5 * np.pi],
        "held_injection": held_injection,
        "bias_phases_rad": list(phases),
    }
    return model_class(backend).from_dict(data)
