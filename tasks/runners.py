"""Prefect task runners for the flows' fan-out: threads in this process, or Ray (prefect-ray) for runtime.engine=ray."""

from __future__ import annotations

from prefect_ray.task_runners import RayTaskRunner

from instructrec.config import RuntimeConfig
from instructrec.engine.cluster import init_kwargs


def ray_task_runner(runtime: RuntimeConfig) -> RayTaskRunner:
    """Submitted tasks run as Ray tasks on runtime.ray_address's cluster, or on a local one sized as the
    batch and DDP stages size theirs (they join whichever cluster this runner started)."""
    kwargs = init_kwargs(runtime)
    return RayTaskRunner(address=kwargs.pop("address", None), init_kwargs=kwargs)
