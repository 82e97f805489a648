"""Whole-flow tests share one real, temporary Prefect API (started once: about 13 s each time on the CI
machine) and an isolated home per module."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from prefect.testing.utilities import prefect_test_harness

from tests.conftest import write_dataset


@pytest.fixture(scope="session")
def prefect_api():
    with prefect_test_harness(server_startup_timeout=120):
        yield


@contextmanager
def isolated_home(root: Path) -> Iterator[tuple[Path, Path, pytest.MonkeyPatch]]:
    """(home, synthetic dataset, monkeypatch) with INSTRUCTREC_HOME and its own SQLite MLflow store."""
    home, data = root / "home", write_dataset(root / "data")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("INSTRUCTREC_HOME", str(home))
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        yield home, data, mp
