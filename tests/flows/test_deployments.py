"""prefect.yaml declares deployments whose entrypoints and schedules are valid."""

import importlib
from pathlib import Path

import yaml
from prefect.client.schemas.schedules import CronSchedule

ROOT = Path(__file__).resolve().parents[2]


def test_training_deployment_points_at_the_flow_with_a_cron_schedule():
    spec = yaml.safe_load((ROOT / "prefect.yaml").read_text())
    (training,) = [d for d in spec["deployments"] if d["name"] == "weekly-training"]
    module, func = training["entrypoint"].removesuffix(".py").replace("/", ".").split(":")
    flow = getattr(importlib.import_module(module.replace(".py", "")), func)
    assert flow.name == "instructrec-training"
    assert set(training["parameters"]) <= set(flow.parameters.properties)
    (schedule,) = training["schedules"]
    assert CronSchedule(cron=schedule["cron"], timezone=schedule["timezone"]).cron == "0 3 * * 1"
    assert training["work_pool"]["name"] and training["concurrency_limit"] == 1
