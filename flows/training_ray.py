"""The training pipeline on Ray (runtime.engine=ray): the same flow, with Prefect's RayTaskRunner.

Its submitted tasks (evaluation, one per model) run as Ray tasks; the representation trains on DDP ranks
(Ray Train) and batch inference on a Ray Data actor pool, all on the cluster this runner joins
(RAY_ADDRESS) or starts. A module of its own: importing Ray costs the local flows nothing.

The runner is built from a resolved config when the pipeline is called, never at import: `ray_pipeline` for an
entry point that has resolved one (`instructrec pipeline --set runtime.engine=ray`), `training_pipeline_ray` for a
deployment, whose parameters are all it has.
"""

from __future__ import annotations

from prefect import Flow, flow

from flows.training import training_pipeline
from instructrec.config import Profile, RuntimeConfig, load_config
from tasks.runners import ray_task_runner
from tasks.summary import PipelineSummary


def ray_pipeline(runtime: RuntimeConfig) -> Flow[..., PipelineSummary]:
    """The training flow with a RayTaskRunner for this runtime (its cluster address, or a local one's size)."""
    return training_pipeline.with_options(task_runner=ray_task_runner(runtime))


@flow(name="instructrec-training-ray", flow_run_name="train-ray-{profile}", log_prints=True)
def training_pipeline_ray(
    profile: Profile = "cpu", data: str | None = None, overrides: dict | None = None
) -> PipelineSummary:
    """The deployment entry point (deploy/prefect.kubernetes.yaml): resolve the config from the run's
    parameters, then run the training flow on the runner that config describes, as a subflow."""
    runtime = load_config(profile, data=data, overrides=overrides).runtime
    return ray_pipeline(runtime)(profile=profile, data=data, overrides=overrides)
