"""The EP controller and the hardware training loop on simulated devices.

1. Gradient quality under readout noise: one-sided nudging at small β vs centred nudging at
   10× larger β on a noisy 2+5+2 device, compared with the exact (implicit) gradient.
2. Training with two virtual chips in parallel (mini-batch 2, one vectorised solve per
   phase), interrupted after 3 epochs and resumed from the saved LoopState: the resumed run
   ends on exactly the parameters of an uninterrupted run.
"""

import asyncio

import numpy as np

from phasegrad_hw.backends.simulated import SimulatedBatch, SimulatedDeviceModel, SimulatedSubstrate
from phasegrad_hw.learning.controller import EPConfig, EPController, Parameters, Sample
from phasegrad_hw.learning.ep import EPRule
from phasegrad_hw.learning.loop import LoopObserver, LoopOptions, LoopState, train_on_substrates
from phasegrad_hw.learning.tasks import Dataset, Encoding
from phasegrad_hw.physics.gradients import cosine


def vowel_device(noise_rad: float) -> SimulatedDeviceModel:
    """2+5+2 topology (inputs 0, 1; hidden 2–6 chained; outputs 7, 8), published K ranges."""
    rng = np.random.default_rng(3)
    layer = [(i, h) for i in (0, 1) for h in range(2, 7)] + [
        (h, o) for h in range(2, 7) for o in (7, 8)
    ]
    chain = [(h, h + 1) for h in range(2, 6)]
    k = np.r_[2 * rng.uniform(0.5, 1.5, len(layer)), 2 * rng.uniform(0.5, 1.0, len(chain))]
    return SimulatedDeviceModel.model_validate(
        {
            "backend": "simulated",
            "n_oscillators": 9,
            "readout_noise_rad": noise_rad,
            "edges": [
                {"i": i, "j": j, "k": float(v)} for (i, j), v in zip(layer + chain, k, strict=True)
            ],
            "roles": {
                "inputs": [0, 1],
                "hidden": [2, 3, 4, 5, 6],
                "outputs": [7, 8],
                "reference": 0,
            },
        }
    )


def tiny_device(noise_rad: float) -> SimulatedDeviceModel:
    """5 oscillators: inputs 0 (reference), 1; hidden 2; outputs 3, 4."""
    edges = [(0, 2, 1.0), (1, 2, 1.0), (2, 3, 1.0), (2, 4, 1.0), (1, 4, 2.0), (0, 3, 2.0)]
    return SimulatedDeviceModel.model_validate(
        {
            "backend": "simulated",
            "n_oscillators": 5,
            "readout_noise_rad": noise_rad,
            "edges": [{"i": i, "j": j, "k": k} for i, j, k in edges],
            "roles": {"inputs": [0, 1], "hidden": [2], "outputs": [3, 4], "reference": 0},
        }
    )


def two_blobs(n_train: int = 40, n_test: int = 20) -> Dataset:
    rng = np.random.default_rng(0)
    y = np.arange(n_train + n_test) % 2
    x = np.array([[-0.6, 0.6], [0.6, -0.6]])[y] + 0.35 * rng.standard_normal((len(y), 2))
    lo, hi = x[:n_train].min(axis=0), x[:n_train].max(axis=0)
    x = 2 * (x - lo) / (hi - lo) - 1
    return Dataset("blobs", ("a", "b"), x[:n_train], y[:n_train], x[n_train:], y[n_train:])


async def gradient_under_noise() -> tuple[float, float]:
    sigma, beta = 0.01, 0.05
    m = vowel_device(sigma)
    w = np.r_[0.0, 0.0, np.random.default_rng(4).uniform(-0.3, 0.3, 7)]
    p = Parameters(w, m.coupling_values())
    x, t = np.array([1.5, -1.5]), np.array([-0.8, 0.8])
    exact = SimulatedSubstrate(vowel_device(0.0))
    await exact.set_frequencies(np.r_[x, w[2:]])
    g = exact.exact_gradient(t)
    g[:2] = 0.0  # inputs do not learn
    out = []
    for cfg in (
        EPConfig(rule=EPRule(beta=beta, lr_omega=0.0)),
        EPConfig(rule=EPRule(beta=10 * beta, mode="centred", lr_omega=0.0)),
    ):
        ctl = EPController([SimulatedSubstrate(m, seed=1)], cfg, p)
        cos = []
        for _ in range(100):  # lr = 0: the same state measured again and again
            rep = await ctl.step([Sample(x, t)])
            assert rep.grad_omega is not None
            cos.append(float(cosine(rep.grad_omega, g)))
        mode, b = cfg.rule.mode, cfg.rule.beta
        # noise per channel √2·σ/β one-sided, σ/(√2·β) centred
        noise = (np.sqrt(2) if mode == "one_sided" else 1 / np.sqrt(2)) * sigma / b
        print(
            f"{mode:9s} β = {b:4.2f}: predicted noise {noise:.3f}/channel, "
            f"mean cosine to exact gradient {np.mean(cos):.3f}"
        )
        out.append(float(np.mean(cos)))
    return out[0], out[1]


async def train_and_resume() -> None:
    m = tiny_device(0.01)
    data, enc = two_blobs(), Encoding()
    cfg = EPConfig(rule=EPRule(beta=0.2, mode="centred", lr_omega=0.05))
    p0 = Parameters(np.array([0.0, 0.0, 0.0, -0.6, 0.6]), m.coupling_values())
    saved: dict[int, LoopState] = {}

    class Keep(LoopObserver):
        """Keeps every epoch's state (what a run store would checkpoint)."""

        def on_epoch_end(self, state: LoopState) -> None:
            saved[state.epoch] = state

    before = await train_on_substrates(
        SimulatedBatch(m, 2).chips, data, enc, cfg, LoopOptions(epochs=0, seed=7, params=p0)
    )
    full = await train_on_substrates(
        SimulatedBatch(m, 2).chips, data, enc, cfg, LoopOptions(6, seed=7, params=p0), [Keep()]
    )
    for h in full.state.history:
        print(
            f"epoch {h.epoch}: train {h.train_accuracy:.2f} test {h.test_accuracy:.2f} "
            f"skipped {h.skipped} ({1e3 * h.seconds:.0f} ms)"
        )
    resumed = await train_on_substrates(
        SimulatedBatch(m, 2).chips, data, enc, cfg, LoopOptions(6, seed=7, start=saved[3])
    )
    diff = np.abs(resumed.state.params.omega - full.state.params.omega).max()
    print(
        f"test accuracy {before.final_test_accuracy:.2f} -> {full.final_test_accuracy:.2f}; "
        f"resumed from epoch 3: max |Δω| = {diff:.1e}"
    )
    assert full.final_test_accuracy >= 0.9 > before.final_test_accuracy
    assert diff <= 1e-12


async def main() -> None:
    one_sided, centred = await gradient_under_noise()
    assert centred > 0.95 and centred > one_sided + 0.3
    await train_and_resume()


if __name__ == "__main__":
    asyncio.run(main())
