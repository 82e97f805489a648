"""From validated tables to everything training and evaluation need, once per run."""

from __future__ import annotations

from dataclasses import dataclass

import polars as pl

from instructrec.config import Config
from instructrec.data.split import Catalogue, SplitData, sample_users, temporal_leave_one_out
from instructrec.errors import DataValidationError, Violation
from instructrec.evaluation.evaluate import EvalCase, build_cases
from instructrec.language.instructions import Examples, training_examples

VALID_SEED_OFFSET, HELD_OUT_SEED_OFFSET = 1, 2  # each case set draws its instructions from its own seed


@dataclass
class Prepared:
    split: SplitData
    examples: Examples
    valid_cases: dict[str, EvalCase]
    test_cases: dict[str, EvalCase]

    @property
    def catalogue(self) -> Catalogue:
        return self.split.catalogue

    def lineage(self) -> dict[str, int]:
        s = self.split
        return {
            "users": len(s.users),
            "items": s.catalogue.n_items,
            "train_interactions": s.n_train(),
            "eval_users": int(len(s.eval_users)),
            "train_examples": len(self.examples),
            "distinct_instruction_texts": len(self.examples.texts),
        }


def prepare(cfg: Config, interactions: pl.DataFrame, items: pl.DataFrame, noun: str) -> Prepared:
    d, e = cfg.data, cfg.eval
    catalogue = Catalogue.from_items(items, noun)
    split = temporal_leave_one_out(sample_users(interactions, d.max_users, d.seed), catalogue)
    require_evaluable(split)
    examples = training_examples(split, d.max_history, d.seed, d.instruction_mix, d.window_stride)
    require_trainable(split, examples)
    valid = build_cases(split, e.types, d.max_history, e.seed + VALID_SEED_OFFSET, e.sampled_negatives, target="valid")
    test = build_cases(split, e.types, d.max_history, e.seed, e.sampled_negatives, target="test")
    if e.held_out_templates:
        test |= build_cases(
            split,
            e.types,
            d.max_history,
            e.seed + HELD_OUT_SEED_OFFSET,
            e.sampled_negatives,
            target="test",
            held_out=True,
        )
    return Prepared(split, examples, valid, test)


def require_evaluable(split: SplitData) -> None:
    """The protocol needs users with a past, a validation and a test event; say so instead of failing later."""
    if len(split.eval_users):
        return
    most = max((len(t) for t in split.train), default=0)
    rule = (
        f"too little data to split: at least one user needs 3 interactions (train, validation, test in time); "
        f"the most any of the {len(split.users)} users has is {most}"
    )
    raise DataValidationError("the interactions table", [Violation("interactions", "user_id", rule)])


def require_trainable(split: SplitData, examples: Examples) -> None:
    """Every model learns next-item steps inside each user's training events (before validation and test): with
    none, there is nothing to train on, and the stages after would fail deep inside a tokenizer or an empty mean."""
    if examples.n_examples:
        return
    most = max((len(t) for t in split.train), default=0)
    rule = (
        "too little data to train: at least one user needs 4 interactions (two to learn a next step from, then "
        f"validation and test in time); the most any of the {len(split.users)} users has before validation is {most}"
    )
    raise DataValidationError("the interactions table", [Violation("interactions", "user_id", rule)])
