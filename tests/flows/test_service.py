"""The HTTP service against a real registry (tiny pipeline runs), and the feedback loop flow."""

from __future__ import annotations

import threading
import uuid

import pytest
from fastapi.testclient import TestClient

from flows.feedback import feedback_loop
from flows.training import training_pipeline
from instructrec.config import load_config
from instructrec.feedback import read_impressions, read_store
from model_registry import registry
from service.app import FinetuneTrigger, create_app
from tests.flows.conftest import isolated_home

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("prefect_api")]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """Two registered versions of the tiny model on the synthetic data; v1 is champion."""
    with isolated_home(tmp_path_factory.mktemp("service")) as (home, data, mp):
        training_pipeline(profile="tiny", data=str(data))
        training_pipeline(profile="tiny", data=str(data))
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


def test_recommend_answers_with_request_id_version_and_arm(client, world):
    out = _recommend(client, "u3", k=5)
    assert out["arm"] == "champion" and out["model_version"] == "1" and len(out["items"]) == 5
    assert out["known_user"] and len(out["request_id"]) == 32
    scores = [i["score"] for i in out["items"]]
    assert scores == sorted(scores, reverse=True)
    impressions = read_impressions(world["cfg"].paths.feedback)
    logged = impressions.filter(impressions["request_id"] == out["request_id"])
    assert logged["items"].to_list() == [[i["item_id"] for i in out["items"]]] and logged["arm"].to_list() == ["champion"]


def test_openapi_schema_documents_the_endpoints_and_their_limits(client):
    spec = client.get("/openapi.json").json()
    assert {"/recommend", "/feedback", "/health"} <= set(spec["paths"])
    k = spec["components"]["schemas"]["RecommendRequest"]["properties"]["k"]
    assert (k["minimum"], k["maximum"]) == (1, 100)


def test_an_unknown_user_gets_a_cold_start_answer(client):
    out = _recommend(client, "someone-new", k=3, instruction="a scary movie")
    assert not out["known_user"] and len(out["items"]) == 3 and out["instruction_type"] == "P0/free"


@pytest.mark.parametrize("body", [
    {"user_id": "u1", "k": 0}, {"user_id": "u1", "k": 101}, {"user_id": "u1", "instruction": "x" * 501},
    {"user_id": ""}, {"k": 5}, {"user_id": "u1", "surprise": 1}, {"user_id": "u" * 65},
])
def test_bad_recommend_requests_are_4xx(client, body):
    assert client.post("/recommend", json=body).status_code == 422


def test_bad_feedback_is_rejected_with_a_reason(client):
    out = _recommend(client, "u2", k=3)
    shown, rid = out["items"][0]["item_id"], out["request_id"]
    cases = [({"request_id": "nope", "user_id": "u2", "kind": "like", "item_id": shown}, 404, "unknown request_id"),
             ({"request_id": rid, "user_id": "u2", "kind": "like"}, 422, "needs item_id"),
             ({"request_id": rid, "user_id": "u2", "kind": "instruction"}, 422, "needs text"),
             ({"request_id": rid, "user_id": "u2", "kind": "love", "item_id": shown}, 422, "kind"),
             ({"request_id": rid, "user_id": "u9", "kind": "like", "item_id": shown}, 422, "was served to user"),
             ({"request_id": rid, "user_id": "u2", "kind": "like", "item_id": "i-not-shown"}, 422, "was not recommended")]
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
    for t in threading.enumerate():
        if t.daemon and t.is_alive() and t.name != "MainThread":
            t.join(timeout=1)
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


def test_feedback_loop_tunes_a_candidate_from_the_champion_on_served_feedback(client, world):
    for u in range(48):
        out = _recommend(client, f"u{u}", k=5)
        client.post("/feedback", json={"request_id": out["request_id"], "user_id": f"u{u}", "kind": "like",
                                       "item_id": out["items"][0]["item_id"]})
    before = set(registry.versions())
    summary = feedback_loop(profile="tiny", data=str(world["data"]), force=True)
    assert summary.online_outcome == "no_challenger" and summary.new_events >= 48
    assert summary.registered not in before and summary.registered in registry.versions()
    tags = registry.tags(summary.registered)
    assert tags["evaluated_against"] == "1" and tags["feedback_until"]
    assert registry.aliases()["champion"] == "1"  # an online rollout never promotes on offline numbers
    if "challenger_since" in tags:
        assert registry.aliases()["challenger"] == summary.registered
