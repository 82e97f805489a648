"""Requests as people write them, measured per class: era, composite, negation and a named title.

Each test user gets one request per class, written from the test target's
metadata in wordings kept out of training and tuning (`WORDINGS`; a training
template must never reuse one), beside the same user's list with no request:

- era: the target's decade, in digits or words, or a range around its year; an
  old black-and-white film where the target is older than 1960;
- rare_era: a period that holds under 10% of the catalogue (a decade, or before
  1960), whatever the target: the era wordings where following them matters
  most (NDCG is not reported: the target is not in the period);
- composite: one of the target's genres in its decade or a range, or two of its
  genres at once;
- negation: a genre the target lacks, the one the user's no-request list shows
  most (refusing what one would be shown is when people say it);
- title: the film of the user's history whose genres are closest to the
  target's (Jaccard; never the target), its title spelled as people type it.

What is true of each case comes from the metadata, not from the parser: a list
is judged against the constraint the wording states. Reported per class: NDCG@10
of the target, the share of the top 10 meeting every constraint (negation: the
refused genre's share) with and without the request, the catalogue's base rate,
and for titles the share of spellings resolved and the genre overlap with the film
(Jaccard of the genre sets, averaged over the top 10).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, replace

import numpy as np
import polars as pl

from instructrec.data import schema
from instructrec.data.split import Catalogue, SplitData
from instructrec.language.instructions import spellings
from instructrec.language.understand import BLACK_AND_WHITE, EARLIEST, Understood, display_title, violations
from instructrec.serving.recommend import Recommender

CLASSES = ("era", "rare_era", "composite", "negation", "title")
RARE = 0.10  # rare_era: periods that hold less than this share of the catalogue
K = 10
WORDINGS: dict[str, tuple[str, ...]] = {
    "era": (
        "Something made in the {decade}.",
        "A {noun} from the {decade_words}, please.",
        "Anything released between {lo} and {hi}.",
    ),
    "old": ("An old black-and-white {noun}.",),
    "composite": (
        "A {genre} {noun} from the {decade}.",
        "I'd enjoy a {genre} {noun} made between {lo} and {hi}.",
        "Something that is both {genre} and {genre2}.",
    ),
    "negation": (
        "Anything except {genre}, please.",
        "I want to avoid {genre} tonight.",
        "Give me something that isn't {genre}.",
        "No {genre} for me this time.",
    ),
    "title": (
        "Something along the lines of {title}.",
        "More {nouns} like {title}, please.",
        "Anything similar to {title}?",
    ),
}
DECADE_WORDS = {1920: "twenties", 1930: "thirties", 1940: "forties", 1950: "fifties", 1960: "sixties",
                1970: "seventies", 1980: "eighties", 1990: "nineties"}  # fmt: skip

# what a top-10 list returns: catalogue indices (1-based), best first, and what the request was read as
Ranker = Callable[[str, str | None], tuple[list[int], dict]]


@dataclass(frozen=True)
class RequestCase:
    kind: str  # one of CLASSES
    wording: int  # index into the class's WORDINGS ("old" counts as era wording len(era))
    user: int  # split user index
    target: int
    text: str
    truth: Understood  # the constraints the wording states, from the metadata
    named: int = 0  # title: the film named


def _fill(kind: str, k: int, catalogue: Catalogue, **fields) -> str:
    noun = catalogue.noun
    return WORDINGS[kind][k].format(noun=noun, nouns=noun if noun.endswith("s") else f"{noun}s", **fields)


def _range(year: int, rng: np.random.Generator) -> tuple[int, int]:
    lo = year - int(rng.integers(0, 8))
    return lo, lo + 10 + int(rng.integers(0, 10))


def _era(year: int, k: int, rng: np.random.Generator) -> tuple[dict, tuple[int, int]]:
    decade = year // 10 * 10
    if k == 2:
        lo, hi = _range(year, rng)
        return {"lo": lo, "hi": hi}, (lo, hi)
    return {"decade": f"{decade}s", "decade_words": DECADE_WORDS.get(decade, f"{decade}s")}, (decade, decade + 9)


def rare_periods(catalogue: Catalogue) -> list[tuple[dict, tuple[int, int], int]]:
    """(wording fields, years, era wording) of the periods that hold under RARE of the catalogue."""
    years = np.asarray([y for y in catalogue.years if y])
    out = []
    for decade in sorted({int(y) // 10 * 10 for y in years}):
        if 0 < np.mean((years >= decade) & (years <= decade + 9)) < RARE:
            fields = {"decade": f"{decade}s", "decade_words": DECADE_WORDS.get(decade, f"{decade}s")}
            out += [(fields, (decade, decade + 9), 0), (fields, (decade, decade + 9), 1)]
    if 0 < np.mean(years <= BLACK_AND_WHITE) < RARE:
        out.append(({}, (EARLIEST, BLACK_AND_WHITE), 3))
    return out


def request_cases(split: SplitData, plain: dict[int, list[int]], seed: int) -> list[RequestCase]:
    """One case per class per user in `plain` (their no-request top 10), where the metadata allows it."""
    cat, rng = split.catalogue, np.random.default_rng(seed)
    rare = rare_periods(cat)
    cases = []
    for u, shown in plain.items():
        if rare:
            fields, years, k = rare[int(rng.integers(0, len(rare)))]
            text = _fill("old", 0, cat) if k == 3 else _fill("era", k, cat, **fields)
            cases.append(RequestCase("rare_era", k, u, int(split.test[u]), text, Understood(years=years)))
        target = int(split.test[u])
        genres, year = cat.genres_of(target), cat.year_of(target)
        if year:
            if year <= BLACK_AND_WHITE and rng.random() < 0.5:
                text = _fill("old", 0, cat)
                cases.append(RequestCase("era", 3, u, target, text, Understood(years=(EARLIEST, BLACK_AND_WHITE))))
            else:
                k = int(rng.integers(0, 3))
                fields, years = _era(year, k, rng)
                cases.append(RequestCase("era", k, u, target, _fill("era", k, cat, **fields), Understood(years=years)))
        if genres:
            k = int(rng.integers(0, 3)) if len(genres) > 1 else int(rng.integers(0, 2))
            g = genres[int(rng.integers(0, len(genres)))]
            if k == 2:
                g2 = next(x for x in genres if x != g)
                truth = Understood(genres=(g, g2))
                text = _fill("composite", 2, cat, genre=g.lower(), genre2=g2.lower())
                cases.append(RequestCase("composite", 2, u, target, text, truth))
            elif year:
                fields, years = _era(year, 2 if k == 1 else 0, rng)
                text = _fill("composite", k, cat, genre=g.lower(), **fields)
                cases.append(RequestCase("composite", k, u, target, text, Understood(genres=(g,), years=years)))
            counts = Counter(x for i in shown for x in cat.genres_of(i) if x not in genres)
            if not counts:
                counts = Counter(x for gs in cat.genres for x in gs if x not in genres)
            if counts:
                refused = max(sorted(counts), key=lambda x: counts[x])
                k = int(rng.integers(0, len(WORDINGS["negation"])))
                text = _fill("negation", k, cat, genre=refused.lower())
                cases.append(RequestCase("negation", k, u, target, text, Understood(exclude_genres=(refused,))))
            known = [int(i) for i in split.history_before_test(u) if int(i) != target]
            closeness = [_jaccard(set(cat.genres_of(i)), set(genres)) for i in known]
            if known and max(closeness) > 0:
                best = [i for i, c in zip(known, closeness, strict=True) if c == max(closeness)]
                named = best[int(rng.integers(0, len(best)))]
                k = int(rng.integers(0, len(WORDINGS["title"])))
                spelled = spellings(cat.title(named), cat.year_of(named), rng)[int(rng.integers(0, 4))]
                text = _fill("title", k, cat, title=spelled)
                cases.append(RequestCase("title", k, u, target, text, Understood(), named))
    return cases


def _jaccard(a: set, b: set) -> float:
    return len(a & b) / len(a | b) if a | b else 0.0


def _names(cat: Catalogue, found: tuple[int, ...], named: int) -> bool:
    """Whether the titles found are the one named (a film listed twice under one title and year counts)."""
    return [display_title(cat, i) for i in found] == [display_title(cat, named)]


def _ndcg(top: list[int], target: int) -> float:
    return next((1.0 / np.log2(r + 2) for r, i in enumerate(top[:K]) if i == target), 0.0)


def evaluate_requests(
    rank: Ranker, split: SplitData, users: np.ndarray, seed: int, resolve: Callable[[str], tuple[int, ...]]
) -> dict:
    """Per class: the request's list against the same user's no-request list (see the module docstring).

    resolve: the titles a request names, as catalogue indices (the parser the service uses)."""
    cat = split.catalogue
    plain = {int(u): rank(split.users[u], None)[0] for u in users}
    cases = request_cases(split, plain, seed)
    genres_of = [set(g) for g in [()] + cat.genres]
    out: dict[str, dict] = {}
    for kind in CLASSES:
        rows = [c for c in cases if c.kind == kind]
        if not rows:
            out[kind] = {"cases": 0, "note": "the catalogue lacks what this class needs (years or genres)"}
            continue
        asked, base = [], []
        for c in rows:
            top, understood = rank(split.users[c.user], c.text)
            asked.append((top, understood))
        row: dict = {"cases": len(rows)}
        if kind != "rare_era":
            row["ndcg@10"] = float(np.mean([_ndcg(top, c.target) for (top, _), c in zip(asked, rows, strict=True)]))
            row["ndcg@10_no_request"] = float(np.mean([_ndcg(plain[c.user], c.target) for c in rows]))
        if kind == "title":
            ov = [
                np.mean([_jaccard(genres_of[i], genres_of[c.named]) for i in top])
                for (top, _), c in zip(asked, rows, strict=True)
            ]
            ov0 = [np.mean([_jaccard(genres_of[i], genres_of[c.named]) for i in plain[c.user]]) for c in rows]
            got = [
                understood.get("like", []) == [display_title(cat, c.named)]
                for (_, understood), c in zip(asked, rows, strict=True)
            ]
            rng = np.random.default_rng(seed + 1)
            spelled = [
                _names(cat, resolve(f"something like {s}"), c.named)
                for c in rows
                for s in spellings(cat.title(c.named), cat.year_of(c.named), rng)
            ]
            row.update(
                genre_overlap=float(np.mean(ov)),
                genre_overlap_no_request=float(np.mean(ov0)),
                resolved_in_requests=float(np.mean(got)),
                spellings=len(spelled),
                spellings_resolved=float(np.mean(spelled)),
            )
        else:
            met = [
                np.mean(violations(c.truth, cat)[np.asarray(top) - 1] == 0)
                for (top, _), c in zip(asked, rows, strict=True)
            ]
            met0 = [np.mean(violations(c.truth, cat)[np.asarray(plain[c.user]) - 1] == 0) for c in rows]
            base = [float(np.mean(violations(c.truth, cat) == 0)) for c in rows]
            row.update(
                satisfied=float(np.mean(met)), satisfied_no_request=float(np.mean(met0)), base_rate=float(np.mean(base))
            )
            if kind == "negation":
                share = 1.0 - np.asarray(met)
                share0 = 1.0 - np.asarray(met0)
                per = {}
                for k in sorted({c.wording for c in rows}):
                    pick = np.asarray([c.wording == k for c in rows])
                    per[WORDINGS["negation"][k]] = float(share[pick].mean() / max(share0[pick].mean(), 1e-9))
                row.update(
                    refused_share=float(share.mean()),
                    refused_share_no_request=float(share0.mean()),
                    refused_ratio=float(share.mean() / max(share0.mean(), 1e-9)),
                    refused_ratio_per_wording=per,
                )
        out[kind] = row
    return {"users": len(plain), "k": K, "classes": out, "examples": [c.text for c in cases[:12]]}


def served(rec: Recommender, split: SplitData, users: np.ndarray, seed: int) -> dict:
    """`evaluate_requests` through `Recommender.recommend`, the call `/recommend` makes; under "learned_alone", the
    same cases with the rules off (every word read by the learned scorer, nothing filtered): what training on the
    request classes taught the model, and what a wording the rules miss gets."""

    def ranker(r: Recommender) -> Ranker:
        def rank(user: str, text: str | None) -> tuple[list[int], dict]:
            out = r.recommend(user, text, k=K)
            return [r.catalogue.index[i["item_id"]] for i in out["items"]], out.get("understood", {})

        return rank

    report = evaluate_requests(ranker(rec), split, users, seed, lambda text: rec.understand(text).like)
    alone = replace(rec, rules=False)
    report["learned_alone"] = evaluate_requests(ranker(alone), split, users, seed, lambda text: ())["classes"]
    return report


def interactions_before(split: SplitData, users: np.ndarray) -> pl.DataFrame:
    """Each user's events up to the test target (train + validation), as the interactions a recommender loads."""
    cat = split.catalogue
    rows = [(split.users[u], cat.item_ids[i - 1], t) for u in users for t, i in enumerate(split.history_before_test(u))]
    return pl.DataFrame(rows, schema=[schema.USER, schema.ITEM, "t"], orient="row").with_columns(
        pl.from_epoch("t").dt.replace_time_zone("UTC").alias(schema.TIMESTAMP), pl.lit(4.0).alias(schema.RATING)
    )


