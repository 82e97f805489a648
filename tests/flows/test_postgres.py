"""The same pipeline against an MLflow server backed by a local PostgreSQL server (Debian's package),
its artifacts in an S3 bucket (a local S3 endpoint from moto[server]) that only the server can reach."""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from pathlib import Path

import boto3
import httpx
import pytest
import sqlalchemy

from flows.training import training_pipeline
from instructrec.config import load_config
from model_registry import registry
from model_registry.serving import load_champion
from ops.stack import LocalPostgres, Stack, free_port
from tests.flows.conftest import isolated_home

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("prefect_api")]


BUCKET = "mlflow-artifacts"
S3_CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}


@pytest.fixture(scope="module")
def s3_endpoint(tmp_path_factory):
    """A local S3 endpoint (moto's server, its own process) holding one empty bucket."""
    port = free_port()
    log = tmp_path_factory.mktemp("moto") / "moto.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [str(Path(sys.executable).parent / "moto_server"), "-H", "127.0.0.1", "-p", str(port)],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(120):
            try:
                httpx.get(url, timeout=1)
                break
            except httpx.HTTPError:
                time.sleep(0.25)
        s3 = boto3.client("s3", endpoint_url=url, **{k.lower(): v for k, v in S3_CREDENTIALS.items() if "KEY" in k})
        s3.create_bucket(Bucket=BUCKET)
        yield url, s3
    finally:
        proc.terminate()
        proc.wait(timeout=30)


@pytest.fixture(scope="module")
def postgres_stack(tmp_path_factory, s3_endpoint):
    # no skip: `make test` installs the server (make system-deps); without it up() fails saying so
    url, s3 = s3_endpoint
    with isolated_home(tmp_path_factory.mktemp("pg")) as (home, data, mp):
        mp.setenv("MLFLOW_BACKEND", "postgres")
        mp.setenv("MLFLOW_ARTIFACTS_DESTINATION", f"s3://{BUCKET}/mlflow")
        for key, value in {**S3_CREDENTIALS, "MLFLOW_S3_ENDPOINT_URL": url}.items():
            mp.setenv(key, value)  # the server's environment, taken at up()
        cfg = load_config("tiny", overrides={"stack": {"mlflow_port": free_port(), "postgres_port": free_port()}})
        ops = Stack(cfg)
        try:
            endpoints = ops.up(prefect=False)
            for key in [*S3_CREDENTIALS, "MLFLOW_S3_ENDPOINT_URL"]:
                mp.delenv(key)  # the client (flows, serving) holds no S3 credentials: the server proxies
            mp.setenv("MLFLOW_TRACKING_URI", endpoints.mlflow)
            yield ops, endpoints, data, s3
        finally:
            ops.down()
            shutil.rmtree(LocalPostgres(ops.dir, cfg.stack.postgres_port).data_dir, ignore_errors=True)
    assert not ops.running()


def test_pipeline_on_postgres_backed_mlflow_registers_and_promotes(postgres_stack):
    ops, endpoints, data, s3 = postgres_stack
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

    # the run's artifacts and the registered model live in the bucket, and nowhere under the home
    keys = [
        o["Key"]
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=BUCKET)
        for o in page.get("Contents", [])
    ]
    assert any(k.endswith("model.onnx") for k in keys) and any(k.endswith("serving.json") for k in keys), keys[:20]
    assert not list((ops.cfg.paths.home / "mlartifacts").rglob("*.onnx"))
    served = load_champion(load_config("tiny"))  # downloaded through the server from S3
    assert served.version == "1" and served.recommend("u1", k=3)["items"]
