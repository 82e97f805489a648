"""The generated reference pages (docs/reference/{config,cli,http-api}.md) are what the code says now, and the
generator misses nothing: every config field, every sub-command, every route."""

from __future__ import annotations

import argparse

import pytest
from pydantic import BaseModel

from ops import reference

PAGES = sorted(reference.PAGES)


@pytest.fixture(scope="module")
def schema() -> dict:
    return reference.openapi_schema()


@pytest.fixture(scope="module")
def pages(schema) -> dict[str, str]:
    return {
        "config.md": reference.config_page(),
        "cli.md": reference.cli_page(),
        "http-api.md": reference.http_page(schema),
    }


@pytest.mark.parametrize("name", PAGES)
def test_the_committed_page_is_up_to_date(name, pages):
    path = reference.OUT / name
    assert path.is_file(), f"docs/reference/{name} is missing: run `make docs`"
    assert path.read_text() == pages[name], f"docs/reference/{name} is stale: run `make docs`"


@pytest.mark.parametrize("name", PAGES)
def test_each_page_says_it_is_generated(name, pages):
    first = pages[name].splitlines()[0]
    assert "make docs" in first and "do not edit by hand" in first


def _leaves(model: type[BaseModel], prefix: str = "") -> list[str]:
    out = []
    for name, info in model.model_fields.items():
        sub = info.annotation
        if isinstance(sub, type) and issubclass(sub, BaseModel):
            out += _leaves(sub, f"{prefix}{name}.")
        else:
            out.append(f"{prefix}{name}")
    return out


def test_every_config_field_has_a_row(pages):
    from instructrec.config import Config

    leaves = _leaves(Config)
    rows = [line for line in pages["config.md"].splitlines() if line.startswith("| `")]
    keys = [line.split("`")[1] for line in rows]
    assert sorted(keys) == sorted(leaves)
    assert "train.epochs" in keys and "gate.online.alpha" in keys


def test_profile_values_and_comments_reach_the_config_page(pages):
    row = next(line for line in pages["config.md"].splitlines() if line.startswith("| `model.dim` "))
    assert "tiny: `32`" in row and "gpu: `128`" in row and "width of both towers' output space" in row
    assert "cpu:" not in row  # the cpu profile keeps the default: nothing to list


def test_every_sub_command_has_its_help(pages):
    from ops.cli import build_parser

    parser = build_parser()
    names = [name for name, _, _ in reference.subcommands(parser)]
    assert "pipeline" in names and "serve" in names
    for name in names:
        assert f"## `instructrec {name}`" in pages["cli.md"]
        assert f"usage: instructrec {name} " in pages["cli.md"]


def test_cli_help_does_not_depend_on_the_terminal(monkeypatch):
    def parser() -> argparse.ArgumentParser:
        p = argparse.ArgumentParser(prog="tool", description="a tool")
        sub = p.add_subparsers(dest="command")
        s = sub.add_parser("go", help="go somewhere")
        s.add_argument("--where", help="a long help text " * 12)
        return p

    monkeypatch.setenv("COLUMNS", "40")
    narrow = reference.cli_page(parser)
    monkeypatch.setenv("COLUMNS", "250")
    assert reference.cli_page(parser) == narrow
    assert "## `tool go`" in narrow and "go somewhere" in narrow


def test_every_route_is_documented(schema, pages):
    page = pages["http-api.md"]
    for path, methods in schema["paths"].items():
        for method in methods:
            assert f"## {method.upper()} {path}\n" in page
    assert {"/recommend", "/feedback", "/health"} <= set(schema["paths"])
    assert "/tmp" not in page and "`user_id` | string | yes | length ≥ 1, length ≤ 64" in page


FIELDS = '''
class A(BaseModel):
    """A section."""

    plain: int = 1
    trailing: int = 2  # said after it
    wrapped: str = "x"  # a sentence that goes on
    # on the next line
    split: float = (
        0.5  # inside the statement
    )
    # said above it,
    # over two lines
    above: bool = True
    # a heading for what follows
    headed: int = 3  # its own words
    documented: int = 4
    """an attribute docstring"""
    described: int = Field(5, description="from Field")  # not this

    def method(self) -> int:
        # not a field's comment
        return 1
'''


def test_field_comments_follow_the_sources_conventions():
    assert reference.field_comments(FIELDS) == {
        "A": {
            "trailing": "said after it",
            "wrapped": "a sentence that goes on on the next line",
            "split": "inside the statement",
            "above": "said above it, over two lines",
            "headed": "a heading for what follows — its own words",
            "documented": "an attribute docstring",
            "described": "not this",  # the page takes Field(description=...) first
        }
    }


def test_check_names_the_stale_page(tmp_path, pages, monkeypatch, capsys):
    monkeypatch.setattr(reference, "PAGES", {name: (lambda text=text: text) for name, text in pages.items()})
    for name, text in pages.items():
        (tmp_path / name).write_text(text)
    assert reference.main(["--check", "--out", str(tmp_path)]) == 0
    (tmp_path / "cli.md").write_text(pages["cli.md"] + "edited by hand\n")
    assert reference.main(["--check", "--out", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert "cli.md" in err and "config.md" not in err and "run `make docs`" in err
    assert reference.main(["--out", str(tmp_path)]) == 0
    assert (tmp_path / "cli.md").read_text() == pages["cli.md"]
