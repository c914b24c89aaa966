"""The sandbox's webhooks: receipts per send, signatures, Famulor's retry schedule, ended conversations."""

from __future__ import annotations

import hashlib
import hmac
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any

import pytest
import requests

from famulor_provider.testing import FamulorSandbox
from famulor_provider.testing.webhooks import RETRY_DELAYS, parse_outcome

if TYPE_CHECKING:
    from collections.abc import Iterator

SECRET = "whsec-test-12"
PHONE = "+4915112345678"
SCALE = 0.01  # retries after 0.3, 0.6 and 1.2 s


class Receiver:
    """A webhook endpoint on 127.0.0.1 answering ``statuses`` in turn (then 200), recording each POST."""

    def __init__(self, statuses: list[int] | None = None) -> None:
        self.statuses = list(statuses or [])
        self.posts: list[dict[str, Any]] = []
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                with receiver.lock:
                    status = receiver.statuses.pop(0) if receiver.statuses else 200
                    receiver.posts.append(
                        {
                            "path": self.path,
                            "headers": dict(self.headers),
                            "body": body,
                            "at": time.monotonic(),
                        }
                    )
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05})
        self.thread.start()

    def bodies(self) -> list[dict[str, Any]]:
        with self.lock:
            return [json.loads(p["body"]) for p in self.posts]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.close()


@pytest.fixture
def sandbox() -> Iterator[FamulorSandbox]:
    with FamulorSandbox(send_rate_limit=None, webhook_time_scale=SCALE) as sb:
        yield sb


def send(sandbox: FamulorSandbox, phone: str = PHONE) -> dict[str, Any]:
    response = requests.post(
        f"{sandbox.base_url}/user/whatsapp/send",
        json={"sender_id": 12, "template_id": 1201, "recipient_phone": phone, "variables": {"1": "A-1"}},
        headers={"Authorization": f"Bearer {sandbox.api_key}"},
        timeout=5,
    )
    assert response.status_code == 200, response.text
    answer: dict[str, Any] = response.json()
    return answer


def signed_with(post: dict[str, Any], secret: str) -> bool:
    expected = "sha256=" + hmac.new(secret.encode(), post["body"], hashlib.sha256).hexdigest()
    return post["headers"]["X-Signature-256"] == expected


def test_receipts_sent_delivered_read_with_the_documented_fields(
    sandbox: FamulorSandbox, receiver: Receiver
) -> None:
    sandbox.set_status_webhook(12, receiver.url + "/hook", SECRET)
    answer = send(sandbox)
    assert isinstance(answer["whatsapp_message_id"], int)
    assert sandbox.wait_for_webhooks(10)
    bodies = receiver.bodies()
    assert [b["status"] for b in bodies] == ["sent", "delivered", "read"]
    conversation = sandbox.conversations[0]
    assert bodies[2] == {
        "event": "message_status",
        "whatsapp_message_id": answer["whatsapp_message_id"],
        "message_sid": answer["message_sid"],
        "meta_message_id": "wamid.SANDBOX000000001001",
        "conversation_id": conversation["id"],
        "assistant_id": conversation["assistant_id"],
        "sender": {"id": 12, "phone_number": "+14155551234", "display_name": "Acme Corp Support"},
        "to": PHONE,
        "from": "+14155551234",
        "direction": "outbound",
        "status": "read",
        "error_code": None,
        "error_message": None,
        "error_description": None,
        "timestamp": bodies[2]["timestamp"],
        "provider_timestamp": bodies[2]["provider_timestamp"],
    }
    assert all(signed_with(p, SECRET) for p in receiver.posts)
    assert {p["path"] for p in receiver.posts} == {"/hook"}
    assert [d["state"] for d in sandbox.webhook_deliveries] == ["delivered"] * 3
    assert [d["key"] for d in sandbox.webhook_deliveries] == [
        f"{answer['whatsapp_message_id']}:{s}" for s in ("sent", "delivered", "read")
    ]


def test_no_url_no_receipts_and_other_senders_unaffected(sandbox: FamulorSandbox, receiver: Receiver) -> None:
    sandbox.set_status_webhook(15, receiver.url, SECRET)
    send(sandbox)  # sender 12: no URL
    assert sandbox.wait_for_webhooks(5)
    assert receiver.posts == []


