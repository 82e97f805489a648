"""Every command that reads the config resolves it from its own --profile and --set: each test runs the real
command up to the point where it hands its config on (the registry, the stack, a flow's first consumer, the Ray
task runner), captures what it hands and stops there. Nothing is trained, served or started."""

from __future__ import annotations

import argparse
import re
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml

from instructrec.config import Config
from ops.cli import build_parser

ROOT = Path(__file__).resolve().parents[2]
READS_NO_CONFIG = {"synth"}


class Captured(Exception):  # noqa: N818  (not an error: the command reached its hand-off)
    def __init__(self, cfg: Config) -> None:
        super().__init__("captured")
        self.cfg = cfg


def capture(*args: Any, **kwargs: Any):
    """Stands in for whatever a command hands its config to: keeps the config, stops the command."""
    (cfg,) = [a for a in (*args, *kwargs.values()) if isinstance(a, Config)]
    raise Captured(cfg)


def run_command(argv: list[str]) -> Config:
    """Parse as `instructrec` does and run the command (without main's Prefect API, which no hand-off here needs)."""
    args = build_parser().parse_args(argv)
    with pytest.raises(Captured) as caught:
        args.run(args)
    return caught.value.cfg


@pytest.fixture(autouse=True)
def environment(tmp_path, monkeypatch):
    """Only the command line decides: no variable that load_config reads is inherited from the shell."""
    monkeypatch.setenv("INSTRUCTREC_HOME", str(tmp_path / "home"))
    for name in ("MLFLOW_TRACKING_URI", "MLFLOW_BACKEND", "MLFLOW_ARTIFACTS_DESTINATION", "RAY_ADDRESS"):
        monkeypatch.delenv(name, raising=False)


def _subcommands() -> dict[str, argparse.ArgumentParser]:
    (action,) = [a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)]
    return dict(action.choices)


def _option(parser: argparse.ArgumentParser, flag: str) -> argparse.Action | None:
    return next((a for a in parser._actions if flag in a.option_strings), None)


def test_the_parser_offers_the_profiles_the_config_defines():
    from instructrec import config

    assert set(config.PROFILES) == set(config._PROFILES)  # every named profile has its values, and no more
    commands = _subcommands()
    for name, parser in commands.items():
        profile, overrides = _option(parser, "--profile"), _option(parser, "--set")
        if name in READS_NO_CONFIG:
            assert profile is None and overrides is None, name
            continue
        assert profile is not None and overrides is not None, f"{name} reads the config: --profile and --set"
        assert tuple(profile.choices or ()) == config.PROFILES and profile.default == "cpu", name
    assert READS_NO_CONFIG < set(commands)


# --- commands that resolve the config themselves ------------------------------------------------------------


@pytest.mark.parametrize("command", [["recommend", "--user-id", "u1"], ["similar", "--item-id", "i1"]])
def test_recommend_and_similar_load_the_champion_with_their_profile_and_overrides(command, monkeypatch):
    from model_registry import registry, serving

    monkeypatch.setattr(registry, "connect", lambda uri: None)
    monkeypatch.setattr(serving, "load_champion", capture)
    cfg = run_command([*command, "--profile", "tiny", "--set", "serve.diversity=0.25"])
    assert cfg.profile == "tiny" and cfg.serve.diversity == 0.25


def test_forget_resolves_its_profile_and_overrides(monkeypatch):
    from instructrec.online import erasure
    from ops import cli

    resolved: list[Config] = []

    def spy(*args: Any, **kwargs: Any) -> Config:
        resolved.append(load(*args, **kwargs))
        return resolved[-1]

    def erase(path: Path, user_id: str, requested_by: str):
        assert path == resolved[-1].paths.feedback and user_id == "u1"
        raise Captured(resolved[-1])

    load = cli.load_config
    monkeypatch.setattr(cli, "load_config", spy)
    monkeypatch.setattr(erasure, "erase_user", erase)
    cfg = run_command(["forget", "--user-id", "u1", "--profile", "tiny", "--set", "feedback.trigger_events=7"])
    assert cfg.profile == "tiny" and cfg.feedback.trigger_events == 7


