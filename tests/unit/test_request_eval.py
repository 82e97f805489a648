"""Request classes measured: cases never leak their target, truths come from metadata, metrics at their limits."""

from __future__ import annotations

import re

import numpy as np

from instructrec.data.split import Catalogue, SplitData
from instructrec.evaluation.request_eval import evaluate_requests, markdown_table, request_cases, spellings
from instructrec.language.understand import understand, violations

GENRES = ["Comedy", "Drama", "Horror", "Romance"]
N = 40
CAT = Catalogue(
    [str(i) for i in range(1, N + 1)],
    [f"Film Number {i}" for i in range(1, N + 1)],
    [""] * N,
    [(GENRES[i % 4],) + ((GENRES[(i + 1) % 4],) if i % 3 == 0 else ()) for i in range(N)],
    "movie",
    years=[1950 + i // 15 if i % 15 == 0 else 1980 + i % 19 for i in range(N)],  # the 1950s: a rare period
)


def _split(users: int = 12) -> SplitData:
    rng = np.random.default_rng(0)
    train = [rng.choice(np.arange(1, N + 1), 8, replace=False) for _ in range(users)]
    rest = [np.setdiff1d(np.arange(1, N + 1), t) for t in train]
    valid = np.array([r[0] for r in rest])
    test = np.array([r[1] for r in rest])
    ratings = [np.full(8, np.nan, np.float32) for _ in train]
    return SplitData(CAT, [f"u{u}" for u in range(users)], train, ratings, valid, test, np.ones(N + 1))


def test_no_case_names_its_target_and_truths_come_from_the_metadata():
    split = _split()
    plain = {u: list(range(1, 11)) for u in range(len(split.users))}
    cases = request_cases(split, plain, seed=3)
    assert {c.kind for c in cases} == {"era", "rare_era", "composite", "negation", "title"}
    for c in cases:
        assert not re.search(rf"\b{CAT.title(c.target).lower()}\b", c.text.lower())  # the target is never named
        if c.kind == "title":
            assert c.named != c.target and c.named in split.history_before_test(c.user)
        elif c.kind == "negation":
            assert violations(c.truth, CAT)[c.target - 1] == 0  # the target never has the refused genre
        elif c.kind in ("era", "composite"):
            assert violations(c.truth, CAT)[c.target - 1] == 0  # the target meets what its request states


def test_spellings_move_the_article_drop_the_year_and_swap_one_pair():
    got = spellings("Shining, The", 1980, np.random.default_rng(0))
    assert got[:3] == ["The Shining (1980)", "the shining", "Shining"]
    assert got[3] != "The Shining" and sorted(got[3]) == sorted("The Shining")


def test_a_ranker_that_obeys_meets_every_request_and_one_that_ignores_them_does_not():
    split = _split()
    users = np.arange(len(split.users))

    def obeying(user: str, text: str | None) -> tuple[list[int], dict]:
        u = split.users.index(user)
        seen = set(split.history_before_test(u).tolist())
        scores = -np.arange(N, dtype=float)  # a fixed order: lower index first
        scores[[i - 1 for i in seen]] = -np.inf
        read = understand(text, CAT)
        scores = scores - 1e3 * violations(read, CAT)
        return [int(i) + 1 for i in np.argsort(-scores, kind="stable")[:10]], read.to_dict(CAT)

    def ignoring(user: str, text: str | None) -> tuple[list[int], dict]:
        return obeying(user, None)

    good = evaluate_requests(obeying, split, users, 3, lambda t: understand(t, CAT).like)["classes"]
    bad = evaluate_requests(ignoring, split, users, 3, lambda t: understand(t, CAT).like)["classes"]
    assert good["negation"]["refused_share"] == 0.0 and bad["negation"]["refused_share"] > 0.0
    assert good["composite"]["satisfied"] > bad["composite"]["satisfied"]
    assert good["title"]["resolved_in_requests"] == 1.0 and bad["title"]["resolved_in_requests"] == 0.0
    assert 0.0 <= good["era"]["ndcg@10"] <= 1.0 and "ndcg@10" not in good["rare_era"]


def test_the_table_shows_the_learned_scorer_alone_beside_the_served_path():
    split = _split()

    def fixed(user: str, text: str | None) -> tuple[list[int], dict]:
        return list(range(1, 11)), {}

    report = evaluate_requests(fixed, split, np.arange(len(split.users)), 3, lambda t: ())
    assert "learned scorer alone" not in markdown_table(report)
    report["learned_alone"] = report["classes"]
    table = markdown_table(report)
    alone = table.split("learned scorer alone")[1]
    negation = report["classes"]["negation"]
    assert f"| negation | {negation['ndcg@10']:.4f} | refused genre {negation['refused_share']:.1%} |" in alone
    assert alone.count("\n| ") == 1 + sum(1 for r in report["classes"].values() if r.get("cases"))
