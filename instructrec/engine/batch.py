"""Top-k for every user, in this process or on a Ray Data actor pool; both run the same per-batch step.

The users (id + history of catalogue indices) are a directory of Parquet files; the result is a directory of Parquet
parts (user_id, rank, item_id, score, model_version, variant), written atomically. On Ray each actor
holds one ONNX Runtime session (intra-op threads = the CPUs it reserves; one actor per GPU on GPU hosts).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from instructrec.config import RuntimeConfig
from instructrec.engine.cluster import actor_pool_size, ray_cluster
from instructrec.io import atomic_dir
from instructrec.serving.recommend import LoadOptions, Recommender, top_k_rows

HISTORY = "history"  # catalogue indices (1-based), oldest first
PART = "part-0.parquet"


@dataclass(frozen=True)
class BatchJob:
    """What a worker needs: the model's files (on storage every worker reads: one host, or shared), k, a stamp."""

    onnx_file: Path
    bundle: Path
    version: str
    k: int
    generated_at: datetime


def write_users(histories: dict[str, np.ndarray], target: Path, users_per_file: int = 16_384) -> Path:
    """The users to rank, sorted by id, as a directory of Parquet files: the input every engine reads
    (a file is what one Ray read task takes, so the files are the input's parallelism)."""
    users = sorted(histories)
    target.mkdir(parents=True, exist_ok=True)
    for n, start in enumerate(range(0, max(len(users), 1), users_per_file)):
        chunk = users[start : start + users_per_file]
        pl.DataFrame(
            {"user_id": chunk, HISTORY: [histories[u] for u in chunk]},
            schema={"user_id": pl.String, HISTORY: pl.List(pl.Int64)},
        ).write_parquet(target / f"users-{n:05d}.parquet")
    return target


class TopK:
    """One scorer ranking batches of users; a Ray Data actor, or called in a loop by the local engine."""

    def __init__(self, job: BatchJob, threads: int | None):
        self.rec = Recommender.from_bundle(job.onnx_file, job.bundle, job.version, LoadOptions(threads=threads))
        self.job = job

    def __call__(self, batch: pa.Table) -> pa.Table:
        frame = pl.from_arrow(batch)
        assert isinstance(frame, pl.DataFrame)
        lengths = frame[HISTORY].list.len().to_numpy()
        flat = frame[HISTORY].explode().to_numpy().astype(np.int64)
        histories = np.split(flat, np.cumsum(lengths)[:-1]) if len(frame) else []
        rows = top_k_rows(self.rec, frame["user_id"].to_list(), histories, self.job.k)
        return rows.with_columns(
            pl.lit(self.rec.version).alias("model_version"),
            pl.lit(self.rec.variant).alias("variant"),
            pl.lit(self.job.generated_at).alias("generated_at"),
        ).to_arrow()


def top_k_local(job: BatchJob, users: Path, out: Path, runtime: RuntimeConfig) -> Path:
    """One process, one session, batches streamed from `users` to one Parquet part (memory: one batch)."""
    scorer = TopK(job, None)
    with atomic_dir(out) as tmp:
        writer: pq.ParquetWriter | None = None
        for part in sorted(users.glob("*.parquet")):
            for batch in pq.ParquetFile(part).iter_batches(batch_size=runtime.batch_users):
                ranked = scorer(pa.Table.from_batches([batch]))
                writer = writer or pq.ParquetWriter(tmp / PART, ranked.schema)
                writer.write_table(ranked)
        if writer is None:  # no users: an empty part, same schema
            pq.write_table(scorer(pq.read_table(users)), tmp / PART)
        else:
            writer.close()
    return out


def top_k_ray(job: BatchJob, users: Path, out: Path, runtime: RuntimeConfig) -> Path:
    """Ray Data: users read as a dataset, an actor pool of sessions, top-k written as Parquet parts."""
    import ray

    with ray_cluster(runtime) as resources:
        context = ray.data.DataContext.get_current()
        context.enable_progress_bars = False
        context.use_datasource_v2 = False  # v2 packs small files into one read task; v1 reads one block per file
        gpus = int(resources.get("GPU", 0))
        actors = gpus or actor_pool_size(resources, runtime)
        ranked = ray.data.read_parquet(str(users), override_num_blocks=len(list(users.glob("*.parquet")))).map_batches(
            TopK,
            fn_constructor_kwargs={"job": job, "threads": runtime.actor_threads},
            batch_size=runtime.batch_users,
            batch_format="pyarrow",
            compute=ray.data.ActorPoolStrategy(size=actors),
            num_cpus=runtime.actor_threads,
            num_gpus=1 if gpus else 0,
        )
        with atomic_dir(out) as tmp:
            ranked.write_parquet(str(tmp))
    return out


def top_k_users(job: BatchJob, users: Path, out: Path, runtime: RuntimeConfig) -> Path:
    """Run the engine runtime.engine names."""
    run = top_k_ray if runtime.engine == "ray" else top_k_local
    return run(job, users, out, runtime)


def read_top_k(out: Path) -> pl.DataFrame:
    """Every part of a result directory, in user and rank order."""
    return pl.read_parquet(out / "*.parquet").sort("user_id", "rank")
