"""The same pipeline against an MLflow server backed by a local PostgreSQL server (Debian's package)."""

from __future__ import annotations

import shutil

import pytest
import sqlalchemy

from flows.training import training_pipeline
from instructrec.config import load_config
from model_registry import registry
from ops.stack import LocalPostgres, Stack, free_port
from tests.flows.conftest import isolated_home

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("prefect_api")]


@pytest.fixture(scope="module")
def postgres_stack(tmp_path_factory):
    # no skip: `make test` installs the server (make system-deps); without it up() fails saying so
    with isolated_home(tmp_path_factory.mktemp("pg")) as (home, data, mp):
        mp.setenv("MLFLOW_BACKEND", "postgres")
        cfg = load_config("tiny", overrides={"stack": {"mlflow_port": free_port(), "postgres_port": free_port()}})
        ops = Stack(cfg)
        try:
            endpoints = ops.up(prefect=False)
            mp.setenv("MLFLOW_TRACKING_URI", endpoints.mlflow)
            yield ops, endpoints, data
        finally:
            ops.down()
            shutil.rmtree(LocalPostgres(ops.dir, cfg.stack.postgres_port).data_dir, ignore_errors=True)
    assert not ops.running()


def test_pipeline_on_postgres_backed_mlflow_registers_and_promotes(postgres_stack):
    ops, endpoints, data = postgres_stack
    assert endpoints.backend_store.startswith("postgresql")
    summary = training_pipeline(profile="tiny", data=str(data))
    assert summary.version == "1" and summary.outcome == "promote"
    registry.connect(endpoints.mlflow)
    assert registry.aliases() == {"champion": "1"}
    run = registry.client().get_run(summary.run_id)
    assert run.info.status == "FINISHED" and "test/challenger/ndcg_at_10" in run.data.metrics

    engine = sqlalchemy.create_engine(endpoints.backend_store)  # the rows live in PostgreSQL, not in a file
    with engine.connect() as db:
        assert (
            db.execute(sqlalchemy.text("select status from runs where run_uuid = :r"), {"r": summary.run_id}).scalar()
            == "FINISHED"
        )
        assert db.execute(sqlalchemy.text("select count(*) from model_versions")).scalar() == 1
        assert db.execute(sqlalchemy.text("select alias from registered_model_aliases")).scalar() == "champion"
    engine.dispose()
