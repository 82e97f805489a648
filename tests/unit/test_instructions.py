import numpy as np
import pytest

from instructrec.instructions import (
    HISTORY,
    TEMPLATES,
    TRAIN_MIX,
    free_text_instruction,
    make_instruction,
    render,
    stated_taste,
    training_examples,
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


@pytest.mark.parametrize("type_", list(TEMPLATES))
def test_every_template_fills_and_is_tagged(type_):
    for k in range(len(TEMPLATES[type_])):
        ins = make_instruction(type_, k, CAT, np.array([1, 2, 4]), 3, max_history=20)
        assert ins is not None and ins.type == type_ and ins.template == f"{type_}#{k}"
        assert "{" not in ins.text
        assert (HISTORY in ins.text) == (ins.preference == "P1")
        assert bool(ins.history) == (ins.preference == "P1")


@pytest.mark.parametrize("type_", [t for t in TEMPLATES if t.endswith("I2")])
def test_specific_intention_names_genres_never_title_or_id(type_):
    target = 3  # Casablanca
    for k in range(len(TEMPLATES[type_])):
        ins = make_instruction(type_, k, CAT, np.array([1, 2, 4]), target, max_history=20)
        assert "Drama" in ins.text and "Romance" in ins.text
        assert "Casablanca" not in ins.text
        assert " c " not in f" {ins.text} " and "c." not in ins.text.split()


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


def test_training_examples_cover_the_mix_and_never_use_eval_targets():
    inter, items = make_tables()
    from instructrec.sources.coerce import to_canonical
    from instructrec import schema
    inter = to_canonical(inter, schema.INTERACTIONS_SCHEMA, "interactions", "x")
    items = to_canonical(items, {**schema.ITEMS_SCHEMA, **schema.ITEM_ATTRIBUTES}, "items", "x")
    split = temporal_leave_one_out(inter, Catalogue.from_items(items))
    ex = training_examples(split, 20, seed=0)
    assert set(ex.types) == set(TRAIN_MIX)
    assert len(ex) == sum(len(s) - 1 for s in split.train)
    for u in range(len(split.users)):
        rows = ex.user == u
        assert split.valid[u] not in ex.target[rows] or split.valid[u] in split.train[u]
        # every history item precedes its target in time
        for h, t in zip(ex.history[rows], ex.target[rows]):
            seq = list(split.train[u])
            pos = seq.index(t)
            assert set(h[h > 0]) <= set(seq[:pos])
