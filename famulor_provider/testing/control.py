"""The ``/_sandbox`` control API, for a test or a script driving a sandbox in another process."""

from __future__ import annotations

import json
import re
from typing import TYPE_CHECKING, Any

from famulor_provider.testing.messaging import MessagingMixin
from famulor_provider.testing.replies import Body, Query, Reply, json_reply

if TYPE_CHECKING:
    from collections.abc import Callable

    from famulor_provider.testing.state import RecordedRequest


class ControlMixin(MessagingMixin):
    """Answers ``/_sandbox/...`` requests with the sandbox's own Python methods."""

    def _page(
        self, rows: list[Any], query: Query, to_json: Callable[[Any], bytes], *, mutable: bool = False
    ) -> Reply:
        """``{"data": [...], "total", "next_since"}`` for ``rows[since:since + limit]``.

        Rows are serialized outside the lock unless ``mutable`` (rows that change after they are added).
        """
        since = int(query.get("since") or 0)
        limit = None if query.get("limit") in (None, "") else int(query["limit"])
        if since < 0 or (limit is not None and limit < 0):
            raise ValueError("since and limit must be at least 0")
        with self._lock:
            total = len(rows)
            page = rows[since:] if limit is None else rows[since : since + limit]
            if mutable:
                page = [to_json(row) for row in page]
        data = b",".join(page if mutable else (to_json(row) for row in page))
        tail = b'], "total": %d, "next_since": %d}' % (total, min(since, total) + len(page))
        return Reply(200, b'{"data": [' + data + tail)

    def _control(self, method: str, path: str, query: Query, body: Body) -> Reply:
        """
        The ``/_sandbox`` endpoints (no auth; the sandbox listens on loopback only).

        ``GET /_sandbox/ledger`` and ``GET /_sandbox/requests`` answer ``{"data": [...], "total": T,
        "next_since": N}``; ``?since=N`` skips the first N entries and ``?limit=L`` caps the page, so
        a poller asks for ``since=<the last next_since>`` and reads only what is new.
        ``POST /_sandbox/faults`` takes ``inject``'s arguments as a JSON object (``fault``, ``path``,
        ``recipient_phone``, ``delay``...); ``DELETE /_sandbox/faults`` clears them.
        ``POST /_sandbox/sessions`` takes ``open_session``'s; ``POST /_sandbox/senders/<id>`` takes
        sender fields, plus ``after_seconds`` to schedule the change.
        ``GET /_sandbox/conversations`` pages the ``conversations`` like the ledger;
        ``POST /_sandbox/conversations/receive`` takes ``receive``'s arguments, plus ``after_seconds``
        to schedule the message, and answers ``receive``'s result (or ``{"scheduled": true}``).
        """
        ok = json_reply(200, {"ok": True})
        try:
            if (method, path) == ("GET", "/_sandbox/ledger"):
                return self._page(self._ledger, query, lambda entry: entry)
            if (method, path) == ("GET", "/_sandbox/requests"):
                return self._page(self._requests, query, lambda r: json.dumps(request_dict(r)).encode())
            if (method, path) == ("GET", "/_sandbox/conversations"):
                conversations = self._conversation_index.created
                return self._page(
                    conversations, query, lambda c: json.dumps(c.as_dict()).encode(), mutable=True
                )
            if (method, path) == ("POST", "/_sandbox/conversations/receive"):
                fields = dict(body)
                after_seconds = fields.pop("after_seconds", None)
                if after_seconds is None:
                    return json_reply(200, self.receive(**fields))
                self.schedule_receive(float(after_seconds), **fields)
                return json_reply(200, {"scheduled": True})
            if (method, path) == ("POST", "/_sandbox/faults"):
                self.inject(**body)
                return ok
            if (method, path) == ("DELETE", "/_sandbox/faults"):
                self.clear_faults()
                return ok
            if (method, path) == ("POST", "/_sandbox/sessions"):
                self.open_session(**body)
                return ok
            match = re.fullmatch(r"/_sandbox/senders/(\d+)", path)
            if method == "POST" and match:
                fields = dict(body)
                after_seconds = fields.pop("after_seconds", None)
                if after_seconds is None:
                    self.set_sender(int(match.group(1)), **fields)
                else:
                    self.schedule_sender(int(match.group(1)), float(after_seconds), **fields)
                return ok
        except KeyError as exc:
            return json_reply(404, {"message": f"Unknown sender {exc}"})
        except (TypeError, ValueError) as exc:
            return json_reply(400, {"message": str(exc)})
        return json_reply(404, {"message": f"No sandbox control endpoint {method} {path}"})


def request_dict(record: RecordedRequest) -> dict[str, Any]:
    return {
        "method": record.method,
        "path": record.path,
        "query": record.query,
        "monotonic": record.monotonic,
        "wall_time": record.wall_time,
        "status": record.status,
    }
