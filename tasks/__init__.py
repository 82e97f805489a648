"""Prefect tasks: each wraps library calls with logging to MLflow (through adapters/).

Figures come from the library as `matplotlib.figure.Figure` objects: no task imports pyplot, so no
display backend needs choosing in a worker process."""
