"""prefect.yaml declares deployments whose entrypoints and schedules are valid."""

import importlib
from pathlib import Path

import yaml
from prefect.client.schemas.schedules import CronSchedule

ROOT = Path(__file__).resolve().parents[2]


def load_flow(entrypoint: str):
    path, func = entrypoint.split(":")
    return getattr(importlib.import_module(path.removesuffix(".py").replace("/", ".")), func)


def test_training_deployment_points_at_the_flow_with_a_cron_schedule():
    spec = yaml.safe_load((ROOT / "prefect.yaml").read_text())
    (training,) = [d for d in spec["deployments"] if d["name"] == "weekly-training"]
    flow = load_flow(training["entrypoint"])
    assert flow.name == "instructrec-training"
    assert set(training["parameters"]) <= set(flow.parameters.properties)
    (schedule,) = training["schedules"]
    assert CronSchedule(cron=schedule["cron"], timezone=schedule["timezone"]).cron == "0 3 * * 1"
    assert training["work_pool"]["name"] and training["concurrency_limit"] == 1


def test_batch_inference_deployment_runs_daily():
    spec = yaml.safe_load((ROOT / "prefect.yaml").read_text())
    (batch,) = [d for d in spec["deployments"] if d["name"] == "daily-batch-inference"]
    flow = load_flow(batch["entrypoint"])
    assert flow.name == "instructrec-batch-inference" and set(batch["parameters"]) <= set(flow.parameters.properties)
    assert CronSchedule(cron=batch["schedules"][0]["cron"], timezone="UTC").cron == "30 4 * * *"


def test_feedback_deployment_listens_for_the_service_event_and_checks_hourly():
    from prefect.events.schemas.deployment_triggers import DeploymentEventTrigger

    from adapters.events import FEEDBACK_RESOURCE, FINETUNE_EVENT

    spec = yaml.safe_load((ROOT / "prefect.yaml").read_text())
    (loop,) = [d for d in spec["deployments"] if d["name"] == "feedback-finetune"]
    flow = load_flow(loop["entrypoint"])
    assert flow.name == "instructrec-feedback" and set(loop["parameters"]) <= set(flow.parameters.properties)
    (trigger,) = [DeploymentEventTrigger(**t) for t in loop["triggers"]]
    assert trigger.expect == {FINETUNE_EVENT} and set(trigger.parameters) <= set(flow.parameters.properties)
    assert trigger.match.get("prefect.resource.id") == [FEEDBACK_RESOURCE]
    assert trigger.parameters["profile"] == "{{ event.payload.profile }}"  # the service's profile, not a default
    assert CronSchedule(cron=loop["schedules"][0]["cron"], timezone="UTC").cron == "0 * * * *"


def test_a_new_champion_triggers_batch_inference():
    from prefect.events.schemas.deployment_triggers import DeploymentEventTrigger

    from adapters.events import CHAMPION_EVENT, MODEL_RESOURCE

    spec = yaml.safe_load((ROOT / "prefect.yaml").read_text())
    (batch,) = [d for d in spec["deployments"] if d["name"] == "daily-batch-inference"]
    (trigger,) = [DeploymentEventTrigger(**t) for t in batch["triggers"]]
    assert trigger.expect == {CHAMPION_EVENT} and trigger.match.get("prefect.resource.id") == [MODEL_RESOURCE]
    assert set(trigger.parameters) <= set(load_flow(batch["entrypoint"]).parameters.properties)


def test_every_deployment_uses_the_stacks_work_pool_and_the_notification_tag():
    from instructrec.config import load_config

    spec = yaml.safe_load((ROOT / "prefect.yaml").read_text())
    pool = load_config("tiny").stack.work_pool
    for d in spec["deployments"]:
        assert d["work_pool"]["name"] == pool, d["name"]
        assert "instructrec" in d["tags"], d["name"]  # the failure automation matches this tag
        assert d["concurrency_limit"] == 1, d["name"]
