"""The HTTP service against a real registry (tiny pipeline runs), and the feedback loop flow."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
import uuid

import polars as pl
import pytest
from fastapi.testclient import TestClient

from flows.feedback import feedback_loop
from flows.training import training_pipeline
from instructrec.config import load_config
from instructrec.online.feedback import read_impressions, read_store
from instructrec.serving.recommend import serving_graph
from model_registry import registry
from model_registry.serving import fetch_version
from service.app import FinetuneTrigger, create_app
from tests.flows.conftest import isolated_home

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("prefect_api")]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """Two registered versions of the tiny model on the synthetic data; v1 is champion. v2 is v1 registered again
    (as an A/A challenger is): the service routes by version, and one training run is enough to serve both."""
    with isolated_home(tmp_path_factory.mktemp("service")) as (home, data, mp):
        training_pipeline(profile="tiny", data=str(data))
        assert registry.register_copy("1") == "2"
        c = registry.client()
        c.set_registered_model_alias(registry.MODEL_NAME, registry.CHAMPION, "1")
        registry.remove_alias(registry.CHALLENGER)
        cfg = load_config("tiny")
        yield {"cfg": cfg, "data": data, "home": home}


@pytest.fixture(scope="module")
def client(world):
    app = create_app(world["cfg"], emit=lambda n: None, poll=False)  # no Prefect server here: events go nowhere
    with TestClient(app) as c:
        yield c


def _recommend(client, user="u1", **body):
    r = client.post("/recommend", json={"user_id": user, **body})
    assert r.status_code == 200, r.text
    return r.json()


def test_health_reports_models_and_provider(client):
    h = client.get("/health").json()
    assert h["status"] == "ok" and h["models"]["champion"]["version"] == "1"
    assert h["models"]["champion"]["provider"] == "CPUExecutionProvider" and "challenger" not in h["models"]


def test_start_up_objects_are_frozen_out_of_garbage_collection(client):
    """Else each full collection rescans the imported modules and loaded models (~250 ms on 2 cores)."""
    import gc

    assert gc.get_freeze_count() > 10_000


def test_requests_are_scored_through_the_micro_batcher_on_a_row_independent_graph(client, world):
    before = client.get("/health").json()["models"]["champion"]
    _recommend(client, "u2", k=3)
    after = client.get("/health").json()["models"]["champion"]
    assert after["batch_requests"] == world["cfg"].serve.batch_requests > 1
    assert after["batched_calls"] == before["batched_calls"] + 1 and after["mean_batch"] >= 1.0
    files = fetch_version(world["cfg"], registry.get_alias(registry.CHAMPION))
    assert after["variant"] == serving_graph(files.onnx_file, files.bundle, batched=True)[1] != "int8"


def test_recommend_answers_with_request_id_version_and_arm(client, world):
    out = _recommend(client, "u3", k=5)
    assert out["arm"] == "champion" and out["model_version"] == "1" and len(out["items"]) == 5
    assert out["known_user"] and len(out["request_id"]) == 32
    scores = [i["score"] for i in out["items"]]
    assert scores == sorted(scores, reverse=True)
    impressions = read_impressions(world["cfg"].paths.feedback)
    logged = impressions.filter(impressions["request_id"] == out["request_id"])
    assert logged["items"].to_list() == [[i["item_id"] for i in out["items"]]] and logged["arm"].to_list() == [
        "champion"
    ]


def test_openapi_schema_documents_the_endpoints_and_their_limits(client):
    spec = client.get("/openapi.json").json()
    assert {"/recommend", "/feedback", "/health"} <= set(spec["paths"])
    k = spec["components"]["schemas"]["RecommendRequest"]["properties"]["k"]
    assert (k["minimum"], k["maximum"]) == (1, 100)


def test_an_unknown_user_gets_a_cold_start_answer(client):
    out = _recommend(client, "someone-new", k=3, instruction="a scary movie")
    assert not out["known_user"] and len(out["items"]) == 3 and out["instruction_type"] == "P0/free"


@pytest.mark.parametrize(
    "body",
    [
        {"user_id": "u1", "k": 0},
        {"user_id": "u1", "k": 101},
        {"user_id": "u1", "instruction": "x" * 501},
        {"user_id": ""},
        {"k": 5},
        {"user_id": "u1", "surprise": 1},
        {"user_id": "u" * 65},
    ],
)
def test_bad_recommend_requests_are_4xx(client, body):
    assert client.post("/recommend", json=body).status_code == 422


def test_bad_feedback_is_rejected_with_a_reason(client):
    out = _recommend(client, "u2", k=3)
    shown, rid = out["items"][0]["item_id"], out["request_id"]
    cases = [
        ({"request_id": "nope", "user_id": "u2", "kind": "like", "item_id": shown}, 404, "unknown request_id"),
        ({"request_id": rid, "user_id": "u2", "kind": "like"}, 422, "needs item_id"),
        ({"request_id": rid, "user_id": "u2", "kind": "instruction"}, 422, "needs text"),
        ({"request_id": rid, "user_id": "u2", "kind": "love", "item_id": shown}, 422, "kind"),
        ({"request_id": rid, "user_id": "u9", "kind": "like", "item_id": shown}, 422, "was served to user"),
        ({"request_id": rid, "user_id": "u2", "kind": "like", "item_id": "i-not-shown"}, 422, "was not recommended"),
    ]
    for body, status, words in cases:
        r = client.post("/feedback", json=body)
        assert r.status_code == status and words in r.text, (body, r.text)


def test_feedback_is_stored_once_per_event_id_and_the_item_is_not_shown_again(client, world):
    out = _recommend(client, "u4", k=5)
    item, event_id = out["items"][0]["item_id"], uuid.uuid4().hex
    body = {"request_id": out["request_id"], "user_id": "u4", "kind": "dislike", "item_id": item, "event_id": event_id}
    first, again = client.post("/feedback", json=body).json(), client.post("/feedback", json=body).json()
    assert first["stored"] and not first["duplicate"] and again["duplicate"] and first["arm"] == "champion"
    store = read_store(world["cfg"].paths.feedback)
    assert store.filter(store["event_id"] == event_id).height == 1
    assert item not in [i["item_id"] for i in _recommend(client, "u4", k=5)["items"]]


def test_enough_new_feedback_fires_the_finetune_trigger():
    fired: list[int] = []
    trigger = FinetuneTrigger(3, fired.append)
    for _ in range(7):
        trigger.add()
    deadline = time.monotonic() + 10  # each firing runs on a thread of its own: wait for the two, not for threads
    while len(fired) < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert fired == [3, 3] and trigger.pending == 1


def test_alias_moves_are_picked_up_without_a_restart_or_a_failed_request(client):
    slots = client.app.state.slots
    registry.mark_challenger("2")
    failures: list[int] = []

    def hammer():
        for u in range(40):
            r = client.post("/recommend", json={"user_id": f"u{u % 48}", "k": 3})
            if r.status_code != 200:
                failures.append(r.status_code)

    worker = threading.Thread(target=hammer)
    worker.start()
    assert slots.refresh()
    worker.join()
    assert failures == []
    arms = {_recommend(client, f"u{u}", k=2)["arm"] for u in range(48)}
    assert arms == {"champion", "challenger"}
    versions = {a["arm"]: a["model_version"] for a in (_recommend(client, f"u{u}", k=2) for u in range(48))}
    assert versions == {"champion": "1", "challenger": "2"}
    registry.client().set_registered_model_alias(registry.MODEL_NAME, registry.CHAMPION, "2")
    assert slots.refresh()
    assert client.get("/health").json()["models"].keys() == {"champion"}
    assert {_recommend(client, f"u{u}", k=2)["model_version"] for u in range(10)} == {"2"}
    registry.client().set_registered_model_alias(registry.MODEL_NAME, registry.CHAMPION, "1")
    registry.remove_alias(registry.CHALLENGER)
    slots.refresh()


def test_a_reload_that_fails_half_way_closes_the_model_it_loaded(world):
    """A batched model holds a worker thread: left running behind a failed reload, it (and its ONNX session)
    would never be freed, and the reload is retried every serve.reload_seconds."""
    from model_registry.serving import load_version
    from service.app import ModelSlots

    opened = []

    def load(ref):
        if ref.version == "2":
            raise OSError("the challenger's download failed")
        opened.append(load_version(world["cfg"], ref, batched=True))
        return opened[-1]

    registry.mark_challenger("2")
    try:
        slots = ModelSlots(world["cfg"], load=load)
        assert slots.refresh() is False and "download failed" in (slots.last_error or "")
        assert slots.current() == {} and len(opened) == 1
        batcher = opened[0].batcher
        assert batcher is not None
        batcher.join(5)
        assert not batcher.running
    finally:
        registry.remove_alias(registry.CHALLENGER)


def test_feedback_loop_tunes_a_candidate_from_the_champion_on_served_feedback(client, world):
    for u in range(48):
        out = _recommend(client, f"u{u}", k=5)
        client.post(
            "/feedback",
            json={
                "request_id": out["request_id"],
                "user_id": f"u{u}",
                "kind": "like",
                "item_id": out["items"][0]["item_id"],
            },
        )
    before = set(registry.versions())
    summary = feedback_loop(profile="tiny", data=str(world["data"]), force=True)
    assert summary.online_outcome == "no_challenger" and summary.new_events >= 48
    assert summary.registered not in before and summary.registered in registry.versions()
    tags = registry.tags(summary.registered)
    assert tags["evaluated_against"] == "1" and tags["feedback_until"]
    assert registry.aliases()["champion"] == "1"  # an online rollout never promotes on offline numbers
    if "challenger_since" in tags:
        assert registry.aliases()["challenger"] == summary.registered


def _react(client, out, user, kind, item=None, text=None):
    r = client.post(
        "/feedback",
        json={"request_id": out["request_id"], "user_id": user, "kind": kind, "item_id": item, "text": text},
    )
    assert r.status_code == 200 and r.json()["stored"], r.text


def test_reactions_shape_the_next_list_in_every_process_and_after_a_restart(client, world):
    """Service A takes the reactions; B (another process's state, same home) and C (a restart) serve the same next list."""
    user = "u7"
    first = _recommend(client, user, k=10)
    assert first["session_adapted"] and first["request_source"] == "none"
    liked, disliked = first["items"][3]["item_id"], first["items"][0]["item_id"]
    _react(client, first, user, "like", liked)
    _react(client, first, user, "dislike", disliked)
    after = _recommend(client, user, k=10)
    shown = [i["item_id"] for i in after["items"]]
    assert liked not in shown and disliked not in shown and shown != [i["item_id"] for i in first["items"]]
    rec, session = client.app.state.slots.current()["champion"], client.app.state.shared.session(user)
    assert session.liked[-1] == liked and session.disliked[-1] == disliked
    expected = rec.recommend(user, None, 10, exclude=session.judged, liked=session.liked, disliked=session.disliked)
    assert shown == [i["item_id"] for i in expected["items"]]  # exactly the adapted list, not just a filtered one
    known = {rec.catalogue.item_ids[i - 1] for i in rec.histories[user]}
    for i in after["items"]:  # reasons cite the history, or this session's likes as such
        assert i.get("because") in known | set(session.liked) | {None}
        assert ("which you liked" in i["reason"]) == (i.get("because") in set(session.liked) - known)
    other = create_app(world["cfg"], emit=lambda n: None, poll=False)
    with TestClient(other) as b:
        assert [i["item_id"] for i in _recommend(b, user, k=10)["items"]] == shown
        second = _recommend(b, user, k=5)
        _react(b, second, user, "instruction", text="a scary horror movie")  # stored by B ...
        _react(b, second, user, "like", second["items"][0]["item_id"])
    asked = _recommend(client, user, k=10)  # ... and A reads it: the request stands for the session
    assert asked["request_source"] == "session" and "scary horror" in asked["instruction"]
    assert any(i.get("matches") == ["horror"] for i in asked["items"])
    assert asked["understood"] == {"genres": ["Horror"]}  # what the standing request was read as, over HTTP
    restarted = create_app(world["cfg"], emit=lambda n: None, poll=False)
    with TestClient(restarted) as c:
        again = _recommend(c, user, k=10)
        assert again["request_source"] == "session" and [i["item_id"] for i in again["items"]] == [
            i["item_id"] for i in _recommend(client, user, k=10)["items"]
        ]


def test_more_like_this_and_similar_items(client):
    out = _recommend(client, "u8", k=5)
    item = out["items"][0]["item_id"]
    similar = client.get(f"/items/{item}/similar", params={"k": 4})
    assert similar.status_code == 200 and len(similar.json()["items"]) == 4
    assert item not in {i["item_id"] for i in similar.json()["items"]}
    more = _recommend(client, "u8", k=4, like_item_id=item)
    assert (
        more["request_source"] == "more_like_this"
        and item in more["instruction"]
        or more["instruction"].startswith("more like")
    )
    history = client.app.state.slots.current()["champion"].histories["u8"]
    rec = client.app.state.slots.current()["champion"]
    assert not {i["item_id"] for i in more["items"]} & {rec.catalogue.item_ids[i - 1] for i in history}
    assert client.get("/items/no-such-item/similar").status_code == 404
    assert client.post("/recommend", json={"user_id": "u8", "like_item_id": "no-such-item"}).status_code == 404
    assert client.get(f"/items/{item}/similar", params={"k": 0}).status_code == 422


def test_without_session_adaptation_a_reaction_only_hides_the_item(world):
    cfg = world["cfg"].model_copy(update={"serve": world["cfg"].serve.model_copy(update={"session_share": 0.0})})
    with TestClient(create_app(cfg, emit=lambda n: None, poll=False)) as c:
        first = _recommend(c, "u9", k=10)
        assert not first["session_adapted"]
        liked = first["items"][2]["item_id"]
        _react(c, first, "u9", "like", liked)
        _react(c, first, "u9", "instruction", text="a scary horror movie")
        after = _recommend(c, "u9", k=10)
        assert after["request_source"] == "none" and liked not in [i["item_id"] for i in after["items"]]
        assert [i["item_id"] for i in after["items"]] == [
            i["item_id"] for i in first["items"] if i["item_id"] != liked
        ] + [i["item_id"] for i in after["items"]][9:]


def test_every_endpoint_documents_its_response(client):
    spec = client.get("/openapi.json").json()
    assert {"/recommend", "/feedback", "/health", "/items/{item_id}/similar"} <= set(spec["paths"])
    for path, methods in spec["paths"].items():
        for method, op in methods.items():
            schema = op["responses"]["200"]["content"]["application/json"]["schema"]
            assert "$ref" in schema, (path, method, schema)
    item = spec["components"]["schemas"]["ListedItem"]["properties"]
    assert {"reason", "because", "matches"} <= set(item)


def _mlflow_server(store: str, port: int):
    import subprocess
    import sys

    import httpx

    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "mlflow",
            "server",
            "--backend-store-uri",
            store,
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            "1",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                return proc
        except httpx.HTTPError:
            time.sleep(0.5)
    proc.kill()
    raise TimeoutError("mlflow server did not start")


class _Link:
    """A TCP forwarder in front of a server. Cut, it refuses new connections and drops open ones, as a stopped
    server or a broken network does; restored, the same server answers on the same port (one server start, not two).
    """

    def __init__(self, target: int):
        self.target, self.port = target, _free_port()
        self._open: list[socket.socket] = []
        self._listener: socket.socket | None = None
        self.restore()

    def restore(self) -> None:
        self._listener = socket.create_server(("127.0.0.1", self.port))  # SO_REUSEADDR: the same port again
        threading.Thread(target=self._accept, args=(self._listener,), daemon=True).start()

    def cut(self) -> None:
        if self._listener is None:
            return
        self._listener.shutdown(socket.SHUT_RDWR)  # wakes the blocked accept()
        self._listener.close()
        self._listener = None
        for s in self._open:
            s.close()
        self._open.clear()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.target))
            self._open += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        for s in (src, dst):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_a_registry_outage_keeps_the_loaded_models_serving_and_shows_in_health(world, monkeypatch):
    """A real MLflow server that becomes unreachable and comes back: unreachable is not "no champion"."""
    import mlflow

    from service.app import ModelSlots

    registry.remove_alias(registry.CHALLENGER)
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "5")
    previous, store = mlflow.get_tracking_uri(), world["cfg"].paths.tracking_uri
    port = _free_port()
    server = _mlflow_server(store, port)
    link = _Link(port)
    try:
        registry.connect(f"http://127.0.0.1:{link.port}")
        slots = ModelSlots(world["cfg"])
        with TestClient(create_app(world["cfg"], slots=slots, emit=lambda n: None, poll=False)) as c:
            assert c.get("/health").json()["registry"] == "ok" and slots.versions() == {"champion": "1"}
            link.cut()
            assert slots.refresh() is False
            health = c.get("/health").json()
            assert health["status"] == "ok" and health["registry"] == "unreachable"
            assert health["models"]["champion"]["version"] == "1" and "did not answer" in health["reload_error"]
            assert _recommend(c, "u3", k=3)["model_version"] == "1"  # still serving
            link.restore()
            slots.refresh()
            health = c.get("/health").json()
            assert (
                health["registry"] == "ok" and health["reload_error"] is None and slots.versions() == {"champion": "1"}
            )
    finally:
        link.cut()
        server.terminate()
        server.wait(timeout=30)
        mlflow.set_tracking_uri(previous)


