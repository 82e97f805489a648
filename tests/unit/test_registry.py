"""The registry tells "nothing registered" from "could not ask"."""

import mlflow
import pytest

from model_registry import registry


def test_nothing_registered_reads_as_none_and_an_unreachable_registry_raises(tmp_path, monkeypatch):
    previous = mlflow.get_tracking_uri()
    try:
        registry.connect(f"sqlite:///{tmp_path / 'mlflow.db'}")
        assert registry.get_alias(registry.CHAMPION) is None
        assert registry.aliases() == {} and registry.versions() == []
        registry.client().create_registered_model(registry.MODEL_NAME)
        assert registry.get_alias(registry.CHAMPION) is None and registry.aliases() == {}
        registry.remove_alias(registry.CHALLENGER)  # removing what is not there is a no-op
        monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
        monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "3")
        registry.connect("http://127.0.0.1:9")  # nothing listens on the discard port
        for ask in (
            lambda: registry.get_alias(registry.CHAMPION),
            registry.aliases,
            registry.versions,
            lambda: registry.remove_alias(registry.CHALLENGER),
        ):
            with pytest.raises(registry.RegistryUnavailable, match="127.0.0.1:9"):
                ask()
    finally:
        mlflow.set_tracking_uri(previous)
