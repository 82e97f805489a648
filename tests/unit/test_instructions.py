import numpy as np
import pytest

from instructrec.instructions import (
    CANDIDATES,
    HISTORY,
    MOODS,
    RERANKING,
    TEMPLATES,
    TRAIN_MIX,
    free_text_instruction,
    make_instruction,
    render,
    stated_taste,
    templates_of,
    training_examples,
    windows,
)
from instructrec.split import Catalogue, temporal_leave_one_out
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
    from instructrec import schema
    from instructrec.sources.coerce import to_canonical

    inter = to_canonical(inter, schema.INTERACTIONS_SCHEMA, "interactions", "x")
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
