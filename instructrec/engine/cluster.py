"""Joining a Ray cluster, or starting a local one sized for this machine.

Ray is imported here and only when a Ray path runs: the local engine never pays its import.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager

from instructrec.config import RuntimeConfig


@contextmanager
def ray_cluster(runtime: RuntimeConfig) -> Iterator[Mapping[str, float]]:
    """Connect to runtime.ray_address, else start a local cluster; yield its resources; leave it as found.

    A cluster this process did not start (an address, or one already connected) is never shut down.
    """
    import ray

    started = False
    if not ray.is_initialized():
        ray.init(**init_kwargs(runtime))
        started = True
    try:
        yield ray.cluster_resources()
    finally:
        if started:
            ray.shutdown()


def init_kwargs(runtime: RuntimeConfig) -> dict:
    """ray.init's arguments: join runtime.ray_address, else a local cluster of runtime.cpus CPUs and a
    small object store (Ray's default takes 30% of the machine's memory)."""
    if runtime.ray_address:
        return {"address": runtime.ray_address, "log_to_driver": False}
    return {
        "num_cpus": runtime.cpus or os.cpu_count() or 1,
        "object_store_memory": runtime.object_store_mb * 1024**2,
        "include_dashboard": False,
        "log_to_driver": False,
        "configure_logging": False,
    }


def actor_pool_size(resources: Mapping[str, float], runtime: RuntimeConfig) -> int:
    """Inference actors: runtime.actors, else as many as fit; never every CPU of the cluster.

    Ray Data's read and write tasks need a CPU of their own: a pool holding every CPU starves
    them and the dataset never finishes, so that case is refused here instead.
    """
    cpus = int(resources.get("CPU", 0))
    fit = (cpus - 1) // runtime.actor_threads
    if fit < 1 or (runtime.actors or 0) > fit:
        raise ValueError(
            f"a Ray cluster with {cpus} CPUs holds at most {max(fit, 0)} inference actors of "
            f"{runtime.actor_threads} CPUs (runtime.actors={runtime.actors}) with one CPU left for reading "
            "and writing; lower runtime.actors / runtime.actor_threads or join a larger cluster"
        )
    return runtime.actors or fit
