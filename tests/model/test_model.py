"""The scorer's contract (save/load, ONNX parity) and behaviour after training."""

import numpy as np
import pytest
import torch

from instructrec.evaluation.evaluate import PopularityScorer, TorchScorer, evaluate
from instructrec.models.model import load_scorer, save_scorer
from instructrec.serving.export import OnnxScorer, export_onnx, make_session
from instructrec.serving.parity import parity
from instructrec.training.train import FitRun, FitSettings, fit
from tests.model.conftest import build_model


def settings(epochs=6, **kw):
    base = dict(
        stage="test",
        epochs=epochs,
        batch_size=64,
        lr=3e-3,
        bert_lr=1e-3,
        weight_decay=0.0,
        negatives=32,
        patience=epochs,
        train_bert=True,
        device="cpu",
        mixed_precision=False,
        seed=0,
    )
    return FitSettings(**{**base, **kw})


def validator(prepared, tok, text_cache=None):
    """Validation NDCG@10; `text_cache` as the pipeline passes it while BERT is frozen."""
    ids = prepared.catalogue.item_ids

    def run(model):
        scorer = TorchScorer("v", model, tok, ids, ids, "cpu", text_cache)
        return {"ndcg@10": evaluate(scorer, prepared.valid_cases, prepared.split).overall["ndcg@10"]}

    return run


@pytest.fixture(scope="module")
def trained(tiny_cfg, prepared):
    torch.manual_seed(0)
    model, tok = build_model(tiny_cfg, prepared)
    result = fit(model, tok, prepared.examples, settings(), validator(prepared, tok), FitRun(progress=False))
    return model, tok, result


def test_training_lowers_loss_and_beats_popularity(trained, prepared):
    model, tok, result = trained
    losses = [r["loss"] for r in result.history if r["epoch"] >= 0]
    assert losses[-1] < losses[0]
    ids = prepared.catalogue.item_ids
    ours = evaluate(TorchScorer("m", model, tok, ids, ids), prepared.test_cases, prepared.split)
    pop = evaluate(PopularityScorer(prepared.split.popularity), prepared.test_cases, prepared.split)
    # users of the synthetic data each favour one genre: history must beat popularity
    assert ours.by_type["P1/I0"]["ndcg@10"] > pop.by_type["P1/I0"]["ndcg@10"]


def test_genre_intention_moves_the_top10_toward_that_genre(trained, prepared):
    """Directional: asking for a genre raises its share in the top 10."""
    model, tok, _ = trained
    cat = prepared.catalogue
    ids = cat.item_ids
    scorer = TorchScorer("m", model, tok, ids, ids)
    case = prepared.test_cases["P1/I0"]
    plain = scorer.score(case.texts, case.history)
    genre = "Horror"
    asked = scorer.score([t.replace("Which", f"I want a {genre} item. Which") for t in case.texts], case.history)
    is_genre = np.array([genre in g for g in cat.genres])

    def share(scores):
        return is_genre[np.argsort(-scores, axis=1)[:, :10]].mean()

    assert share(asked) >= share(plain)


def test_save_load_round_trip_gives_identical_scores(trained, prepared, tmp_path):
    model, tok, _ = trained
    path = save_scorer(model, tok, prepared.catalogue.item_ids, tmp_path / "scorer")
    loaded, tok2, ids = load_scorer(path)
    assert ids == prepared.catalogue.item_ids
    case = prepared.test_cases["P1/I2"]
    a = TorchScorer("a", model, tok, ids, ids).score(case.texts[:8], case.history[:8])
    b = TorchScorer("b", loaded, tok2, ids, ids).score(case.texts[:8], case.history[:8])
    np.testing.assert_allclose(a, b, rtol=0, atol=1e-5)


def test_onnx_export_matches_pytorch(trained, prepared, tmp_path):
    model, tok, _ = trained
    session = make_session(export_onnx(model, tok, tmp_path / "m.onnx"))
    assert session.provider == "CPUExecutionProvider" or session.provider == "CUDAExecutionProvider"
    ids = prepared.catalogue.item_ids
    texts = [t for c in prepared.test_cases.values() for t in c.texts[:10]]
    hist = np.concatenate([c.history[:10] for c in prepared.test_cases.values()])
    eager = TorchScorer("t", model, tok, ids, ids).score(texts, hist)
    onnx = OnnxScorer("o", session, tok, model.config.max_text_tokens).score(texts, hist)
    p = parity(eager, onnx)
    assert p.max_abs_diff < 1e-4 and p.top10_overlap == 1.0


def test_scorer_maps_a_different_catalogue(trained, prepared):
    """A champion trained on an older catalogue scores unknown items as -inf."""
    model, tok, _ = trained
    ids = prepared.catalogue.item_ids
    newer = ids + ["brand-new"]
    scores = TorchScorer("m", model, tok, ids, newer).score(["anything"], np.zeros((1, 20), dtype=np.int64))
    assert scores.shape == (1, len(newer)) and np.isneginf(scores[0, -1]) and np.isfinite(scores[0, :-1]).all()


