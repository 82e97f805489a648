"""MLflow run helpers. One MLflow run per flow run; every write names its run_id.

MLflow's fluent "active run" is thread-local, and Prefect may run tasks in
other threads, so tasks log through MlflowClient with an explicit run_id and
only enter the fluent API (`active`) for calls that need it (log_model).
"""

from __future__ import annotations

import fcntl
import functools
import json
import logging
import os
import signal
import socket
import sqlite3
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import mlflow
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from instructrec.config import Config
from instructrec.errors import TrackingStoreError, stop_signal_of
from instructrec.io import process_alive

log = logging.getLogger("instructrec.tracking")
ARTIFACTS_DIR = "mlartifacts"
LOGGING_TIME = "time_s/mlflow_logging"
_logging_seconds: dict[str, float] = {}  # run_id -> seconds spent in MLflow writes (for bench/pipeline.py)


WRITE_ATTEMPTS, RETRY_DELAY_S = 4, 1.0
_TRANSIENT_CODES = {"INTERNAL_ERROR", "TEMPORARILY_UNAVAILABLE", "RESOURCE_EXHAUSTED", "REQUEST_LIMIT_EXCEEDED"}


def transient(exc: BaseException) -> bool:
    """Worth another try: a dropped connection, a timeout, a busy store (SQLite "database is locked", a 5xx)."""
    if isinstance(exc, (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError)):
        return False
    if isinstance(exc, OSError):  # ConnectionError, TimeoutError, requests' connection errors
        return True
    if isinstance(exc, MlflowException):
        return exc.error_code in _TRANSIENT_CODES or "database is locked" in str(exc)
    return "database is locked" in str(exc)


def retrying(fn, attempts: int = WRITE_ATTEMPTS, delay: float = RETRY_DELAY_S):
    """Retry an idempotent MLflow write on transient errors, backing off (1, 2, 4 s); others raise at once."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        for attempt in range(attempts):
            try:
                return fn(*args, **kwargs)
            except Exception as exc:
                if attempt == attempts - 1 or not transient(exc):
                    raise
                log.warning("%s: %s; retrying in %.0f s", fn.__name__, exc, delay * 2**attempt)
                time.sleep(delay * 2**attempt)

    return wrapper


def _counted(fn):
    """Charge the wrapped MLflow write to its run's logging time; retried on transient errors (every
    write here is idempotent: same key, same value)."""
    fn = retrying(fn)

    @functools.wraps(fn)
    def wrapper(run_id: str, *args, **kwargs):
        t0 = time.perf_counter()
        try:
            return fn(run_id, *args, **kwargs)
        finally:
            _logging_seconds[run_id] = _logging_seconds.get(run_id, 0.0) + time.perf_counter() - t0

    return wrapper


def configure(cfg: Config) -> str:
    """Point MLflow at the configured store; create the pipeline's experiment."""
    cfg.paths.home.mkdir(parents=True, exist_ok=True)
    ensure_writable(cfg.paths.tracking_uri)
    mlflow.set_tracking_uri(cfg.paths.tracking_uri)
    with _store_setup_lock(cfg.paths.tracking_uri):
        return experiment_id(cfg, cfg.experiment)


