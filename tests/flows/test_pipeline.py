"""Whole-flow runs (tiny profile) under a real, temporary Prefect API."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime
from pathlib import Path

import mlflow
import polars as pl
import pytest

from flows.training import training_pipeline
from flows.training_ray import training_pipeline_ray
from instructrec.engine.batch import read_top_k
from instructrec.errors import DataValidationError
from instructrec.online.feedback import append_events
from instructrec.serving.export import make_session
from model_registry import registry
from ops.cli import main
from tests.conftest import write_dataset
from tests.flows.conftest import isolated_home

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("prefect_api")]


@pytest.fixture(scope="module")
def runs(tmp_path_factory, ray_local):
    """Two pipeline runs on the same data, with feedback arriving in between; the second on the Ray engine
    (DDP ranks, evaluation fanned out as Ray tasks), as `--set runtime.engine=ray` runs it."""
    with isolated_home(tmp_path_factory.mktemp("flow")) as (home, data, mp):
        first = training_pipeline(profile="tiny", data=str(data))
        append_events(
            home / "feedback",
            pl.DataFrame(
                {
                    "user_id": ["u1", "u2", "u3"],
                    "item_id": ["i1", "i8", None],
                    "kind": ["like", "dislike", "instruction"],
                    "text": [None, None, "a scary one"],
                    "model_version": ["1"] * 3,
                    "arm": ["champion"] * 3,
                    "request_id": ["r1", "r2", "r3"],
                    "timestamp": [datetime(2024, 1, 1, tzinfo=UTC)] * 3,
                }
            ),
        )
        # a gain no model can show (NDCG@10 up by 1.0): the second run's gate fails at least on "win"
        overrides = {"runtime": {"engine": "ray"}, "gate": {"min_gain": 1.0}}
        second = training_pipeline_ray(profile="tiny", data=str(data), overrides=overrides)
        yield {"home": home, "data": data, "first": first, "second": second, "mp": mp}


def test_first_run_registers_v1_as_champion(runs):
    first = runs["first"]
    assert first.version == "1" and first.outcome == "promote"
    assert set(first.metrics) == {"challenger", "popularity", "sasrec"}


def test_second_run_judges_v2_against_v1_and_a_failed_gate_moves_no_champion(runs):
    second = runs["second"]
    assert second.version == "2" and set(second.metrics) == {"challenger", "champion", "popularity", "sasrec"}
    assert second.outcome != "promote" and any(r.startswith("win") for r in second.reasons), second.reasons
    aliases = registry.aliases()
    assert aliases["champion"] == "1" and "previous-champion" not in aliases
    # failing only the offline "win" makes it the challenger of an A/B test; any other failure: no alias
    only_win_failed = [r for r in second.reasons if r.startswith("win")] == second.reasons
    assert (aliases.get("challenger") == "2") == only_win_failed
    description = registry.client().get_model_version(registry.MODEL_NAME, "2").description
    assert description.startswith("Gate: ") and "delta ndcg@10" in description


def test_mlflow_run_holds_what_a_reviewer_needs(runs):
    client = registry.client()
    run = client.get_run(runs["second"].run_id)
    assert run.info.status == "FINISHED"
    assert run.data.params["profile"] == "tiny"
    keys = set(run.data.metrics)
    for key in (
        "test/challenger/ndcg_at_10",
        "test/champion/ndcg_at_10",
        "test/popularity/ndcg_at_10",
        "test/sasrec/ndcg_at_10",
        "sasrec/val_ndcg_at_10",
        "representation/val_ndcg_at_10",
        "time_s/train_representation",
    ):
        assert key in keys, key
    examples = mlflow.artifacts.load_dict(f"{run.info.artifact_uri}/feedback/examples.json")
    assert examples["from_store"] == 2  # the like and the dislike; the item-less instruction is skipped
    onnx = mlflow.artifacts.load_dict(f"{run.info.artifact_uri}/onnx/parity.json")
    assert onnx["parity"]["max_abs_diff"] < 1e-3 and onnx["size_mb"] > 0
    paths = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"validation", "evaluation", "gate", "checkpoint", "serving", "representation", "data"} <= paths
    table = mlflow.artifacts.load_text(f"{run.info.artifact_uri}/evaluation/table.md")
    for row in (
        "| P1/I0 | challenger |",
        "| P1/I0 | sasrec |",
        "| P0/I1/held-out | popularity |",
        "| P1/I0/held-out | challenger |",
        "| overall | champion",
    ):
        assert row in table, row
    assert "s_hr@1" in table.splitlines()[0]  # the 1+9 protocol beside full ranking
    versus = json.loads(mlflow.artifacts.load_text(f"{run.info.artifact_uri}/evaluation/vs_sasrec.json"))
    head = versus["by_type"]["P1/I0"]
    assert head["ci_low"] <= head["delta_ndcg@10"] <= head["ci_high"]
    decision = json.loads(mlflow.artifacts.load_text(f"{run.info.artifact_uri}/gate/decision.json"))
    # the offline decision as judged; the version's outcome may be "challenger" (only the "win" failed)
    assert decision["outcome"] == "reject" and decision["version"] == "2"
    assert runs["second"].outcome in {"reject", "challenger"}
    docs = {a.path for a in client.list_artifacts(run.info.run_id, "validation/data_docs")}
    assert "validation/data_docs/index.html" in docs
    pages = {a.path for a in client.list_artifacts(run.info.run_id, "validation/data_docs/validations")}
    assert {"validation/data_docs/validations/items", "validation/data_docs/validations/interactions"} <= pages


def test_a_run_record_for_the_results_pages_holds_the_runs_own_numbers(runs):
    """`make results-export` on a real run: the record repeats the logged tables, and its section renders."""
    from ops import results

    first = runs["first"]
    client = registry.client()
    rec = results.record_from_run(client, first.run_id, "tiny", "make run")
    run = client.get_run(first.run_id)
    assert rec["commit"] == run.data.tags["mlflow.source.git.commit"][:7] and rec["profile"] == "tiny"
    assert rec["data"]["users"] == int(run.data.tags["data.users"]) and rec["wall_s"] > 0
    table = mlflow.artifacts.load_dict(f"{run.info.artifact_uri}/evaluation/metrics_table.json")
    row = dict(zip(table["columns"], table["data"][0], strict=True))
    key = row["type"] if row["templates"] == "seen" else f"{row['type']}/held-out"
    assert rec["scores"][row["model"]][key]["ndcg@10"] == pytest.approx(row["ndcg@10"], abs=1e-6)
    assert set(rec["scores"]) == {"challenger", "popularity", "sasrec"} and "train_representation" in rec["stage_s"]
    text = results.section(rec)
    assert f"{rec['scores']['challenger']['P1/I0']['ndcg@10']:.4f}" in text and "commit" in text


# The run page a reviewer decides from: the gate's and the test's headline numbers, per-epoch curves of each
# training stage with the kept epoch as its summary, stage timings (bench/pipeline.py reads them); every table
# (type x template set x k x slice) is an artifact.
STAGES = ("sasrec", "representation", "feedback")
STAGE_KEYS = {"train_loss", "val_ndcg_at_10", "epoch_seconds", "best_val_ndcg_at_10", "best_epoch", "examples_per_s"}
HEADLINE = {
    "gate/promoted",
    "test/challenger/ndcg_at_10",
    "test/challenger/hr_at_10",
    "test/challenger/delta_ndcg_at_10_vs_popularity",
    "test/challenger/delta_ndcg_at_10_vs_sasrec",
    "test/popularity/ndcg_at_10",
    "test/sasrec/ndcg_at_10",
}


@pytest.mark.parametrize("which", ["first", "second"])
def test_the_run_page_shows_a_dozen_headline_metrics_not_a_wall_of_one_bar_charts(runs, which):
    client = registry.client()
    run = client.get_run(runs[which].run_id)
    metrics = run.data.metrics
    top = {k for k in metrics if k.split("/")[0] not in (*STAGES, "time_s")}
    expected = HEADLINE | (
        {"test/champion/ndcg_at_10", "test/challenger/delta_ndcg_at_10_vs_champion"} if which == "second" else set()
    )
    # 16 on a second run: the gate's, NDCG and HR per arm with the three deltas, four request-class numbers
    assert expected <= top and len(top) <= 16, sorted(top)
    for stage in STAGES:
        assert {k.split("/", 1)[1] for k in metrics if k.startswith(f"{stage}/")} <= STAGE_KEYS, stage
    assert len(metrics) <= 45, len(metrics)  # was 969 on ML-100k: per type, k and slice
    report = mlflow.artifacts.load_dict(f"{run.info.artifact_uri}/evaluation/report.json")
    ours = report["challenger"]["overall"]["ndcg@10"]
    assert metrics["test/challenger/ndcg_at_10"] == pytest.approx(ours)
    assert metrics["test/challenger/delta_ndcg_at_10_vs_sasrec"] == pytest.approx(
        ours - report["sasrec"]["overall"]["ndcg@10"]
    )
    # the tables the metrics held: every model x (type and template set, overall), every model x slice
    rows = json.loads(mlflow.artifacts.load_text(f"{run.info.artifact_uri}/evaluation/metrics_table.json"))
    assert len(rows["data"]) == sum(len(r["by_type"]) + 1 for r in report.values())
    csv = mlflow.artifacts.load_text(f"{run.info.artifact_uri}/evaluation/metrics_table.csv").splitlines()
    assert csv[0].startswith("model,type,templates,users,") and len(csv) == 1 + len(rows["data"])
    slices = json.loads(mlflow.artifacts.load_text(f"{run.info.artifact_uri}/evaluation/slices_table.json"))
    assert len(slices["data"]) == sum(len(r["slices"]) for r in report.values())


def test_each_stage_has_epoch_stepped_curves_and_the_kept_epoch_as_its_summary(runs):
    client = registry.client()
    run = client.get_run(runs["first"].run_id)
    for stage in STAGES:
        curve = sorted((m.step, m.value) for m in client.get_metric_history(run.info.run_id, f"{stage}/val_ndcg_at_10"))
        table = json.loads(mlflow.artifacts.load_text(f"{run.info.artifact_uri}/{stage}/history.json"))
        at = {c: i for i, c in enumerate(table["columns"])}
        validated = [r for r in table["data"] if isinstance(v := r[at["val_ndcg@10"]], float) and v == v]
        by_epoch = sorted((int(r[at["epoch"]]) + 1, r[at["val_ndcg@10"]]) for r in validated)
        assert [c[0] for c in curve] == [b[0] for b in by_epoch], stage  # MLflow step = epoch (0: before training)
        assert [c[1] for c in curve] == pytest.approx([b[1] for b in by_epoch], abs=1e-8), stage
        best_step, best = max(curve, key=lambda p: (p[1], -p[0]))  # the first best
        assert run.data.metrics[f"{stage}/best_val_ndcg_at_10"] == pytest.approx(best), stage
        assert run.data.metrics[f"{stage}/best_epoch"] == best_step, stage
        assert len(client.get_metric_history(run.info.run_id, f"{stage}/train_loss")) >= 1, stage
        assert f"{stage}/curves.png" in {a.path for a in client.list_artifacts(run.info.run_id, stage)}


def test_every_pipeline_run_records_its_code_version(runs):
    import subprocess

    head = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, cwd=Path(__file__).parent)
    for which in ("first", "second"):
        tags = registry.client().get_run(runs[which].run_id).data.tags
        assert tags["code.dirty"] in ("true", "false")
        assert tags["mlflow.source.git.commit"] == (head.stdout.strip() if head.returncode == 0 else "unknown")


def test_the_dataset_panel_tells_the_inputs_real_size(runs):
    run = registry.client().get_run(runs["first"].run_id)
    inter = pl.read_csv(runs["data"] / "interactions.csv")
    (used,) = run.inputs.dataset_inputs
    profile = json.loads(used.dataset.profile)
    assert profile["num_rows"] == inter.height  # all of them, not a logged sample's
    assert profile["users"] == inter["user_id"].n_unique()
    assert profile["items"] == pl.read_csv(runs["data"] / "items.csv").height
    assert used.dataset.name.startswith("interactions-") and profile["content_hash"].startswith(used.dataset.digest)
    tags = run.data.tags
    assert int(tags["data.interactions"]) == inter.height and tags["data.snapshot_hash"] == profile["content_hash"]


def test_the_registered_version_has_a_schema_and_an_input_example(runs):
    info = mlflow.models.get_model_info(f"models:/{registry.MODEL_NAME}/1")
    assert info.signature is not None
    inputs = {s.name: s for s in info.signature.inputs.inputs}
    assert set(inputs) == {"input_ids", "attention_mask", "history"}
    assert inputs["history"].shape[0] == -1 and inputs["history"].shape[1] > 0  # any batch, a fixed history
    (scores,) = info.signature.outputs.inputs
    assert scores.name == "scores" and str(scores.type) == "float32"
    assert info.saved_input_example_info is not None
    local = Path(mlflow.artifacts.download_artifacts(f"models:/{registry.MODEL_NAME}/1"))
    example = mlflow.models.Model.load(str(local)).load_input_example(str(local))  # the graph answers it
    scores_out = make_session(local / "model.onnx").run(**example)
    assert scores_out.shape == (1, scores.shape[1]) and example["history"].shape == (1, inputs["history"].shape[1])


def test_the_ray_run_trained_on_ddp_ranks_whose_rank_0_logged_each_epoch_once(runs):
    client = registry.client()
    run = client.get_run(runs["second"].run_id)
    assert run.data.tags["engine"] == "ray" and client.get_run(runs["first"].run_id).data.tags["engine"] == "local"
    table = json.loads(mlflow.artifacts.load_text(f"{run.info.artifact_uri}/representation/history.json"))
    epochs = [row[table["columns"].index("epoch")] for row in table["data"]]  # MLflow's table layout
    trained = sorted(int(e) + 1 for e in epochs if e >= 0)
    steps = [m.step for m in client.get_metric_history(run.info.run_id, "representation/train_loss")]
    assert trained and sorted(steps) == trained  # live from rank 0, not replayed a second time
    assert list((runs["home"] / "checkpoints").glob("*/ddp-2/*"))  # rank 0's per-epoch checkpoint


def test_recommend_answers_from_the_champion_onnx_as_json(runs, capsys):
    assert main(["recommend", "--user-id", "u1", "-k", "5"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["model_version"] == registry.aliases()["champion"]
    assert len(out["items"]) == 5 and out["provider"].endswith("ExecutionProvider")
    inter = pl.read_csv(runs["data"] / "interactions.csv")
    seen = set(inter.filter(pl.col("user_id") == "u1")["item_id"])
    assert not seen & {i["item_id"] for i in out["items"]}
    assert main(["recommend", "--user-id", "stranger", "--instruction", "something scary", "-k", "3"]) == 0
    cold = json.loads(capsys.readouterr().out)
    assert cold["known_user"] is False and len(cold["items"]) == 3
    assert main(["similar", "--item-id", out["items"][0]["item_id"], "-k", "4"]) == 0
    similar = json.loads(capsys.readouterr().out)
    assert len(similar["items"]) == 4 and out["items"][0]["item_id"] not in {i["item_id"] for i in similar["items"]}
    assert main(["similar", "--item-id", "no-such-item"]) == 2 and "unknown item id" in capsys.readouterr().err


def test_every_evaluation_reports_list_quality_tradeoff_and_faithfulness(runs):
    client = registry.client()
    run = client.get_run(runs["first"].run_id)
    report = mlflow.artifacts.load_dict(f"runs:/{run.info.run_id}/evaluation/report.json")
    for model in ("challenger", "popularity"):
        assert 0 < report[model]["overall"]["coverage@10"] <= 1
        assert report[model]["overall"]["novelty@10"] > 0
    # popularity gives everyone nearly the same list: far less of the catalogue than the scorer
    assert report["popularity"]["overall"]["coverage@10"] < report["challenger"]["overall"]["coverage@10"]
    arts = {a.path for a in client.list_artifacts(run.info.run_id, "evaluation")}
    assert {"evaluation/diversity_tradeoff.png", "evaluation/explanation_faithfulness.json"} <= arts
    faithful = mlflow.artifacts.load_dict(f"runs:/{run.info.run_id}/evaluation/explanation_faithfulness.json")
    assert faithful["cited_n"] > 0 and 0 <= faithful["cited_lowered_share"] <= 1


@pytest.mark.parametrize(
    "breakage,expected",
    [
        ("null_user", "user_id must not be null"),
        ("rating_9", "ratings must lie in [0, 5]"),
        ("unknown_item", "every item must be in the items table"),
        ("bad_timestamp", "must parse as a timestamp"),
        ("missing_column", "'rating'"),
    ],
)
def test_broken_input_stops_before_training_and_touches_nothing(runs, tmp_path, capsys, caplog, breakage, expected):
    bad = write_dataset(tmp_path / "bad")
    df = pl.read_csv(bad / "interactions.csv", infer_schema=False)
    row = pl.int_range(pl.len()) == 4
    if breakage == "null_user":
        df = df.with_columns(pl.when(row).then(None).otherwise(pl.col("user_id")).alias("user_id"))
    elif breakage == "rating_9":
        df = df.with_columns(pl.when(row).then(pl.lit("9")).otherwise(pl.col("rating")).alias("rating"))
    elif breakage == "unknown_item":
        df = df.with_columns(pl.when(row).then(pl.lit("ghost")).otherwise(pl.col("item_id")).alias("item_id"))
    elif breakage == "bad_timestamp":
        df = df.with_columns(pl.when(row).then(pl.lit("13/45/2020")).otherwise(pl.col("timestamp")).alias("timestamp"))
    else:
        expected = "column 'user_id'"
        df = df.drop("user_id")
    df.write_csv(bad / "interactions.csv")
    before_versions, before_aliases = registry.versions(), registry.aliases()
    snapshots = runs["home"] / "snapshots"
    before_snaps = {p.name: (p / "tables").exists() for p in snapshots.iterdir()}

    assert main(["pipeline", "--profile", "tiny", "--data", str(bad)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: Invalid interactions data in interactions.csv") and expected in err
    assert err.count("\n") == 1  # one paragraph, not a stack trace
    failures = [r for r in caplog.records if r.levelname == "ERROR" and r.name.startswith("prefect.")]
    assert failures and not any(r.exc_info for r in failures)  # Prefect logs it too, without a traceback

    assert registry.versions() == before_versions and registry.aliases() == before_aliases
    after = {p.name: (p / "tables").exists() for p in snapshots.iterdir()}
    new = set(after) - set(before_snaps)
    assert len(new) == 1 and not after[new.pop()]  # raw kept, no canonical tables written
    assert all(after[name] == had for name, had in before_snaps.items())


def test_broken_input_raises_a_typed_error_from_the_flow(runs, tmp_path):
    bad = write_dataset(tmp_path / "bad")
    df = pl.read_csv(bad / "interactions.csv").with_columns(pl.lit(9.0).alias("rating"))
    df.write_csv(bad / "interactions.csv")
    with pytest.raises(DataValidationError) as err:
        training_pipeline(profile="tiny", data=str(bad))
    assert err.value.violations[0].column == "rating"


def test_batch_inference_writes_top_k_for_every_user(runs, capsys):
    assert main(["batch", "-k", "4"]) == 0
    path = capsys.readouterr().out.strip().splitlines()[-1]
    table = pl.read_parquet(Path(path) / "*.parquet")
    assert table.schema == {
        "user_id": pl.String,
        "rank": pl.Int32,
        "item_id": pl.String,
        "score": pl.Float32,
        "model_version": pl.String,
        "variant": pl.String,
        "generated_at": pl.Datetime("us", "UTC"),
    }
    inter = pl.read_csv(runs["data"] / "interactions.csv")
    assert table["user_id"].n_unique() == inter["user_id"].n_unique()
    assert table.group_by("user_id").len()["len"].unique().to_list() == [4]
    assert table["model_version"].unique().to_list() == [registry.aliases()["champion"]]
    seen = inter.select("user_id", "item_id").with_columns(pl.lit(True).alias("seen"))
    assert table.join(seen, on=["user_id", "item_id"], how="inner").height == 0  # never what they already have
    ordered = table.sort("user_id", "rank")
    assert (
        ordered.group_by("user_id", maintain_order=True).agg(pl.col("score").diff().drop_nulls().max())["score"] <= 0
    ).all()


def test_batch_inference_on_ray_lists_what_the_local_engine_lists(runs, ray_local, capsys):
    """The flow, CLI to Parquet, on the Ray Data actor pool of the session's local cluster."""
    assert main(["batch", "-k", "4"]) == 0
    local = Path(capsys.readouterr().out.strip().splitlines()[-1])
    assert main(["batch", "-k", "4", "--set", "runtime.engine=ray", "--set", "runtime.actors=2"]) == 0
    distributed = Path(capsys.readouterr().out.strip().splitlines()[-1])
    assert distributed != local
    key = ["user_id", "rank", "item_id"]
    assert read_top_k(distributed).select(key).equals(read_top_k(local).select(key))
    run = registry.client().search_runs(
        [registry.client().get_experiment_by_name("instructrec-batch").experiment_id],
        order_by=["attributes.start_time DESC"],
        max_results=1,
    )[0]
    assert run.data.tags["engine"] == "ray" and run.data.metrics["users"] == read_top_k(local)["user_id"].n_unique()


