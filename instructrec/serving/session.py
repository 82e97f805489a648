"""What a user said during their session, folded from the durable feedback events.

A like joins the user's serving history at once; a dislike hides the item and
demotes its neighbours; a request in words stands until it expires or the user
says something else. The state is a pure function of the event records (in
store order), so every service process that reads the same log, and a process
restarted from it, holds the same state; item ids (not model indices) keep it
valid across model versions.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from instructrec.data import schema

POSITIVE = frozenset(schema.POSITIVE_KINDS)
NEGATIVE = frozenset(schema.NEGATIVE_KINDS)


@dataclass
class UserSession:
    liked: list[str] = field(default_factory=list)  # in the order liked; joins the serving history
    disliked: list[str] = field(default_factory=list)  # most recent last; their neighbours are demoted
    judged: set[str] = field(default_factory=set)  # every item reacted to: never shown again
    request: str | None = None
    request_at: datetime | None = None

    def standing_request(self, now: datetime, ttl: timedelta) -> str | None:
        if self.request is None or self.request_at is None or now - self.request_at > ttl:
            return None
        return self.request


class SessionBook:
    """user -> UserSession, built by `apply`ing feedback records (each event id once)."""

    def __init__(self, max_items: int = 50):
        self.max_items = max_items  # per user and list: bounded memory, the most recent win
        self._users: dict[str, UserSession] = {}
        self._seen: set[str] = set()

    def apply(self, record: dict) -> None:
        event_id = record.get(schema.EVENT_ID)
        if event_id is not None:
            if event_id in self._seen:
                return
            self._seen.add(event_id)
        user, item, kind = str(record[schema.USER]), record.get(schema.ITEM), record.get(schema.KIND)
        s = self._users.setdefault(user, UserSession())
        if kind == "instruction" and record.get(schema.TEXT):
            s.request, s.request_at = str(record[schema.TEXT]), _when(record.get(schema.TIMESTAMP))
            return
        if item is None:
            return
        s.judged.add(item)
        if kind in POSITIVE:
            _push(s.liked, item, self.max_items)
            s.disliked = [i for i in s.disliked if i != item]
        elif kind in NEGATIVE:
            _push(s.disliked, item, self.max_items)
            s.liked = [i for i in s.liked if i != item]

    def extend(self, records) -> None:
        for record in records:
            self.apply(record)

    def get(self, user: str) -> UserSession | None:
        return self._users.get(user)

    def __len__(self) -> int:
        return len(self._users)


def _push(items: list[str], item: str, limit: int) -> None:
    if item in items:
        items.remove(item)
    items.append(item)
    del items[:-limit]


def _when(stamp) -> datetime:
    if isinstance(stamp, datetime):
        return stamp if stamp.tzinfo else stamp.replace(tzinfo=UTC)
    if isinstance(stamp, str):
        return datetime.fromisoformat(stamp)
    return datetime.now(UTC)
