"""MLflow writes retry on transient errors only."""

from __future__ import annotations

import pytest
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE

from adapters.tracking import retrying, transient


def flaky(errors: list[BaseException]):
    calls = []

    def write(x):
        calls.append(x)
        if errors:
            raise errors.pop(0)
        return x * 2

    return write, calls


def test_a_dropped_connection_and_a_locked_store_are_retried_until_the_write_lands():
    write, calls = flaky(
        [ConnectionError("reset by peer"), MlflowException("(sqlite3.OperationalError) database is locked")]
    )
    assert retrying(write, attempts=3, delay=0)(21) == 42
    assert len(calls) == 3


def test_bad_requests_and_missing_files_raise_at_once():
    for error in (
        MlflowException("bad metric key", error_code=INVALID_PARAMETER_VALUE),
        FileNotFoundError("x"),
        ValueError("nan"),
    ):
        write, calls = flaky([error])
        with pytest.raises(type(error)):
            retrying(write, attempts=3, delay=0)(1)
        assert len(calls) == 1 and not transient(error)


def test_gives_up_after_the_last_attempt():
    write, calls = flaky([TimeoutError("slow")] * 5)
    with pytest.raises(TimeoutError):
        retrying(write, attempts=3, delay=0)(1)
    assert len(calls) == 3
