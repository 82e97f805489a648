"""Shared fixtures: a small synthetic catalogue with real genre structure.

Each user prefers one genre and mostly interacts with it, so a model that
learns anything ranks that genre first; ratings are high in the preferred
genre and low elsewhere (likes and dislikes for feedback fine-tuning).
"""

from __future__ import annotations

import os
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from instructrec.config import RuntimeConfig, load_config
from instructrec.data.snapshot import snapshot_raw
from instructrec.data.sources import fetch_raw, read_tables
from instructrec.engine.cluster import init_kwargs
from instructrec.training.prepare import prepare

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

GENRES = ["Action", "Comedy", "Drama", "Horror", "Romance", "Sci-Fi"]
N_ITEMS, N_USERS = 90, 48


def make_tables(seed: int = 0) -> tuple[pl.DataFrame, pl.DataFrame]:
    rng = np.random.default_rng(seed)
    item_genres = [
        [GENRES[i % len(GENRES)]] + ([GENRES[(i * 7 + 3) % len(GENRES)]] if i % 3 == 0 else []) for i in range(N_ITEMS)
    ]
    items = pl.DataFrame(
        {
            "item_id": [f"i{i}" for i in range(N_ITEMS)],
            "title": [f"{g[0]} Story {i}" for i, g in enumerate(item_genres)],
            "text": [f"{g[0]} Story {i}. Genres: {', '.join(dict.fromkeys(g))}." for i, g in enumerate(item_genres)],
            "genres": ["|".join(dict.fromkeys(g)) for g in item_genres],
        }
    )
    by_genre = {g: [i for i in range(N_ITEMS) if item_genres[i][0] == g] for g in GENRES}
    start = datetime(2020, 1, 1, tzinfo=UTC)
    rows = []
    for u in range(N_USERS):
        fav = GENRES[u % len(GENRES)]
        n = int(rng.integers(12, 30))
        for t in range(n):
            liked = rng.random() < 0.8
            pool = by_genre[fav] if liked else [i for i in range(N_ITEMS) if item_genres[i][0] != fav]
            item = int(rng.choice(pool))
            rating = float(rng.integers(4, 6) if liked else rng.integers(1, 3))
            rows.append((f"u{u}", f"i{item}", (start + timedelta(days=u, minutes=t)).isoformat(), rating))
    inter = pl.DataFrame(rows, schema=["user_id", "item_id", "timestamp", "rating"], orient="row")
    inter = inter.unique(["user_id", "item_id"], keep="first", maintain_order=True)
    return inter, items


def write_dataset(root: Path, fmt: str = "csv", seed: int = 0) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    inter, items = make_tables(seed)
    if fmt == "csv":
        inter.write_csv(root / "interactions.csv")
        items.write_csv(root / "items.csv")
    else:
        inter.with_columns(pl.col("timestamp").str.to_datetime(time_zone="UTC")).write_parquet(
            root / "interactions.parquet"
        )
        items.with_columns(pl.col("genres").str.split("|")).write_parquet(root / "items.parquet")
    return root


@pytest.fixture
def dataset_dir(tmp_path: Path) -> Path:
    return write_dataset(tmp_path / "data")


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An isolated INSTRUCTREC_HOME with its own SQLite MLflow store."""
    h = tmp_path / "home"
    monkeypatch.setenv("INSTRUCTREC_HOME", str(h))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    return h


# `make test` runs two pytest-xdist workers. A work unit is a test module (its module fixtures are built once), and
# the modules on the local Ray cluster are one unit together, so one worker starts a cluster, not both.
RAY_MODULES = frozenset(
    {
        "tests/flows/test_fanout.py",
        "tests/flows/test_pipeline.py",
        "tests/model/test_batch.py",
        "tests/model/test_distributed.py",
    }
)


def _module(nodeid: str) -> str:
    return nodeid.split("::")[0]


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config, log):
    """Units of one module each, the Ray modules one unit (xdist's loadscope, which the controller runs before any
    test is collected: hence the list above, checked in every worker below)."""
    from xdist.scheduler import LoadScopeScheduling

    class ModuleScheduling(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return "ray" if _module(nodeid) in RAY_MODULES else _module(nodeid)

    return ModuleScheduling(config, log)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    on_ray = {_module(item.nodeid) for item in items if "ray_local" in item.fixturenames}
    if on_ray - RAY_MODULES:
        raise pytest.UsageError(f"add {sorted(on_ray - RAY_MODULES)} to tests/conftest.py::RAY_MODULES")


@pytest.fixture(scope="session")
def ray_local():
    """A real local Ray cluster for the session: 3 logical CPUs on this 2-core machine (two single-threaded
    actors and the CPU Ray Data's reads need beside them), a small object store; shut down at the end."""
    import ray

    ray.init(**init_kwargs(RuntimeConfig(cpus=3, object_store_mb=128)))
    yield ray.cluster_resources()
    ray.shutdown()


@pytest.fixture(scope="session")
def tiny_cfg(tmp_path_factory):
    home = tmp_path_factory.mktemp("home")
    return load_config("tiny", environ={"INSTRUCTREC_HOME": str(home)})


@pytest.fixture(scope="session")
def prepared(tiny_cfg, tmp_path_factory):
    root = write_dataset(tmp_path_factory.mktemp("data"))
    snap = snapshot_raw(fetch_raw(str(root), tiny_cfg.paths.downloads), tiny_cfg.paths.snapshots)
    tables = read_tables(snap.kind, snap.raw_dir)
    return prepare(tiny_cfg, tables.interactions, tables.items, tables.item_noun)
