"""`instructrec` command line: the entry point where configuration is resolved."""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import os
import signal
import sys
import threading
from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path
from typing import TYPE_CHECKING

from instructrec.config import PROFILES, Config, load_config
from instructrec.errors import DataValidationError, SourceError, TrackingStoreError, stop_signal_of
from ops.environment import environment_defaults
from ops.prefect_api import ApiStartError, prefect_api
from ops.stop import exit_status, stop_on_signal

if TYPE_CHECKING:
    from instructrec.serving.recommend import Recommender

EXIT_BAD_INPUT = 2


LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")
SERVE_MLFLOW_DEFAULTS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2", "MLFLOW_HTTP_REQUEST_TIMEOUT": "10"}


class _NoTracebackForInputErrors(logging.Filter):
    """Bad input is the user's to fix and its message says how: log it without a stack trace."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and isinstance(record.exc_info[1], (DataValidationError, SourceError, TrackingStoreError)):
            record.exc_info, record.exc_text = None, None
        return True


def _pipeline(args: argparse.Namespace) -> int:
    from flows.training import training_pipeline  # importing prefect configures its loggers

    for name in ("prefect.task_runs", "prefect.flow_runs"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, _NoTracebackForInputErrors) for f in logger.filters):
            logger.addFilter(_NoTracebackForInputErrors())

    overrides = parse_overrides(args.set)
    pipeline = training_pipeline
    if (runtime := load_config(args.profile, args.data, overrides).runtime).engine == "ray":
        from flows.training_ray import ray_pipeline  # fan-out through RayTaskRunner, built for this runtime

        pipeline = ray_pipeline(runtime)
    summary = pipeline(profile=args.profile, data=args.data, overrides=overrides)
    print(summary.render())
    return 0


def parse_overrides(pairs: list[str]) -> dict:
    """['train.epochs=3', 'gate.min_gain=0.01'] -> {'train': {'epochs': 3}, 'gate': {'min_gain': 0.01}}."""
    import yaml

    out: dict = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise SystemExit(f"error: --set expects key=value, got {pair!r}")
        node = out
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = yaml.safe_load(value)
    return out


def _config(args: argparse.Namespace) -> Config:
    """The config a command runs on: its --profile, under its --set overrides (and the environment's)."""
    return load_config(args.profile, overrides=parse_overrides(args.set))


def _champion(args: argparse.Namespace) -> tuple[Config, Recommender]:
    """(config, the champion's recommender); exits 1 with the next step when there is none yet."""
    from model_registry import registry
    from model_registry.serving import NoChampion, load_champion

    cfg = _config(args)
    registry.connect(cfg.paths.tracking_uri)
    try:
        return cfg, load_champion(cfg)
    except NoChampion as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(1) from None


def _recommend(args: argparse.Namespace) -> int:
    from instructrec.serving.recommend import Adaptation

    cfg, rec = _champion(args)
    adapt = Adaptation.of(cfg.serve, args.diversity)
    print(json.dumps(rec.recommend(args.user_id, args.instruction, args.k, adapt=adapt), indent=2))
    return 0


def _similar(args: argparse.Namespace) -> int:
    _, rec = _champion(args)
    try:
        print(json.dumps(rec.similar(args.item_id, args.k), indent=2))
    except KeyError:
        print(
            f"error: unknown item id {args.item_id!r} (not in the champion v{rec.version}'s catalogue)", file=sys.stderr
        )
        return EXIT_BAD_INPUT
    except LookupError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


def _forget(args: argparse.Namespace) -> int:
    """Erasure works on the store directly: no model, registry or running service is needed (a running service
    notices the rewritten segments and drops the user's session on its next read)."""
    import getpass
    from dataclasses import asdict

    from instructrec.online.erasure import erase_user

    cfg = _config(args)
    erasure = erase_user(cfg.paths.feedback, args.user_id, requested_by=f"cli:{getpass.getuser()}")
    print(json.dumps(asdict(erasure), indent=2))
    return 0


def _synth(args: argparse.Namespace) -> int:
    from instructrec.data.synth import SynthSpec, write_synthetic

    try:
        spec = SynthSpec(args.users, args.items, args.interactions, seed=args.seed)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    print(json.dumps({**write_synthetic(spec, args.out), "out": str(args.out)}, indent=2))
    return 0


def _batch(args: argparse.Namespace) -> int:
    from flows.batch_inference import batch_inference
    from tasks.serving import NoChampion

    try:
        path = batch_inference(k=args.k, profile=args.profile, overrides=parse_overrides(args.set))
    except NoChampion as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(path)
    return 0


def _serve(args: argparse.Namespace) -> int:
    import uvicorn

    from model_registry import registry
    from service.app import SERVE_ENV, create_app

    overrides = parse_overrides(args.set)
    cfg = load_config(args.profile, overrides=overrides)
    for (
        key,
        value,
    ) in SERVE_MLFLOW_DEFAULTS.items():  # an outage shows in /health in seconds, not after minutes of retries
        os.environ.setdefault(key, value)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    host, port = args.host or cfg.serve.host, args.port or cfg.serve.port
    if host not in LOCAL_HOSTS and not os.environ.get(cfg.serve.api_token_env):
        print(
            f"error: serving on {host} (beyond this machine) needs an API token: export {cfg.serve.api_token_env}="
            "<a long random string> and send 'Authorization: Bearer <it>' with every request",
            file=sys.stderr,
        )
        return EXIT_BAD_INPUT
    # SIGTERM (uvicorn's handler): no new connections, in-flight requests finish (each feedback event is on disk
    # before its acknowledgement), the event logs close in the app's lifespan, uvicorn re-raises the signal (the
    # exit status says SIGTERM); a request still running after `drain_seconds` is cut
    if cfg.serve.workers > 1:  # processes share sessions and requests through the event logs (service.app.SharedState)
        os.environ[SERVE_ENV] = json.dumps({"profile": args.profile, "overrides": overrides})
        uvicorn.run(
            "service.app:app_from_environment",
            factory=True,
            workers=cfg.serve.workers,
            host=host,
            port=port,
            log_level="warning",
            timeout_graceful_shutdown=cfg.serve.drain_seconds,
        )
        return 0
    registry.connect(cfg.paths.tracking_uri)
    uvicorn.run(
        create_app(cfg), host=host, port=port, log_level="warning", timeout_graceful_shutdown=cfg.serve.drain_seconds
    )
    return 0


def _finetune(args: argparse.Namespace) -> int:
    from flows.feedback import feedback_loop

    print(
        feedback_loop(
            profile=args.profile, data=args.data, force=args.force, overrides=parse_overrides(args.set)
        ).render()
    )
    return 0


def _simulate(args: argparse.Namespace) -> int:
    from instructrec.online.simulate import Policy, play_round
    from ops.demo import build_world

    cfg = _config(args)
    _, futures, genre_of = build_world(cfg, args.future_share)
    users = sorted(u for u, f in futures.items() if f.liked or f.evaluation)[: args.users or None]
    stats = play_round(args.url, futures, users, genre_of, Policy(), args.seed, args.concurrency)
    print(
        json.dumps(
            {
                "users": len(users),
                "requests": dict(stats.requests),
                "impressions": dict(stats.impressions),
                "likes": dict(stats.likes),
                "like_rate": stats.like_rate(),
                "events": stats.events,
                "failures": stats.failures,
            },
            indent=2,
        )
    )
    return 0 if stats.failures == 0 else 1


def _demo(args: argparse.Namespace) -> int:
    from ops.demo import run_aa, run_demo

    if args.aa:
        rows = run_aa(args.profile, args.rounds, args.seed, parse_overrides(args.set))
        return 0 if all(r.get("outcome") != "promote" for r in rows) else 1
    run_demo(args.profile, args.rounds, args.feedback_share, args.seed, parse_overrides(args.set))
    return 0


def _stack(args: argparse.Namespace) -> int:
    from ops.stack import Stack, StackError

    overrides = parse_overrides(args.set)
    if args.backend:
        overrides.setdefault("stack", {})["backend"] = args.backend
    stack = Stack(load_config(args.profile, overrides=overrides))
    if args.action == "down":
        print("stopped:", ", ".join(stack.down()) or "nothing was running")
        return 0
    if args.action == "up":
        try:
            stack.up()
        except StackError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
    e = stack.endpoints
    print(
        f"Prefect UI   {e.prefect_ui}\nPrefect API  {e.prefect_api}\nMLflow UI    {e.mlflow}  (store {e.backend_store})"
    )
    print("running:", ", ".join(f"{n} (pid {p})" for n, p in stack.running().items()) or "nothing")
    print(f"use it from a shell: source {stack.dir / 'env'}")
    return 0


RUNS_FLOWS = (_pipeline, _batch, _finetune, _demo)  # commands that need a Prefect API (ops.prefect_api)


def _preflight(args: argparse.Namespace) -> None:
    """A tracking store that cannot be written is named before the Prefect server starts (seconds, not the
    server's start-up and the flow's imports first); the flow's own check (tracking.configure) stays."""
    from adapters.tracking import ensure_writable

    cfg = _config(args)  # where the store is does not depend on --data
    cfg.paths.home.mkdir(parents=True, exist_ok=True)
    ensure_writable(cfg.paths.tracking_uri)


def _preload() -> None:
    """Import the heavy libraries the flows need (none of them imports Prefect, whose settings must wait for the
    server's URL): seconds of a command's start-up overlap the server's."""
    for name in ("torch", "transformers", "mlflow", "great_expectations", "onnxruntime"):
        importlib.import_module(name)


SET_HELP = "override a config value, e.g. --set train.epochs=5"


def _add_set(parser: argparse.ArgumentParser, help: str = SET_HELP) -> None:
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help=f"{help} (repeatable)")


