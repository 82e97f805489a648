import re
from collections import Counter

import numpy as np
import polars as pl
import pytest

from instructrec.data.split import Catalogue, temporal_leave_one_out
from instructrec.evaluation.request_eval import WORDINGS
from instructrec.language.instructions import (
    CANDIDATES,
    HISTORY,
    MOODS,
    REQUEST_TEMPLATES,
    REQUEST_TYPES,
    RERANKING,
    TEMPLATES,
    TRAIN_MIX,
    _closest_in_history,
    era_phrase,
    free_text_instruction,
    make_instruction,
    render,
    request_instruction,
    sample_type,
    stated_taste,
    templates_of,
    training_examples,
    windows,
)
from instructrec.language.understand import understand
from tests.conftest import make_tables

CAT = Catalogue(
    item_ids=["a", "b", "c", "d"],
    titles=["Alien", "Brazil", "Casablanca", "Dune"],
    texts=["", "", "", ""],
    genres=[("Sci-Fi", "Horror"), ("Comedy", "Sci-Fi"), ("Drama", "Romance"), ("Sci-Fi",)],
    noun="movie",
)


def test_the_instruction_space_is_covered():
    """Every P x I pair but (P0, I0), both task forms, 30+ templates, one held out per type."""
    assert set(TEMPLATES) == {f"{p}/{i}" for p in ("P0", "P1", "P2") for i in ("I0", "I1", "I2")} - {"P0/I0"}
    assert sum(len(ts) for ts in TEMPLATES.values()) >= 30
    assert all(len(templates_of(t, held_out=True)) == 1 for t in TEMPLATES)
    assert {t.form for ts in TEMPLATES.values() for t in ts} == {"matching", RERANKING}


@pytest.mark.parametrize("type_", list(TEMPLATES))
@pytest.mark.parametrize("held_out", [False, True])
def test_every_template_fills_and_is_tagged(type_, held_out):
    for k in range(len(templates_of(type_, held_out))):
        ins = make_instruction(type_, k, CAT, np.array([1, 2, 4]), 3, max_history=20, held_out=held_out)
        assert ins is not None and ins.type == type_
        assert ins.template == (f"{type_}#held-out{k}" if held_out else f"{type_}#{k}")
        assert "{" not in ins.text
        assert (HISTORY in ins.text) == (ins.preference == "P1")
        assert bool(ins.history) == (ins.preference == "P1")
        assert (CANDIDATES in ins.text) == (ins.form == RERANKING)


@pytest.mark.parametrize("type_", [t for t in TEMPLATES if t.endswith(("I1", "I2"))])
def test_intentions_describe_the_target_never_its_title_or_id(type_):
    target = 3  # Casablanca: Drama, Romance
    for k in range(12):
        ins = make_instruction(type_, k, CAT, np.array([1, 2, 4]), target, max_history=20)
        if type_.endswith("I2"):
            assert "Drama" in ins.text and "Romance" in ins.text
        else:  # vague: a mood of one of its genres, not the genre list
            assert any(m in ins.text for g in ("Drama", "Romance") for m in MOODS[g])
            assert "Drama and Romance" not in ins.text
        assert "Casablanca" not in ins.text
        assert " c " not in f" {ins.text} " and "c." not in ins.text.split()


def test_vague_intention_varies_genre_and_wording_with_the_template_draw():
    texts = {make_instruction("P0/I1", k, CAT, np.array([]), 3, 20).text for k in range(40)}
    assert any("love" in t for t in texts) and any("moving" in t or "emotional" in t for t in texts)


def test_history_is_capped_and_most_recent_last():
    history = np.arange(1, 31) % 4 + 1
    ins = make_instruction("P1/I0", 0, CAT, history, None, max_history=20)
    assert len(ins.history) == 20 and ins.history[-1] == history[-1]


def test_stated_taste_uses_dominant_genres():
    assert stated_taste(np.array([1, 2, 4]), CAT) == ("Sci-Fi", "Comedy")


# The per-position helpers are counted with arrays, not per-item Python: prepare's cost at 10M interactions. They
# must give what the plain readings give (the same training examples and cases, to the byte, for the same seed).
GENRES = ("Action", "Comedy", "Drama", "Horror", "Sci-Fi", "War")


