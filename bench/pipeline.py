"""End-to-end stage timings of a pipeline run, and the share not spent computing.

    .venv/bin/python bench/pipeline.py                  # the latest training run in $INSTRUCTREC_HOME
    .venv/bin/python bench/pipeline.py --run            # run `instructrec pipeline` now (cpu profile) and time it

Shares of the process wall time:
  compute        stage time minus the MLflow writes made inside the stages;
  mlflow logging time spent in MLflow writes (counted by adapters/tracking.py);
  orchestration  everything else: Prefect's engine and API (task/flow state
                 round trips, the ephemeral server's start and stop with --run).
Writes bench/results/pipeline.json.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

from adapters import tracking
from instructrec.config import load_config
from ops.provenance import write_report

ROOT = Path(__file__).resolve().parents[1]

# the flow's order, for printing; every `time_s/<stage>` metric of the run is counted, listed here or not
ORDER = (
    "ingest",
    "validate",
    "prepare",
    "train_sasrec",
    "train_representation",
    "finetune_feedback",
    "evaluate",
    "export_onnx",
    "gate",
)


def stage_times(metrics: dict[str, float]) -> dict[str, float]:
    timed = {
        k.removeprefix("time_s/"): v
        for k, v in metrics.items()
        if k.startswith("time_s/") and k != tracking.LOGGING_TIME
    }
    return {s: timed.pop(s) for s in ORDER if s in timed} | dict(sorted(timed.items()))


def latest_run(cfg):
    import mlflow

    tracking.configure(cfg)
    runs = mlflow.MlflowClient().search_runs(
        [mlflow.MlflowClient().get_experiment_by_name(cfg.experiment).experiment_id],
        filter_string="attributes.status = 'FINISHED'",
        order_by=["attributes.start_time DESC"],
        max_results=1,
    )
    if not runs:
        sys.exit("no finished pipeline run in this INSTRUCTREC_HOME: run `make run` (or pass --run)")
    return runs[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", action="store_true", help="run the pipeline now and include process start-up")
    parser.add_argument("--profile", default="cpu")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    args = parser.parse_args()
    process_wall = None
    if args.run:
        t0 = time.perf_counter()
        subprocess.run(
            [str(Path(sys.executable).parent / "instructrec"), "pipeline", "--profile", args.profile],
            check=True,
            env=os.environ.copy(),
        )
        process_wall = time.perf_counter() - t0
    cfg = load_config(args.profile)
    run = latest_run(cfg)
    m = run.data.metrics
    run_wall = (run.info.end_time - run.info.start_time) / 1000.0
    wall = process_wall or run_wall
    stages = stage_times(m)
    logging_s = m.get(tracking.LOGGING_TIME)
    staged = sum(stages.values())
    compute = staged - (logging_s or 0.0)
    orchestration = wall - staged

    print(
        f"\nrun {run.info.run_id} (profile {run.data.params.get('profile')}): wall {wall:.1f} s"
        + (f" (process, incl. Prefect start/stop; MLflow run {run_wall:.1f} s)" if process_wall else " (MLflow run)")
    )
    print(f"{'stage':<22}{'seconds':>9}{'share':>8}")
    for name, sec in stages.items():
        print(f"{name:<22}{sec:>9.1f}{sec / wall:>8.1%}")
    print(f"{'-' * 39}\n{'compute':<22}{compute:>9.1f}{compute / wall:>8.1%}")
    if logging_s is None:
        print("mlflow logging: not recorded by this run (older version)")
    else:
        print(f"{'mlflow logging':<22}{logging_s:>9.1f}{logging_s / wall:>8.1%}")
    print(f"{'orchestration':<22}{orchestration:>9.1f}{orchestration / wall:>8.1%}")
    report = {
        "run_id": run.info.run_id,
        "profile": run.data.params.get("profile"),
        "wall_s": wall,
        "process_wall_s": process_wall,
        "mlflow_run_s": run_wall,
        "stages_s": stages,
        "compute_s": compute,
        "mlflow_logging_s": logging_s,
        "orchestration_s": orchestration,
    }
    write_report(args.out / "pipeline.json", "pipeline_overhead", report)


if __name__ == "__main__":
    main()