def test_a_full_disk_answers_503_and_stores_nothing_it_did_not_acknowledge(world):
    """The real service process under a file-size limit (the OS refuses writes past 4 kB per file, as a full disk)."""
    import json
    import resource
    import signal

    import httpx

    from ops.demo import wait_for

    def limit_files() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))

    from model_registry.serving import load_version

    load_version(world["cfg"], registry.get_alias(registry.CHAMPION))  # downloaded before the limit: only logs grow
    port, proc = _serve_process(world, preexec_fn=limit_files)
    url = f"http://127.0.0.1:{port}"
    acked, refused, codes = [], [], []
    try:
        try:
            wait_for(url, timeout=120)
        except TimeoutError:
            proc.kill()
            raise AssertionError(proc.communicate()[1][-3000:]) from None
        with httpx.Client(base_url=url, timeout=30) as c:
            for n in range(80):
                out = c.post("/recommend", json={"user_id": f"u{n % 40}", "k": 10})
                codes.append(out.status_code)
                if out.status_code != 200:
                    assert out.status_code == 503 and "could not store" in out.text
                    continue
                event = {
                    "request_id": out.json()["request_id"],
                    "user_id": f"u{n % 40}",
                    "kind": "like",
                    "item_id": out.json()["items"][0]["item_id"],
                    "event_id": f"disk-{n}",
                }
                r = c.post("/feedback", json=event)
                if r.status_code == 200:
                    acked.append(event["event_id"])
                else:
                    assert r.status_code == 503 and "nothing was kept" in r.text, r.text
                    refused.append(event)
            retried = [e["event_id"] for e in refused if c.post("/feedback", json=e).status_code == 200]
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    assert 503 in codes and 200 in codes  # writes failed, and the service went on serving
    assert refused and retried  # a refused event, retried once space is there (a fresh segment), is accepted
    feedback_dir = world["cfg"].paths.feedback
    for segment in feedback_dir.glob("*.jsonl"):  # no torn or half-written line anywhere
        assert not segment.read_bytes() or segment.read_bytes().endswith(b"\n")
        [json.loads(line) for line in segment.read_text().splitlines()]
    stored = read_store(feedback_dir).filter(read_store(feedback_dir)["event_id"].str.starts_with("disk-"))
    assert sorted(stored["event_id"].to_list()) == sorted(acked + retried)  # acknowledged ones, each once


