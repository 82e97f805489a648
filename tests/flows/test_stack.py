"""The operations stack for real: a Prefect server, a process worker and an MLflow server on free local ports,
every deployment of prefect.yaml, events between them, the failure automation, and both UIs in headless Chromium.

One stack, one story, in file order: train -> the champion event runs batch inference -> the service's feedback
event runs fine-tuning -> a failing run notifies -> a reviewer opens the UIs. No test relies on another having run:
the training run they build on is a module fixture (`trained`, run once), so any test passes alone (`-k reviewer`).
Every check waits, up to a deadline, on exactly what it asserts, and says on timeout what it awaited.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import SimpleNamespace

import mlflow
import polars as pl
import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId
from prefect.deployments import run_deployment
from prefect.settings import PREFECT_API_URL, temporary_settings
from selenium.common.exceptions import NoSuchElementException, StaleElementReferenceException, TimeoutException
from selenium.webdriver.support.wait import WebDriverWait

from instructrec.config import load_config
from instructrec.online.feedback import append_events
from model_registry import registry
from ops.automations import FAILURE_AUTOMATION
from ops.stack import Stack, StackError, free_port
from tests.flows.conftest import isolated_home

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]
SCREENSHOTS = Path(os.environ.get("INSTRUCTREC_TEST_ARTIFACTS", ROOT / "test-artifacts")) / "screenshots"
TRAINING, BATCH, FEEDBACK = (
    "instructrec-training/weekly-training",
    "instructrec-batch-inference/daily-batch-inference",
    "instructrec-feedback/feedback-finetune",
)


class WebhookListener:
    """A local endpoint for the failure automation's webhook: the notifications it receives."""

    def __init__(self):
        received = self.received = []

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802
                received.append(self.rfile.read(int(self.headers.get("Content-Length", 0))).decode())
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/notify"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    hook = WebhookListener()
    with isolated_home(tmp_path_factory.mktemp("stack")) as (home, data, mp):
        mp.setenv("INSTRUCTREC_NOTIFY_URL", hook.url)
        # schedules are declared and checked, but a cron firing mid-test (the hourly check) must not race the triggers
        mp.setenv("PREFECT_SERVER_SERVICES_SCHEDULER_ENABLED", "false")
        cfg = load_config("tiny", overrides={"stack": {"prefect_port": free_port(), "mlflow_port": free_port()}})
        ops = Stack(cfg)
        try:
            endpoints = ops.up()
            mp.setenv("MLFLOW_TRACKING_URI", endpoints.mlflow)
            registry.connect(endpoints.mlflow)
            with temporary_settings({PREFECT_API_URL: endpoints.prefect_api}):
                yield SimpleNamespace(ops=ops, endpoints=endpoints, home=home, data=data, hook=hook)
        finally:
            pids = ops.running()
            ops.down()
            hook.close()
            mlflow.set_tracking_uri(None)
    assert not Stack(cfg).running(), "stack processes outlived `down`"
    for pid in pids.values():
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


@pytest.fixture(scope="module")
def trained(stack):
    """The training deployment, run once per module on the worker: the flow run and the MLflow run of the champion
    it registered (read at once, before fine-tuning can move the alias). Its champion event starts batch inference."""
    run = run_deployment(TRAINING, parameters={"profile": "tiny", "data": str(stack.data)}, timeout=600)
    assert run.state.is_completed(), f"the training deployment's run did not complete: {run.state}"
    version = registry.get_alias(registry.CHAMPION)
    assert version is not None, "the completed training run registered no champion"
    return SimpleNamespace(run=run, mlrun=registry.client().get_run(version.run_id))


def wait_for(condition, awaited: str, timeout: float, interval: float = 1.0):
    """`condition()`'s first truthy value, polled until `timeout` s; on timeout, fail saying what was awaited."""
    deadline = time.monotonic() + timeout
    while True:
        if result := condition():
            return result
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {awaited}")
        time.sleep(interval)


def runs_of(deployment: str):
    with get_client(sync_client=True) as client:
        dep = client.read_deployment_by_name(deployment)
        return client.read_flow_runs(deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[dep.id])))


def wait_for_final_run(deployment: str, timeout: float = 420):
    """The first tiny-profile run of `deployment` that reaches a final state (created by a trigger, not by this
    test; the profile comes from the event's payload)."""

    def finished():
        done = [
            r for r in runs_of(deployment) if r.state and r.state.is_final() and r.parameters.get("profile") == "tiny"
        ]
        return done[0] if done else None

    try:
        return wait_for(finished, f"a tiny-profile run of {deployment} in a final state", timeout, interval=2)
    except AssertionError as exc:
        raise AssertionError(f"{exc}; its runs: {runs_of(deployment)}") from None


