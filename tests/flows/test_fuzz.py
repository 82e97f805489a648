"""The small-data fuzzer: random little datasets through every stage, each ending in a result or a named refusal.

Hypothesis draws a dataset (1-50 users, 1-60 items, 1-20 events per user, tied and extreme but legal
timestamps, items without genres, optional columns left out) and runs it through what `instructrec pipeline`
runs, stage by stage on the library the flow's tasks call: ingest (snapshot), read and validate (the GX
suites), prepare, one epoch of SASRec and of the scorer (tiny profile), evaluation of the scorer, popularity
and SASRec, and the offline gate. A draw passes when it ends in a decision or in `DataValidationError` with a
rule (the CLI's exit 2). A hang (the watchdog's `Hang`, raised where the code was stuck) or any other
exception fails, and Hypothesis prints the shrunk dataset.

    make test                                            # FUZZ_DRAWS draws (default 6)
    make fuzz                                            # 200 draws (--hypothesis-profile fuzz)
"""

from __future__ import annotations

import os
import signal
import tempfile
import time
import traceback
from dataclasses import dataclass, replace
from pathlib import Path

import polars as pl
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from hypothesis.database import DirectoryBasedExampleDatabase

from expectations.runner import suite_parameters, validate_table
from instructrec.config import load_config
from instructrec.data import schema
from instructrec.data.snapshot import snapshot_raw
from instructrec.data.sources import fetch_raw, read_tables
from instructrec.errors import DataValidationError
from instructrec.evaluation.evaluate import HEADLINE, PopularityScorer, TorchScorer, evaluate
from instructrec.evaluation.gate import arm_of, decide, floor_baseline
from instructrec.models.sasrec import SASRec, SASRecScorer
from instructrec.training.baseline import baseline_config, baseline_settings, fit_sasrec
from instructrec.training.prepare import prepare
from instructrec.training.train import FitRun, fit, new_scorer, representation_settings

GENRES = ("Action", "Comedy", "Drama", "Horror", "Romance")
DRAW_SECONDS = 60  # a draw that has not ended by then is a hang (the tiny profile trains one in a few seconds)
LEGAL_SECONDS = (-(2**31), 1_764_547_200)  # 1901-12-13 .. 2025-12-01: a 32-bit epoch, and never in the future