def test_a_token_guards_every_endpoint_but_health_and_bodies_are_bounded(world, monkeypatch):
    monkeypatch.setenv("INSTRUCTREC_API_TOKEN", "s3cret-token")
    with TestClient(create_app(world["cfg"], emit=lambda n: None, poll=False)) as c:
        assert c.get("/health").status_code == 200
        body = {"user_id": "u1", "k": 3}
        assert c.post("/recommend", json=body).status_code == 401
        wrong = c.post("/recommend", json=body, headers={"Authorization": "Bearer nope"})
        assert wrong.status_code == 401 and "INSTRUCTREC_API_TOKEN" in wrong.text
        auth = {"Authorization": "Bearer s3cret-token"}
        assert c.post("/recommend", json=body, headers=auth).status_code == 200
        assert c.get("/items/i1/similar", headers={}).status_code == 401
        big = c.post(
            "/recommend", content=b"{" + b" " * 20_000 + b"}", headers={**auth, "content-type": "application/json"}
        )
        assert big.status_code == 413 and "max_body_bytes" in big.text


def test_an_admin_erases_a_user_from_serving_in_every_process_and_from_training(world, monkeypatch):
    from instructrec.online.erasure import erasures, user_digest

    user, feedback_dir = "forget-me", world["cfg"].paths.feedback  # no other test plays this user
    with TestClient(create_app(world["cfg"], emit=lambda n: None, poll=False)) as a:
        out = _recommend(a, user, k=5)
        _react(a, out, user, "instruction", text="a scary horror movie")
        _react(a, out, user, "like", out["items"][0]["item_id"])
        assert _recommend(a, user, k=5)["request_source"] == "session"
        others = read_store(feedback_dir).filter(pl.col("user_id") != user).height
        assert a.delete(f"/users/{user}").status_code == 403  # no admin token configured: erasure over HTTP is off
    monkeypatch.setenv("INSTRUCTREC_ADMIN_TOKEN", "adm1n")
    with (
        TestClient(create_app(world["cfg"], emit=lambda n: None, poll=False)) as a,
        TestClient(create_app(world["cfg"], emit=lambda n: None, poll=False)) as b,
    ):
        assert b.app.state.shared.session(user).request  # B (another process) holds the session too
        assert a.delete(f"/users/{user}", headers={"X-Admin-Token": "wrong"}).status_code == 403
        r = a.delete(f"/users/{user}", headers={"X-Admin-Token": "adm1n"})
        assert r.status_code == 200, r.text
        assert r.json()["events_removed"] == 2 and r.json()["impressions_removed"] >= 2
        store = read_store(feedback_dir)
        assert user not in set(store["user_id"]) and store.height == others  # nobody else's event was touched
        assert user not in set(read_impressions(feedback_dir)["user_id"])
        assert erasures(feedback_dir)[-1]["user_sha256"] == user_digest(user)
        assert _recommend(a, user, k=5)["request_source"] == "none"  # the session is gone in A ...
        assert _recommend(b, user, k=5)["request_source"] == "none"  # ... and in B, which only read the logs