def test_a_champion_this_code_cannot_load_is_scored_through_its_onnx_graph(runs, monkeypatch):
    """After an architecture change the old champion is still judged on the same split (via ONNX)."""
    import logging

    import numpy as np

    from instructrec.config import load_config
    from instructrec.evaluation.evaluate import MappedScorer, TorchScorer
    from tasks import evaluation

    cfg = load_config("tiny", data=str(runs["data"]))
    champion = registry.get_alias(registry.CHAMPION)
    ids = json.loads((registry.download_checkpoint(champion, runs["home"] / "probe") / "item_ids.json").read_text())
    catalogue = ids[::-1] + ["new-item"]  # reordered, one item the champion never saw
    torch_scorer = evaluation.champion_scorer(cfg, champion, catalogue, logging.getLogger("test"))
    assert isinstance(torch_scorer, TorchScorer)

    def unloadable(*args, **kwargs):
        raise RuntimeError("Error(s) in loading state_dict for InstructRecScorer: Missing key(s)")

    monkeypatch.setattr(evaluation, "load_scorer", unloadable)
    onnx_scorer = evaluation.champion_scorer(cfg, champion, catalogue, logging.getLogger("test"))
    assert isinstance(onnx_scorer, MappedScorer)
    history = np.zeros((2, cfg.data.max_history), dtype=np.int64)
    history[:, -3:] = [[1, 2, 3], [4, 5, 6]]
    texts = ["Recommend something funny.", "I want a Horror item."]
    a, b = torch_scorer.score(texts, history), onnx_scorer.score(texts, history)
    assert np.isneginf(a[:, -1]).all() and np.isneginf(b[:, -1]).all()
    np.testing.assert_allclose(a[:, :-1], b[:, :-1], atol=1e-4)


