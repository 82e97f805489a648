"""Data tasks: ingest (snapshot by content hash), validate (GX), prepare."""

from __future__ import annotations

import shutil

import polars as pl
from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from adapters import tracking
from expectations.runner import ValidationOutcome, suite_parameters, validate_table
from instructrec import schema
from instructrec.config import Config
from instructrec.errors import DataValidationError, SourceError
from instructrec.feedback import read_store
from instructrec.prepare import Prepared, prepare
from instructrec.snapshot import Snapshot, snapshot_raw, write_tables
from instructrec.sources import Tables, fetch_raw, read_tables


def _not_the_users_input(task, task_run, state) -> bool:
    """Retry what may pass next time (network, disk); never input the user has to fix first."""
    try:
        state.result()
    except (SourceError, DataValidationError):
        return False
    except Exception:
        return True
    return True


@task(name="ingest", retries=2, retry_delay_seconds=5, retry_condition_fn=_not_the_users_input, cache_policy=NO_CACHE)
def ingest(cfg: Config) -> Snapshot:
    """Fetch the source's raw files and keep them by content hash (retried: network, disk)."""
    raw = fetch_raw(cfg.data.source, cfg.paths.downloads, cfg.data.max_file_bytes)
    snap = snapshot_raw(raw, cfg.paths.snapshots)
    state = "new snapshot" if snap.created else "already ingested (no-op)"
    get_run_logger().info("input %s -> snapshot %s: %s", raw.origin, snap.short, state)
    return snap


@task(name="validate", task_run_name="validate-{snap.short}", cache_policy=NO_CACHE)
def validate(cfg: Config, snap: Snapshot, run_id: str) -> Tables:
    """Read the snapshot and run the expectation suites; raise before training on failure.

    All suites share one GX project, so a single data-docs site (logged even
    when a suite fails) shows every table's validation.
    """
    logger = get_run_logger()
    tables = read_tables(snap.kind, snap.raw_dir)  # raises DataValidationError on unparseable values
    workdir = tracking.scratch_dir("gx")
    outcomes: list[ValidationOutcome] = []

    def check(table: str, df: pl.DataFrame, file: str, params: dict | None = None) -> None:
        outcome = validate_table(table, df, file, workdir, params, cfg.data.validation_sample_rows)
        outcomes.append(outcome)
        tracking.log_json(run_id, outcome.result, f"validation/{table}.json")
        outcome.raise_for_failure()

    store = read_store(cfg.paths.feedback)
    limits = suite_parameters(cfg.data)
    try:
        check("items", tables.items, tables.files["items"], limits["items"])
        catalogue = tables.items[schema.ITEM].drop_nulls().to_list()
        check(
            "interactions",
            tables.interactions,
            tables.files["interactions"],
            {**limits["interactions"], "catalogue": catalogue},
        )
        if store.height:
            check("feedback", store, str(cfg.paths.feedback))
    finally:
        if outcomes and outcomes[-1].docs_dir.exists():
            tracking.log_dir(run_id, outcomes[-1].docs_dir, "validation/data_docs")
        shutil.rmtree(workdir, ignore_errors=True)
    write_tables(snap, tables)
    stats = {
        "rows_interactions": tables.interactions.height,
        "rows_items": tables.items.height,
        "rows_feedback_store": store.height,
    }
    tracking.log_metrics(run_id, {f"data/{k}": v for k, v in stats.items()})
    logger.info("validation passed: %s", stats)
    return tables


@task(name="prepare", task_run_name="prepare-{snap.short}", cache_policy=NO_CACHE)
def prepare_data(cfg: Config, tables: Tables, snap: Snapshot, run_id: str) -> Prepared:
    """Split, instructions and evaluation cases; lineage goes to MLflow."""
    prepared = prepare(cfg, tables.interactions, tables.items, tables.item_noun)
    lineage = {
        "snapshot_hash": snap.hash,
        "source": snap.origin,
        **prepared.lineage(),
        "types": {t: len(c.users) for t, c in prepared.test_cases.items()},
    }
    tracking.log_json(run_id, lineage, "data/lineage.json")
    tracking.log_metrics(run_id, {f"data/{k}": v for k, v in prepared.lineage().items()})
    _log_dataset_input(run_id, tables.interactions, snap)
    return prepared


def _log_dataset_input(run_id: str, interactions: pl.DataFrame, snap: Snapshot) -> None:
    """Show the snapshot as the run's input dataset (name + content hash) in the MLflow UI."""
    import warnings

    import mlflow

    sample = interactions.head(1000).drop(schema.ROW, strict=False).to_pandas()
    with warnings.catch_warnings():  # MLflow finds two equivalent local-source classes and says so
        warnings.simplefilter("ignore", UserWarning)
        dataset = mlflow.data.from_pandas(
            sample, source=str(snap.raw_dir), name=f"interactions-{snap.short}", digest=snap.hash[:32]
        )
    with tracking.active(run_id):
        mlflow.log_input(dataset, context="training")


def ingest_validate_prepare(cfg: Config, run_id: str) -> tuple[Snapshot, Prepared]:
    """The data stages every training flow starts with, each timed in the flow's MLflow run."""
    with tracking.timed(run_id, "ingest"):
        snap = ingest(cfg)
    tracking.name_runs(run_id, snap.short)
    tracking.log_json(run_id, {"snapshot": snap.hash, "origin": snap.origin, "new": snap.created}, "data/snapshot.json")
    with tracking.timed(run_id, "validate"):
        tables = validate(cfg, snap, run_id)
    with tracking.timed(run_id, "prepare"):
        prepared = prepare_data(cfg, tables, snap, run_id)
    return snap, prepared


__all__ = ["ingest", "validate", "prepare_data", "ingest_validate_prepare", "DataValidationError"]
