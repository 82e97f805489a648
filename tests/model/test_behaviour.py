"""Behavioural tests (CheckList-style) on a scorer trained on the synthetic genre data.

Each synthetic user favours one genre, and I2 instructions name the target's
genres, so a scorer that follows instructions must: move its top 10 toward a
genre that is asked for (directional), give nearly the same top 10 for
paraphrased templates (invariance), and recommend a one-genre history's genre
(minimum functionality).
"""

from dataclasses import replace

import numpy as np
import pytest
import torch

from instructrec.evaluation.evaluate import TorchScorer
from instructrec.language.instructions import make_instruction, pad_histories, training_examples
from instructrec.training.train import FitRun, fit
from tests.conftest import GENRES
from tests.model.conftest import build_model
from tests.model.test_model import settings, validator

pytestmark = pytest.mark.model

# the tiny data has ~1k positions: lean the mix toward intentions so each type gets enough examples
MIX = {"P1/I0": 0.3, "P1/I2": 0.25, "P0/I2": 0.15, "P1/I1": 0.1, "P0/I1": 0.1, "P2/I2": 0.1}


@pytest.fixture(scope="module")
def scorer(tiny_cfg, prepared):
    """MiniLM (frozen, as the cpu profile runs it): a random tiny BERT cannot read genre words from 1k examples."""
    torch.manual_seed(0)
    cfg = tiny_cfg.model_copy(
        update={"model": tiny_cfg.model.model_copy(update={"backbone": "minilm", "train_bert": False})}
    )
    model, tok = build_model(cfg, prepared)
    examples = training_examples(prepared.split, 20, seed=0, mix=MIX, stride=4)
    cache: dict = {}  # the frozen encoder's vector of each distinct text, computed once (as the pipeline does)
    fit(
        model,
        tok,
        examples,
        settings(epochs=40, patience=40, lr=5e-3, train_bert=False),
        validator(prepared, tok, cache),
        FitRun(progress=False, text_cache=cache),
    )
    ids = prepared.catalogue.item_ids
    return TorchScorer("m", model, tok, ids, ids, "cpu", cache)


def top10(scores: np.ndarray, exclude: list[np.ndarray]) -> np.ndarray:
    scores = scores.copy()
    for r, seen in enumerate(exclude):
        scores[r, seen - 1] = -np.inf
    return np.argsort(-scores, axis=1)[:, :10] + 1  # item indices


def genre_share(top: np.ndarray, catalogue, genre: str) -> np.ndarray:
    return np.array([[genre in catalogue.genres_of(int(i)) for i in row] for row in top]).mean(axis=1)


def test_directional_asking_for_a_genre_raises_its_share(scorer, prepared):
    split, cat = prepared.split, prepared.catalogue
    single = {cat.genres_of(i)[0]: i for i in range(cat.n_items, 0, -1) if len(cat.genres_of(i)) == 1}
    assert len(single) >= 3
    raised = []
    for u in split.eval_users:
        history = split.history_before_test(u)
        favourite = GENRES[int(split.users[u].removeprefix("u")) % len(GENRES)]
        asked_genre = next(g for g in GENRES if g != favourite and g in single)
        plain = make_instruction("P1/I0", 0, cat, history, None, 20)
        asked = make_instruction("P1/I2", 0, cat, history, single[asked_genre], 20)
        hist = pad_histories([plain.history], 20)
        before = genre_share(top10(scorer.score([plain.text], hist), [history]), cat, asked_genre)[0]
        after = genre_share(top10(scorer.score([asked.text], hist), [history]), cat, asked_genre)[0]
        raised.append(after > before or after == 1.0)
    assert np.mean(raised) >= 0.8, f"the asked genre's share rose for only {np.mean(raised):.0%} of users"


@pytest.mark.parametrize("type_", ["P1/I0", "P1/I2", "P0/I2"])
def test_invariance_paraphrased_templates_give_overlapping_top10(scorer, prepared, type_):
    """Seen paraphrases of every type, and the held-out wording of the I2 types.

    (P1/I0's held-out wording is measured on MovieLens instead, as its own NDCG row: on this toy
    catalogue a history only identifies a genre block of near-tied items, whose order any change of
    words reshuffles - measured here: 0.69 overlap between seen wordings, 0.43 with the held-out one.)
    """
    split, cat = prepared.split, prepared.catalogue
    overlaps = []
    for u in split.eval_users:
        history, target = split.history_before_test(u), int(split.test[u])
        variants = [make_instruction(type_, k, cat, history, target, 20) for k in range(3)]
        if type_.endswith("I2"):
            variants.append(make_instruction(type_, 0, cat, history, target, 20, held_out=True))
        hist = pad_histories([v.history for v in variants], 20)
        tops = top10(scorer.score([v.text for v in variants], hist), [history] * len(variants))
        overlaps += [len(set(tops[0]) & set(tops[j])) / 10 for j in range(1, len(variants))]
    assert len({v.text for v in variants}) == len(variants)  # really different wordings
    assert np.mean(overlaps) >= 0.6, f"mean top-10 overlap across paraphrases {np.mean(overlaps):.2f}"


