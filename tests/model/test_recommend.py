"""Serving from an exported graph: top-k for all users, history excluded, k clamped to the catalogue."""

import numpy as np
import polars as pl

from instructrec.serving.export import export_onnx
from instructrec.serving.recommend import Recommender, top_k_all, write_bundle
from tests.conftest import make_tables
from tests.model.conftest import build_model


def test_top_k_all_excludes_history_and_clamps_k(tiny_cfg, prepared, tmp_path):
    model, tok = build_model(tiny_cfg, prepared)
    graph = export_onnx(model.eval(), tok, tmp_path / "m.onnx")
    bundle = write_bundle(tmp_path / "bundle", tok, prepared.catalogue, 20, model.config.max_text_tokens, "hash")
    inter, _ = make_tables()
    inter = inter.with_columns(pl.col("timestamp").str.to_datetime(time_zone="UTC"))
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
