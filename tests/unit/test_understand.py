"""Request understanding at its edges: negation, years in digits and words, titles however spelled, constraints."""

from __future__ import annotations

import numpy as np
import pytest

from instructrec.data.split import Catalogue
from instructrec.language.understand import (
    EARLIEST,
    LATEST,
    TitleIndex,
    constrain,
    normalise_title,
    understand,
    violations,
)

CAT = Catalogue(
    ["1", "2", "3", "4", "5", "6", "7"],
    ["Shining, The", "Fargo", "Toy Story", "Casablanca", "Star Wars", "Pulp Fiction", "Fargo"],
    [""] * 7,
    [
        ("Horror",),
        ("Crime", "Drama", "Thriller"),
        ("Animation", "Children's", "Comedy"),
        ("Drama", "Romance", "War"),
        ("Action", "Adventure", "Romance", "Sci-Fi", "War"),
        ("Crime", "Drama"),
        ("Comedy",),
    ],
    "movie",
    years=[1980, 1996, 1995, 1942, 1977, 1994, 2003],
)


def read(text: str) -> dict:
    return understand(text, CAT).to_dict(CAT)


@pytest.mark.parametrize(
    ("request_", "refused"),
    [
        ("anything but drama", ["Drama"]),
        ("skip the horror", ["Horror"]),
        ("no comedy please", ["Comedy"]),
        ("I'm not in the mood for romance", ["Romance"]),
        ("I don't want drama or horror", ["Drama", "Horror"]),
        ("neither drama nor horror", ["Drama", "Horror"]),
        ("nothing with cartoons", ["Animation"]),
    ],
)
def test_refusals_are_read_as_refusals(request_, refused):
    got = understand(request_, CAT)
    assert list(got.exclude_genres) == refused and not got.genres


def test_negation_at_its_edges():
    assert read("not without comedy") == {"genres": ["Comedy"]}  # two negations ask for it
    assert read("not only comedy") == {"genres": ["Comedy"]}  # 'not only' refuses nothing
    assert read("nothing but westerns") == {}  # the catalogue has no westerns: nothing is offered
    assert read("nothing but horror") == {"genres": ["Horror"]}
    assert read("comedy but not romance") == {"genres": ["Comedy"], "exclude_genres": ["Romance"]}
    assert read("not comedy, drama") == {"genres": ["Drama"], "exclude_genres": ["Comedy"]}  # a comma ends it
    assert read("I don't mind a comedy") == {"genres": ["Comedy"]}
    assert read("I don't want anything but horror") == {"genres": ["Horror"]}
    assert read("I usually like comedy, but today I want a thriller") == {"genres": ["Thriller"]}  # taste: soft


def test_the_encoder_reads_the_request_without_what_the_rules_took_out():
    assert understand("anything but drama", CAT).rest == ""  # nothing left: the history-only request
    assert understand("comedy but not romance", CAT).rest == "comedy"
    assert understand("something like the shining from the 80s", CAT).rest == "from the 80s"
    assert understand("a comedy", CAT).rest == "a comedy"


@pytest.mark.parametrize(
    ("request_", "years"),
    [
        ("something from the 80s", [1980, 1989]),
        ("a film from the 1980s", [1980, 1989]),
        ("the eighties, please", [1980, 1989]),
        ("nineteen seventies", [1970, 1979]),
        ("early 90s", [1990, 1993]),
        ("late nineties", [1996, 1999]),
        ("between 1970 and 1985", [1970, 1985]),
        ("1970-85", [1970, 1985]),
        ("1995-05", [1995, 2005]),
        ("from 1998 to 03", [1998, 2003]),
        ("before 1960", [None, 1959]),
        ("since 1990", [1990, None]),
        ("after 1990", [1991, None]),
        ("a movie from 1995", [1995, 1995]),
        ("an old black-and-white film", [None, 1959]),
        ("a silent movie", [None, 1929]),
        ("something old", [None, 2003 - 30]),
        ("something recent", [2001, None]),
        ("an 80s movie from before 1985", [1980, 1984]),
    ],
)
def test_years_in_digits_and_words(request_, years):
    assert read(request_)["years"] == years


def test_a_catalogue_without_years_says_so_and_applies_none():
    bare = Catalogue(["1"], ["Fargo"], [""], [("Crime",)], "movie")
    got = understand("a crime film from the 90s", bare)
    assert got.years is None and got.genres == ("Crime",)
    assert "no release years" in got.notes[0]


@pytest.mark.parametrize(
    "spelling",
    ["the shining", "The Shining", "Shining, The", "shining", "the shining (1980)", "the shinning", "THE SHINING"],
)
def test_titles_are_found_however_spelled(spelling):
    assert understand(f"something like {spelling}", CAT).like == (1,)


def test_titles_named_together_and_equal_titles_by_year_or_popularity():
    assert read("movies like fargo and pulp fiction")["like"] == ["Fargo (1996)", "Pulp Fiction (1994)"]
    assert understand("like fargo (2003)", CAT).like == (7,)  # the year picks the remake
    popular = TitleIndex(CAT, np.array([0, 1, 0, 0, 0, 0, 9.0]))
    assert understand("like fargo", CAT, popular).like == (7,)  # else the more popular one
    assert normalise_title("City of Lost Children, The (Cité des enfants perdus, La)") == "the city of lost children"


def test_unknown_titles_and_like_the_verb():
    got = understand("something like Xyzzy Plugh", CAT)
    assert got.like == () and got.unknown_titles == ("xyzzy plugh",) and "no title" in got.notes[0]
    assert understand("I'd like a comedy", CAT).like == () and not understand("I'd like a comedy", CAT).notes
    assert understand("something like a comedy", CAT).unknown_titles == ()
    assert understand("nothing like the shining", CAT).unlike == (1,)


def test_constraints_rank_in_tiers_and_never_unblock():
    got = understand("a drama but no romance, before 1995", CAT)
    assert got.genres == ("Drama",) and got.exclude_genres == ("Romance",) and got.years == (EARLIEST, 1994)
    assert violations(got, CAT).tolist() == [1, 1, 2, 1, 2, 0, 2]
    scores = np.array([9.0, 1.0, 8.0, 7.0, 6.0, 0.5, -np.inf])
    order = np.argsort(-constrain(scores, got, CAT), kind="stable")
    assert order[0] == 5 and order[1] == 0 and order[-1] == 6  # the one meeting all first; blocked stays last
    assert np.isneginf(constrain(scores, got, CAT)[6])
    either = understand("sci-fi or comedy", CAT)
    assert not either.all_genres and violations(either, CAT).tolist() == [1, 1, 0, 1, 0, 1, 0]
    both = understand("a romantic war film", CAT)
    assert both.all_genres and violations(both, CAT).tolist() == [2, 2, 2, 0, 0, 2, 2]
    assert understand("", CAT) == understand(None, CAT) and not understand("hello", CAT).constrains
    assert understand("since 1990", CAT).years == (1990, LATEST)


def test_a_year_that_belongs_to_the_title_and_a_swapped_letter():
    cat = Catalogue(
        ["1", "2", "3"],
        ["Blues Brothers, The", "Blues Brothers 2000", "Supercop"],
        [""] * 3,
        [()] * 3,
        "movie",
        years=[1980, 1998, 1992],
    )
    assert understand("something like blues brothers 2000", cat).like == (2,)
    assert understand("something like the blues brothers (1980)", cat).like == (1,)
    assert understand("something like superocp", cat).like == (3,)  # one swap in a short title
    assert understand("something like superman", cat).like == ()  # two edits in eight letters: not it