def test_minimum_functionality_one_genre_history_gets_that_genre(scorer, prepared):
    cat = prepared.catalogue
    shares = []
    for genre in GENRES:
        items = np.array([i for i in range(1, cat.n_items + 1) if cat.genres_of(i)[0] == genre][:8])
        ins = make_instruction("P1/I0", 0, cat, items, None, 20)
        top = top10(scorer.score([ins.text], pad_histories([ins.history], 20)), [items])
        shares.append(genre_share(top, cat, genre)[0])
    assert np.mean(shares) >= 0.5, f"share of the history's genre in the top 10: {np.round(shares, 2)}"


# -- session adaptation on the same trained scorer, served through its ONNX export ----------------------


@pytest.fixture(scope="module")
def served(scorer, prepared, tmp_path_factory):
    """The trained scorer as the service runs it: ONNX graph + bundle with item-tower vectors."""
    import polars as pl

    from instructrec.models.model import item_tower
    from instructrec.serving.export import export_onnx
    from instructrec.serving.recommend import Recommender, write_bundle

    tmp = tmp_path_factory.mktemp("served")
    cat, split = prepared.catalogue, prepared.split
    graph = export_onnx(scorer.model, scorer.tokenizer, tmp / "m.onnx")
    bundle = write_bundle(
        tmp / "bundle",
        scorer.tokenizer,
        cat,
        20,
        scorer.model.config.max_text_tokens,
        "hash",
        item_vectors=item_tower(scorer.model),
    )
    rows = [
        (split.users[u], cat.item_ids[i - 1], t)
        for u in split.eval_users
        for t, i in enumerate(split.history_before_test(u))
    ]
    inter = pl.DataFrame(rows, schema=["user_id", "item_id", "t"], orient="row").with_columns(
        pl.from_epoch("t").dt.replace_time_zone("UTC").alias("timestamp"), pl.lit(4.0).alias("rating")
    )
    return Recommender.load(graph, bundle, inter, version="1")


def _genre_count(out: dict, cat, genre: str) -> int:
    return sum(genre in cat.genres_of(cat.index[i["item_id"]]) for i in out["items"])


def test_a_like_raises_the_liked_genre_in_the_next_list(served, prepared):
    """Liking items of a genre the user never favoured: more of that genre in the next top 10 (no retraining)."""
    cat, split = served.catalogue, prepared.split
    raised, lowered = 0, 0
    for u in split.eval_users:
        user = split.users[u]
        favourite = GENRES[int(user.removeprefix("u")) % len(GENRES)]
        other = GENRES[(GENRES.index(favourite) + 3) % len(GENRES)]
        before = served.recommend(user, k=10)
        shown = {i["item_id"] for i in before["items"]} | {cat.item_ids[i - 1] for i in served.histories[user]}
        liked = [
            cat.item_ids[i - 1]
            for i in range(1, cat.n_items + 1)
            if cat.genres_of(i)[0] == other and cat.item_ids[i - 1] not in shown
        ][:2]
        after = served.recommend(user, k=10, liked=liked)
        assert not {i["item_id"] for i in after["items"]} & set(liked)  # a liked item joins the history
        delta = _genre_count(after, cat, other) - _genre_count(before, cat, other)
        raised, lowered = raised + (delta > 0), lowered + (delta < 0)
    assert raised >= 0.8 * len(split.eval_users) and lowered <= 0.05 * len(split.eval_users), (raised, lowered)


def test_a_dislike_removes_the_item_and_demotes_its_nearest_neighbours(served, prepared):
    cat, split = served.catalogue, prepared.split
    user = split.users[split.eval_users[0]]
    before = served.recommend(user, k=10)
    top = before["items"][0]["item_id"]
    neighbours = [i["item_id"] for i in served.similar(top, k=5)["items"]]
    after = served.recommend(user, k=10, exclude=[top], disliked=[top])
    rank_after = {
        i["item_id"]: i["rank"] for i in served.recommend(user, k=cat.n_items, exclude=[top], disliked=[top])["items"]
    }
    rank_before = {i["item_id"]: i["rank"] for i in served.recommend(user, k=cat.n_items, exclude=[top])["items"]}
    assert top not in {i["item_id"] for i in after["items"]}
    moved = [rank_after[n] - rank_before[n] for n in neighbours if n in rank_before]
    assert moved and all(m >= 0 for m in moved) and sum(moved) > 0, moved
    # bounded: with no strength nothing moves
    from instructrec.serving.recommend import Adaptation

    still = served.recommend(user, k=10, exclude=[top], disliked=[top], adapt=Adaptation(demotion=0.0))
    assert [i["item_id"] for i in still["items"]] == [
        i["item_id"] for i in served.recommend(user, k=10, exclude=[top])["items"]
    ]


