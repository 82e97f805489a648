"""Data tasks: ingest (snapshot by content hash), validate (GX), prepare."""

from __future__ import annotations

import shutil

import polars as pl
from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from adapters import tracking
from expectations.runner import ValidationOutcome, suite_parameters, validate_table
from instructrec.config import Config
from instructrec.data import schema
from instructrec.data.snapshot import Snapshot, snapshot_raw, write_tables
from instructrec.data.sources import Tables, fetch_raw, read_tables
from instructrec.errors import DataValidationError, SourceError
from instructrec.online.feedback import read_store
from instructrec.training.prepare import Prepared, prepare


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
    # sizes are run tags (the overview shows them; prepare adds the input's), not one-bar metric charts
    tracking.set_tags(run_id, {"data.feedback_store": store.height})
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
    tracking.log_json(run_id, lineage, "data/lineage.json")  # the prepared split's sizes (were data/* metrics)
    _log_dataset_input(run_id, tables, snap)
    return prepared


SCHEMA_ROWS = 1000  # rows the dataset's schema is read from; never its size


def dataset_profile(tables: Tables, snap: Snapshot) -> dict:
    """What the MLflow UI's dataset panel lists (`num rows: ...`): the whole input's real sizes and its hash."""
    inter = tables.interactions
    return {
        "num_rows": inter.height,  # interactions, all of them
        "users": inter[schema.USER].n_unique(),
        "items": tables.items.height,
        "content_hash": snap.hash,
        "schema_read_from_first_rows": min(SCHEMA_ROWS, inter.height),
    }


def _log_dataset_input(run_id: str, tables: Tables, snap: Snapshot) -> None:
    """Show the snapshot as the run's input dataset in the MLflow UI: name, content hash, and the full input's
    row, user and item counts (its profile and run tags); the schema is read from its first rows."""
    profile = dataset_profile(tables, snap)
    rows = tables.interactions.head(SCHEMA_ROWS).drop(schema.ROW, strict=False).to_pandas()
    tracking.log_dataset(
        run_id, rows, f"interactions-{snap.short}", snap.hash[:32], str(snap.raw_dir), profile, context="training"
    )
    tracking.set_tags(
        run_id,
        {
            "data.interactions": profile["num_rows"],
            "data.users": profile["users"],
            "data.items": profile["items"],
            "data.snapshot_hash": snap.hash,
        },
    )


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
