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
(warm-started from θ*) [centred: θ^{−β} too]; the states go through the one EP rule,
:func:`phasegrad_hw.learning.ep.ep_update` (two-phase gradient, skip unlocked samples and
basin jumps, mean over a step's valid samples, clip, step, projection onto the limits) —
the compiled kernels (:mod:`phasegrad_hw.engine._kernels`) run a compiled copy of it.
Sample order of epoch e: ``np.random.default_rng([seed, e]).permutation(n_train)``.

Training accuracy (per epoch, and the last epoch's in the result): the published definition,
:func:`phasegrad_hw.engine.results.train_accuracy_from_outputs` — the free states read in the
training pass itself (no extra solves), counted over the samples whose free and nudged states
locked; the compiled and the numpy paths hand the same (free outputs, locked) pairs to it.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from numpy.typing import NDArray

from phasegrad_hw.device.model import DeviceModel
from phasegrad_hw.engine.members import Member, TrainConfig, members_from_builder
from phasegrad_hw.engine.results import (
    EnsembleResult,
    EpochSummary,
    accuracy_from_outputs,
    train_accuracy_from_outputs,
)
from phasegrad_hw.learning.ep import EPNetwork, EPReadings, EPState, ep_update
from phasegrad_hw.learning.tasks import Dataset, Encoding
from phasegrad_hw.physics import centred
from phasegrad_hw.physics.edge import EdgeNetwork
from phasegrad_hw.physics.ladder import Nudge, solve_locked

log = logging.getLogger(__name__)
Array = NDArray[np.float64]


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
        self.unlocked = np.zeros(B, dtype=np.int64)
        self.jumps = np.zeros(B, dtype=np.int64)
        self.steps = 0
        # compiled kernels (numba, optional) for the plain-sine, one-sided online case
        self._kernels: Any = None
        eligible = self.H.harmonics == (1.0,) and self.H.is_odd and config.rule.mode == "one_sided"
        if eligible and compiled is not False:
            self._kernels = _load_kernels()
            if compiled and self._kernels is None:
                raise ValueError("compiled: True needs numba (pip install 'phasegrad-hw[fast]')")
        if self._kernels is not None:
            self._k = self._kernels.fixed_args(template, config.rule, encoding)

    # -- physics helpers ------------------------------------------------------------
    @functools.cached_property
    def _edges(self) -> EdgeNetwork:
        """The edge list for the numpy/physics path (built when first needed)."""
        return EdgeNetwork(self.n, self.edges[:, 0], self.edges[:, 1], self.ref)

    @functools.cached_property
    def _net(self) -> EPNetwork:
        """The EP rule's view of the network, for the numpy path (built when first needed)."""
        return EPNetwork(self.edges, self.ref, self.H, self.model.limits)

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
            beta[:, self.outputs] = self.cfg.rule.beta
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
            th, ok = self._k.kernels.solve_many(self._k.net, W, k, th0)
            bad = np.flatnonzero(~ok)
            if bad.size:
                th[bad], ok[bad] = self.solve(W[bad], k[bad], th0[bad])
        else:
            th, ok = self.solve(W, k, th0)
        out = th[:, self.outputs].copy()
        out[~ok] = np.nan
        return out.reshape(B, m, -1)

    # -- training -------------------------------------------------------------------
    def _members(self) -> Any:
        K = self._kernels
        return K.Members(self.omega, self.coupling, self.learn_w, self.learn_k)

    def step(self, idx: NDArray[np.int64]) -> tuple[Array, NDArray[np.bool_]]:
        """One update of every member from training samples ``idx`` (B, m).

        Returns the free output phases (B, m, n_out) and the solved mask (B, m): the free
        and the nudged states locked (the samples the training accuracy counts).
        """
        B, m = idx.shape
        if self._kernels is not None and m == 1:
            return self._epoch_compiled(idx)  # one online step: a one-sample epoch
        self.steps += 1
        return self._step_rows(idx, np.arange(B))

    def _step_rows(
        self, idx: NDArray[np.int64], rows: NDArray[np.int64]
    ) -> tuple[Array, NDArray[np.bool_]]:
        """The numpy/physics step for members ``rows`` with samples ``idx`` (len(rows), m):
        the locked states, then :func:`~phasegrad_hw.learning.ep.ep_update`. Returns the free
        output phases (NaN where the free state did not lock) and the solved mask (every
        phase locked), as :meth:`step`."""
        rule = self.cfg.rule
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
        m_th = None
        if rule.mode == "centred":
            m_th, m_ok = self.solve(W, k, f_th, tgt, direction=-1)
            ok &= m_ok
        shape = (B, m, self.n)
        upd = ep_update(
            rule,
            EPReadings(
                f_th.reshape(shape),
                p_th.reshape(shape),
                None if m_th is None else m_th.reshape(shape),
                ok.reshape(B, m),
            ),
            EPState(omega, coupling, self.learn_w[rows], self.learn_k[rows]),
            self._net,
        )
        self.omega[rows] = upd.omega
        self.coupling[rows] = upd.coupling
        # warm start: the member's last locked free state of this step
        fth = f_th.reshape(shape)
        fok = f_ok.reshape(B, m)
        tp = self.theta_prev[rows]
        for a in range(m):
            tp = np.where(fok[:, a, None], fth[:, a], tp)
        self.theta_prev[rows] = tp
        self.unlocked[rows] += upd.unlocked.sum(axis=1)
        self.jumps[rows] += upd.basin_jump.sum(axis=1)
        fo = out.copy()
        fo[~f_ok] = np.nan
        return fo.reshape(B, m, -1), ~upd.unlocked

    def test_accuracy(self) -> tuple[Array, Array]:
        """((B,) accuracy, (B, n_test, n_out) free output phases) on the test split."""
        xt = np.broadcast_to(self.data.x_test, (len(self.members), *self.data.x_test.shape))
        out = self.free_outputs(np.ascontiguousarray(xt))
        return accuracy_from_outputs(out, self.data.y_test, self.enc), out

    def _epoch_compiled(self, order: NDArray[np.int64]) -> tuple[Array, NDArray[np.bool_]]:
        """One online epoch of every member in the compiled kernel; a member whose fast path
        fails finishes the epoch on the numpy/physics path. Returns free outputs (B, n, n_out)
        and the solved mask (B, n), in epoch order, as :meth:`step`."""
        K, ka = self._kernels, self._k
        assert K is not None
        B, n = order.shape
        if self._xin is None:
            self._xin = np.ascontiguousarray(self.enc.input_frequencies(self.data.x_train))
        out = K.EpochOut(
            np.full((B, n, len(self.outputs)), np.nan),
            np.full((B, n), int(K.Status.NOT_RUN), dtype=np.int64),
            np.empty(B, dtype=np.int64),
        )
        epoch = K.Epoch(
            self._xin,
            self.data.y_train,
            np.ascontiguousarray(order),
            self.theta_prev,
            self._cache,
        )
        fn = ka.kernels.train_epoch_parallel if self.cfg.parallel else ka.kernels.train_epoch
        fn(ka.net, ka.rule, ka.targets, K.plain(self._members()), K.plain(epoch), K.plain(out))
        # plain ints: numpy compares an array with an IntEnum member ~4x slower
        jump = out.status == int(K.Status.BASIN_JUMP)
        self.jumps += jump.sum(axis=1)
        self.steps += n
        free_out: Array = out.free_out
        solved = (out.status == int(K.Status.UPDATED)) | jump
        for b in np.flatnonzero(out.stop >= 0):
            rows = np.array([b])
            for t in range(int(out.stop[b]), n):
                fo, ok = self._step_rows(order[b : b + 1, t : t + 1], rows)
                free_out[b, t] = fo[0, 0]
                solved[b, t] = ok[0, 0]
        return free_out, solved

    def run(self, on_epoch: Callable[[EpochSummary], None] | None = None) -> EnsembleResult:
        """Train for ``config.epochs`` epochs and evaluate the final networks."""
        t0 = time.perf_counter()
        cfg = self.cfg
        B = len(self.members)
        n = len(self.data.y_train)
        history: list[EpochSummary] = []
        final = np.empty(0)
        m = cfg.batch_size
        n_out = len(self.outputs)
        train_out = np.full((B, n, n_out), np.nan)
        train = np.zeros(B)
        members = np.arange(B)[:, None]
        for e in range(cfg.epochs):
            te = time.perf_counter()
            order = np.empty((B, n), dtype=np.int64)
            for b, s in enumerate(self.seeds):
                order[b] = np.random.default_rng([s, e]).permutation(n)
            skipped0 = self.unlocked + self.jumps
            if self._kernels is not None and m == 1:
                fo, solved = self._epoch_compiled(order)
            else:
                fo = np.full((B, n, n_out), np.nan)
                solved = np.zeros((B, n), dtype=bool)
                for a in range(0, n, m):
                    fo[:, a : a + m], solved[:, a : a + m] = self.step(order[:, a : a + m])
            # in epoch order (a solved sample's free outputs are finite)
            train = train_accuracy_from_outputs(fo, self.data.y_train[order], self.enc, solved)
            if e + 1 == cfg.epochs:  # each sample once per epoch: back to the split's order
                train_out[members, order] = np.where(solved[..., None], fo, np.nan)
            test = None
            if (e + 1) % cfg.test_every == 0 or e + 1 == cfg.epochs:
                test, final = self.test_accuracy()
            summ = EpochSummary(
                e + 1,
                train,
                test,
                self.unlocked + self.jumps - skipped0,
                time.perf_counter() - te,
            )
            history.append(summ)
            if log.isEnabledFor(logging.DEBUG):
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
            train_out,
            train,
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