def _random_catalogue(rng: np.random.Generator, n: int = 60) -> Catalogue:
    # up to 3 genres, a genre listed twice at times, some items with none
    genres = [tuple(rng.choice(GENRES, size=int(rng.integers(0, 4)), replace=True).tolist()) for _ in range(n)]
    return Catalogue([str(i) for i in range(n)], [f"t{i}" for i in range(n)], [""] * n, genres)


def test_stated_taste_counts_as_a_counter_does_ties_by_name():
    rng = np.random.default_rng(0)
    cat = _random_catalogue(rng)
    for _ in range(300):
        history = rng.integers(1, cat.n_items + 1, size=int(rng.integers(1, 30)))
        counts = Counter(g for i in history for g in cat.genres_of(int(i)))
        plain = tuple(g for g, _ in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:2])
        assert stated_taste(history, cat) == plain


def test_the_title_named_is_the_closest_by_genres_most_recent_first_never_the_target():
    rng = np.random.default_rng(1)
    cat = _random_catalogue(rng)
    for _ in range(300):
        history, target = rng.integers(1, cat.n_items + 1, size=int(rng.integers(0, 12))), int(rng.integers(1, 61))
        want, best, best_score = set(cat.genres_of(target)), 0, 0.0
        for idx in (int(i) for i in history[::-1]):
            got = set(cat.genres_of(idx))
            score = len(want & got) / len(want | got) if want | got else 0.0
            if idx != target and score > best_score:
                best, best_score = idx, score
        assert _closest_in_history(history, target, cat) == best


def test_a_type_is_drawn_as_rng_choice_draws_it():
    mix = {"P1/I0": 0.4, "P0/I1": 0.25, "P2/I0": 0.1, "P1/era": 0.25}
    ours, theirs = np.random.default_rng(7), np.random.default_rng(7)
    p = np.asarray(list(mix.values()))
    assert [sample_type(ours, mix) for _ in range(5000)] == [
        list(mix)[theirs.choice(len(mix), p=p / p.sum())] for _ in range(5000)
    ]
    with pytest.raises(ValueError, match="non-negative shares"):
        sample_type(ours, {"P1/I0": -1.0, "P0/I1": 2.0})


def test_types_needing_missing_attributes_are_not_built():
    bare = Catalogue(["a", "b"], ["A", "B"], ["", ""], [(), ()])
    assert make_instruction("P0/I2", 0, bare, np.array([1]), 2, 20) is None
    assert make_instruction("P2/I0", 0, bare, np.array([1]), 2, 20) is None
    assert make_instruction("P1/I0", 0, bare, np.array([1]), 2, 20) is not None


def test_render_shows_titles_for_people():
    ins = make_instruction("P1/I0", 1, CAT, np.array([1, 4]), None, 20)
    assert "Alien; Dune" in render(ins, CAT)


def test_free_text_reads_history_when_known():
    assert free_text_instruction("funny", np.array([1]), 20, CAT).type == "P1/free"
    assert free_text_instruction("funny", np.array([], dtype=int), 20, CAT).type == "P0/free"


def test_windows_cover_every_target_once_with_long_histories():
    seq = np.arange(1, 48)
    spans = windows(seq, max_history=10, stride=3)
    targets = [t for _, first, end in spans for t in range(first, end)]
    assert sorted(targets) == list(range(1, len(seq)))  # every position but the first, once
    for start, first, end in spans:
        assert end - start <= 11
        assert start == 0 or first - start >= 10 - 3 + 1  # at least max_history - stride + 1 items of history


def test_training_examples_cover_the_mix_and_never_use_eval_targets():
    inter, items = make_tables()
    from instructrec.data import schema
    from instructrec.data.sources.coerce import to_canonical

    inter = to_canonical(inter, schema.INTERACTIONS_SCHEMA, "interactions", "x")
    items = items.with_columns(pl.Series(schema.YEAR, [1950 + i % 48 for i in range(items.height)]))
    items = to_canonical(items, {**schema.ITEMS_SCHEMA, **schema.ITEM_ATTRIBUTES}, "items", "x")
    split = temporal_leave_one_out(inter, Catalogue.from_items(items))
    ex = training_examples(split, 20, seed=0, stride=5)
    used = ex.weight > 0
    assert set(ex.types[used]) == set(TRAIN_MIX)
    assert ex.n_examples == sum(len(s) - 1 for s in split.train)
    assert not any("held-out" in t for t in ex.templates[used])  # held-out templates never train
    for w in range(len(ex)):
        u, seq = ex.user[w], list(split.train[ex.user[w]])
        window = [int(i) for i in ex.seq[w] if i > 0]
        assert window == seq[seq.index(window[0]) : seq.index(window[0]) + len(window)]  # a contiguous span
        assert split.valid[u] not in window or split.valid[u] in seq