@pytest.mark.parametrize(
    ("outcome", "statuses", "code"),
    [
        ("failed:63016", ["sent", "failed"], 63016),
        ("undelivered", ["sent", "undelivered"], 131026),
        ("delivered", ["sent", "delivered"], None),
    ],
)
def test_recipient_outcomes(
    sandbox: FamulorSandbox, receiver: Receiver, outcome: str, statuses: list[str], code: int | None
) -> None:
    sandbox.set_status_webhook(12, receiver.url, SECRET)
    sandbox.set_recipient_outcome(PHONE, outcome)
    send(sandbox)
    send(sandbox, "+4915199999999")  # another recipient: read as usual
    assert sandbox.wait_for_webhooks(10)
    mine = [b for b in receiver.bodies() if b["to"] == PHONE]
    assert [b["status"] for b in mine] == statuses
    assert [b["error_code"] for b in mine] == [None, code]
    if code == 63016:
        assert mine[1]["error_message"].startswith("Failed to send freeform message")
    others = [b["status"] for b in receiver.bodies() if b["to"] != PHONE]
    assert others == ["sent", "delivered", "read"]


def test_bad_outcome_is_refused() -> None:
    with pytest.raises(ValueError, match="outcome must be one of"):
        parse_outcome("bounced")
    with pytest.raises(ValueError, match="must be an integer"):
        parse_outcome("failed:x")
    with pytest.raises(ValueError, match="outcome must be one of"):
        parse_outcome("read:5")
    assert parse_outcome("failed") == ("failed", 131049)
    assert parse_outcome("undelivered:63024") == ("undelivered", 63024)


def test_retries_after_5xx_and_429_on_the_scaled_schedule(sandbox: FamulorSandbox) -> None:
    receiver = Receiver([503, 429, 500])
    try:
        sandbox.set_status_webhook(12, receiver.url, SECRET)
        sandbox.set_recipient_outcome(PHONE, "sent")  # one receipt, so it takes every answer in turn
        send(sandbox)
        assert sandbox.wait_for_webhooks(10)
        (delivery,) = sandbox.webhook_deliveries
        assert [a["http_status"] for a in delivery["attempts"]] == [503, 429, 500, 200]
        assert delivery["state"] == "delivered"
        gaps = [b["at"] - a["at"] for a, b in zip(receiver.posts, receiver.posts[1:], strict=False)]
        for gap, delay in zip(gaps, RETRY_DELAYS, strict=True):
            assert delay * SCALE * 0.9 <= gap < delay * SCALE + 0.5
        assert len({p["body"] for p in receiver.posts}) == 1  # the same body each time
    finally:
        receiver.close()


def test_a_4xx_is_never_retried(sandbox: FamulorSandbox) -> None:
    receiver = Receiver([401])
    try:
        sandbox.set_status_webhook(12, receiver.url, SECRET)
        sandbox.set_recipient_outcome(PHONE, "sent")
        send(sandbox)
        assert sandbox.wait_for_webhooks(5)
        (delivery,) = sandbox.webhook_deliveries
        assert (delivery["state"], len(delivery["attempts"])) == ("refused", 1)
    finally:
        receiver.close()


def test_no_answer_is_retried_three_times_then_dropped(sandbox: FamulorSandbox) -> None:
    receiver = Receiver()
    url = receiver.url
    receiver.close()  # nothing listens there any more
    sandbox.set_status_webhook(12, url, SECRET)
    sandbox.set_recipient_outcome(PHONE, "sent")
    send(sandbox)
    assert sandbox.wait_for_webhooks(10)
    (delivery,) = sandbox.webhook_deliveries
    assert delivery["state"] == "dropped"
    assert [a["http_status"] for a in delivery["attempts"]] == [None] * 4
    assert {a["error"] for a in delivery["attempts"]} == {"ConnectionRefusedError"}