def test_stack_is_up_with_every_deployment_and_the_failure_automation(stack):
    with get_client(sync_client=True) as client:
        names = {f"{client.read_flow(d.flow_id).name}/{d.name}" for d in client.read_deployments()}
        assert {TRAINING, BATCH, FEEDBACK} <= names
        training = client.read_deployment_by_name(TRAINING)
        assert training.work_pool_name == stack.ops.cfg.stack.work_pool
        assert training.global_concurrency_limit.limit == 1  # one training at a time
        assert "instructrec" in training.tags and training.schedules[0].schedule.cron == "0 3 * * 1"
        assert FAILURE_AUTOMATION in {a.name for a in client.read_automations()}
    assert set(stack.ops.running()) == {"mlflow", "prefect-server", "worker"}


def test_training_deployment_runs_on_the_worker_and_registers_a_champion(trained):
    run = trained.run
    assert run.state.is_completed(), run.state
    assert run.name.startswith("train-tiny-")  # readable: profile and data hash
    version = registry.get_alias(registry.CHAMPION)
    assert version is not None and version.version == "1"
    mlrun = registry.client().get_run(version.run_id)
    assert mlrun.info.status == "FINISHED" and mlrun.data.params["profile"] == "tiny"
    assert "test/challenger/ndcg_at_10" in mlrun.data.metrics
    assert mlrun.data.tags["prefect.flow_run_id"] == str(run.id)


def test_new_champion_triggers_batch_inference(stack, trained):
    run = wait_for_final_run(BATCH)
    assert run.state.is_completed(), run.state
    assert run.parameters["profile"] == "tiny"  # from the event's payload
    (written,) = (stack.home / "batch").glob("top10-v1-*")
    table = pl.read_parquet(written / "*.parquet")
    assert {"user_id", "item_id", "rank", "model_version", "generated_at"} <= set(table.columns)
    assert set(table["model_version"]) == {"1"}


def test_feedback_event_from_the_service_runs_the_fine_tuning_deployment(stack, trained):
    append_events(
        stack.home / "feedback",
        pl.DataFrame(
            {
                "user_id": ["u1", "u2", "u3"],
                "item_id": ["i1", "i8", "i3"],
                "kind": ["like", "dislike", "like"],
                "text": [None] * 3,
                "model_version": ["1"] * 3,
                "arm": ["champion"] * 3,
                "request_id": ["r1", "r2", "r3"],
                "timestamp": [datetime.now(UTC)] * 3,
            }
        ),
    )
    env = {**os.environ, "PREFECT_API_URL": stack.endpoints.prefect_api}
    emit = "from adapters.events import feedback_threshold; assert feedback_threshold(500, 'tiny')"
    subprocess.run([sys.executable, "-c", emit], env=env, cwd=ROOT, check=True, timeout=120)
    run = wait_for_final_run(FEEDBACK)
    assert run.state.is_completed(), run.state
    assert run.parameters == {"force": True, "profile": "tiny", "trigger": "event"}
    assert "2" in registry.versions()  # tuned from the champion, judged offline, registered
    tags = registry.tags("2")
    assert tags["evaluated_against"] == "1"
    assert datetime.fromisoformat(tags["feedback_until"]) > datetime.now(UTC) - timedelta(hours=1)  # tuned on these


def test_a_failed_flow_run_fires_the_notification_automation(stack):
    run = run_deployment(TRAINING, parameters={"profile": "tiny", "data": str(stack.home / "missing")}, timeout=600)
    assert run.state.is_failed(), run.state

    def last_note_is_this_run():  # what is asserted below: the latest notification is about this run
        return stack.hook.received and json.loads(stack.hook.received[-1]).get("flow_run_id") == str(run.id)

    try:
        wait_for(last_note_is_this_run, f"the failure automation's webhook to be called for flow run {run.id}", 120)
    except AssertionError as exc:
        raise AssertionError(f"{exc}; the webhook received {stack.hook.received}") from None
    note = json.loads(stack.hook.received[-1])
    assert note["flow_run_id"] == str(run.id) and note["state"] == "Failed"
    assert run.name in note["text"]


@pytest.fixture(scope="module")
def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    binary, driver = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")
    assert binary.exists() and driver.exists(), "Debian chromium + chromium-driver missing: run `make system-deps`"
    options = webdriver.ChromeOptions()
    options.binary_location = str(binary)
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--no-first-run",
        "--disable-dev-shm-usage",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--window-size=1500,1000",
    ):
        options.add_argument(flag)
    chrome = webdriver.Chrome(service=Service(str(driver)), options=options)
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    yield chrome
    chrome.quit()


def browser_waits_for(chrome, condition, awaited: str, screenshot: str, timeout: float = 60):
    """`condition(chrome)`'s first truthy value, polled by WebDriverWait until `timeout` s (an element replaced or
    not there yet while the page renders is a no); a screenshot is saved either way, and on timeout the failure says
    what was awaited and where the screenshot is."""
    try:
        result = WebDriverWait(
            chrome,
            timeout,
            poll_frequency=0.25,
            ignored_exceptions=(NoSuchElementException, StaleElementReferenceException),
        ).until(condition)
    except TimeoutException:
        result = None
    chrome.save_screenshot(str(SCREENSHOTS / screenshot))
    assert result, f"timed out after {timeout:.0f} s waiting for {awaited} (screenshot {SCREENSHOTS / screenshot})"
    return result