# -- the request classes (era, composite, negation, a named title) -----------------------------------------
DATED = Catalogue(
    item_ids=[str(i) for i in range(1, 9)],
    titles=["Shining, The", "Fargo", "Casablanca", "Heat", "Nosferatu", "Scream", "Alien", "Toy Story"],
    texts=[""] * 8,
    genres=[
        ("Horror",),
        ("Crime", "Drama"),
        ("Drama", "Romance"),
        ("Action", "Crime"),
        ("Horror",),
        ("Horror", "Thriller"),
        ("Sci-Fi", "Horror"),
        ("Animation", "Comedy"),
    ],
    noun="movie",
    years=[1980, 1996, 1942, 1995, 1922, 1996, 1979, 1995],
)


@pytest.mark.parametrize("type_", REQUEST_TYPES)
def test_every_request_is_true_of_its_target_as_the_rules_read_it(type_):
    """Each training request says something true of the target (from its metadata) and `understand` reads it so:
    the years hold the target's year, asked genres are the target's, a refused genre is not, a named film is
    from the history and never the target."""
    rng, history, seen = np.random.default_rng(0), np.array([1, 7, 2, 6, 5, 3]), set()
    for _ in range(300):
        target = int(rng.choice([2, 3, 4, 8]))
        ins = request_instruction(type_, rng, DATED, history, target, max_history=20)
        if ins is None:
            continue
        assert ins.type == type_ and ins.history == tuple(history) and ins.text.startswith("My history: [history].")
        request = ins.text.split("My request: ")[1]
        seen.add(ins.template)
        got = understand(request, DATED)
        genres, year = set(DATED.genres_of(target)), DATED.year_of(target)
        if type_ in ("P1/era", "P1/composite") and got.years:
            assert got.years[0] <= year <= got.years[1], request
        if type_ == "P1/era":
            assert got.years is not None and not got.genres and not got.exclude_genres, request
        elif type_ == "P1/composite":
            assert got.genres and set(got.genres) <= genres and (got.years or len(got.genres) == 2), request
        elif type_ == "P1/negation":
            assert len(got.exclude_genres) == 1 and not set(got.exclude_genres) & genres, request
            assert not got.genres and got.years is None, request
        else:
            assert len(got.like) == 1 and got.like[0] in history and got.like[0] != target, request
            assert genres & set(DATED.genres_of(got.like[0])), request  # the history's closest film
        assert DATED.title(target) not in request
    assert seen == {f"{type_}#{k}" for k in range(len(REQUEST_TEMPLATES[type_]))}  # every template drawn


def test_requests_need_the_metadata_they_speak_of():
    undated = Catalogue(["a", "b"], ["A", "B"], ["", ""], [("Drama",), ("Drama",)], "movie")
    rng = np.random.default_rng(0)
    assert all(request_instruction("P1/era", rng, undated, np.array([1]), 2, 20) is None for _ in range(20))
    assert all(request_instruction("P1/negation", rng, undated, np.array([1]), 2, 20) is None for _ in range(20))
    assert all(request_instruction(t, rng, DATED, np.array([], dtype=int), 2, 20) is None for t in REQUEST_TYPES)


def test_no_training_template_is_an_evaluation_wording():
    """The request classes are measured on wordings training never reads (request_eval.WORDINGS)."""
    held_out = {_shape(w) for ws in WORDINGS.values() for w in ws}
    trained = {_shape(t) for ts in REQUEST_TEMPLATES.values() for t in ts}
    trained |= {_shape(t.text) for ts in TEMPLATES.values() for t in ts if not t.held_out}
    assert not held_out & trained


def _shape(template: str) -> str:
    """A template with its fields and punctuation taken out: two wordings that differ only there are one."""
    return " ".join(re.sub(r"\{\w+\}|[^a-z ]", " ", template.lower()).split())


def test_era_phrases_are_read_as_periods_holding_the_year():
    rng = np.random.default_rng(1)
    for year in (1922, 1942, 1959, 1980, 1996):
        for _ in range(40):
            phrase = era_phrase(year, 1998, rng)
            years = understand(f"a movie {phrase}", DATED).years
            assert years is not None and years[0] <= year <= years[1], phrase
