"""bench/prepare.py compares two implementations of prepare by a digest of what they return: it must read content,
not object identity (a faster prepare shares one string object among many examples), and see a one-value change."""

from __future__ import annotations

import importlib.util
import sys
from dataclasses import replace
from pathlib import Path

from instructrec.config import load_config
from instructrec.training.prepare import prepare
from tests.conftest import make_tables

SCRIPT = Path(__file__).resolve().parents[2] / "bench" / "prepare.py"


def _digest():
    spec = importlib.util.spec_from_file_location("bench_prepare", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_prepare"] = module
    spec.loader.exec_module(module)
    return module.digest


def test_the_digest_reads_content_is_stable_across_runs_and_sees_one_changed_value():
    digest = _digest()
    cfg = load_config("tiny")
    inter, items = make_tables()
    one, two = (prepare(cfg, inter, items, "movie") for _ in range(2))
    outputs = lambda p: [p.split, p.examples, p.valid_cases, p.test_cases]  # noqa: E731
    assert digest(outputs(one)) == digest(outputs(two))
    shared = replace(one.examples, texts=[(t + ".")[:-1] for t in one.examples.texts])  # same text, new objects
    assert digest([one.split, shared, one.valid_cases, one.test_cases]) == digest(outputs(one))
    seq = one.examples.seq.copy()
    seq[0, -1] += 1
    assert digest([one.split, replace(one.examples, seq=seq), one.valid_cases, one.test_cases]) != digest(outputs(one))
    case = next(iter(one.test_cases))
    texts = [*one.test_cases[case].texts[:-1], one.test_cases[case].texts[-1] + "!"]
    changed = one.test_cases | {case: replace(one.test_cases[case], texts=texts)}
    assert digest([one.split, one.examples, one.valid_cases, changed]) != digest(outputs(one))