def page_shows(chrome, url: str, *texts: str, screenshot: str, timeout: float = 60) -> str:
    """Open `url` in a fresh document (a hash-only change would keep the previous page's text on screen while the
    single-page app routes), wait until the rendered page shows every text, save a screenshot; the page's text."""
    chrome.get("about:blank")
    chrome.get(url)
    seen = {"body": ""}

    def shows_every_text(driver):
        seen["body"] = driver.find_element("tag name", "body").text
        return seen["body"] if all(t in seen["body"] for t in texts) else None

    try:
        return browser_waits_for(chrome, shows_every_text, f"{url} to show {list(texts)}", screenshot, timeout)
    except AssertionError as exc:
        raise AssertionError(f"{exc}; it does not show {[t for t in texts if t not in seen['body']]}") from None


def test_reviewer_finds_metrics_plots_and_champion_in_mlflow_ui(stack, trained, browser):
    mlrun = trained.mlrun
    base = f"{stack.endpoints.mlflow}/#/experiments/{mlrun.info.experiment_id}/runs/{mlrun.info.run_id}"
    page_shows(
        browser,
        base,
        mlrun.info.run_name,
        "InstructRec pipeline finished",
        "Gate: PROMOTE",
        "test/challenger/ndcg_at_10",
        "time_s/ingest",
        "representation/best_epoch",  # the kept epoch, as a summary value
        "code.dirty",  # what code ran
        "data.interactions",  # on what data, in full
        screenshot="mlflow-run.png",
    )
    page_shows(
        browser,
        f"{base}/artifacts/evaluation/ndcg_by_type_and_slice.png",
        "ndcg_by_type_and_slice.png",
        screenshot="mlflow-plot.png",
    )
    # the name shows (in the artifact tree) before the preview has fetched and decoded the image: wait for the image
    browser_waits_for(
        browser,
        rendered_image("ndcg_by_type_and_slice.png"),
        "the PNG artifact to render: a visible preview <img> of ndcg_by_type_and_slice.png with a blob: src, "
        "complete and naturalWidth > 0",
        screenshot="mlflow-plot.png",
    )
    page_shows(
        browser,
        f"{stack.endpoints.mlflow}/#/models/{registry.MODEL_NAME}",
        "@ champion",
        "Gate: PROMOTED",
        screenshot="mlflow-registry.png",
    )
    page_shows(  # why it was promoted, against what, and what was not checked, on the version page alone
        browser,
        f"{stack.endpoints.mlflow}/#/models/{registry.MODEL_NAME}/versions/1",
        "Gate: PROMOTED",
        "worst row",
        "[not run]",
        "no champion yet",
        screenshot="mlflow-version.png",
    )


def rendered_image(name: str):
    """A WebDriverWait condition: the artifact preview of `name` (an <img> whose alt is its artifact path and whose
    src is the blob: URL of its fetched bytes) is laid out, has finished loading and decoded to a non-empty image."""

    def loaded(driver) -> bool:
        return driver.execute_script(
            """
            const name = arguments[0];
            return [...document.querySelectorAll("img")].some(img =>
                (img.alt === name || img.alt.endsWith("/" + name)) && img.src.startsWith("blob:")
                && img.complete && img.naturalWidth > 0 && img.getBoundingClientRect().width > 0);
            """,
            name,
        )

    return loaded


def test_reviewer_finds_the_completed_flow_run_in_prefect_ui(stack, trained, browser):
    run = trained.run
    page_shows(
        browser,
        f"{stack.endpoints.prefect_ui}/runs/flow-run/{run.id}",
        run.name,
        "Completed",
        screenshot="prefect-flow-run.png",
    )


def test_a_component_whose_port_is_taken_is_named_at_once_and_nothing_is_left_running(tmp_path, monkeypatch):
    monkeypatch.setenv("INSTRUCTREC_HOME", str(tmp_path))
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        cfg = load_config("tiny", overrides={"stack": {"mlflow_port": taken.getsockname()[1]}})
        ops = Stack(cfg)
        with pytest.raises(
            StackError, match=f"mlflow cannot start: 127.0.0.1:{taken.getsockname()[1]} is already taken"
        ):
            ops.up(prefect=False)
    assert ops.down() == [] and not ops.running()


def test_events_are_not_sent_without_a_server(monkeypatch):
    from adapters.events import champion_promoted

    with temporary_settings({PREFECT_API_URL: None}):
        assert champion_promoted("3", "2", "tiny") is False


def test_a_component_that_exits_while_starting_is_named_with_its_exit_code_and_log(tmp_path, monkeypatch):
    monkeypatch.setenv("INSTRUCTREC_HOME", str(tmp_path))
    ops = Stack(load_config("tiny"))
    ops.dir.mkdir(parents=True, exist_ok=True)
    crash = "print('sqlalchemy: unable to open database file', flush=True); raise SystemExit(3)"
    proc = ops._spawn("mlflow", [sys.executable, "-c", crash], dict(os.environ))
    with pytest.raises(StackError, match="mlflow exited with 3: .*unable to open database file"):
        ops._wait_healthy("mlflow", f"http://127.0.0.1:{free_port()}/health", proc)