@contextmanager
def _store_setup_lock(tracking_uri: str) -> Iterator[None]:
    """One process at a time creates (or migrates) a SQLite store and the experiment in it: two pipelines started
    at once on a fresh home both ran MLflow's schema migrations on one file, and one failed in alembic ("No such
    index"). A server or a database server serialises this itself."""
    if not tracking_uri.startswith("sqlite:///"):
        yield
        return
    db = Path(tracking_uri.removeprefix("sqlite:///"))
    with db.with_name(f".{db.name}.setup.lock").open("w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def experiment_id(cfg: Config, name: str, folder: str = "") -> str:
    """The experiment's id, created where missing: with local artifacts (under mlartifacts/<folder>) on a
    local store; on a tracking server, with the server's own artifact root, which the server proxies
    (its --artifacts-destination: a folder, or s3:// with credentials only the server holds)."""
    client = MlflowClient()
    exp = client.get_experiment_by_name(name)
    if exp is not None:
        return exp.experiment_id
    if cfg.paths.tracking_uri.startswith(("http://", "https://")):
        return client.create_experiment(name)
    return client.create_experiment(
        name, artifact_location=(cfg.paths.home / ARTIFACTS_DIR / folder).resolve().as_uri()
    )


def ensure_writable(tracking_uri: str) -> None:
    """A SQLite store that cannot be written (read-only or immutable file, read-only folder or disk) is named in
    one paragraph before any run starts; MLflow itself would retry and print hundreds of lines of tracebacks."""
    if not tracking_uri.startswith("sqlite:///"):
        return  # a server or a database server answers for itself
    path = Path(tracking_uri.removeprefix("sqlite:///"))
    try:
        con = sqlite3.connect(path, timeout=30, isolation_level=None)
        try:
            version = con.execute("PRAGMA user_version").fetchone()[0]
            con.execute(f"PRAGMA user_version = {int(version)}")  # a real write of an unchanged value
        finally:
            con.close()
    except sqlite3.Error as exc:
        raise TrackingStoreError(
            f"MLflow's tracking store {path} cannot be written ({exc}). The file or its folder may be read-only or "
            f"immutable (see `ls -l {path}` and `lsattr {path}`), or the disk full or mounted read-only. Make it "
            "writable, or point MLFLOW_TRACKING_URI (or INSTRUCTREC_HOME) elsewhere. Nothing was run or logged."
        ) from None


@contextmanager
def pipeline_run(cfg: Config, run_name: str, tags: dict[str, str]) -> Iterator[str]:
    """Open the flow's MLflow run; close it FINISHED, or FAILED on any exception. Runs that an earlier process
    left RUNNING when it was killed are closed first (mark_abandoned)."""
    experiment_id = configure(cfg)
    client = MlflowClient()
    mark_abandoned(client, experiment_id)
    owner = {OWNER_HOST: socket.gethostname(), OWNER_PID: str(os.getpid())}
    run = client.create_run(
        experiment_id, run_name=run_name, tags={**tags, **_flow_run_tags(), **owner, **code_version()}
    )
    run_id = run.info.run_id
    _open_runs[run_id] = mlflow.get_tracking_uri()  # from here on a stop signal finds the run to close
    try:
        client.log_batch(run_id, params=[mlflow.entities.Param(k, v[:6000]) for k, v in cfg.flat().items()])
        log_json(run_id, cfg.model_dump(mode="json"), "config.json")  # the resolved config, whole
        try:
            yield run_id
        finally:
            logging_seconds = _logging_seconds.pop(run_id, 0.0)
        client.log_metric(run_id, LOGGING_TIME, logging_seconds)
        client.set_terminated(run_id, "FINISHED")
    except BaseException as exc:
        signum = stop_signal_of(exc)
        if signum is None:
            client.set_terminated(run_id, "FAILED")
        else:
            _close_stopped(client, run_id, f"stopped by {signal.Signals(signum).name}")
        raise
    finally:
        _open_runs.pop(run_id, None)


STOPPED_TAG = "instructrec.stopped"
_open_runs: dict[str, str] = {}  # run id -> tracking URI of the pipeline runs this process has open


def _close_stopped(client: MlflowClient, run_id: str, reason: str) -> None:
    """A stopped run is KILLED (MLflow's status for it), with the reason as a tag the UI shows."""
    client.set_tag(run_id, STOPPED_TAG, reason)
    client.set_terminated(run_id, "KILLED")


def close_open_runs(reason: str, timeout: float = 3.0) -> None:
    """From the stop watchdog, when a run did not unwind in time: each open MLflow run KILLED with the reason, and
    the Prefect flow run that made it Crashed (one bounded HTTP call: the server may be gone)."""
    for run_id, uri in list(_open_runs.items()):
        client = MlflowClient(tracking_uri=uri)
        flow_run = client.get_run(run_id).data.tags.get("prefect.flow_run_id")
        _close_stopped(client, run_id, reason)
        api = os.environ.get("PREFECT_API_URL")
        if flow_run and api:
            state = {"type": "CRASHED", "name": "Crashed", "message": reason}
            try:
                httpx.post(
                    f"{api}/flow_runs/{flow_run}/set_state", json={"state": state, "force": True}, timeout=timeout
                )
            except httpx.HTTPError:
                pass
        _open_runs.pop(run_id, None)


OWNER_HOST, OWNER_PID = "instructrec.host", "instructrec.pid"
CODE_ROOT = Path(__file__).resolve().parents[1]  # the checkout this code runs from (when it is one)
GIT_COMMIT, GIT_BRANCH, CODE_DIRTY, CODE_PACKAGE = (
    "mlflow.source.git.commit",  # MLflow's own tag: the UI shows it beside the run's source
    "mlflow.source.git.branch",
    "code.dirty",
    "code.package_version",
)
UNKNOWN = "unknown"


def code_version(root: Path = CODE_ROOT) -> dict[str, str]:
    """The code a run ran, as run tags: the git commit, `code.dirty` ("true" when `git status --porcelain` lists
    anything: the commit alone does not say what ran), the branch and the installed package's version. Where
    `root` is no git checkout of its own (an installed package, a copy) or git is missing, the git tags say
    "unknown"; never an exception."""

    def git(*args: str) -> str | None:
        try:
            done = subprocess.run(
                ["git", "--no-optional-locks", "-C", str(root), *args],  # no index refresh: a read only
                capture_output=True,
                text=True,
                timeout=15,
                check=True,
            )
        except (OSError, subprocess.SubprocessError):
            return None
        return done.stdout.strip()

    top = git("rev-parse", "--show-toplevel")
    # a package installed inside some other checkout (a venv in a repo) must not report that repo's commit
    commit = git("rev-parse", "HEAD") if top and Path(top).resolve() == root.resolve() else None
    status = git("status", "--porcelain") if commit else None
    branch = git("rev-parse", "--abbrev-ref", "HEAD") if commit else None
    return {
        GIT_COMMIT: commit or UNKNOWN,
        GIT_BRANCH: branch or UNKNOWN,
        CODE_DIRTY: UNKNOWN if status is None else str(bool(status)).lower(),
        CODE_PACKAGE: _package_version(),
    }


def _package_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("instructrec-pipeline")
    except PackageNotFoundError:
        return UNKNOWN


def mark_abandoned(client: MlflowClient, experiment_id: str) -> list[str]:
    """Close the runs of this host whose process is gone (kill -9, power loss): the MLflow run FAILED and its
    Prefect flow run CRASHED, instead of RUNNING forever. A run of a live process is left alone."""
    host = socket.gethostname()
    running = client.search_runs(
        [experiment_id], f"attributes.status = 'RUNNING' and tags.`{OWNER_HOST}` = '{host}'", max_results=1000
    )
    closed = []
    for run in running:
        pid = int(run.data.tags.get(OWNER_PID, "0"))
        if pid <= 0 or process_alive(pid):
            continue
        note = f"process {pid} on {host} ended without closing this run (killed); closed by the next start"
        client.set_tag(run.info.run_id, "instructrec.abandoned", note)
        client.set_terminated(run.info.run_id, "FAILED")
        if flow_run_id := run.data.tags.get("prefect.flow_run_id"):
            _crash_flow_run(flow_run_id, note)
        log.warning("run %s: %s", run.info.run_id, note)
        closed.append(run.info.run_id)
    return closed


def _crash_flow_run(flow_run_id: str, message: str) -> None:
    """The killed attempt's flow run, in the same Prefect database, if it still says it runs."""
    from prefect.client.orchestration import get_client
    from prefect.states import Crashed

    with get_client(sync_client=True) as prefect:
        try:
            state = prefect.read_flow_run(flow_run_id).state
        except Exception:  # another Prefect database (a moved home, a server since replaced): nothing to mark
            return
        if state is not None and not state.is_final():
            prefect.set_flow_run_state(flow_run_id, Crashed(message=message), force=True)


def _flow_run_tags() -> dict[str, str]:
    """Link the MLflow run to the Prefect flow run that made it (none outside a flow)."""
    from prefect.runtime import flow_run

    return {"prefect.flow_run_id": flow_run.id, "prefect.flow_run_name": flow_run.name} if flow_run.id else {}


def name_runs(run_id: str, data_hash: str) -> str:
    """Once the data is known, both UIs name the run by profile and data hash (e.g. train-cpu-1a2b3c4d)."""
    from prefect.client.orchestration import get_client
    from prefect.runtime import flow_run

    name = f"{MlflowClient().get_run(run_id).info.run_name}-{data_hash}"
    MlflowClient().set_tag(run_id, "mlflow.runName", name)
    if flow_run.id:
        with get_client(sync_client=True) as client:
            client.update_flow_run(flow_run.id, name=name)
    return name


@_counted
def describe_run(run_id: str, markdown: str) -> None:
    """The run's Description in the MLflow UI (what a reviewer reads first)."""
    MlflowClient().set_tag(run_id, "mlflow.note.content", markdown)


@contextmanager
def active(run_id: str) -> Iterator[None]:
    """Enter the fluent API for `run_id` (for mlflow.<flavor>.log_model); its time counts as logging."""
    t0 = time.perf_counter()
    current = mlflow.active_run()
    try:
        if current is not None and current.info.run_id == run_id:
            yield
            return
        with mlflow.start_run(run_id=run_id):
            yield
        MlflowClient().update_run(run_id, status="RUNNING")  # the flow closes the run, not this helper
    finally:
        _logging_seconds[run_id] = _logging_seconds.get(run_id, 0.0) + time.perf_counter() - t0


@contextmanager
def timed(run_id: str, stage: str) -> Iterator[None]:
    t0 = time.perf_counter()
    yield
    retrying(MlflowClient().log_metric)(run_id, f"time_s/{stage}", time.perf_counter() - t0)


def logged_steps(run_id: str, key: str) -> set[int]:
    """The steps at which the run already holds the metric (another process may have logged them)."""
    return {m.step for m in retrying(MlflowClient().get_metric_history)(run_id, _key(key))}


@_counted
def log_metrics(run_id: str, values: dict[str, float], step: int = 0) -> None:
    ts = int(time.time() * 1000)
    metrics = [mlflow.entities.Metric(_key(k), float(v), ts, step) for k, v in values.items() if v == v]
    for start in range(0, len(metrics), 500):
        MlflowClient().log_batch(run_id, metrics=metrics[start : start + 500])


@_counted
def log_json(run_id: str, obj: object, artifact_file: str) -> None:
    MlflowClient().log_text(run_id, json.dumps(obj, indent=2, default=_plain), artifact_file)


@_counted
def log_text(run_id: str, text: str, artifact_file: str) -> None:
    MlflowClient().log_text(run_id, text, artifact_file)


@_counted
def log_dir(run_id: str, local: Path, artifact_path: str) -> None:
    MlflowClient().log_artifacts(run_id, str(local), artifact_path)


@_counted
def log_figure(run_id: str, figure, artifact_file: str) -> None:
    MlflowClient().log_figure(run_id, figure, artifact_file)


@_counted
def log_table(run_id: str, rows: list[dict], artifact_file: str) -> None:
    """A JSON table MLflow's UI renders (artifact view + run comparison)."""
    import pandas as pd

    MlflowClient().log_table(run_id, pd.DataFrame(rows), artifact_file)


@_counted
def log_csv(run_id: str, rows: list[dict], artifact_file: str) -> None:
    """The same rows as a CSV file (for a spreadsheet or pandas)."""
    import pandas as pd

    MlflowClient().log_text(run_id, pd.DataFrame(rows).to_csv(index=False), artifact_file)


@_counted
def set_tags(run_id: str, tags: dict[str, object]) -> None:
    """Run tags (the overview's Tags box): short facts a reviewer reads without opening an artifact."""
    MlflowClient().log_batch(run_id, tags=[mlflow.entities.RunTag(k, str(v)) for k, v in tags.items()])


@_counted
def log_dataset(
    run_id: str, schema_rows, name: str, digest: str, source: str, profile: dict, context: str = "training"
) -> None:
    """The run's input dataset (the UI's dataset panel): its schema read from `schema_rows` (a pandas frame, a few
    rows), its profile (what the panel lists, `num_rows: ...`) the whole dataset's real sizes from `profile`,
    never the size of the rows the schema was read from."""
    import warnings

    from mlflow.entities import Dataset, DatasetInput, InputTag
    from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT

    with warnings.catch_warnings():  # MLflow finds two equivalent local-source classes and says so
        warnings.simplefilter("ignore", UserWarning)
        entity = mlflow.data.from_pandas(schema_rows, source=source, name=name, digest=digest)._to_mlflow_entity()
    dataset = Dataset(entity.name, entity.digest, entity.source_type, entity.source, entity.schema, json.dumps(profile))
    MlflowClient().log_inputs(run_id, datasets=[DatasetInput(dataset, [InputTag(MLFLOW_DATASET_CONTEXT, context)])])


def load_json(run_id: str, artifact_file: str) -> dict:
    """A JSON artifact of a run (e.g. the gate decision an online look starts from)."""
    return mlflow.artifacts.load_dict(f"runs:/{run_id}/{artifact_file}")


def tracking_uri() -> str:
    """The store this process logs to: a DDP rank or a Ray worker is pointed at it with `use_store`."""
    return mlflow.get_tracking_uri()


def use_store(uri: str) -> None:
    if mlflow.get_tracking_uri() != uri:
        mlflow.set_tracking_uri(uri)


def record_run(experiment: str, run_name: str, tags: dict[str, str], metrics: dict[str, float], params: dict) -> str:
    """A finished run in one call, for a job whose whole record is known at its end (batch inference)."""
    client = MlflowClient()
    run = client.create_run(experiment, run_name=run_name, tags=tags)
    log_metrics(run.info.run_id, metrics)
    for key, value in params.items():
        client.log_param(run.info.run_id, key, str(value))
    client.set_terminated(run.info.run_id, "FINISHED")
    return run.info.run_id


def log_onnx_model(
    run_id: str, graph, name: str, registered_model_name: str, input_example: dict, pip_requirements: list[str]
) -> str:
    """Log the ONNX graph as an MLflow model of the run, registered as a new version of `registered_model_name`;
    MLflow loads it and scores `input_example` as a check. Returns the new version."""
    with active(run_id), quiet_onnxruntime():
        info = mlflow.onnx.log_model(
            graph,
            name=name,
            registered_model_name=registered_model_name,
            signature=onnx_signature(graph),
            input_example=input_example,
            save_as_external_data=False,
            onnx_execution_providers=["CUDAExecutionProvider", "CPUExecutionProvider"],
            pip_requirements=pip_requirements,
        )
    return str(info.registered_model_version)


@contextmanager
def quiet_onnxruntime() -> Iterator[None]:
    """ONNX Runtime's own log cut to fatal errors, while MLflow loads a just-logged ONNX model to check its input
    example with the model's providers: on a host without CUDA, ORT would log the CUDA provider's failed load as an
    error, then run on CPU (what make_session does quietly). A failed check is still MLflow's warning."""
    import onnxruntime as ort

    ort.set_default_logger_severity(4)
    try:
        yield
    finally:
        ort.set_default_logger_severity(2)  # ONNX Runtime's default (warnings)


def onnx_signature(graph):
    """The MLflow signature (the registered version's Schema) of an ONNX graph (onnx.ModelProto): every graph
    input and output with its dtype and shape, -1 for a dynamic axis (batch, tokens)."""
    import numpy as np
    from mlflow.models import ModelSignature
    from mlflow.types import Schema, TensorSpec
    from onnx.helper import tensor_dtype_to_np_dtype

    def spec(value) -> TensorSpec:
        tensor = value.type.tensor_type
        shape = tuple(d.dim_value if d.HasField("dim_value") else -1 for d in tensor.shape.dim)
        return TensorSpec(np.dtype(tensor_dtype_to_np_dtype(tensor.elem_type)), shape, value.name)

    initializers = {i.name for i in graph.graph.initializer}  # older exporters list weights as inputs too
    inputs = [spec(v) for v in graph.graph.input if v.name not in initializers]
    return ModelSignature(inputs=Schema(inputs), outputs=Schema([spec(v) for v in graph.graph.output]))


def scratch_dir(prefix: str) -> Path:
    return Path(tempfile.mkdtemp(prefix=f"instructrec-{prefix}-"))


def _key(name: str) -> str:
    """MLflow metric keys allow [A-Za-z0-9_-./ ]; '@' is spelled 'at'."""
    return name.replace("@", "_at_")


def _plain(value):
    if hasattr(value, "tolist"):
        return value.tolist()
    if hasattr(value, "isoformat"):
        return value.isoformat()
    return str(value)
