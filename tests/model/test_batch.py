"""Batch inference: the Ray Data actor pool ranks exactly as one process does."""

from datetime import UTC, datetime

import polars as pl
import pytest

from instructrec.config import RuntimeConfig
from instructrec.engine.batch import BatchJob, read_top_k, top_k_local, top_k_ray, write_users
from instructrec.engine.cluster import actor_pool_size
from instructrec.serving.export import export_onnx
from instructrec.serving.recommend import Recommender, top_k_all, user_histories, write_bundle
from tests.conftest import make_tables
from tests.model.conftest import build_model


@pytest.fixture(scope="module")
def batch_model(tiny_cfg, prepared, tmp_path_factory):
    root = tmp_path_factory.mktemp("batch")
    model, tok = build_model(tiny_cfg, prepared, seed=3)
    graph = export_onnx(model.eval(), tok, root / "m.onnx")
    bundle = write_bundle(root / "bundle", tok, prepared.catalogue, 20, model.config.max_text_tokens, "hash")
    inter, _ = make_tables()
    histories = user_histories(
        inter.with_columns(pl.col("timestamp").str.to_datetime(time_zone="UTC")), prepared.catalogue
    )
    return (graph, bundle), write_users(histories, root / "users", users_per_file=8), histories


def test_local_engine_ranks_as_the_recommender(batch_model, tmp_path):
    (graph, bundle), users, histories = batch_model
    rec = Recommender.from_bundle(graph, bundle, "3")
    rec.histories = histories
    expected = top_k_all(rec, k=5)
    job = BatchJob(graph, bundle, "3", 5, datetime(2026, 1, 2, tzinfo=UTC))
    got = read_top_k(top_k_local(job, users, tmp_path / "out", RuntimeConfig(batch_users=7)))
    expected = expected.sort("user_id", "rank")
    assert got.select("user_id", "rank", "item_id").equals(expected.select("user_id", "rank", "item_id"))
    assert (got["score"] - expected["score"]).abs().max() <= 1e-5  # other batch compositions: float noise only
    assert got["model_version"].unique().to_list() == ["3"] and got["variant"].unique().to_list() == ["fp32"]
    assert got.height == 5 * len(histories)


@pytest.mark.integration
def test_ray_actor_pool_gives_the_single_process_top_k(batch_model, ray_local, tmp_path):
    (graph, bundle), users, histories = batch_model
    runtime = RuntimeConfig(engine="ray", batch_users=16, actors=2)
    job = BatchJob(graph, bundle, "3", 10, datetime(2026, 1, 2, tzinfo=UTC))
    local = read_top_k(top_k_local(job, users, tmp_path / "local", runtime))
    distributed = read_top_k(top_k_ray(job, users, tmp_path / "ray", runtime))
    assert len(list((tmp_path / "ray").glob("*.parquet"))) >= 1
    assert distributed.select("user_id", "rank", "item_id").equals(local.select("user_id", "rank", "item_id"))
    assert (distributed["score"] - local["score"]).abs().max() <= 1e-5
    assert distributed["user_id"].n_unique() == len(histories)
    assert distributed["generated_at"].unique().to_list() == [job.generated_at]


def test_a_pool_that_would_take_every_cpu_is_refused():
    with pytest.raises(ValueError, match="at most 2 inference actors"):
        actor_pool_size({"CPU": 3.0}, RuntimeConfig(actors=3))
    with pytest.raises(ValueError, match="at most 0"):
        actor_pool_size({"CPU": 1.0}, RuntimeConfig())
    assert actor_pool_size({"CPU": 9.0}, RuntimeConfig(actor_threads=2)) == 4
