"""The training pipeline on Ray (runtime.engine=ray): the same flow, with Prefect's RayTaskRunner.

Its submitted tasks (evaluation, one per model) run as Ray tasks; the representation trains on DDP ranks
(Ray Train) and batch inference on a Ray Data actor pool, all on the cluster this runner joins
(RAY_ADDRESS) or starts. A module of its own: importing Ray costs the local flows nothing.
"""

from __future__ import annotations

from flows.training import training_pipeline
from instructrec.config import load_config
from tasks.runners import ray_task_runner

training_pipeline_ray = training_pipeline.with_options(task_runner=ray_task_runner(load_config().runtime))