def test_test_button(sandbox: FamulorSandbox, receiver: Receiver) -> None:
    sandbox.set_status_webhook(15, receiver.url, SECRET)
    sandbox.send_test_webhook(15)
    assert sandbox.wait_for_webhooks(5)
    (body,) = receiver.bodies()
    assert body["test"] is True and body["event"] == "message_status"
    assert body["sender"]["id"] == 15
    assert signed_with(receiver.posts[0], SECRET)


def test_conversation_ended_is_unsigned_and_retried_on_any_non_2xx(sandbox: FamulorSandbox) -> None:
    receiver = Receiver([404])
    try:
        send(sandbox)
        sandbox.receive("+14155551234", PHONE, "Yes, Tuesday works", customer_name="Ada")
        sandbox.conversation_ended_url = receiver.url + "/ended/tok"
        posted = sandbox.end_conversation(
            sender_phone="+14155551234", customer_phone=PHONE, extracted_variables={"day": "Tuesday"}
        )
        assert sandbox.wait_for_webhooks(5)
        assert [d["attempts"][-1]["http_status"] for d in sandbox.webhook_deliveries] == [200]
        assert len(receiver.posts) == 2 and "X-Signature-256" not in receiver.posts[0]["headers"]
        body = receiver.bodies()[1]
        assert body == posted
        assert body["status"] == "ended" and body["extracted_variables"] == {"day": "Tuesday"}
        assert body["conversation_id"] == sandbox.conversations[0]["id"]
        assert [m["role"] for m in body["transcript"]] == ["assistant", "user"]
        assert body["transcript"][1]["content"] == "Yes, Tuesday works"
        assert (body["customer_phone"], body["customer_name"], body["message_count"]) == (PHONE, "Ada", 2)
        assert set(body) == {
            "id", "conversation_id", "assistant_id", "type", "message_count", "status",
            "extracted_variables", "input_variables", "transcript", "formatted_transcript",
            "attachments", "customer_phone", "customer_name", "sender", "created_at", "ended_at",
        }  # fmt: skip
    finally:
        receiver.close()


def test_control_api(sandbox: FamulorSandbox, receiver: Receiver) -> None:
    control = sandbox.base_url.removesuffix("/api") + "/_sandbox/webhooks"
    ok = requests.post(f"{control}/senders/12", json={"url": receiver.url, "secret": SECRET}, timeout=5)
    assert ok.json() == {"ok": True}
    assert requests.post(f"{control}/senders/99", json={"url": receiver.url}, timeout=5).status_code == 404
    bad = requests.post(f"{control}/outcomes", json={"recipient_phone": PHONE, "outcome": "x"}, timeout=5)
    assert bad.status_code == 400 and "outcome must be one of" in bad.json()["message"]
    requests.post(
        f"{control}/outcomes", json={"recipient_phone": PHONE, "outcome": "failed:63016"}, timeout=5
    )
    settings = {"time_scale": 0.02, "conversation_ended_url": receiver.url}
    assert requests.post(f"{control}/settings", json=settings, timeout=5).status_code == 200
    assert sandbox.webhook_time_scale == 0.02
    send(sandbox)
    assert requests.post(f"{control}/test", json={"sender_id": 12}, timeout=5).status_code == 200
    assert requests.post(f"{control}/test", json={"sender_id": 15}, timeout=5).status_code == 404
    ended = requests.post(
        f"{control}/conversation-ended",
        json={"sender_phone": "+14155551234", "customer_phone": PHONE},
        timeout=5,
    )
    assert ended.status_code == 200 and ended.json()["status"] == "ended"
    unknown = requests.post(f"{control}/conversation-ended", json={"conversation_id": "nope"}, timeout=5)
    assert unknown.status_code == 404
    assert sandbox.wait_for_webhooks(10)
    page = requests.get(f"{control}/deliveries", params={"since": 1}, timeout=5).json()
    assert page["total"] == 4 and page["next_since"] == 4
    assert [d["kind"] for d in page["data"]] == ["message_status", "test", "conversation_ended"]
    assert {d["state"] for d in page["data"]} == {"delivered"}
    receipts = [b for b in receiver.bodies() if b.get("event") == "message_status" and not b.get("test")]
    assert [(b["status"], b["error_code"]) for b in receipts] == [("sent", None), ("failed", 63016)]