def test_similar_items_share_the_items_genre_and_explanations_cite_the_history(served, prepared):
    cat = served.catalogue
    shares = []
    for i in range(1, cat.n_items + 1, 7):
        genre = cat.genres_of(i)[0]
        out = served.similar(cat.item_ids[i - 1], k=5)
        assert cat.item_ids[i - 1] not in {r["item_id"] for r in out["items"]} and len(out["items"]) == 5
        shares.append(np.mean([genre in cat.genres_of(cat.index[r["item_id"]]) for r in out["items"]]))
    assert np.mean(shares) >= 0.6, np.round(shares, 2)
    user = prepared.split.users[prepared.split.eval_users[0]]
    history = set(served.histories[user].tolist())
    out = served.recommend(user, "something with comedy", k=10)
    assert all(cat.index[i["because"]] in history for i in out["items"] if "because" in i)
    assert any("because" in i for i in out["items"]) and all(i["reason"] for i in out["items"])
    assert all(
        i.get("matches") == ["comedy"] for i in out["items"] if "Comedy" in cat.genres_of(cat.index[i["item_id"]])
    )


def test_an_unknown_user_without_a_request_gets_a_varied_popular_list(served):
    from instructrec.serving.lists import ild_genre
    from instructrec.serving.recommend import Adaptation

    plain = served.recommend("nobody", k=10, adapt=Adaptation(cold_start_diversity=0.0))
    varied = served.recommend("nobody", k=10)
    assert plain["instruction_type"] == varied["instruction_type"] == "P0/popular"
    cols = [[served.catalogue.index[i["item_id"]] - 1 for i in out["items"]] for out in (plain, varied)]
    div = ild_genre(np.asarray(cols), served.space)
    assert div[1] > div[0], div
    top_popular = np.argsort(-served.popularity, kind="stable")[:10]
    assert cols[0] == top_popular.tolist()


def test_offline_lists_diversity_tradeoff_and_faithful_explanations(scorer, served, prepared):
    from instructrec.evaluation.evaluate import diversity_tradeoff, evaluate, explanation_faithfulness

    case = prepared.test_cases["P1/I0"]
    report = evaluate(scorer, {"P1/I0": case}, prepared.split, space=served.space)
    row = report.by_type["P1/I0"]
    assert 0 < row["coverage@10"] <= 1 and 0 < row["ild_vector@10"] <= 2 and row["novelty@10"] > 0
    curve = diversity_tradeoff(scorer, case, served.space, (0.0, 0.5, 0.9))
    assert curve[0]["ndcg@10"] == pytest.approx(row["ndcg@10"])  # weight 0 is the plain ranking
    assert curve[0]["ild_vector@10"] == pytest.approx(row["ild_vector@10"], abs=1e-6)
    assert curve[0]["ild_vector@10"] < curve[1]["ild_vector@10"] < curve[2]["ild_vector@10"]
    faithful = explanation_faithfulness(scorer, case, served.space, rows=48)
    assert faithful["cited_n"] > 100
    assert faithful["cited_lowered_share"] > max(0.5, faithful["random_lowered_share"]), faithful


def test_a_refused_genre_is_left_out_and_a_named_title_pulls_its_own(served, prepared):
    """The trained model's list obeys what the request says for certain, and the response says what it read."""
    from collections import Counter

    cat, split = served.catalogue, prepared.split
    for u in split.eval_users[:6]:
        user = split.users[u]
        before = served.recommend(user, k=10)
        shown = Counter(g for i in before["items"] for g in cat.genres_of(cat.index[i["item_id"]]))
        refused, count = shown.most_common(1)[0]  # refusing what one would be shown
        assert count >= 3
        out = served.recommend(user, f"anything but {refused.lower()}", k=10)
        assert _genre_count(out, cat, refused) == 0 and out["understood"] == {"exclude_genres": [refused]}
        assert all(refused.lower() not in i.get("matches", []) for i in out["items"])
        assert f"anything but {refused.lower()}" not in out["instruction"]  # the refused clause is not encoded
        alone = replace(served, rules=False).recommend(user, f"anything but {refused.lower()}", k=10)
        assert alone["understood"] == {} and f"anything but {refused.lower()}" in alone["instruction"]
        seen = set(served.histories[user].tolist())
        unseen = Counter(cat.genres_of(i)[0] for i in range(1, cat.n_items + 1) if i not in seen)
        other = min((g for g in GENRES if unseen[g] >= 6), key=lambda g: (shown[g], g))  # room to pull into
        named = next(i for i in range(1, cat.n_items + 1) if cat.genres_of(i)[0] == other)
        out = served.recommend(user, f"something like {cat.title(named).lower()}", k=10)
        assert out["understood"]["like"] == [cat.title(named)]
        pulled = _genre_count(out, cat, other)  # the least shown genre with unseen items left
        assert pulled >= shown[other] + 3, (user, other, [i["title"] for i in out["items"]])
    out = served.recommend(split.users[split.eval_users[0]], "a comedy from the 80s", k=10)
    assert out["understood"]["genres"] == ["Comedy"] and "no release years" in out["understood"]["notes"][0]
