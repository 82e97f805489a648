"""The results pages (docs/results/) say what their run records (docs/results/runs/*.json) say: every generated
section is fresh, names a record that exists, and changes when its record changes."""

from __future__ import annotations

import copy
import json
import subprocess

import pytest

from ops import bench_pages, provenance, results


@pytest.fixture(scope="module")
def records() -> dict[str, dict]:
    return results.load_records()


@pytest.mark.parametrize("page", results.PAGES, ids=lambda p: p.name)
def test_the_committed_page_is_what_its_records_say(page, records):
    assert results.render_page(page.read_text(), records) == page.read_text(), f"{page.name} is stale: run `make docs`"


def test_every_record_is_shown_on_a_page_and_every_section_has_its_record(records):
    shown = {m["name"] for page in results.PAGES for m in results.SECTION.finditer(page.read_text())}
    assert shown, "no generated section on any results page"
    assert shown == set(records), f"sections {sorted(shown)} vs records {sorted(records)}"


def test_a_changed_number_in_a_record_changes_the_page(records):
    name = next(n for n in sorted(records) if records[n]["kind"] == "pipeline")
    page = next(p for p in results.PAGES if f"<!-- results:{name} -->" in p.read_text())
    changed = copy.deepcopy(records)
    changed[name]["scores"]["challenger"][results.HEADLINE]["ndcg@10"] += 0.01
    before, after = results.render_page(page.read_text(), records), results.render_page(page.read_text(), changed)
    assert before != after


def test_a_section_without_its_record_is_refused():
    with pytest.raises(SystemExit, match="missing"):
        results.render_page("<!-- results:no-such-run -->\nold\n<!-- /results -->\n", {})


def test_a_request_target_missed_reads_not_met(records):
    rep = copy.deepcopy(next(r for r in records.values() if r["kind"] == "request_classes"))
    rep["classes"]["composite"]["satisfied"] = 0.69  # the target is at least 70%
    rep["classes"]["negation"]["refused_ratio_per_wording"] = {"No {genre} for me.": 0.25}  # none above 0.2x
    targets = results.request_targets(rep)
    verdict = {what.split(":")[0]: ok for what, _, _, ok in targets}
    assert verdict["composite"] is False and verdict["negation"] is False
    assert results.requests_section(rep).count("**NOT met**") == sum(not ok for *_, ok in targets)


def test_only_a_benchmark_a_page_can_show_is_recorded(tmp_path):
    out = tmp_path / "compare_models.json"
    out.write_text('{"command": "bench/compare_models.py", "date": "2026-12-07"}')
    with pytest.raises(SystemExit, match="no results section renders 'compare_models'"):
        results.add(out)


@pytest.mark.parametrize("kind", sorted(bench_pages.RENDERERS))
def test_every_benchmark_kind_has_a_record_rendered_with_its_command_date_and_commit(kind, records):
    recs = [r for r in records.values() if r["kind"] == kind]
    assert recs, f"no record of kind {kind!r} in docs/results/runs/: run its benchmark and `python -m ops.results add`"
    for rec in recs:
        text = results.render_record(rec)
        assert f"`{rec['command']}`" in text and rec["date"][:10] in text and rec["commit"] in text


def _met_and_missed(kind: str, rec: dict) -> tuple[dict, dict]:
    """The record with one of its targets met, and the same record with that target missed."""
    met, missed = copy.deepcopy(rec), copy.deepcopy(rec)
    if kind == "scorer":
        i = next(i for i, line in enumerate(rec["targets"]) if not line.endswith("NOT met"))
        missed["targets"][i] = rec["targets"][i].removesuffix("met") + "NOT met"
    elif kind == "session_ab":  # the target is p99 < 50 ms
        met["next_list_latency_ms"]["p99"], missed["next_list_latency_ms"]["p99"] = 49.9, 50.0
    elif kind == "scale":  # under 8 GB at the largest scale
        met["peak_rss_gb"], missed["peak_rss_gb"] = 7.99, 8.0
    elif kind == "ab_validity":
        missed["targets"][next(k for k, ok in rec["targets"].items() if ok)] = False
    return met, missed


@pytest.mark.parametrize("kind", ["scorer", "session_ab", "scale", "ab_validity"])
def test_a_benchmark_target_missed_reads_not_met(kind, records):
    rec = next(r for r in records.values() if r["kind"] == kind)
    met, missed = _met_and_missed(kind, rec)
    assert results.render_record(missed).count("**NOT met**") == results.render_record(met).count("**NOT met**") + 1


def test_a_benchmark_records_the_command_as_typed_from_the_root_and_the_commit():
    rec = provenance.provenance([str(provenance.ROOT / "bench" / "scale.py"), "--scales", "1"])
    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=provenance.ROOT)
    assert rec["command"] == "bench/scale.py --scales 1"
    assert rec["commit"] == head.stdout.strip() and isinstance(rec["dirty"], bool)


def test_a_report_is_written_whole_with_its_kind_first(tmp_path):
    written = provenance.write_report(tmp_path / "r" / "cuped.json", "cuped", {"reps": 3})
    rec = json.loads((tmp_path / "r" / "cuped.json").read_text())
    assert rec == written
    assert next(iter(rec)) == "kind" and rec["kind"] == "cuped" and rec["reps"] == 3
    assert not list(tmp_path.glob("r/*.tmp"))
