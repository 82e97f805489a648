"""The results pages (docs/results/) say what their run records (docs/results/runs/*.json) say: every generated
section is fresh, names a record that exists, and changes when its record changes."""

from __future__ import annotations

import copy

import pytest

from ops import results


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
    out = tmp_path / "scale.json"
    out.write_text('{"command": "bench/scale.py", "date": "2026-12-07"}')
    with pytest.raises(SystemExit, match="no results section renders 'scale'"):
        results.add(out)
