"""Serving from an exported graph: top-k for all users, history excluded, k clamped to the catalogue; concurrent
requests batched."""

import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import polars as pl
import pytest

from instructrec.serving.batching import BatchPolicy
from instructrec.serving.export import export_onnx
from instructrec.serving.recommend import LoadOptions, Recommender, top_k_all, write_bundle
from tests.conftest import make_tables
from tests.model.conftest import build_model


@pytest.fixture(scope="module")
def exported(tiny_cfg, prepared, tmp_path_factory):
    """(fp32 graph, bundle, interactions) of a fresh tiny scorer."""
    out = tmp_path_factory.mktemp("recommend")
    model, tok = build_model(tiny_cfg, prepared)
    graph = export_onnx(model.eval(), tok, out / "m.onnx")
    bundle = write_bundle(out / "bundle", tok, prepared.catalogue, 20, model.config.max_text_tokens, "hash")
    inter, _ = make_tables()
    return graph, bundle, inter.with_columns(pl.col("timestamp").str.to_datetime(time_zone="UTC"))


def test_top_k_all_excludes_history_and_clamps_k(prepared, exported):
    graph, bundle, inter = exported
    rec = Recommender.load(graph, bundle, inter, version="7")
    n_items = prepared.catalogue.n_items
    table = top_k_all(rec, k=n_items + 5)
    assert table.group_by("user_id").len()["len"].unique().to_list() == [n_items - 1]
    top = top_k_all(rec, k=3)
    seen = inter.select("user_id", "item_id")
    assert top.join(seen, on=["user_id", "item_id"]).height == 0
    one = rec.recommend("u1", k=3)
    assert [i["item_id"] for i in one["items"]] == top.filter(pl.col("user_id") == "u1").sort("rank")[
        "item_id"
    ].to_list()
    assert np.isfinite(top["score"].to_numpy()).all() and one["variant"] == "fp32"


def test_batched_requests_get_the_lists_they_get_alone(exported):
    """Concurrent requests scored in shared calls (the service's micro-batching) list the same items, in the same
    order, with the same reasons as each scored alone; the scores agree to float rounding."""
    graph, bundle, inter = exported
    alone = Recommender.load(graph, bundle, inter, version="7")
    batched = Recommender.load(graph, bundle, inter, "7", LoadOptions(batching=BatchPolicy(max_rows=8, wait_ms=500)))
    wordings = [None, "something funny", "anything but drama please", "a scary horror film", "romance or comedy"]
    requests = [(f"u{u}", wordings[u % len(wordings)]) for u in range(12)]
    start = threading.Barrier(len(requests))

    def ask(req):
        start.wait()
        return batched.recommend(req[0], req[1], k=5)

    with ThreadPoolExecutor(len(requests)) as pool:
        shared = list(pool.map(ask, requests))
    assert batched.batcher is not None and batched.batcher.calls < len(requests)  # calls were shared
    for req, got in zip(requests, shared, strict=True):
        want = alone.recommend(req[0], req[1], k=5)
        assert [(i["item_id"], i["reason"]) for i in got["items"]] == [
            (i["item_id"], i["reason"]) for i in want["items"]
        ]
        np.testing.assert_allclose([i["score"] for i in got["items"]], [i["score"] for i in want["items"]], atol=2e-4)
    batched.close()
