"""Prefect tasks: each wraps library calls with logging to MLflow.

Tasks draw figures in worker processes without a display, so matplotlib's backend is chosen here, once,
before any task module imports pyplot."""

import matplotlib

matplotlib.use("Agg")
