"""The process environment every entry point starts from: offline, quiet, one Prefect home per INSTRUCTREC_HOME.
The CLI applies it to itself; the local stack hands it to the servers and workers it starts."""

from __future__ import annotations

import os
from pathlib import Path

from instructrec.config import DEFAULT_HOME

ENV_DEFAULTS = {  # offline and quiet; the stack's server, worker and flow runs get them too
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "PREFECT_LOGGING_LEVEL": "INFO",
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "GX_ANALYTICS_ENABLED": "false",
    "TOKENIZERS_PARALLELISM": "false",
    "MLFLOW_ENABLE_ASYNC_LOGGING": "false",
    "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
    # the ephemeral API migrates a fresh database first; Prefect's 20 s ran out on a loaded 2-core machine
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "180",
}


def environment_defaults() -> None:
    """Offline, quiet defaults; anything the user exported wins."""
    home = Path(os.environ.get("INSTRUCTREC_HOME", DEFAULT_HOME)).resolve()
    for key, value in {"PREFECT_HOME": str(home / "prefect"), **ENV_DEFAULTS}.items():
        os.environ.setdefault(key, value)
    Path(os.environ["PREFECT_HOME"]).mkdir(parents=True, exist_ok=True)