def _add_profile(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--profile", choices=PROFILES, default="cpu", help="config profile (default: cpu)")


def _command(
    sub: argparse._SubParsersAction,
    name: str,
    help: str,
    run: Callable[[argparse.Namespace], int],
    set_help: str = SET_HELP,
) -> argparse.ArgumentParser:
    """A sub-command that reads the config: --profile and --set, as every such command takes them."""
    p = sub.add_parser(name, help=help)
    _add_profile(p)
    _add_set(p, set_help)
    p.set_defaults(run=run)
    return p


def _add_training_commands(sub: argparse._SubParsersAction) -> None:
    p = _command(
        sub,
        "pipeline",
        "ingest, validate, train, fine-tune, evaluate, export and gate",
        _pipeline,
        "override a config value, e.g. --set train.epochs=5 --set train.seed=3",
    )
    p.add_argument(
        "--data",
        default=None,
        help="'movielens-100k' (default), 'movielens-1m', or a directory with interactions.* and items.*",
    )
    ft = _command(sub, "finetune", "judge the running A/B test, then tune a challenger on new feedback", _finetune)
    ft.add_argument("--data", default=None, help="default: the champion's data source")
    ft.add_argument("--force", action="store_true", help="tune even below feedback.trigger_events new events")
    b = _command(
        sub,
        "batch",
        "top-k for every user from the champion, written as Parquet",
        _batch,
        "override a config value, e.g. --set runtime.engine=ray (a Ray Data actor pool; RAY_ADDRESS to join)",
    )
    b.add_argument("-k", type=int, default=10)
    sy = sub.add_parser(
        "synth", help="a seeded synthetic catalogue and log at any size (power-law popularity), for --data"
    )
    for flag in ("--users", "--items", "--interactions"):
        sy.add_argument(flag, type=int, required=True)
    sy.add_argument("--out", type=Path, required=True)
    sy.add_argument("--seed", type=int, default=7)
    sy.set_defaults(run=_synth)


def _add_serving_commands(sub: argparse._SubParsersAction) -> None:
    r = _command(
        sub, "recommend", "top-k from the champion's ONNX scorer, as JSON", _recommend, "e.g. --set serve.diversity=0.2"
    )
    r.add_argument("--user-id", required=True)
    r.add_argument("--instruction", default=None, help="free-text request, e.g. 'a funny animated film'")
    r.add_argument("-k", type=int, default=10)
    r.add_argument(
        "--diversity", type=float, default=None, help="MMR re-ranking weight, 0 to 1 (default serve.diversity)"
    )
    si = _command(sub, "similar", "the champion's nearest items to one item (item tower), as JSON", _similar)
    si.add_argument("--item-id", required=True)
    si.add_argument("-k", type=int, default=10)
    fg = _command(
        sub, "forget", "erase a user's feedback and impressions from serving and all future training (audited)", _forget
    )
    fg.add_argument("--user-id", required=True)
    sv = _command(
        sub,
        "serve",
        "HTTP service: /recommend, /feedback, /health (champion/challenger split)",
        _serve,
        "e.g. --set serve.session_share=0.5 --set serve.diversity=0.2",
    )
    sv.add_argument("--host", default=None, help="default: serve.host (127.0.0.1)")
    sv.add_argument("--port", type=int, default=None, help="default: serve.port (8000)")


def _add_loop_commands(sub: argparse._SubParsersAction) -> None:
    sm = _command(
        sub, "simulate", "play simulated users (reacting from their unseen future) against a service", _simulate
    )
    sm.add_argument("--url", default="http://127.0.0.1:8000")
    sm.add_argument("--users", type=int, default=0, help="how many users (0: all with a future)")
    sm.add_argument("--future-share", type=float, default=0.3)
    sm.add_argument("--concurrency", type=int, default=8)
    sm.add_argument("--seed", type=int, default=0)
    d = _command(sub, "demo", "train on the past, serve, simulate, fine-tune, A/B gate, promote: round by round", _demo)
    d.add_argument("--rounds", type=int, default=3)
    d.add_argument(
        "--feedback-share",
        type=float,
        default=0.7,
        help="share of users who play, a fresh cohort each round (the rest: control)",
    )
    d.add_argument("--seed", type=int, default=0)
    d.add_argument(
        "--aa",
        action="store_true",
        help="an A/A test instead: the champion served again as its own challenger, one gate look per round",
    )
    st = _command(
        sub,
        "stack",
        "local Prefect server + worker + MLflow server, deployments from prefect.yaml",
        _stack,
        "e.g. --set stack.prefect_port=4201 --set stack.mlflow_port=5001",
    )
    st.add_argument("action", choices=["up", "down", "status"])
    st.add_argument(
        "--backend",
        choices=["sqlite", "postgres"],
        default=None,
        help="MLflow's store (default: stack.backend, or env MLFLOW_BACKEND)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="instructrec", description="Instruction-following recommender pipeline")
    sub = parser.add_subparsers(dest="command", required=True)
    _add_training_commands(sub)
    _add_serving_commands(sub)
    _add_loop_commands(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if getattr(args, "k", 1) < 1:
        print("error: -k must be at least 1", file=sys.stderr)
        return EXIT_BAD_INPUT
    environment_defaults()
    if args.run in RUNS_FLOWS:
        threading.Thread(target=_preload, daemon=True).start()  # while the Prefect server boots
    try:
        if args.run in RUNS_FLOWS:
            _preflight(args)
        with stop_on_signal() if args.run in RUNS_FLOWS else nullcontext():
            try:
                with prefect_api() if args.run in RUNS_FLOWS else nullcontext():
                    return args.run(args)
            except BaseException as exc:
                if (signum := stop_signal_of(exc)) is None:
                    raise
                print(
                    f"stopped by {signal.Signals(signum).name}: a run it had begun is marked KILLED in MLflow (tag "
                    "instructrec.stopped) and its flow run ended in Prefect; the last finished epoch's checkpoint "
                    "is kept (the same command resumes from it)",
                    file=sys.stderr,
                )
                return exit_status(signum)
    except (DataValidationError, SourceError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except (ApiStartError, TrackingStoreError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