def test_interrupted_training_resumes_from_the_last_checkpoint(tiny_cfg, prepared, tmp_path):
    torch.manual_seed(0)
    model, tok = build_model(tiny_cfg, prepared)

    def crash_after_second_epoch(row):
        if row["epoch"] == 1:
            raise KeyboardInterrupt("simulated crash")

    with pytest.raises(KeyboardInterrupt):
        fit(
            model,
            tok,
            prepared.examples,
            settings(epochs=4),
            validator(prepared, tok),
            FitRun(tmp_path, "fp", crash_after_second_epoch, progress=False),
        )
    fresh, tok = build_model(tiny_cfg, prepared)

    def rerun():
        return fit(
            fresh,
            tok,
            prepared.examples,
            settings(epochs=4),
            validator(prepared, tok),
            FitRun(tmp_path, "fp", progress=False),
        )

    result = rerun()
    assert result.resumed_from == 1
    assert [r["epoch"] for r in result.history] == [-1, 0, 1, 2, 3]
    again = rerun()
    assert again.reused and again.resumed_from == 3 and len(again.history) == 5  # finished: nothing retrained


def test_checkpoint_of_other_data_or_config_is_not_resumed(tiny_cfg, prepared, tmp_path):
    model, tok = build_model(tiny_cfg, prepared)
    fit(
        model,
        tok,
        prepared.examples,
        settings(epochs=1),
        validator(prepared, tok),
        FitRun(tmp_path, "fp-a", progress=False),
    )
    other, tok = build_model(tiny_cfg, prepared)
    result = fit(
        other,
        tok,
        prepared.examples,
        settings(epochs=1),
        validator(prepared, tok),
        FitRun(tmp_path, "fp-b", progress=False),
    )
    assert result.resumed_from is None


def test_session_reports_the_provider_that_really_runs(trained, tmp_path, monkeypatch):
    """onnxruntime-gpu lists CUDA without a GPU and falls back silently: we report get_providers()."""
    import onnxruntime as ort

    from instructrec.serving import export

    model, tok, _ = trained
    path = export_onnx(model, tok, tmp_path / "m.onnx")
    assert make_session(path).provider == ("CUDAExecutionProvider" if export.cuda_usable() else "CPUExecutionProvider")
    monkeypatch.setattr(export, "cuda_usable", lambda: True)  # ask for CUDA even here
    session = make_session(path)
    assert session.provider in ort.get_available_providers()
    assert session.provider == session.session.get_providers()[0]
    assert make_session(path, prefer=("CPUExecutionProvider",)).provider == "CPUExecutionProvider"


def test_loaded_scorer_exports_fusable_attention(trained, prepared, tmp_path):
    """A reloaded checkpoint must export the attention form ORT fuses (SDPA would silently not fuse)."""
    from instructrec.serving.optimize import fuse

    model, tok, _ = trained
    loaded, tok2, _ = load_scorer(save_scorer(model, tok, prepared.catalogue.item_ids, tmp_path / "s"))
    assert loaded.bert.config._attn_implementation == "eager"
    bert = loaded.bert.config
    _, stats = fuse(
        export_onnx(loaded, tok2, tmp_path / "m.onnx"), tmp_path / "f.onnx", bert.num_attention_heads, bert.hidden_size
    )
    assert stats.get("Attention") == bert.num_hidden_layers


def test_micro_batched_scoring_equals_one_padded_batch(trained, prepared, tmp_path):
    """Length buckets reorder work, never results."""
    model, tok, _ = trained
    session = make_session(export_onnx(model, tok, tmp_path / "m.onnx"))
    scorer = OnnxScorer("o", session, tok, model.config.max_text_tokens)
    texts = [t for c in prepared.test_cases.values() for t in c.texts] * 2
    hist = np.concatenate([c.history for c in prepared.test_cases.values()] * 2)
    assert len(texts) > scorer.micro_batch
    bucketed = scorer.score(texts, hist)
    enc = tok(texts, padding=True, truncation=True, max_length=model.config.max_text_tokens, return_tensors="np")
    whole = session.run(enc["input_ids"], enc["attention_mask"], hist)
    np.testing.assert_allclose(bucketed, whole, atol=1e-4)


def test_progress_bars_stay_off_a_log_file(tiny_cfg, prepared, capfd):
    """Asked for bars (the cpu profile's default) with stderr not a terminal: no carriage-return lines."""
    model, tok = build_model(tiny_cfg, prepared)
    fit(model, tok, prepared.examples, settings(epochs=1), validator(prepared, tok), FitRun(progress=True))
    assert "\r" not in capfd.readouterr().err