def test_simulate_builds_its_world_from_its_profile_and_overrides(monkeypatch):
    from ops import demo

    monkeypatch.setattr(demo, "build_world", capture)
    cfg = run_command(["simulate", "--profile", "tiny", "--set", "serve.max_k=7"])
    assert cfg.profile == "tiny" and cfg.serve.max_k == 7


def test_stack_runs_on_its_profile_and_overrides(monkeypatch):
    from ops import stack

    monkeypatch.setattr(stack, "Stack", capture)
    cfg = run_command(
        ["stack", "status", "--profile", "tiny", "--set", "stack.prefect_port=4321", "--backend", "postgres"]
    )
    assert cfg.profile == "tiny" and cfg.stack.prefect_port == 4321 and cfg.stack.backend == "postgres"


def test_serve_builds_the_app_from_its_profile_and_overrides(monkeypatch):
    import logging

    from model_registry import registry
    from service import app

    for name in ("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "MLFLOW_HTTP_REQUEST_TIMEOUT"):  # _serve sets defaults
        monkeypatch.setenv(name, "1")
    monkeypatch.setattr(logging, "basicConfig", lambda **kwargs: None)
    monkeypatch.setattr(registry, "connect", lambda uri: None)
    monkeypatch.setattr(app, "create_app", capture)
    cfg = run_command(["serve", "--profile", "tiny", "--set", "serve.diversity=0.25"])
    assert cfg.profile == "tiny" and cfg.serve.diversity == 0.25


@pytest.mark.parametrize("aa", [False, True])
def test_demo_builds_its_world_from_its_profile_and_overrides(aa, monkeypatch):
    from ops import demo

    monkeypatch.setattr(demo.registry, "connect", lambda uri: None)
    monkeypatch.setattr(demo, "build_world", capture)
    cfg = run_command(["demo", "--profile", "tiny", "--set", "serve.max_k=7", *(["--aa"] if aa else [])])
    assert cfg.profile == "tiny" and cfg.serve.max_k == 7


# --- commands that hand their parameters to a flow: the flow's body runs (no Prefect engine) up to its first use
# --- of the config it resolves from them ---------------------------------------------------------------------


def test_batch_scores_with_its_profile_and_overrides(monkeypatch):
    from flows import batch_inference

    monkeypatch.setattr(batch_inference, "batch_inference", batch_inference.batch_inference.fn)
    monkeypatch.setattr(batch_inference, "batch_top_k", capture)
    cfg = run_command(["batch", "--profile", "tiny", "--set", "runtime.batch_users=17"])
    assert cfg.profile == "tiny" and cfg.runtime.batch_users == 17


def test_finetune_runs_on_its_profile_and_overrides(monkeypatch, tmp_path):
    from adapters import tracking
    from flows import feedback

    monkeypatch.setattr(feedback, "feedback_loop", feedback.feedback_loop.fn)
    monkeypatch.setattr(tracking, "pipeline_run", capture)
    cfg = run_command(["finetune", "--profile", "tiny", "--data", str(tmp_path), "--set", "feedback.trigger_events=7"])
    assert cfg.profile == "tiny" and cfg.feedback.trigger_events == 7 and cfg.data.source == str(tmp_path)


def test_pipeline_on_the_local_engine_runs_on_its_profile_and_overrides(monkeypatch, tmp_path):
    from adapters import tracking
    from flows import training

    monkeypatch.setattr(training, "training_pipeline", training.training_pipeline.fn)
    monkeypatch.setattr(tracking, "pipeline_run", capture)
    cfg = run_command(["pipeline", "--profile", "tiny", "--data", str(tmp_path), "--set", "train.epochs=3"])
    assert cfg.profile == "tiny" and cfg.train.epochs == 3 and cfg.runtime.engine == "local"


# --- the Ray runner: built from the resolved runtime when the pipeline is called (Ray itself never starts) ------


class CapturedFlow(Exception):  # noqa: N818
    def __init__(self, flow: Any, kwargs: dict) -> None:
        super().__init__("captured")
        self.flow, self.kwargs = flow, kwargs


@pytest.fixture
def flow_calls(monkeypatch):
    """Calling any Prefect flow raises CapturedFlow(flow, its keyword arguments) instead of running it."""
    from prefect import Flow

    def call(self, *args: Any, **kwargs: Any):
        raise CapturedFlow(self, kwargs)

    monkeypatch.setattr(Flow, "__call__", call)


RAY_SETTINGS = ["--set", "runtime.engine=ray", "--set", "runtime.cpus=3", "--set", "runtime.object_store_mb=100"]


def test_pipeline_on_ray_runs_on_a_task_runner_built_from_its_overrides(flow_calls):
    from prefect_ray.task_runners import RayTaskRunner

    args = build_parser().parse_args(["pipeline", "--profile", "tiny", *RAY_SETTINGS])
    with pytest.raises(CapturedFlow) as caught:
        args.run(args)
    flow, kwargs = caught.value.flow, caught.value.kwargs
    runner = flow.task_runner
    assert flow.name == "instructrec-training" and isinstance(runner, RayTaskRunner)
    assert runner.address is None  # a local cluster of the configured size
    assert runner.init_kwargs["num_cpus"] == 3 and runner.init_kwargs["object_store_memory"] == 100 * 1024**2
    assert kwargs["profile"] == "tiny" and kwargs["overrides"]["runtime"]["cpus"] == 3


def test_pipeline_on_ray_joins_the_cluster_its_overrides_name(flow_calls):
    argv = ["pipeline", "--profile", "tiny", "--set", "runtime.engine=ray", "--set", "runtime.ray_address=ray://h:1"]
    args = build_parser().parse_args(argv)
    with pytest.raises(CapturedFlow) as caught:
        args.run(args)
    assert caught.value.flow.task_runner.address == "ray://h:1"


def test_the_ray_deployment_builds_its_runner_from_the_runs_parameters(flow_calls, monkeypatch):
    from adapters import tracking
    from flows.training_ray import training_pipeline_ray

    def no_pipeline_here(*args: Any, **kwargs: Any):
        raise AssertionError("the training flow ran in place of the deployment's wrapper")

    monkeypatch.setattr(tracking, "pipeline_run", no_pipeline_here)
    overrides = {"runtime": {"engine": "ray", "cpus": 3, "object_store_mb": 100}}
    with pytest.raises(CapturedFlow) as caught:
        training_pipeline_ray.fn(profile="tiny", data=None, overrides=overrides)
    runner = caught.value.flow.task_runner
    assert runner.init_kwargs["num_cpus"] == 3 and runner.init_kwargs["object_store_memory"] == 100 * 1024**2
    assert caught.value.kwargs == {"profile": "tiny", "data": None, "overrides": overrides}


def test_the_kubernetes_deployments_point_at_flows_that_take_their_parameters():
    import importlib

    from prefect import Flow

    spec = yaml.safe_load((ROOT / "deploy" / "prefect.kubernetes.yaml").read_text())
    for deployment in spec["deployments"]:
        path, name = deployment["entrypoint"].split(":")
        flow = getattr(importlib.import_module(path.removesuffix(".py").replace("/", ".")), name)
        assert isinstance(flow, Flow), deployment["name"]
        assert set(deployment["parameters"]) <= set(flow.parameters.properties), deployment["name"]


# --- constants written once in Python: what pyproject.toml pins is what the code names ------------------------


def test_the_pins_the_code_names_are_the_ones_pyproject_pins():
    from instructrec.models.backbone import MINILM_DISTRIBUTION
    from tasks.promotion import ONNX_RUNTIME_REQUIREMENT

    dependencies = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    assert ONNX_RUNTIME_REQUIREMENT in dependencies
    assert any(d.startswith(f"{MINILM_DISTRIBUTION}==") for d in dependencies)
    # `make setup-gpu` reads the version from pyproject.toml instead of spelling it again
    makefile = (ROOT / "Makefile").read_text()
    assert not re.search(r"onnxruntime-gpu(\[[^\]]*\])?==\d", makefile) and "$(ORT_GPU_VERSION)" in makefile
