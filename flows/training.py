"""The training pipeline flow: composition only, read top to bottom."""

from __future__ import annotations

from prefect import flow

from adapters import tracking
from instructrec.config import Profile, load_config
from tasks.data import ingest_validate_prepare
from tasks.evaluation import evaluate_models, export_challenger
from tasks.progress import heartbeat
from tasks.promotion import gate_and_register
from tasks.request_classes import evaluate_request_classes
from tasks.summary import PipelineSummary, summarise
from tasks.training import finetune_on_feedback, train_baseline, train_representation


@flow(name="instructrec-training", flow_run_name="train-{profile}", log_prints=True)
def training_pipeline(
    profile: Profile = "cpu", data: str | None = None, overrides: dict | None = None
) -> PipelineSummary:
    """ingest -> validate -> prepare -> SASRec baseline -> train (from SASRec) -> feedback fine-tune -> evaluate
    -> export -> request classes -> gate."""
    cfg = load_config(profile, data=data, overrides=overrides)
    tags = {"profile": cfg.profile, "source": cfg.data.source, "engine": cfg.runtime.engine}
    with tracking.pipeline_run(cfg, f"train-{cfg.profile}", tags) as run_id:
        with heartbeat("prepare"):
            snap, prepared = ingest_validate_prepare(cfg, run_id)
        with tracking.timed(run_id, "train_sasrec"), heartbeat("train_sasrec"):
            sasrec = train_baseline(cfg, prepared, snap.hash, run_id)
        with tracking.timed(run_id, "train_representation"), heartbeat("train_representation"):
            base = train_representation(cfg, prepared, snap.hash, run_id, sasrec)
        with tracking.timed(run_id, "finetune_feedback"), heartbeat("finetune_feedback"):
            tuned = finetune_on_feedback(cfg, prepared, base, run_id)
        with tracking.timed(run_id, "evaluate"), heartbeat("evaluate"):
            evaluations = evaluate_models(cfg, prepared, tuned, sasrec.model if sasrec else None, run_id)
        with tracking.timed(run_id, "export_onnx"), heartbeat("export_onnx"):
            exported = export_challenger(cfg, prepared, tuned, evaluations.champion, run_id)
        with tracking.timed(run_id, "request_classes"), heartbeat("request_classes"):
            requests = evaluate_request_classes(cfg, prepared, tuned, exported, run_id)
        with tracking.timed(run_id, "gate"), heartbeat("gate"):
            gate = gate_and_register(cfg, prepared, tuned, evaluations, exported, snap.hash, run_id)
        return summarise(cfg, run_id, snap, evaluations, exported, gate, requests)
