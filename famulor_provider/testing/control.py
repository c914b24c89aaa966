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

        Webhooks: ``POST /_sandbox/webhooks/senders/<id>`` takes ``{"url", "secret"}`` (``url`` null
        stops the receipts); ``POST /_sandbox/webhooks/outcomes`` takes ``{"recipient_phone",
        "outcome"}`` (``read``, ``delivered``, ``failed[:<code>]``, ``undelivered[:<code>]``, null);
        ``POST /_sandbox/webhooks/settings`` takes ``time_scale`` and/or ``conversation_ended_url``;
        ``POST /_sandbox/webhooks/test`` takes ``{"sender_id"}`` (the test button);
        ``POST /_sandbox/webhooks/conversation-ended`` takes ``end_conversation``'s arguments and
        answers the body it posts; ``GET /_sandbox/webhooks/deliveries`` pages every webhook with its
        attempts like the ledger.
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
            if path.startswith("/_sandbox/webhooks/"):
                return self._control_webhooks(method, path, query, body)
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

    def _control_webhooks(self, method: str, path: str, query: Query, body: Body) -> Reply:
        """The ``/_sandbox/webhooks/...`` endpoints (see ``_control``); errors as ``_control``'s."""
        ok = json_reply(200, {"ok": True})
        if (method, path) == ("GET", "/_sandbox/webhooks/deliveries"):
            since = int(query.get("since") or 0)
            limit = None if query.get("limit") in (None, "") else int(query["limit"])
            if since < 0 or (limit is not None and limit < 0):
                raise ValueError("since and limit must be at least 0")
            rows, total = self._webhooks.deliveries_since(since, limit)
            return json_reply(
                200, {"data": rows, "total": total, "next_since": min(since, total) + len(rows)}
            )
        if (method, path) == ("POST", "/_sandbox/webhooks/outcomes"):
            phone = body.get("recipient_phone")
            if not isinstance(phone, str) or not phone:
                raise ValueError("recipient_phone must be a phone number in E.164 form")
            self.set_recipient_outcome(phone, body.get("outcome"))
            return ok
        if (method, path) == ("POST", "/_sandbox/webhooks/settings"):
            unknown = set(body) - {"time_scale", "conversation_ended_url"}
            if unknown:
                raise ValueError(f"unknown settings {sorted(unknown)}")
            if "time_scale" in body:
                self.webhook_time_scale = float(body["time_scale"])
            if "conversation_ended_url" in body:
                self.conversation_ended_url = body["conversation_ended_url"]
            return ok
        if (method, path) == ("POST", "/_sandbox/webhooks/test"):
            try:
                self.send_test_webhook(int(body.get("sender_id", -1)))
            except KeyError:
                return json_reply(404, {"message": f"No webhook URL for sender {body.get('sender_id')!r}"})
            return ok
        if (method, path) == ("POST", "/_sandbox/webhooks/conversation-ended"):
            try:
                return json_reply(200, self.end_conversation(**body))
            except KeyError as exc:
                return json_reply(404, {"message": f"Unknown conversation {exc}"})
        match = re.fullmatch(r"/_sandbox/webhooks/senders/(\d+)", path)
        if method == "POST" and match:
            self.set_status_webhook(int(match.group(1)), **body)
            return ok
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
