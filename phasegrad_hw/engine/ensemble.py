"""Vectorised equilibrium-propagation training engine on the physics (no device, no asyncio).

Many independent networks ("members": one seed each, with its own couplings K, frequencies
ω, learnable subset and sample order) are trained in lockstep: every training step solves
the free and the nudged locked states of all members in one batched call of the physics
retry ladder (:func:`phasegrad_hw.physics.ladder.solve_locked`). Each member's arithmetic is
row-wise independent, so an ensemble gives the same parameters as running its members one by one
(tested to 1e-12).

Update rule (the published online SGD of arXiv 2604.10272, and the hardware loop's rule):
per sample, free state θ* (warm-started from the member's previous free state), clamp the
outputs toward the encoding's targets with a linear nudge of strength β, nudged state θ^β
(warm-started from θ*), wrapped displacement d = wrap(θ^β − θ*);
g_ω = −d/β (reference entry 0), g_K,ij = [V(Δ^β_ij) − V(Δ*_ij)]/β with V' = H (for H = sin:
[cos Δ* − cos Δ^β]/β); centred mode uses ±β and divides by 2β. A sample whose free or nudged
state is not a stable lock, or whose displacement exceeds ``basin_jump_rad`` on any channel,
is skipped and counted. Gradients of the valid samples of a step are averaged, clipped
element-wise to ±clip, and applied to the learnable entries:
ω ← clip(ω − lr_ω g_ω, ω-limits), K ← clip(K − lr_K g_K, K-limits) on existing edges.
Sample order of epoch e: ``np.random.default_rng([seed, e]).permutation(n_train)``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
from numpy.typing import NDArray
from pydantic import Field

from phasegrad_hw.config import StrictModel
from phasegrad_hw.device.model import DeviceModel
from phasegrad_hw.learning.seeding import Init, initial_omega
from phasegrad_hw.learning.tasks import Dataset, Encoding
from phasegrad_hw.physics import centred, wrap
from phasegrad_hw.physics.edge import EdgeNetwork
from phasegrad_hw.physics.ladder import Nudge, solve_locked

log = logging.getLogger(__name__)
Array = NDArray[np.float64]
ParamSet = Literal["omega", "K", "both", "K7"]
TOPOLOGY_STREAM = 0x7090  # rng stream (with the seed) that draws a member's couplings
EDGE_STREAM = 0xED6E  # rng stream that picks the K7 edge subset


class TrainConfig(StrictModel):
    """Training hyper-parameters (defaults: the published vowel setting, DESIGN.md §2)."""

    epochs: int = Field(default=200, ge=0, le=100_000)
    beta: float = Field(default=0.1, gt=0.0, le=10.0)  # nudge strength (model units)
    mode: Literal["one_sided", "centred"] = "one_sided"
    lr_omega: float = Field(default=1e-3, ge=0.0)
    lr_k: float = Field(default=1e-3, ge=0.0)
    params: ParamSet = "omega"
    k_subset: int = Field(default=7, ge=1)  # number of random learnable edges for params=K7
    init: Init = "random"
    clip: float = Field(default=2.0, gt=0.0)  # element-wise gradient clip
    batch_size: int = Field(default=1, ge=1)  # 1 = online SGD (published)
    basin_jump_rad: float = Field(default=1.0, gt=0.0)
    test_every: int = Field(default=1, ge=1)  # evaluate the test split every n epochs (+ last)
    parallel: bool = False  # compiled engine: spread members over CPU threads (same results)


@dataclass
class Member:
    """One network of an ensemble: its seed, parameters and learnable subsets."""

    seed: int
    omega: Array  # (N,) natural frequencies (model units); input entries overwritten per sample
    coupling: Array  # (E,) couplings on the template's edges
    learn_omega: NDArray[np.bool_]  # (N,)
    learn_k: NDArray[np.bool_]  # (E,)


def learnable_masks(
    model: DeviceModel, params: ParamSet, seed: int, k_subset: int = 7
) -> tuple[NDArray[np.bool_], NDArray[np.bool_]]:
    """(ω mask, K mask) for a parameter set; K7 picks ``k_subset`` edges with the seed."""
    n, E = model.n, len(model.edges)
    lw = np.zeros(n, dtype=bool)
    lk = np.zeros(E, dtype=bool)
    if params in ("omega", "both"):
        lw[model.roles.hidden + model.roles.outputs] = True
    if params in ("K", "both"):
        lk[:] = True
    if params == "K7":
        if k_subset > E:
            raise ValueError(f"k_subset: {k_subset} exceeds the {E} edges of the device")
        pick = np.random.default_rng([seed, EDGE_STREAM]).choice(E, k_subset, replace=False)
        lk[pick] = True
    return lw, lk


def member_for_model(
    model: DeviceModel,
    seed: int,
    config: TrainConfig,
    omega: Array | None = None,
    coupling: Array | None = None,
) -> Member:
    """A member on a fixed device model: couplings from the model, ω from
    :func:`phasegrad_hw.learning.seeding.initial_omega` with ``default_rng(seed)`` (the loop's
    rule)."""
    k = model.coupling_values() if coupling is None else np.asarray(coupling, dtype=np.float64)
    w = (
        initial_omega(model, np.random.default_rng(seed), config.init, k)
        if omega is None
        else np.asarray(omega, dtype=np.float64).copy()
    )
    lw, lk = learnable_masks(model, config.params, seed, config.k_subset)
    return Member(seed, w, k.copy(), lw, lk)


def members_from_builder(
    builder: Callable[[np.random.Generator], DeviceModel], seeds: Sequence[int], config: TrainConfig
) -> tuple[DeviceModel, list[Member]]:
    """One member per seed, each with its own couplings drawn by ``builder`` from
    ``default_rng([seed, TOPOLOGY_STREAM])``; returns (template model, members)."""
    members: list[Member] = []
    template: DeviceModel | None = None
    for s in seeds:
        model = builder(np.random.default_rng([s, TOPOLOGY_STREAM]))
        if template is None:
            template = model
        elif model.edge_index.tolist() != template.edge_index.tolist():
            raise ValueError("builder: members must share one topology")
        members.append(member_for_model(model, s, config))
    if template is None:
        raise ValueError("seeds: at least one seed is required")
    return template, members


@dataclass
class EpochSummary:
    """Per-epoch summary over the ensemble (arrays have one entry per member)."""

    epoch: int  # 1-based count of completed epochs
    train_accuracy: Array  # running accuracy of the free states seen during the epoch
    test_accuracy: Array | None  # None when the test split was not evaluated this epoch
    skipped: NDArray[np.int64]  # skipped samples this epoch
    seconds: float


@dataclass
class EnsembleResult:
    """Trained parameters and accuracies of an ensemble run."""

    seeds: list[int]
    omega: Array  # (B, N)
    coupling: Array  # (B, E)
    test_out: Array  # (B, n_test, n_out) final free output phases (NaN where not locked)
    test_accuracy: Array  # (B,) under the training encoding's readout
    history: list[EpochSummary]
    skipped_unlocked: NDArray[np.int64]  # (B,)
    skipped_basin_jump: NDArray[np.int64]  # (B,)
    seconds: float
    steps: int = 0
    extra: dict[str, float] = field(default_factory=dict)

    @property
    def skipped(self) -> NDArray[np.int64]:
        return self.skipped_unlocked + self.skipped_basin_jump

    def accuracy(self, encoding: Encoding, y_test: NDArray[np.int64]) -> Array:
        """(B,) test accuracy of the final networks under any readout of ``encoding``."""
        return accuracy_from_outputs(self.test_out, y_test, encoding)


def accuracy_from_outputs(out: Array, y: NDArray[np.int64], encoding: Encoding) -> Array:
    """Accuracy per member; unlocked samples (NaN phases) count as wrong."""
    bad = ~np.all(np.isfinite(out), axis=-1)
    pred = encoding.predict(np.where(bad[..., None], 0.0, out))
    right = (pred == y) & ~bad
    return np.asarray(right.mean(axis=-1), dtype=np.float64)


def _load_kernels() -> Any:
    """The numba kernels module, or None when numba is not installed."""
    try:
        from phasegrad_hw.engine import _kernels as _training_numba
    except ImportError:
        return None
    return _training_numba


class Ensemble:
    """Lockstep trainer for members sharing one topology (``template``)."""

    def __init__(
        self,
        template: DeviceModel,
        members: Sequence[Member],
        dataset: Dataset,
        encoding: Encoding,
        config: TrainConfig,
        *,
        compiled: bool | None = None,
    ) -> None:
        if not members:
            raise ValueError("members: at least one member is required")
        if template.nudge != "linear":
            raise ValueError(
                f"nudge: the engine implements the linear nudge; device has {template.nudge!r}"
            )
        r = template.roles
        if len(r.inputs) != dataset.n_features:
            raise ValueError(
                f"dataset {dataset.name}: {dataset.n_features} features but the device has "
                f"{len(r.inputs)} input oscillators"
            )
        if len(r.outputs) != dataset.n_classes:
            raise ValueError(
                f"dataset {dataset.name}: {dataset.n_classes} classes but the device has "
                f"{len(r.outputs)} outputs"
            )
        self.model = template
        self.members = list(members)
        self.data = dataset
        self.enc = encoding
        self.cfg = config
        self.H = template.coupling()
        self.n = template.n
        self.ref = r.reference
        self.inputs = np.asarray(r.inputs, dtype=np.int64)
        self.outputs = np.asarray(r.outputs, dtype=np.int64)
        self.edges = template.edge_index
        self.omega = np.stack([m.omega for m in members]).astype(np.float64)
        self.coupling = np.stack([m.coupling for m in members]).astype(np.float64)
        self.learn_w = np.stack([m.learn_omega for m in members])
        self.learn_k = np.stack([m.learn_k for m in members])
        self.seeds = [m.seed for m in members]
        B = len(members)
        self.theta_prev = np.zeros((B, self.n))
        # compiled path: warm start from the member's free state for the same sample in the
        # previous epoch (parameters move little per epoch), else from the last free state
        self._cache = np.full((B, len(dataset.y_train), self.n), np.nan)
        self._xin: Array | None = None
        self._edges = EdgeNetwork(self.n, self.edges[:, 0], self.edges[:, 1], self.ref)
        self.unlocked = np.zeros(B, dtype=np.int64)
        self.jumps = np.zeros(B, dtype=np.int64)
        self.steps = 0
        lim = template.limits
        self.w_lo, self.w_hi = lim.omega.min, lim.omega.max
        self.k_lo, self.k_hi = lim.coupling.min, lim.coupling.max
        # compiled kernels (numba, optional) for the plain-sine, one-sided online case
        self._kernels = None
        self._tmode = (
            {"quadratic": 1, "hinge": 2}[encoding.difference_loss]
            if encoding.readout == "difference"
            else 0
        )
        self._table = encoding.templates(len(r.outputs))
        eligible = self.H.harmonics == (1.0,) and self.H.is_odd and config.mode == "one_sided"
        if eligible and compiled is not False:
            self._kernels = _load_kernels()
            if compiled and self._kernels is None:
                raise ValueError("compiled: True needs numba (pip install 'phasegrad-hw[fast]')")

    # -- physics helpers ------------------------------------------------------------
    def K_matrix(self, coupling: Array) -> Array:
        """(B, N, N) symmetric coupling matrices from (B, E) edge values."""
        return self._edges.dense(coupling)

    def solve(
        self, W: Array, k: Array, theta0: Array, target: Array | None = None, direction: int = 1
    ) -> tuple[Array, NDArray[np.bool_]]:
        """Locked states (M, N) and ok flags (M,) for frequencies W (M, N), couplings k (M, E).

        The physics retry ladder (:func:`phasegrad_hw.physics.ladder.solve_locked`): the fast
        undamped edge Newton from the warm start, then damped Newton warm, then cold, with
        stability checked on every result. ``target`` (M, N) with nudge β on the outputs,
        ``direction`` ±1 as in :func:`~phasegrad_hw.physics.solve_equilibrium`.
        """
        nudge = None
        if target is not None:
            beta = np.zeros((len(W), self.n))
            beta[:, self.outputs] = self.cfg.beta
            nudge = Nudge(beta, target, "linear", direction)
        res = solve_locked(
            centred(W), theta0, self.H, edges=self._edges, k=k, ref=self.ref, nudge=nudge
        )
        return res.theta, res.ok

    def _frequencies(self, x: Array, omega: Array | None = None) -> Array:
        """(B, m, N) frequencies for inputs x (B, m, d)."""
        om = self.omega if omega is None else omega
        W = np.repeat(om[:, None, :], x.shape[1], axis=1)
        W[..., self.inputs] = self.enc.input_frequencies(x)
        return W

    def free_outputs(self, x: Array, theta0: Array | None = None) -> Array:
        """(B, m, n_out) free output phases for inputs x (B, m, d); NaN where not locked."""
        B, m, _ = x.shape
        W = self._frequencies(x).reshape(B * m, self.n)
        k = np.repeat(self.coupling, m, axis=0)
        th0 = np.zeros((B * m, self.n)) if theta0 is None else np.repeat(theta0, m, axis=0)
        if self._kernels is not None:
            th, ok = self._kernels.solve_many(
                W, k, th0, self.edges[:, 0], self.edges[:, 1], self.ref
            )
            bad = np.flatnonzero(~ok)
            if bad.size:
                th[bad], ok[bad] = self.solve(W[bad], k[bad], th0[bad])
        else:
            th, ok = self.solve(W, k, th0)
        out = th[:, self.outputs].copy()
        out[~ok] = np.nan
        return out.reshape(B, m, -1)

    # -- training -------------------------------------------------------------------
    def step(self, idx: NDArray[np.int64]) -> tuple[Array, NDArray[np.bool_]]:
        """One update of every member from training samples ``idx`` (B, m).

        Returns the free output phases (B, m, n_out) and the validity mask (B, m).
        """
        self.steps += 1
        B, m = idx.shape
        if self._kernels is None or m != 1:
            return self._step_rows(idx, np.arange(B))
        K = self._kernels
        x = self.enc.input_frequencies(self.data.x_train[idx[:, 0]])
        y = self.data.y_train[idx[:, 0]]
        free_out = np.full((B, len(self.outputs)), np.nan)
        status = np.zeros(B, dtype=np.int64)
        members = np.arange(B)
        warm = self._cache[members, idx[:, 0]]
        miss = np.isnan(warm[:, 0])
        warm[miss] = self.theta_prev[miss]
        K.train_step(
            self.omega,
            self.coupling,
            warm,
            self.learn_w,
            self.learn_k,
            x,
            y,
            *self._kernel_constants(),
            free_out,
            status,
        )
        self.jumps += status == 2
        seen = status != 3
        self.theta_prev[seen] = warm[seen]
        self._cache[members[seen], idx[seen, 0]] = warm[seen]
        valid = status == 0
        redo = np.flatnonzero(status == 3)
        fo = free_out[:, None, :]
        vmask = valid[:, None].copy()
        if redo.size:
            f2, v2 = self._step_rows(idx[redo], redo)
            fo[redo] = f2
            vmask[redo] = v2
        return fo, vmask

    def _step_rows(
        self, idx: NDArray[np.int64], rows: NDArray[np.int64]
    ) -> tuple[Array, NDArray[np.bool_]]:
        """The numpy/physics step for members ``rows`` with samples ``idx`` (len(rows), m)."""
        cfg = self.cfg
        B, m = idx.shape
        omega, coupling = self.omega[rows], self.coupling[rows]
        x = self.data.x_train[idx]
        y = self.data.y_train[idx]
        W = self._frequencies(x, omega).reshape(B * m, self.n)
        k = np.repeat(coupling, m, axis=0)
        th0 = np.repeat(self.theta_prev[rows], m, axis=0)
        f_th, f_ok = self.solve(W, k, th0)
        out = f_th[:, self.outputs]
        tgt = np.zeros((B * m, self.n))
        tgt[:, self.outputs] = self.enc.clamp_targets(y.reshape(-1), out)
        p_th, p_ok = self.solve(W, k, f_th, tgt)
        ok = f_ok & p_ok
        d_plus = wrap(p_th - f_th)
        jump = np.abs(d_plus).max(axis=1) > cfg.basin_jump_rad
        if cfg.mode == "centred":
            m_th, m_ok = self.solve(W, k, f_th, tgt, direction=-1)
            ok &= m_ok
            d_minus = wrap(m_th - f_th)
            jump |= np.abs(d_minus).max(axis=1) > cfg.basin_jump_rad
            disp = wrap(p_th - m_th)
            lo_th, hi_th, scale = m_th, p_th, 2.0 * cfg.beta
        else:
            disp = d_plus
            lo_th, hi_th, scale = f_th, p_th, cfg.beta
        unl = ~ok
        jump &= ok
        valid = ok & ~jump
        g_w = -disp / scale
        g_w[:, self.ref] = 0.0
        i, j = self.edges[:, 0], self.edges[:, 1]
        V = self.H.potential
        g_k = (V(hi_th[:, j] - hi_th[:, i]) - V(lo_th[:, j] - lo_th[:, i])) / scale
        vmask = valid.reshape(B, m)
        cnt = vmask.sum(axis=1)
        upd = cnt > 0
        den = np.maximum(cnt, 1)[:, None].astype(np.float64)
        gw = (g_w.reshape(B, m, -1) * vmask[..., None]).sum(axis=1) / den
        gk = (g_k.reshape(B, m, -1) * vmask[..., None]).sum(axis=1) / den
        gw = np.clip(gw, -cfg.clip, cfg.clip)
        gk = np.clip(gk, -cfg.clip, cfg.clip)
        lw = self.learn_w[rows] & upd[:, None]
        lk = self.learn_k[rows] & upd[:, None]
        self.omega[rows] = np.where(
            lw, np.clip(omega - cfg.lr_omega * gw, self.w_lo, self.w_hi), omega
        )
        self.coupling[rows] = np.where(
            lk, np.clip(coupling - cfg.lr_k * gk, self.k_lo, self.k_hi), coupling
        )
        # warm start: the member's last locked free state of this step
        fth = f_th.reshape(B, m, -1)
        fok = f_ok.reshape(B, m)
        tp = self.theta_prev[rows]
        for a in range(m):
            tp = np.where(fok[:, a, None], fth[:, a], tp)
        self.theta_prev[rows] = tp
        self.unlocked[rows] += unl.reshape(B, m).sum(axis=1)
        self.jumps[rows] += jump.reshape(B, m).sum(axis=1)
        fo = out.copy()
        fo[~f_ok] = np.nan
        return fo.reshape(B, m, -1), vmask

    def test_accuracy(self) -> tuple[Array, Array]:
        """((B,) accuracy, (B, n_test, n_out) free output phases) on the test split."""
        xt = np.broadcast_to(self.data.x_test, (len(self.members), *self.data.x_test.shape))
        out = self.free_outputs(np.ascontiguousarray(xt))
        return accuracy_from_outputs(out, self.data.y_test, self.enc), out

    def _kernel_constants(self) -> tuple[Any, ...]:
        """The compiled kernels' fixed arguments, in their order: edges, roles, update rule,
        limits, target table."""
        cfg = self.cfg
        return (
            self.edges[:, 0], self.edges[:, 1], self.ref, self.inputs, self.outputs,
            cfg.beta, cfg.lr_omega, cfg.lr_k, cfg.clip, cfg.basin_jump_rad,
            self.w_lo, self.w_hi, self.k_lo, self.k_hi, self._tmode, self._table, self.enc.margin,
        )  # fmt: skip

    def _epoch_compiled(self, order: NDArray[np.int64]) -> Array:
        """One online epoch of every member in the compiled kernel; a member whose fast path
        fails finishes the epoch on the numpy/physics path. Returns free outputs (B, n, n_out)."""
        K = self._kernels
        assert K is not None
        cfg = self.cfg
        B, n = order.shape
        if self._xin is None:
            self._xin = np.ascontiguousarray(self.enc.input_frequencies(self.data.x_train))
        free_out = np.full((B, n, len(self.outputs)), np.nan)
        status = np.full((B, n), -1, dtype=np.int64)
        stop = np.empty(B, dtype=np.int64)
        fn = K.train_epoch_parallel if cfg.parallel else K.train_epoch
        fn(
            self.omega,
            self.coupling,
            self.theta_prev,
            self._cache,
            self.learn_w,
            self.learn_k,
            self._xin,
            self.data.y_train,
            np.ascontiguousarray(order),
            *self._kernel_constants(),
            free_out,
            status,
            stop,
        )
        self.jumps += (status == 2).sum(axis=1)
        self.steps += n
        for b in np.flatnonzero(stop >= 0):
            rows = np.array([b])
            for t in range(int(stop[b]), n):
                fo, _ = self._step_rows(order[b : b + 1, t : t + 1], rows)
                free_out[b, t] = fo[0, 0]
        return free_out

    def run(self, on_epoch: Callable[[EpochSummary], None] | None = None) -> EnsembleResult:
        """Train for ``config.epochs`` epochs and evaluate the final networks."""
        t0 = time.perf_counter()
        cfg = self.cfg
        B = len(self.members)
        n = len(self.data.y_train)
        history: list[EpochSummary] = []
        final = np.empty(0)
        m = cfg.batch_size
        for e in range(cfg.epochs):
            te = time.perf_counter()
            order = np.stack([np.random.default_rng([s, e]).permutation(n) for s in self.seeds])
            skipped0 = self.unlocked + self.jumps
            right = np.zeros(B)
            if self._kernels is not None and m == 1:
                fo = self._epoch_compiled(order)
                bad = ~np.all(np.isfinite(fo), axis=-1)
                pred = self.enc.predict(np.where(bad[..., None], 0.0, fo))
                right += ((pred == self.data.y_train[order]) & ~bad).sum(axis=1)
            else:
                for a in range(0, n, m):
                    idx = order[:, a : a + m]
                    fo, _ = self.step(idx)
                    bad = ~np.all(np.isfinite(fo), axis=-1)
                    pred = self.enc.predict(np.where(bad[..., None], 0.0, fo))
                    right += ((pred == self.data.y_train[idx]) & ~bad).sum(axis=1)
            test = None
            if (e + 1) % cfg.test_every == 0 or e + 1 == cfg.epochs:
                test, final = self.test_accuracy()
            summ = EpochSummary(
                e + 1,
                right / n,
                test,
                self.unlocked + self.jumps - skipped0,
                time.perf_counter() - te,
            )
            history.append(summ)
            log.debug(
                "epoch %d: train %.3f test %s",
                e + 1,
                float(np.mean(summ.train_accuracy)),
                None if test is None else float(np.mean(test)),
            )
            if on_epoch is not None:
                on_epoch(summ)
        if history and history[-1].test_accuracy is not None:
            acc, out = history[-1].test_accuracy, final
        else:
            acc, out = self.test_accuracy()
        return EnsembleResult(
            self.seeds,
            self.omega.copy(),
            self.coupling.copy(),
            out,
            acc,
            history,
            self.unlocked.copy(),
            self.jumps.copy(),
            time.perf_counter() - t0,
            self.steps,
        )


def train_ensemble(
    template: DeviceModel,
    members: Sequence[Member],
    dataset: Dataset,
    encoding: Encoding,
    config: TrainConfig,
    on_epoch: Callable[[EpochSummary], None] | None = None,
    compiled: bool | None = None,
) -> EnsembleResult:
    """Train ``members`` in lockstep (see the module docstring for the update rule).

    ``compiled``: None uses the numba kernels when installed, False forces numpy.
    """
    return Ensemble(template, members, dataset, encoding, config, compiled=compiled).run(on_epoch)


def train_seeds(
    builder: Callable[[np.random.Generator], DeviceModel],
    seeds: Sequence[int],
    dataset: Dataset,
    encoding: Encoding,
    config: TrainConfig,
    on_epoch: Callable[[EpochSummary], None] | None = None,
    compiled: bool | None = None,
) -> EnsembleResult:
    """One member per seed with couplings drawn by ``builder`` (the reproduction set-up)."""
    template, members = members_from_builder(builder, seeds, config)
    return train_ensemble(template, members, dataset, encoding, config, on_epoch, compiled)