def test_serving_beyond_localhost_without_a_token_is_refused(monkeypatch, capsys):
    from ops.cli import main

    monkeypatch.delenv("INSTRUCTREC_API_TOKEN", raising=False)
    assert main(["serve", "--host", "0.0.0.0", "--port", "1"]) == 2
    assert "needs an API token" in capsys.readouterr().err


def test_a_live_aa_through_the_service_and_the_feedback_flow_never_promotes_and_shows_its_looks(client, world):
    """The champion served again as its own challenger: a fresh split, per-user evidence from the real logs, one
    look per flow run, the looks on the version page and the run."""
    import numpy as np

    from ops.demo import AA_GATE, serve_as_challenger
    from tasks import experiments

    cfg = load_config("tiny", overrides=AA_GATE)
    registry.remove_alias(registry.CHALLENGER)
    client.app.state.slots.refresh()
    rng = np.random.default_rng(0)

    def play(prefix: str, users: int) -> dict[str, int]:
        arms: dict[str, int] = {}
        for u in range(users):
            user, taste = f"{prefix}{u}", rng.beta(1.0, 9.0)  # users differ in how much they like anything
            for _ in range(2):
                out = _recommend(client, user, k=10)
                arms[out["arm"]] = arms.get(out["arm"], 0) + 1
                for row in out["items"]:
                    if rng.random() < taste:
                        _react(client, out, user, "like", row["item_id"])
        return arms

    play("before-", 40)  # champion traffic before the test: it sizes the plan
    copy = serve_as_challenger(cfg, "1")
    assert client.app.state.slots.refresh()
    assert client.get("/health").json()["experiment"] == f"{cfg.serve.experiment}:v{copy}"  # a fresh split
    try:
        served = []
        for look_number in (1, 2):
            served.append(play(f"aa{look_number}-", 120))
            summary = feedback_loop(profile="tiny", data=str(world["data"]), overrides=AA_GATE, trigger="manual")
            assert summary.online_outcome in ("continue", "reject")  # an identical challenger is never promoted
            assert registry.aliases()["champion"] == "1"
            if summary.online_outcome != "continue":
                break
        assert {"champion", "challenger"} <= set(served[0])
        exp = experiments.Experiment.load(experiments.folder(cfg), f"{cfg.serve.experiment}:v{copy}")
        assert exp is not None and exp.plan is not None and exp.plan.source == "champion traffic before the test"
        assert 1 <= len(exp.looks) <= 2 and all(lk.users[0] >= 30 and lk.users[1] >= 30 for lk in exp.looks)
        decision = registry.client().get_model_version(registry.MODEL_NAME, copy)
        assert "Looks so far" in decision.description and "| look |" in decision.description
        assert decision.tags["online_gate"] == summary.online_outcome
        run = registry.client().get_run(summary.run_id)
        assert run.data.metrics["online/srm_p"] >= cfg.gate.online.srm_alpha  # the split held
        assert run.data.metrics["online/looks"] == len(exp.looks)
        names = {a.path for a in registry.client().list_artifacts(summary.run_id, "gate")}
        assert {"gate/online_looks.png", "gate/online_experiment.json", "gate/online_decision.json"} <= names
    finally:
        registry.remove_alias(registry.CHALLENGER)
        client.app.state.slots.refresh()