def test_too_little_data_to_split_is_a_plain_message_not_a_crash(runs, tmp_path, capsys):
    bad = write_dataset(tmp_path / "short")
    df = pl.read_csv(bad / "interactions.csv", infer_schema=False)
    df.group_by("user_id", maintain_order=True).head(2).write_csv(bad / "interactions.csv")  # nobody has 3
    before = registry.versions(), registry.aliases()
    assert main(["pipeline", "--profile", "tiny", "--data", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "too little data to split" in err and "needs 3 interactions" in err and err.count("\n") == 1
    assert (registry.versions(), registry.aliases()) == before


SMALL_ITEMS = "item_id,title,genres\ni1,Alpha (1990),Drama\ni2,Beta (1991),Comedy\ni3,Gamma (1992),Drama|Comedy\n"


@pytest.mark.parametrize(
    "events",
    [
        # three items, two users who have seen all three: the 1+9 protocol once looked for 9 unseen items for ever;
        # now refused before that (one event each before validation); the bounded sampler: test_metrics, the fuzzer
        "u1,i1,2020-01-01T00:00:00Z\nu1,i2,2020-01-02T00:00:00Z\nu1,i3,2020-01-03T00:00:00Z\n"
        "u2,i2,2020-01-01T00:00:00Z\nu2,i3,2020-01-02T00:00:00Z\nu2,i1,2020-01-03T00:00:00Z\n",
        # one user, three events (legal extreme timestamps): enough to split, nothing to train on (was an IndexError)
        "u1,i1,-5\nu1,i2,-1\nu1,i3,946684800\n",
    ],
    ids=["every-item-seen", "one-user-three-events"],
)
def test_small_data_that_passes_validation_is_refused_in_seconds_saying_what_is_needed(runs, tmp_path, capsys, events):
    data = tmp_path / "small"
    data.mkdir()
    (data / "items.csv").write_text(SMALL_ITEMS)
    (data / "interactions.csv").write_text("user_id,item_id,timestamp\n" + events)
    before = registry.versions(), registry.aliases()
    started = time.monotonic()
    assert main(["pipeline", "--profile", "tiny", "--data", str(data)]) == 2
    assert time.monotonic() - started < 30  # the bound the refusal promises (a hang or a crash took forever)
    err = capsys.readouterr().err
    assert "too little data to train" in err and "needs 4 interactions" in err and err.count("\n") == 1
    assert (registry.versions(), registry.aliases()) == before