def markdown_table(report: dict) -> str:
    """The per-class table (docs/requests.md), from `evaluate_requests`' report."""
    c = report["classes"]
    lines = [
        "| class | cases | NDCG@10 (request) | NDCG@10 (no request) | top 10 meeting the request | "
        "same, no request | catalogue base rate |",
        "|---|---|---|---|---|---|---|",
    ]
    for kind in ("era", "rare_era", "composite", "negation"):
        r = c[kind]
        if not r.get("cases"):
            lines.append(f"| {kind} | 0 | | | | | {r.get('note', '')} |")
            continue
        nd = f"{r['ndcg@10']:.4f} | {r['ndcg@10_no_request']:.4f}" if "ndcg@10" in r else "n/a | n/a"
        lines.append(
            f"| {kind} | {r['cases']} | {nd} | {r['satisfied']:.1%} | {r['satisfied_no_request']:.1%} | "
            f"{r['base_rate']:.1%} |"
        )
    t = c["title"]
    if t.get("cases"):
        lines.append(
            f"| title | {t['cases']} | {t['ndcg@10']:.4f} | {t['ndcg@10_no_request']:.4f} | genre overlap with the "
            f"film {t['genre_overlap']:.3f} | {t['genre_overlap_no_request']:.3f} | |"
        )
    alone = report.get("learned_alone")
    if alone:
        lines += [
            "",
            "The learned scorer alone (rules off: every word read by the encoder, nothing filtered), same cases:",
            "",
            "| class | NDCG@10 (request) | top 10 meeting the request | same, no request |",
            "|---|---|---|---|",
        ]
        for kind in CLASSES:
            r = alone[kind]
            if not r.get("cases"):
                continue
            nd = f"{r['ndcg@10']:.4f}" if "ndcg@10" in r else "n/a"
            if kind == "title":
                met = f"genre overlap {r['genre_overlap']:.3f} | {r['genre_overlap_no_request']:.3f}"
            elif kind == "negation":
                met = f"refused genre {r['refused_share']:.1%} | {r['refused_share_no_request']:.1%}"
            else:
                met = f"{r['satisfied']:.1%} | {r['satisfied_no_request']:.1%}"
            lines.append(f"| {kind} | {nd} | {met} |")
    n = c["negation"]
    if n.get("cases"):
        per = ", ".join(f"'{w}' {v:.2f}x" for w, v in n["refused_ratio_per_wording"].items())
        lines += [
            "",
            f"Negation: the refused genre's share of the top 10 is {n['refused_share']:.1%} with the request, "
            f"{n['refused_share_no_request']:.1%} without ({n['refused_ratio']:.2f}x; per wording: {per}).",
        ]
    if t.get("cases"):
        lines.append(
            f"Titles: {t['resolved_in_requests']:.1%} of the requests resolved to the film named; "
            f"{t['spellings_resolved']:.1%} of {t['spellings']} spellings (article moved, lower case, no article, "
            "one typo)."
        )
    return "\n".join(lines)