settings.register_profile(
    "ci",
    max_examples=int(os.environ.get("FUZZ_DRAWS", "6")),
    deadline=None,
    derandomize=True,  # the same draws on every run of `make test`: a failure reproduces
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    print_blob=True,
)
settings.register_profile(
    "fuzz",
    parent=settings.get_profile("ci"),
    max_examples=int(os.environ.get("FUZZ_DRAWS", "200")),
    derandomize=False,
    database=DirectoryBasedExampleDatabase(".hypothesis/examples"),  # a failure found here is replayed first
    report_multiple_bugs=False,
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


@dataclass(frozen=True)
class Dataset:
    """A drawn dataset, small enough to read in a failure report."""

    items: tuple[tuple[str, ...], ...]  # per item: its genres (may be none)
    years: tuple[int | None, ...]  # per item: the year in its title, or none
    events: tuple[tuple[tuple[int, int], ...], ...]  # per user: (item index, timestamp in seconds)
    ratings: bool  # the optional rating column present
    genres_column: bool  # the optional genres column present

    def write(self, root: Path) -> Path:
        root.mkdir(parents=True, exist_ok=True)
        items = {
            schema.ITEM: [f"i{k}" for k in range(len(self.items))],
            schema.TITLE: [f"Film {k}" + (f" ({y})" if y is not None else "") for k, y in enumerate(self.years)],
        }
        if self.genres_column:
            items[schema.GENRES] = ["|".join(g) for g in self.items]
        pl.DataFrame(items).write_csv(root / "items.csv")
        rows = [(f"u{u}", f"i{i}", t) for u, user in enumerate(self.events) for i, t in user]
        inter = pl.DataFrame(rows, schema=[schema.USER, schema.ITEM, schema.TIMESTAMP], orient="row")
        if self.ratings:
            inter = inter.with_columns((pl.col(schema.TIMESTAMP).abs() % 5 + 1).cast(pl.Float64).alias(schema.RATING))
        inter.write_csv(root / "interactions.csv")
        return root


@st.composite
def datasets(draw) -> Dataset:
    n_items = draw(st.integers(1, 60))
    items = tuple(tuple(draw(st.lists(st.sampled_from(GENRES), max_size=2, unique=True))) for _ in range(n_items))
    years = tuple(draw(st.one_of(st.none(), st.integers(1890, 2030))) for _ in range(n_items))
    # a few timestamps shared by many events (ties), the rest anywhere in the legal range
    stamps = st.one_of(st.sampled_from((0, -1, 946_684_800)), st.integers(*LEGAL_SECONDS))
    event = st.tuples(st.integers(0, n_items - 1), stamps)
    users = draw(st.lists(st.lists(event, min_size=1, max_size=20), min_size=1, max_size=50))
    if draw(st.integers(0, 9)):  # mostly no exact duplicate event (the suite refuses those; one draw in ten keeps them)
        users = [list(dict.fromkeys(user)) for user in users]
    return Dataset(items, years, tuple(tuple(u) for u in users), draw(st.booleans()), draw(st.booleans()))


class Hang(BaseException):
    """Raised by the watchdog inside whatever the draw was running when its time ran out (not an `Exception`:
    code that turns exceptions into results, as GX does inside an expectation, must not swallow it)."""


def _alarm(signum, frame):
    raise Hang(f"no result after {DRAW_SECONDS} s; stuck in:\n{''.join(traceback.format_stack(frame)[-4:])}")


def run_stages(dataset: Dataset, cfg, root: Path) -> str:
    """What the training flow runs, stage by stage; the gate's outcome."""
    snap = snapshot_raw(fetch_raw(str(dataset.write(root / "data")), cfg.paths.downloads), cfg.paths.snapshots)
    tables = read_tables(snap.kind, snap.raw_dir)
    limits = suite_parameters(cfg.data)
    for table, df, params in (
        ("items", tables.items, limits["items"]),
        (
            "interactions",
            tables.interactions,
            {**limits["interactions"], "catalogue": tables.items[schema.ITEM].to_list()},
        ),
    ):
        validate_table(table, df, tables.files[table], root / "gx", params).raise_for_failure()
    prepared = prepare(cfg, tables.interactions, tables.items, tables.item_noun)
    split, headline = prepared.split, {HEADLINE: prepared.valid_cases[HEADLINE]}

    sasrec = SASRec(baseline_config(cfg, split.catalogue.n_items))
    fit_sasrec(
        sasrec,
        split.train,
        replace(baseline_settings(cfg), epochs=1, eval_every=1),
        lambda m: evaluate(SASRecScorer(m), headline, split).by_type[HEADLINE]["ndcg@10"],
    )
    model, tokenizer = new_scorer(cfg, split.catalogue)
    ids = split.catalogue.item_ids

    def validate(m) -> dict[str, float]:
        return {
            "ndcg@10": evaluate(TorchScorer("v", m, tokenizer, ids, ids), headline, split).by_type[HEADLINE]["ndcg@10"]
        }

    fit(
        model,
        tokenizer,
        prepared.examples,
        replace(representation_settings(cfg), epochs=1),
        validate,
        FitRun(progress=False),
    )

    scorers = {
        "challenger": TorchScorer("challenger", model, tokenizer, ids, ids),
        "popularity": PopularityScorer(split.popularity),
        "sasrec": SASRecScorer(sasrec),
    }
    arms = {name: arm_of(evaluate(s, prepared.test_cases, split)) for name, s in scorers.items()}
    baselines = {k: v for k, v in arms.items() if k != "challenger"}
    decision = decide(arms["challenger"], floor_baseline(baselines, cfg.gate), cfg.gate, references=baselines)
    return decision.outcome


@pytest.fixture(scope="module")
def fuzz_cfg(tmp_path_factory):
    home = tmp_path_factory.mktemp("fuzz-home")
    return load_config("tiny", environ={"INSTRUCTREC_HOME": str(home)})


@given(dataset=datasets())
@settings(suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_every_small_dataset_ends_in_a_result_or_a_named_refusal(dataset, fuzz_cfg):
    previous = signal.signal(signal.SIGALRM, _alarm)
    outer, _ = signal.setitimer(signal.ITIMER_REAL, DRAW_SECONDS)  # pytest-timeout's timer, if set, is put back
    started = time.monotonic()
    try:
        with tempfile.TemporaryDirectory() as tmp:
            outcome = run_stages(dataset, fuzz_cfg, Path(tmp))
        assert outcome in {"promote", "reject", "insufficient_data"}
        event(f"gate: {outcome}")  # --hypothesis-show-statistics: how the draws ended
    except DataValidationError as refusal:  # the CLI's exit 2: it must say which rule
        assert refusal.violations and all(v.rule for v in refusal.violations), str(refusal)
        event(f"refused: {refusal.violations[0].rule.split(':')[0][:60]}")
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
        if outer:
            signal.setitimer(signal.ITIMER_REAL, max(outer - (time.monotonic() - started), 0.01))
