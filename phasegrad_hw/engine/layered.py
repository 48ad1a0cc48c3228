"""Batched equilibrium-propagation trainer for layered oscillator networks (docs/design.md §8).

Set-up: inputs as held phases φ = (π/2)·x with x scaled to [0, 1] per feature (min–max fitted
on the training split only; values outside the training range are clipped; a feature constant
on the training split sits at π/4, :func:`phase_data`), two bias
oscillators held at 0 and π/2, one hidden layer, outputs read by argmax sin θ_out, loss the
softmax cross-entropy on s·sin θ_out (:mod:`phasegrad_hw.physics.multiclass`), signed couplings.
The [0, 1] range keeps every held phase in one quadrant; an input at 0 sits at the phase of the
first bias oscillator (measured against [−1, 1]: no better, see the report of issue #12).

Per mini-batch: free states (from the feed-forward start, as in evaluation, so training and
decision see the same state; optionally warm-started from each sample's last one), nudged
states at +β and −β (centred, default; one Newton run for both,
:meth:`~phasegrad_hw.physics.layered.LayeredBatch.nudged_pair`) or +β (one-sided),
warm-started from the free state; a sample counts when all its states are stable locks and no
output moved more than ``basin_jump_rad`` (else it is skipped and counted as unlocked). The EP
gradients of the valid
samples (:func:`phasegrad_hw.physics.layered.ep_gradient`) are averaged and applied by Adam,
momentum or SGD, with separate learning rates for couplings and frequencies, decoupled weight
decay on the couplings and an exponential learning-rate decay per epoch. The nudge is the loss
force itself (``nudge="loss"``) or, as on hardware, a linear clamp toward targets derived from
the loss gradient at the free state (``nudge="clamp"``, :func:`~phasegrad_hw.physics.multiclass.
clamp_targets`).

Defaults (measured on digits, seed 0, 30 epochs, test accuracy at the best validation epoch):
loss scale s = 2 / 4 / 6 → 90.6 / 95.0 / 95.3 %; learning the frequencies as well (lr 3e-3,
s = 4) → 94.2 % with ≈ 30 unlocked samples per epoch (a hidden oscillator whose |ω_h| exceeds
its field |Z_h| for some input cannot lock), so by default ω stays 0 and the two bias
oscillators carry the biases; β = 0.02 centred, Adam lr 3e-3 × 0.93 per epoch, batch 32,
init K ~ N(0, 1/fan_in), 40 epochs (5 seeds, before constant features moved to π/4: 30 epochs
gave 93.9–96.7 %, mean 95.8 %; 40 epochs 94.2–96.7 %, mean 95.7 %; with the shared split of
``train --task digits``, seeds 0–4: 95.3 / 95.3 / 96.4 / 95.0 / 95.6 %, mean 95.5 %,
benchmarks/bench_layered.py --train / --train-cli).

Locking safeguards (after every update, documented choice):

* frequency bound — each free oscillator keeps |ω_f| <= ``omega_lock_frac``·Σ_j |K_fj| (locking
  needs the detuning below the total coupling that can pull it; an oscillator beyond that
  bound cannot lock for any input);
* held-link projection — a held oscillator follows its injection of strength
  ``injection_strength`` only while the pull of the oscillators coupled to it is smaller:
  Σ_f |K_xf| <= ``held_load_frac``·``injection_strength`` (its phase error from the back-action
  is then below arcsin(held_load_frac)); a held oscillator whose load exceeds the bound has all
  its couplings scaled down to it. With the defaults the bound rarely binds on the digits task.

Unlocked samples are reported per epoch; an epoch in which no training sample locks raises
:class:`NoLockError`. Data split (:func:`phasegrad_hw.learning.tasks.split_fixed`, the one
used by ``train --task digits``): scikit-learn ``load_digits`` (1 797 8×8 images, no
download), 80/20 stratified train/test split with a fixed ``random_state`` (0) shared by every
seed; the validation split (``val_fraction`` of the training split, stratified) depends on the
seed. A device file with held inputs gives the network, bias phases, injection strength and
coupling limits (:func:`layered_from_device`; updates are clipped to the limits). The best
epoch by validation accuracy is kept (the last one without a validation split).
Seeds: one integer drives the couplings' initialisation, the validation split and the sample
order (numpy ``default_rng`` streams [seed, k]).
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
from numpy.typing import NDArray
from pydantic import Field

from phasegrad_hw.config import StrictModel
from phasegrad_hw.device.model import DeviceModel
from phasegrad_hw.learning import tasks
from phasegrad_hw.learning.tasks import Dataset
from phasegrad_hw.physics.coupling import Array, wrap
from phasegrad_hw.physics.layered import (
    LayeredBatch,
    LayeredNetwork,
    ep_gradient,
    solve_layered,
)
from phasegrad_hw.physics.multiclass import OutputLoss, SoftmaxCE, clamp_targets, decide

log = logging.getLogger(__name__)
IntArray = NDArray[np.int64]

INIT_STREAM, ORDER_STREAM = 1, 3  # numpy streams [seed, k] (validation split: tasks, 2)


class NoLockError(RuntimeError):
    """No training sample of an epoch reached a stable lock: training cannot continue."""


class LayeredConfig(StrictModel):
    """Hyper-parameters of :func:`train_layered` (defaults tuned on digits, see module doc)."""

    hidden: int = Field(default=64, ge=1)
    epochs: int = Field(default=40, ge=0, le=10_000)
    batch_size: int = Field(default=32, ge=1)
    beta: float = Field(default=0.02, gt=0.0, le=10.0)  # nudge strength (model units)
    mode: Literal["centred", "one_sided"] = "centred"
    nudge: Literal["loss", "clamp"] = "loss"
    loss_scale: float = Field(default=6.0, gt=0.0)  # s in softmax(s·sin θ_out)
    optimizer: Literal["adam", "momentum", "sgd"] = "adam"
    lr_k: float = Field(default=3e-3, ge=0.0)  # coupling learning rate
    lr_omega: float = Field(default=0.0, ge=0.0)  # frequency learning rate (0: ω stays 0)
    lr_decay: float = Field(default=0.93, gt=0.0, le=1.0)  # factor per epoch
    momentum: float = Field(default=0.9, ge=0.0, lt=1.0)
    adam_b1: float = Field(default=0.9, ge=0.0, lt=1.0)
    adam_b2: float = Field(default=0.999, ge=0.0, lt=1.0)
    adam_eps: float = Field(default=1e-8, gt=0.0)
    weight_decay: float = Field(default=0.0, ge=0.0)  # decoupled, on couplings
    init_scale: float = Field(default=1.0, gt=0.0)  # K ~ N(0, (init_scale/√fan_in)²)
    val_fraction: float = Field(default=0.1, ge=0.0, lt=1.0)
    basin_jump_rad: float = Field(default=1.0, gt=0.0)
    omega_lock_frac: float = Field(default=0.9, gt=0.0, le=1.0)
    injection_strength: float = Field(default=20.0, gt=0.0)  # held oscillators' injection
    held_load_frac: float = Field(default=0.5, gt=0.0, lt=1.0)
    warm_start: bool = False  # free states from each sample's last one (else feed-forward)
    eval_batch: int = Field(default=512, ge=1)
    seed: int = 0


@dataclass(frozen=True)
class Split:
    """Held-phase inputs (rad) and labels of one split."""

    phases: Array  # (n, n_in)
    labels: IntArray  # (n,)


@dataclass(frozen=True)
class DigitsData:
    train: Split
    val: Split
    test: Split


def phase_data(
    ds: Dataset, phase_range_rad: tuple[float, float] = (0.0, math.pi / 2)
) -> DigitsData:
    """A task's splits as held phases: x ∈ [−1, 1] → φ = lo + (hi − lo)·clip((x + 1)/2, 0, 1)
    (the phase encoding of :meth:`phasegrad_hw.device.model.DeviceModel.input_phases`)."""
    lo, hi = phase_range_rad

    def enc(x: Array, lab: NDArray[np.int64]) -> Split:
        u = np.clip(0.5 * (x + 1.0), 0.0, 1.0)
        return Split(lo + (hi - lo) * u, np.asarray(lab, dtype=np.int64))

    n_in = ds.x_train.shape[1]
    x_val = ds.x_val if ds.x_val.size else np.zeros((0, n_in))
    return DigitsData(enc(ds.x_train, ds.y_train), enc(x_val, ds.y_val), enc(ds.x_test, ds.y_test))


def digits_data(seed: int = 0, val_fraction: float = 0.1) -> DigitsData:
    """scikit-learn digits (:func:`phasegrad_hw.learning.tasks.digits`: fixed train/test
    split, seed-dependent validation split) as held phases in [0, π/2]."""
    return phase_data(tasks.digits(seed=seed, val_fraction=val_fraction))


def init_params(net: LayeredNetwork, init_scale: float, seed: int) -> tuple[Array, Array]:
    """(ω, K): ω = 0, K per block ~ N(0, (init_scale/√fan_in)²), fan_in = inputs of a row."""
    rng = np.random.default_rng([seed, INIT_STREAM])
    K = np.empty(net.n_edges)
    fan_in = np.zeros(net.n)
    for b in net.blocks:
        fan_in[b.rows] += b.cols.size
    for b in net.blocks:
        n = b.rows.size * b.cols.size
        std = init_scale / np.sqrt(fan_in[b.rows])
        K[b.start : b.stop] = (
            rng.standard_normal(n).reshape(b.rows.size, -1) * std[:, None]
        ).ravel()
    return np.zeros(net.n_free), K


def project_locking(
    net: LayeredNetwork,
    omega: Array,
    K: Array,
    omega_lock_frac: float,
    injection_strength: float,
    held_load_frac: float,
) -> tuple[Array, Array, int, int]:
    """Apply the two locking safeguards (module doc); returns (ω, K, #ω clipped, #held scaled)."""
    i, j = net.edges[:, 0], net.edges[:, 1]
    a = np.abs(K)
    load = np.zeros(net.n)
    np.add.at(load, j, a)  # held oscillators are always the lower end of their edges
    cap = held_load_frac * injection_strength
    over = np.flatnonzero(load[net.held] > cap)
    if over.size:
        factor = np.ones(net.n)
        factor[net.held[over]] = cap / load[net.held[over]]
        K = K * factor[j]
        a = np.abs(K)
    rowsum = np.zeros(net.n)
    np.add.at(rowsum, i, a)
    np.add.at(rowsum, j, a)
    bound = omega_lock_frac * rowsum[net.n_held :]
    clipped = int((np.abs(omega) > bound).sum())
    return np.clip(omega, -bound, bound), K, clipped, int(over.size)


@dataclass(frozen=True)
class LayeredDevice:
    """A layered held-input device file read as a :class:`LayeredNetwork`.

    ``order`` (n,) maps network oscillator → device oscillator; ``edge_of`` (n_edges,) maps
    network edge → device edge; ``k_lo``, ``k_hi`` the coupling limits (network edge order,
    model units: [−max, max] on invertible edges, [min, max] else); ``injection`` the held
    oscillators' injection strength (``held_injection``); ``K`` the file's couplings.
    """

    model: DeviceModel
    net: LayeredNetwork
    order: IntArray
    edge_of: IntArray
    k_lo: Array
    k_hi: Array
    injection: float
    K: Array


def is_layered_device(model: DeviceModel) -> bool:
    """Does ``model`` describe a layered network with held (phase-encoded) inputs?"""
    return model.input_encoding == "phase"


def layered_from_device(model: DeviceModel) -> LayeredDevice:
    """Read a device with held inputs as a layered network (docs/design.md §8).

    The roles give the layers: held inputs, bias oscillators (held at ``bias_phases_rad``),
    one hidden layer, outputs; every oscillator must have one of these roles and the edges
    must be exactly held → hidden, hidden → output and bias → output. A :class:`ValueError`
    names the first mismatch.
    """
    r = model.roles
    if not is_layered_device(model):
        raise ValueError(f'{model.name}: input_encoding = "{model.input_encoding}"; a layered '
                         'network needs held inputs (input_encoding = "phase")')  # fmt: skip
    net = LayeredNetwork(
        len(r.held), (len(r.hidden),), len(r.outputs), tuple(model.bias_phases_rad)
    )
    order = np.array([*r.held, *r.bias, *r.hidden, *r.outputs], dtype=np.int64)
    if order.size != model.n:
        missing = sorted(set(range(model.n)) - set(order.tolist()))[:8]
        raise ValueError(
            f"roles: oscillators {missing} have no role; a layered device assigns every "
            "oscillator to held, bias, hidden or outputs"
        )
    pos = np.empty(model.n, dtype=np.int64)
    pos[order] = np.arange(model.n)
    slot = {(int(a), int(b)): e for e, (a, b) in enumerate(net.edges)}
    edge_of = np.full(net.n_edges, -1, dtype=np.int64)
    for d, e in enumerate(model.edges):
        a, b = int(pos[e.i]), int(pos[e.j])
        k = slot.get((a, b), slot.get((b, a)))
        if k is None:
            raise ValueError(
                f"edges[{d}]: {e.i}–{e.j} does not join held → hidden, hidden → output or "
                "bias → output; a layered device has no other couplings"
            )
        if e.k_ji is not None and e.k_ji != e.k:
            raise ValueError(f"edges[{d}].k_ji: {e.k_ji} — a layered device is symmetric")
        edge_of[k] = d
    if (edge_of < 0).any():
        a, b = net.edges[int(np.flatnonzero(edge_of < 0)[0])]
        raise ValueError(
            f"edges: the layered network needs the coupling {order[a]}–{order[b]}, the device "
            "file has none"
        )
    lo, hi = model.coupling_bounds()
    K = model.coupling_values()[edge_of]
    return LayeredDevice(model, net, order, edge_of, lo[edge_of], hi[edge_of],
                         model.held_injection, K)  # fmt: skip


def layered_couplings(sizes: tuple[int, int, int], n_bias: int, seed: int) -> Array:
    """Initial couplings of a new (n_in + n_bias) → hidden → n_out device, in the edge order of
    :class:`LayeredNetwork` (:func:`init_params`, init_scale 1, stream [seed, INIT_STREAM])."""
    n_in, n_h, n_out = sizes
    phases = tuple(0.5 * math.pi * k for k in range(n_bias))
    _, K = init_params(LayeredNetwork(n_in, (n_h,), n_out, phases), 1.0, seed)
    return K


class _Optimizer:
    """Adam / momentum / SGD on one parameter vector with its own learning rate."""

    def __init__(self, cfg: LayeredConfig, size: int) -> None:
        self.cfg = cfg
        self.m = np.zeros(size)
        self.v = np.zeros(size)
        self.t = 0

    def step(self, g: Array, lr: float) -> Array:
        c = self.cfg
        if c.optimizer == "sgd":
            return lr * g
        if c.optimizer == "momentum":
            self.m = c.momentum * self.m + g
            return lr * self.m
        self.t += 1
        self.m = c.adam_b1 * self.m + (1 - c.adam_b1) * g
        self.v = c.adam_b2 * self.v + (1 - c.adam_b2) * g * g
        mh = self.m / (1 - c.adam_b1**self.t)
        vh = self.v / (1 - c.adam_b2**self.t)
        out: Array = lr * mh / (np.sqrt(vh) + c.adam_eps)
        return out


@dataclass
class EpochRecord:
    epoch: int
    train_loss: float  # mean loss of the locked training samples at their free states
    unlocked: int  # training samples skipped (no stable lock, or a basin jump)
    val_accuracy: float
    test_accuracy: float
    cpu_s: float  # process time of the training pass (not the evaluation)
    wall_s: float
    lr_k: float


@dataclass
class LayeredRun:
    """Result of :func:`train_layered`: the kept parameters and the per-epoch history."""

    net: LayeredNetwork
    config: LayeredConfig
    omega: Array
    K: Array
    best_epoch: int
    test_accuracy: float  # at the kept parameters
    val_accuracy: float
    history: list[EpochRecord] = field(default_factory=list)


def predict(
    net: LayeredNetwork, omega: Array, K: Array, phases: Array, batch: int = 512
) -> tuple[IntArray, NDArray[np.bool_]]:
    """(decision, locked) per sample: free states from the feed-forward start."""
    pred = np.empty(phases.shape[0], dtype=np.int64)
    ok = np.empty(phases.shape[0], dtype=bool)
    for s in range(0, phases.shape[0], batch):
        eq = solve_layered(net, omega, K, phases[s : s + batch])
        pred[s : s + batch] = decide(eq.theta[:, net.outputs])
        ok[s : s + batch] = eq.ok
    return pred, ok


def accuracy(net: LayeredNetwork, omega: Array, K: Array, split: Split, batch: int = 512) -> float:
    """Fraction of samples decided correctly (a sample that does not lock counts as wrong)."""
    if split.labels.size == 0:
        return float("nan")
    pred, ok = predict(net, omega, K, split.phases, batch)
    return float(np.mean((pred == split.labels) & ok))


def train_layered(
    cfg: LayeredConfig, data: DigitsData | None = None, device: LayeredDevice | None = None
) -> LayeredRun:
    """Train a (n_in + 2 bias) → hidden → 10 network on ``data`` (digits by default).

    With ``device`` the network is the device's (its held inputs, bias phases and layer
    sizes; ``cfg.hidden`` and ``cfg.injection_strength`` must match it), and every update is
    clipped to the device's coupling limits; the initial couplings are drawn from
    ``cfg.seed`` as without a device.
    """
    d = data if data is not None else digits_data(cfg.seed, cfg.val_fraction)
    trainer = _Trainer(cfg, d, device)
    net = trainer.net
    has_val = d.val.labels.size > 0
    best = (-1.0, -1, trainer.omega.copy(), trainer.K.copy())
    history: list[EpochRecord] = []
    for epoch in range(cfg.epochs):
        rec = trainer.epoch(epoch)
        w, K = trainer.omega, trainer.K
        rec.val_accuracy = accuracy(net, w, K, d.val, cfg.eval_batch) if has_val else math.nan
        rec.test_accuracy = accuracy(net, w, K, d.test, cfg.eval_batch)
        history.append(rec)
        log.info(
            "epoch %d loss %.4f unlocked %d val %.4f test %.4f cpu %.2fs wall %.2fs",
            epoch, rec.train_loss, rec.unlocked, rec.val_accuracy, rec.test_accuracy, rec.cpu_s,
            rec.wall_s,
        )  # fmt: skip
        score = rec.val_accuracy if has_val else float(epoch)
        if score >= best[0]:
            best = (score, epoch, w.copy(), K.copy())
    _, best_epoch, w_best, k_best = best
    if best_epoch < 0:
        w_best, k_best = trainer.omega, trainer.K
        test_acc = accuracy(net, w_best, k_best, d.test, cfg.eval_batch)
        return LayeredRun(net, cfg, w_best, k_best, best_epoch, test_acc, math.nan, history)
    rec_best = history[best_epoch]
    return LayeredRun(
        net, cfg, w_best, k_best, best_epoch, rec_best.test_accuracy, rec_best.val_accuracy, history
    )


def _network(
    cfg: LayeredConfig, d: DigitsData, device: LayeredDevice | None
) -> tuple[LayeredNetwork, Array, Array]:
    """The network to train and its coupling limits (network edge order)."""
    n_out = int(max(d.train.labels.max(), d.test.labels.max())) + 1
    if device is None:
        net = LayeredNetwork(d.train.phases.shape[1], (cfg.hidden,), n_out)
        return net, np.full(net.n_edges, -np.inf), np.full(net.n_edges, np.inf)
    net = device.net
    if (net.hidden[0], cfg.injection_strength) != (cfg.hidden, device.injection):
        raise ValueError(
            f"cfg: hidden {cfg.hidden}, injection_strength {cfg.injection_strength} do "
            f"not match the device ({net.hidden[0]}, {device.injection})"
        )
    if d.train.phases.shape[1] != net.n_in or n_out > net.n_out:
        raise ValueError(
            f"data: {d.train.phases.shape[1]} inputs, {n_out} classes do not fit the "
            f"device ({net.n_in} held inputs, {net.n_out} outputs)"
        )
    return net, device.k_lo, device.k_hi


class _Trainer:
    """Parameters, optimiser state and warm-start cache of one :func:`train_layered` run."""

    def __init__(self, cfg: LayeredConfig, d: DigitsData, device: LayeredDevice | None) -> None:
        self.cfg, self.train = cfg, d.train
        self.net, self.k_lo, self.k_hi = _network(cfg, d, device)
        omega, K = init_params(self.net, cfg.init_scale, cfg.seed)
        self.omega, self.K = omega, np.clip(K, self.k_lo, self.k_hi)
        self.opt_w, self.opt_k = _Optimizer(cfg, omega.size), _Optimizer(cfg, K.size)
        n_train = d.train.labels.size
        self.cache = np.zeros((n_train, self.net.n))  # warm starts: each sample's last free state

    def epoch(self, epoch: int) -> EpochRecord:
        """One pass over the training split in mini-batches (accuracies left NaN)."""
        cfg = self.cfg
        lr_k = cfg.lr_k * cfg.lr_decay**epoch
        lr_w = cfg.lr_omega * cfg.lr_decay**epoch
        n_train = self.train.labels.size
        order = np.random.default_rng([cfg.seed, ORDER_STREAM, epoch]).permutation(n_train)
        t_cpu, t_wall = time.process_time(), time.perf_counter()
        unlocked, loss_sum, n_ok = 0, 0.0, 0
        for s in range(0, n_train, cfg.batch_size):
            ok, loss = self.step(order[s : s + cfg.batch_size], lr_k, lr_w)
            unlocked += ok.size - int(ok.sum())
            n_ok += int(ok.sum())
            loss_sum += loss
        cpu, wall = time.process_time() - t_cpu, time.perf_counter() - t_wall
        if n_ok == 0:
            raise NoLockError(
                f"epoch {epoch}: none of {n_train} training samples gave stable free and nudged "
                f"locks without a basin jump (β={cfg.beta}, lr_k={lr_k:.3g}, basin_jump_rad="
                f"{cfg.basin_jump_rad}); lower the learning rates, β or init_scale"
            )
        return EpochRecord(epoch, loss_sum / n_ok, unlocked, math.nan, math.nan, cpu, wall, lr_k)

    def step(self, idx: IntArray, lr_k: float, lr_w: float) -> tuple[NDArray[np.bool_], float]:
        """Free and nudged states of the samples ``idx``, EP gradient, one update; returns
        (valid per sample, summed loss of the valid samples at their free states)."""
        cfg, net = self.cfg, self.net
        x, y = self.train.phases[idx], self.train.labels[idx]
        batch = LayeredBatch(net, self.omega, self.K, x)
        if cfg.warm_start:
            free = batch.solve(theta0=self.cache[idx])
            self.cache[idx] = np.where(free.ok[:, None], free.theta, 0.0)
        else:
            free = batch.solve()
        ce = SoftmaxCE(y, cfg.loss_scale)
        th_out = free.theta[:, net.outputs]
        nud: OutputLoss = clamp_targets(th_out, ce.grad(th_out)) if cfg.nudge == "clamp" else ce
        if cfg.mode == "centred":
            plus, other = batch.nudged_pair(free.theta, nud, cfg.beta)
            span = 2.0 * cfg.beta
        else:
            plus = batch.solve(theta0=free.theta, loss=nud, beta=cfg.beta)
            other, span = free, cfg.beta
        jump = np.maximum(
            np.abs(wrap(plus.theta[:, net.outputs] - th_out)).max(axis=1),
            np.abs(wrap(other.theta[:, net.outputs] - th_out)).max(axis=1),
        )
        valid = free.ok & plus.ok & other.ok & (jump < cfg.basin_jump_rad)
        if not valid.any():
            return valid, 0.0
        g_w, g_k = ep_gradient(net, plus.theta[valid], other.theta[valid], span)
        self.omega = self.omega - self.opt_w.step(g_w.mean(axis=0), lr_w)
        K = self.K - self.opt_k.step(g_k.mean(axis=0), lr_k) - lr_k * cfg.weight_decay * self.K
        K = np.clip(K, self.k_lo, self.k_hi)
        self.omega, self.K, _, _ = project_locking(
            net, self.omega, K, cfg.omega_lock_frac, cfg.injection_strength, cfg.held_load_frac
        )
        return valid, float(ce.value(th_out)[valid].sum())
