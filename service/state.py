"""What one process of the service holds between requests: the loaded models, the requests served and the sessions
(folded from the logs every process shares), and the fine-tuning trigger. Nothing here knows about HTTP."""

import logging
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta

import polars as pl

from instructrec.config import Config, ServeConfig
from instructrec.data import schema
from instructrec.online.abtest import CHALLENGER_ARM, CHAMPION_ARM, bucket
from instructrec.online.eventlog import LogTail
from instructrec.online.feedback import FEEDBACK_LOG, IMPRESSION_LOG, STORE_GLOB
from instructrec.serving.recommend import Recommender
from instructrec.serving.session import SessionBook, UserSession
from model_registry import registry
from model_registry.serving import load_version

log = logging.getLogger("instructrec.service")
REMEMBERED_REQUESTS = 200_000


class ModelSlots:
    """The champion and (when one is registered) the challenger, re-read from the registry's aliases."""

    def __init__(self, cfg: Config, load: Callable[[registry.VersionRef], Recommender] | None = None):
        self.cfg = cfg
        self._load = load or (lambda ref: load_version(cfg, ref, batched=True))
        self._slots: dict[str, Recommender] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.last_error: str | None = None
        self.registry_reachable = True  # False while the registry cannot be asked (the loaded models keep serving)

    def current(self) -> dict[str, Recommender]:
        return self._slots  # replaced whole by refresh(), never mutated

    def refresh(self) -> bool:
        """Load what the aliases point at now; on any failure keep serving what is loaded. True if anything moved."""
        fresh: list[Recommender] = []  # loaded by this call: closed again if a later step fails
        try:
            champion, challenger = registry.get_alias(registry.CHAMPION), registry.get_alias(registry.CHALLENGER)
            self.registry_reachable = True
            wanted = {CHAMPION_ARM: champion}
            if challenger is not None and champion is not None and challenger.version != champion.version:
                wanted[CHALLENGER_ARM] = challenger
            have = {arm: rec.version for arm, rec in self._slots.items()}
            if {arm: ref.version for arm, ref in wanted.items() if ref} == have:
                self.last_error = None
                return False
            loaded = {rec.version: rec for rec in self._slots.values()}
            slots = {}
            for arm, ref in wanted.items():
                if ref is None:
                    continue
                if ref.version not in loaded:
                    loaded[ref.version] = self._load(ref)
                    fresh.append(loaded[ref.version])
                slots[arm] = loaded[ref.version]
        except Exception as exc:  # registry unreachable, download failed: keep the loaded models
            for rec in fresh:
                rec.close()  # its batcher thread would otherwise keep it (and its ONNX session) alive
            self.registry_reachable = not isinstance(exc, registry.RegistryUnavailable)
            self.last_error = f"{type(exc).__name__}: {exc}"
            log.error("model reload failed, still serving %s: %s", self.versions(), self.last_error)
            return False
        kept = {id(rec) for rec in slots.values()}
        retired = [rec for rec in self._slots.values() if id(rec) not in kept]
        self._slots, self.last_error = slots, None
        for rec in retired:  # requests that took it before the swap finish first (their batch is still answered)
            threading.Timer(self.cfg.serve.drain_seconds, rec.close).start()
        log.info("serving %s", self.versions())
        return True

    def versions(self) -> dict[str, str]:
        return {arm: rec.version for arm, rec in self._slots.items()}

    def start(self) -> None:
        self.refresh()
        self._thread = threading.Thread(target=self._poll, name="alias-poller", daemon=True)
        self._thread.start()

    def _poll(self) -> None:
        while not self._stop.wait(self.cfg.serve.reload_seconds):
            self.refresh()

    def stop(self) -> None:
        self._stop.set()
        for rec in self._slots.values():
            rec.close()


@dataclass(frozen=True)
class Served:
    user_id: str
    arm: str
    model_version: str
    items: frozenset[str]


class FinetuneTrigger:
    """Emits the fine-tuning event each time `threshold` new events have been stored."""

    def __init__(self, threshold: int, emit: Callable[[int], object]):
        self.threshold, self.emit, self.pending = threshold, emit, 0
        self._lock = threading.Lock()

    def add(self) -> None:
        with self._lock:
            self.pending += 1
            if self.pending < self.threshold:
                return
            n, self.pending = self.pending, 0
        threading.Thread(target=self.emit, args=(n,), daemon=True).start()


def adapts(s: ServeConfig, user_id: str) -> bool:
    """Whether the user's session reactions shape their lists (an experiment of its own when session_share < 1)."""
    return s.adapt_sessions and bucket(user_id, f"{s.experiment}-session") < s.session_share


class SharedState:
    """Requests served and sessions, as every process of the service sees them: folded from the logs they share."""

    def __init__(self, cfg: Config):
        self.feedback_dir = cfg.paths.feedback
        self.ttl = timedelta(seconds=cfg.serve.request_ttl_seconds)
        self._lock = threading.Lock()
        self._start_over()

    def _start_over(self) -> None:
        """Empty state, to be folded from the logs from their start (at start-up, and after an erasure)."""
        self.book = SessionBook()
        self.requests: OrderedDict[str, Served] = OrderedDict()
        self._events = LogTail(self.feedback_dir, FEEDBACK_LOG)
        self._impressions = LogTail(self.feedback_dir, IMPRESSION_LOG)
        for f in sorted(self.feedback_dir.glob(STORE_GLOB)):  # batch files (imports) are never appended to
            self.book.extend(pl.read_parquet(f).to_dicts())

    def sync(self) -> None:
        """Fold in what any process appended since the last call (a few stat calls when nothing did); after an
        erasure replaced a segment, fold everything again, so no process keeps an erased user's session."""
        with self._lock:
            if self._events.rewritten() or self._impressions.rewritten():
                self._start_over()
            self.book.extend(self._events.new_records())
            for row in self._impressions.new_records():
                self.requests[row[schema.REQUEST_ID]] = Served(
                    row[schema.USER], row[schema.ARM], row[schema.MODEL_VERSION], frozenset(row["items"])
                )
            while len(self.requests) > REMEMBERED_REQUESTS:
                self.requests.popitem(last=False)

    def remember(self, request_id: str, served: Served) -> None:
        with self._lock:
            self.requests[request_id] = served

    def session(self, user_id: str) -> UserSession:
        return self.book.get(user_id) or UserSession()

    def served(self, request_id: str) -> Served | None:
        if request_id not in self.requests:
            self.sync()  # served by another process a moment ago
        return self.requests.get(request_id)
