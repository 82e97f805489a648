"""What a pipeline run tells its user at the end (also returned by the flow)."""

from __future__ import annotations

from dataclasses import dataclass

from adapters import tracking
from instructrec.config import Config
from instructrec.data.snapshot import Snapshot
from instructrec.evaluation.reports import LIST_COLUMNS
from instructrec.evaluation.request_eval import markdown_table
from model_registry import registry
from tasks.evaluation import Evaluations, Exported
from tasks.promotion import GateResult

TABLE_METRICS = ("ndcg@10", "hr@10", "mrr@10", "s_hr@1", "s_ndcg@5")


@dataclass
class PipelineSummary:
    run_id: str
    snapshot: str
    version: str
    outcome: str
    aliases: dict[str, str]
    metrics: dict[str, dict[str, dict[str, float]]]  # model -> type -> metric
    onnx_path: str
    provider: str
    tracking_uri: str
    reasons: list[str]
    requests: dict | None = None  # instructrec.evaluation.request_eval's report on the challenger

    def render(self) -> str:
        models = list(self.metrics)
        types = list(next(iter(self.metrics.values())))
        head = f"{'type':<16}" + "".join(f"{m[:14]:>15}" for m in models)
        lines = [
            "",
            "InstructRec pipeline finished",
            f"  snapshot {self.snapshot}   MLflow run {self.run_id}",
            "",
            "Test NDCG@10, full ranking (all items, history excluded):",
            "  " + head,
        ]
        for t in types:
            lines.append("  " + f"{t:<16}" + "".join(f"{self.metrics[m][t]['ndcg@10']:>15.4f}" for m in models))
        lines += [
            "",
            "Top-10 lists, overall (diversity: genres / item vectors; coverage of the catalogue; novelty, bits):",
        ]
        for m in models:
            o = self.metrics[m]["overall"]
            if all(c in o for c in LIST_COLUMNS):
                lines.append(
                    f"  {m[:14]:<16}diversity {o['ild_genre@10']:.3f} / {o['ild_vector@10']:.3f}   "
                    f"coverage {o['coverage@10']:.3f}   novelty {o['novelty@10']:.2f}"
                )
        if self.requests:
            lines += ["", f"Requests as people write them ({self.requests['users']} test users; docs/requests.md):"]
            lines += ["  " + row for row in markdown_table(self.requests).splitlines()]
        lines += ["", f"Gate: {self.outcome.upper()} -> {registry.MODEL_NAME} v{self.version}"]
        lines += [f"  - {r}" for r in self.reasons]
        lines += [
            f"Aliases: {self.aliases}",
            f"ONNX: {self.onnx_path} (provider {self.provider})",
            "",
            "Review it in MLflow:",
            f"  mlflow ui --backend-store-uri {self.tracking_uri}   (or: make mlflow-ui)",
            "Recommend from the champion:",
            "  instructrec recommend --user-id 1 -k 10",
            "",
        ]
        return "\n".join(lines)


def summarise(
    cfg: Config,
    run_id: str,
    snap: Snapshot,
    evaluations: Evaluations,
    exported: Exported,
    gate: GateResult,
    requests: dict | None = None,
) -> PipelineSummary:
    metrics = {}
    for name, rep in evaluations.reports.items():
        metrics[name] = {t: {k: v[k] for k in TABLE_METRICS} for t, v in rep.by_type.items()}
        metrics[name]["overall"] = {k: rep.overall[k] for k in TABLE_METRICS + LIST_COLUMNS if k in rep.overall}
    summary = PipelineSummary(
        run_id,
        snap.short,
        gate.version,
        gate.outcome,
        gate.aliases,
        metrics,
        str(exported.path),
        exported.provider,
        cfg.paths.tracking_uri,
        gate.decision.reasons + ([gate.note] if gate.note else []),
        requests,
    )
    tracking.describe_run(run_id, f"```\n{summary.render().strip()}\n```")
    return summary
