"""Ray cluster plumbing for sweeps and distributed studies (the optional extra ``cluster``).

A *bench* (a chip wired to one lab machine) is an exclusive resource: a trial that drives it
requests the custom Ray resource ``bench:<name>`` (capacity 1 on the node wired to the bench,
``ray start --resources '{"bench:lab-chip-1": 1}'``), so Ray runs one such trial at a time,
on that node. Emulated devices (simulated, cmos and optical device files) need no resource
and run anywhere. docs/cluster.md describes the cluster set-up.

Ray is imported lazily (:func:`import_ray`); everything else in the library works without it.
"""

from __future__ import annotations

import importlib
import logging
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from phasegrad_hw.config import read_config_file
from phasegrad_hw.errors import ConfigError

__all__ = [
    "BENCH_PREFIX",
    "RAY_MISSING",
    "Cluster",
    "bench_resource",
    "import_ray",
    "normalise_bench",
]

log = logging.getLogger(__name__)

BENCH_PREFIX = "bench:"
RAY_MISSING = (
    "ray is not installed: pip install 'phasegrad-hw[cluster]' "
    "(needed by `sweep` and `--executor ray`)"
)
BENCH_SCHEMES = ("serial", "mqtt", "mqtts")  # URIs of devices that live on a bench
BENCH_BACKENDS = ("visa", "daqmx")  # device-file backends that drive bench instruments


def import_ray() -> Any:
    """The ``ray`` module, or a :class:`ConfigError` with one line saying how to install it."""
    try:  # by name: mypy and the core install do not need the optional extra
        return importlib.import_module("ray")
    except ImportError:
        raise ConfigError(RAY_MISSING) from None


def normalise_bench(name: str) -> str:
    """A resource-safe bench name: lower case, runs of other characters than ``a-z0-9._``
    become one ``-`` (``Lab/Chip 1`` → ``lab-chip-1``)."""
    out = re.sub(r"[^a-z0-9._]+", "-", name.lower()).strip("-")
    if not out:
        raise ConfigError(f"bench name {name!r}: nothing left after normalising (use a-z, 0-9)")
    return out


def bench_resource(device: str, benches: Mapping[str, str] | None = None) -> str | None:
    """The Ray resource a trial on ``device`` must hold, or None for an emulated device.

    ``benches`` maps device specs to bench names and wins (it also makes an emulated device
    exclusive). Otherwise: ``mqtt://…/BENCH/DEVICE`` → ``bench:bench-device`` (the agent's
    path), ``serial://PATH`` → ``bench:serial-<path>``, a device file whose backend is visa or
    daqmx → ``bench:<its name>``; simulated, cmos and optical device files → None.
    """
    if benches and device in benches:
        return BENCH_PREFIX + normalise_bench(benches[device])
    scheme, sep, rest = device.partition("://")
    if sep:
        if scheme not in BENCH_SCHEMES:
            return None
        if scheme == "serial":
            return BENCH_PREFIX + normalise_bench("serial-" + rest.split("?")[0])
        parts = urlsplit(device)
        path = parts.path.strip("/")
        return BENCH_PREFIX + normalise_bench(path or f"{parts.hostname}-{parts.port or 1883}")
    p = Path(device)
    if not p.is_file():
        return None  # validated (and reported) where the device is opened
    data = read_config_file(p)
    if data.get("backend") not in BENCH_BACKENDS:
        return None
    return BENCH_PREFIX + normalise_bench(str(data.get("name") or p.stem))


class Cluster:
    """``with Cluster(address=…, num_cpus=…, benches=[…]):`` — connect to a Ray cluster
    (``address``; ``None`` uses ``RAY_ADDRESS`` when set) or start a local Ray instance with
    ``num_cpus`` CPUs (default: all) and the bench resources ``benches`` (capacity 1 each).

    An already initialised Ray (a notebook, a test fixture) is used as it is and left running.
    Every bench resource in ``benches`` must be offered by some node, else a
    :class:`ConfigError` names it and the ``ray start`` option that adds it.
    """

    def __init__(
        self,
        address: str | None = None,
        *,
        num_cpus: int | None = None,
        benches: Iterable[str] = (),
    ) -> None:
        self.address = address
        self.num_cpus = num_cpus
        self.benches = sorted(set(benches))
        self._owned = False

    def __enter__(self) -> Cluster:
        import os

        ray = import_ray()
        if not ray.is_initialized():
            if self.address is not None or os.environ.get("RAY_ADDRESS"):
                ray.init(address=self.address, log_to_driver=False)
            else:
                ray.init(
                    num_cpus=self.num_cpus,
                    include_dashboard=False,
                    resources={b: 1.0 for b in self.benches},
                    log_to_driver=False,
                )
            self._owned = True
        have = ray.cluster_resources()
        missing = [b for b in self.benches if have.get(b, 0.0) < 1.0]
        if missing:
            self.__exit__(None, None, None)
            b = missing[0]
            raise ConfigError(
                f"{b}: no node of the Ray cluster offers this bench — start the machine wired "
                f"to it with ray start --address HEAD:6379 --resources '{{\"{b}\": 1}}' "
                "(docs/cluster.md)"
            )
        log.info("ray cluster: %s", {k: v for k, v in have.items() if "node:" not in k})
        return self

    def __exit__(self, *exc: object) -> None:
        if self._owned:
            import_ray().shutdown()
            self._owned = False

    @staticmethod
    def cpus() -> int:
        """CPUs of the whole cluster (at least 1)."""
        return max(1, int(import_ray().cluster_resources().get("CPU", 1)))
