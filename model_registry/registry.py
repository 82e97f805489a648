"""MLflow model registry: names, aliases, guarded promotion, champion loading.

Aliases only (registry stages are deprecated). `champion` is what serves,
`previous-champion` is kept for rollback, `challenger` marks the latest
registered candidate. MLflow's alias writes are last-writer-wins, so a
promotion holds a file lock and re-reads `champion` just before moving it.
"""

from __future__ import annotations

import fcntl
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import mlflow
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

MODEL_NAME = "instructrec-scorer"
CHAMPION, CHALLENGER, PREVIOUS = "champion", "challenger", "previous-champion"
CHECKPOINT_ARTIFACT = "checkpoint"  # PyTorch scorer directory (model.save_scorer)
SERVING_ARTIFACT = "serving"  # tokenizer + catalogue for the ONNX graph
ONNX_MODEL = "onnx"  # mlflow.onnx logged model name


class PromotionConflict(RuntimeError):
    """The champion moved while this candidate was being evaluated."""


class RegistryUnavailable(RuntimeError):
    """The registry could not answer (unreachable, failing): never to be read as "nothing is registered"."""


def _absent(exc: MlflowException) -> bool:
    """Whether MLflow said "no such model / alias" (as opposed to failing to answer)."""
    return exc.error_code == "RESOURCE_DOES_NOT_EXIST" or (
        exc.error_code == "INVALID_PARAMETER_VALUE" and "not found" in str(exc)
    )


def _lookup(ask, missing, what: str):
    """ask(); `missing` when the registry says there is no such thing; RegistryUnavailable when it cannot say."""
    try:
        return ask()
    except MlflowException as exc:
        if _absent(exc):
            return missing
        first = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else type(exc).__name__
        raise RegistryUnavailable(
            f"the MLflow registry at {mlflow.get_tracking_uri()} did not answer ({what}): {first}"
        ) from exc


@dataclass(frozen=True)
class VersionRef:
    version: str
    run_id: str
    source: str


def connect(tracking_uri: str) -> None:
    """Point this process's MLflow client at the store (entry points call it once)."""
    mlflow.set_tracking_uri(tracking_uri)


def remove_alias(alias: str, name: str = MODEL_NAME) -> None:
    _lookup(lambda: client().delete_registered_model_alias(name, alias), None, f"remove alias {alias}")


def tags(version: str, name: str = MODEL_NAME) -> dict[str, str]:
    return dict(client().get_model_version(name, version).tags)


def client() -> MlflowClient:
    return MlflowClient()


def get_alias(alias: str, name: str = MODEL_NAME) -> VersionRef | None:
    """The version the alias points at; None when the model or alias does not exist; RegistryUnavailable when
    the registry cannot be asked."""
    mv: ModelVersion | None = _lookup(lambda: client().get_model_version_by_alias(name, alias), None, f"alias {alias}")
    return None if mv is None else VersionRef(str(mv.version), str(mv.run_id), str(mv.source))


def aliases(name: str = MODEL_NAME) -> dict[str, str]:
    model = _lookup(lambda: client().get_registered_model(name), None, "aliases")
    return {} if model is None else {alias: str(v) for alias, v in model.aliases.items()}


def versions(name: str = MODEL_NAME) -> list[str]:
    found = _lookup(lambda: client().search_model_versions(f"name='{name}'"), [], "versions")
    return sorted((str(mv.version) for mv in found), key=int)


@contextmanager
def _lock(lock_file: Path) -> Iterator[None]:
    lock_file.parent.mkdir(parents=True, exist_ok=True)
    with lock_file.open("w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def promote(version: str, expected_champion: str | None, lock_file: Path, name: str = MODEL_NAME) -> None:
    """Move `champion` to `version`, keeping the old one as `previous-champion`.

    Refuses when the champion is no longer the version the candidate was
    evaluated against (another promotion won the race).
    """
    with _lock(lock_file):
        current = get_alias(CHAMPION, name)
        current_version = current.version if current else None
        if current_version != expected_champion:
            raise PromotionConflict(
                f"champion is v{current_version}, but v{version} was evaluated against v{expected_champion}; not promoting"
            )
        c = client()
        if current_version is not None:
            c.set_registered_model_alias(name, PREVIOUS, current_version)
        c.set_registered_model_alias(name, CHAMPION, version)


def register_copy(version: str, name: str = MODEL_NAME) -> str:
    """The same model (artifacts, run) registered again as a new version: an A/A test's challenger."""
    mv = client().get_model_version(name, version)
    return str(client().create_model_version(name, str(mv.source), run_id=mv.run_id).version)


def mark_challenger(version: str, name: str = MODEL_NAME) -> None:
    client().set_registered_model_alias(name, CHALLENGER, version)


MODEL_DESCRIPTION = (
    "InstructRec scorer: a BERT encoder scores every catalogue item against a natural-language instruction "
    "(the user's preference and intention). Each version is the ONNX graph of one pipeline run, with its "
    "PyTorch checkpoint and serving bundle in the run's artifacts. Aliases: `champion` serves; `challenger` "
    "gets an A/B share of traffic; `previous-champion` is the rollback target. Each version's description "
    "gives its gate decision, check by check."
)


def describe(version: str, text: str, tags: dict[str, str], name: str = MODEL_NAME) -> None:
    c = client()
    if not c.get_registered_model(name).description:
        c.update_registered_model(name, description=MODEL_DESCRIPTION)
    c.update_model_version(name, version, description=text)
    for key, value in tags.items():
        c.set_model_version_tag(name, version, key, value)


def download_checkpoint(ref: VersionRef, dst: Path) -> Path:
    dst.mkdir(parents=True, exist_ok=True)
    return Path(
        mlflow.artifacts.download_artifacts(run_id=ref.run_id, artifact_path=CHECKPOINT_ARTIFACT, dst_path=str(dst))
    )


def download_serving(ref: VersionRef, dst: Path) -> tuple[Path, Path]:
    """(directory holding model.onnx, serving bundle directory) for a version."""
    dst.mkdir(parents=True, exist_ok=True)
    onnx_dir = Path(
        mlflow.artifacts.download_artifacts(
            artifact_uri=f"models:/{MODEL_NAME}/{ref.version}", dst_path=str(dst / "onnx")
        )
    )
    bundle = Path(
        mlflow.artifacts.download_artifacts(run_id=ref.run_id, artifact_path=SERVING_ARTIFACT, dst_path=str(dst))
    )
    return onnx_dir, bundle