def test_sigterm_drains_the_request_in_flight_and_loses_no_acknowledged_feedback(world):
    """What a scheduler does to the real service process: one SIGTERM while a feedback event is half received.
    The event finishes, is stored and acknowledged; every event acknowledged before is in the log; the process
    ends in seconds by the signal (after its clean shutdown) with nothing left running."""
    import http.client
    import json
    import signal

    import httpx

    from ops.demo import wait_for
    from ops.stop import children

    port, proc = _serve_process(world)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for(url, timeout=120)
        assert not children(proc.pid)  # one process: nothing it starts can outlive it
        acked = []
        with httpx.Client(base_url=url, timeout=30) as c:
            for n in range(20):
                out = c.post("/recommend", json={"user_id": f"u{n % 10}", "k": 5}).json()
                event = {"request_id": out["request_id"], "user_id": f"u{n % 10}", "kind": "like"}
                event |= {"item_id": out["items"][0]["item_id"], "event_id": f"term-{n}"}
                assert c.post("/feedback", json=event).status_code == 200
                acked.append(event["event_id"])
            last = c.post("/recommend", json={"user_id": "u1", "k": 5}).json()
        body = json.dumps(
            {"request_id": last["request_id"], "user_id": "u1", "kind": "dislike"}
            | {"item_id": last["items"][0]["item_id"], "event_id": "term-in-flight"}
        ).encode()
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        conn.putrequest("POST", "/feedback")
        conn.putheader("Content-Type", "application/json")
        conn.putheader("Content-Length", str(len(body)))
        conn.endheaders(body[:10])  # the request has begun: headers and a tenth of its body are in
        time.sleep(1.0)  # for the server to read them (it is idle: milliseconds)
        sent = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        time.sleep(0.5)
        conn.send(body[10:])
        response = conn.getresponse()
        assert response.status == 200, response.read()
        acked.append("term-in-flight")
        rc = proc.wait(timeout=30)
        took = time.monotonic() - sent
    finally:
        if proc.poll() is None:
            proc.kill()
    stderr = proc.stderr.read() if proc.stderr else ""
    # uvicorn shuts down cleanly, then raises the signal again: the status says SIGTERM ended it, as it should
    assert rc == -signal.SIGTERM and took <= 10 and "Traceback" not in stderr, (rc, took, stderr[-3000:])
    assert "stopped: in-flight requests answered, feedback and impression logs closed" in stderr
    stored = read_store(world["cfg"].paths.feedback)
    assert set(acked) <= set(stored["event_id"].to_list())
    with pytest.raises(httpx.ConnectError):  # and it is gone: nothing listens any more
        httpx.get(f"{url}/health", timeout=2)


def _serve_process(world, **popen) -> tuple[int, subprocess.Popen]:
    """`instructrec serve` in its own process on a free port of this machine, on the world's registry."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "INSTRUCTREC_HOME": str(world["home"]), "MLFLOW_TRACKING_URI": world["cfg"].paths.tracking_uri}
    command = [sys.executable, "-m", "ops.cli", "serve", "--profile", "tiny", "--port", str(port)]
    return port, subprocess.Popen(
        command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, **popen
    )
