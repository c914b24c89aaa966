"""Where "after the send" begins: the read after a send (requests-mock fault matrix) and the reply rules."""

from __future__ import annotations

import logging
from typing import Any

import pytest
import requests
import requests_mock
from famulor_fixtures import BASE, KEY, set_conn

from famulor_provider.conversations.replies import (
    AFTER_SEND_KEYS,
    ReplyWatch,
    baseline_from_send,
    history_after_send,
)
from famulor_provider.hooks.famulor import FamulorHook
from famulor_provider.models import ConversationHistory, WhatsAppMessage

LIST_URL = f"{BASE}/user/conversations"
SENDER = "+4930901820"
OTHER_SENDER = "+4930901999"
CUSTOMER = "+4915112345678"
MESSAGE = WhatsAppMessage(
    sender_id=12,
    recipient_phone=CUSTOMER,
    template_id=7,
    message_id=501,
    conversation_id=77,
    whatsapp_message_id=7001,
    message_sid="SM1",
    status="queued",
)


def conversation(sender: str, count: int, uuid: str = "u1") -> dict[str, Any]:
    return {
        "id": uuid,
        "type": "whatsapp",
        "message_count": count,
        "whatsapp_sender": {"name": "Acme", "phone": sender},
        "customer": {"name": "Jo", "phone": CUSTOMER},
    }


@pytest.fixture
def hook(monkeypatch: pytest.MonkeyPatch, sleeps: list[float]) -> FamulorHook:
    set_conn(monkeypatch)
    return FamulorHook()


def test_one_conversation(hook: FamulorHook) -> None:
    with requests_mock.Mocker() as m:
        m.get(LIST_URL, json={"data": [conversation(SENDER, 4)], "next_cursor": "more"})
        result = history_after_send(hook, MESSAGE)
    assert result == {
        "sender_phone": SENDER,
        "conversation_uuid": "u1",
        "history_length_after_send": 4,
        "history_lengths_after_send": {SENDER: 4},
    }
    assert m.call_count == 1  # one page only, even with a next_cursor
    assert "customer_phone=%2B4915112345678" in m.request_history[0].url
    assert "whatsapp_sender_phone" not in m.request_history[0].url


def test_no_conversation_yet_is_baseline_zero(hook: FamulorHook) -> None:
    with requests_mock.Mocker() as m:
        m.get(LIST_URL, json={"data": [], "next_cursor": None})
        result = history_after_send(hook, MESSAGE)
    assert result == {
        "sender_phone": None,
        "conversation_uuid": None,
        "history_length_after_send": 0,
        "history_lengths_after_send": {},
    }
    assert baseline_from_send(result, SENDER) == 0


def test_several_business_numbers(hook: FamulorHook) -> None:
    with requests_mock.Mocker() as m:
        m.get(
            LIST_URL,
            json={
                "data": [conversation(SENDER, 3), conversation(OTHER_SENDER, 9, "u2")],
                "next_cursor": None,
            },
        )
        result = history_after_send(hook, MESSAGE)
    assert result["history_lengths_after_send"] == {SENDER: 3, OTHER_SENDER: 9}
    assert (result["sender_phone"], result["conversation_uuid"], result["history_length_after_send"]) == (
        None,
        None,
        None,
    )
    assert baseline_from_send(result, "+49 30 901999") == 9
    assert baseline_from_send(result, SENDER) == 3


@pytest.mark.parametrize(
    "answer",
    [
        {"status_code": 429, "headers": {"Retry-After": "30"}, "json": {"message": "Too Many Attempts."}},
        {"status_code": 503},
        {"exc": requests.ConnectionError("refused")},
        {"exc": requests.ReadTimeout("slow")},
        {"status_code": 200, "text": "<html>"},
        {"status_code": 401, "json": {"message": f"bad key {KEY}"}},
    ],
)
def test_a_failed_read_never_fails_waits_or_repeats(
    hook: FamulorHook, sleeps: list[float], caplog: pytest.LogCaptureFixture, answer: dict[str, Any]
) -> None:
    with requests_mock.Mocker() as m, caplog.at_level(logging.WARNING):
        m.get(LIST_URL, [answer, {"json": {"data": [conversation(SENDER, 4)]}}])
        result = history_after_send(hook, MESSAGE)
    assert result == dict.fromkeys(AFTER_SEND_KEYS)
    assert baseline_from_send(result, SENDER) is None
    assert (m.call_count, sleeps) == (1, [])  # one attempt, no wait on the 429
    assert "The message was sent; reading its conversation afterwards failed" in caplog.text
    assert KEY not in caplog.text and CUSTOMER not in caplog.text


def test_the_read_has_a_short_deadline(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[tuple[float, int]] = []
    real = FamulorHook.iter_conversation_pages

    def spy(self: FamulorHook, **kwargs: Any) -> Any:
        seen.append((self.config.deadline, self.config.max_retries))
        return real(self, **kwargs)

    monkeypatch.setattr(FamulorHook, "iter_conversation_pages", spy)
    for timeout, expected in ((30, 5.0), (2, 2.0)):
        set_conn(monkeypatch, extra={"timeout": timeout})
        with requests_mock.Mocker() as m:
            m.get(LIST_URL, json={"data": []})
            history_after_send(FamulorHook(), MESSAGE)
        assert seen.pop() == (expected, 0)


def test_an_unexpected_error_is_swallowed(hook: FamulorHook, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(self: FamulorHook, **kwargs: Any) -> Any:
        raise RuntimeError(f"internal {KEY}")

    monkeypatch.setattr(FamulorHook, "iter_conversation_pages", broken)
    assert history_after_send(hook, MESSAGE) == dict.fromkeys(AFTER_SEND_KEYS)


# -- which message is the reply ---------------------------------------------------------------------


def history(*messages: tuple[str, str]) -> ConversationHistory:
    return ConversationHistory.from_api(
        "u1", {"history": [{"role": role, "content": text} for role, text in messages]}
    )


BEFORE = (("user", "YES"), ("assistant", "Reply YES to confirm"))


def test_messages_before_the_baseline_never_count() -> None:
    watch = ReplyWatch(SENDER, CUSTOMER, baseline=2, choices=("YES", "NO"))
    assert watch.reply(history(*BEFORE)) is None
    result = watch.reply(history(*BEFORE, ("assistant", "YES"), ("user", "no!")))
    assert result == {
        "conversation_id": "u1",
        "sender_phone": SENDER,
        "recipient_phone": CUSTOMER,
        "text": "no!",
        "choice": "NO",
        "message_index": 3,
        "replies": ["no!"],
    }


def test_other_replies_are_logged_once_and_waited_past(caplog: pytest.LogCaptureFixture) -> None:
    watch = ReplyWatch(SENDER, CUSTOMER, baseline=2, choices=("YES", "NO"))
    logged: set[int] = set()
    waiting = history(*BEFORE, ("user", "Yes, but later"), ("assistant", "When?"))
    with caplog.at_level(logging.INFO, logger="famulor_provider.conversations.replies"):
        assert watch.reply(waiting, logged) is None
        assert watch.reply(waiting, logged) is None
    assert logged == {2}
    infos = [r for r in caplog.records if r.levelno == logging.INFO]
    assert len(infos) == 1
    assert "not one of the choices (message 2)" in infos[0].getMessage()
    assert CUSTOMER not in infos[0].getMessage() and "but later" not in infos[0].getMessage()
    result = watch.reply(
        history(*BEFORE, ("user", "Yes, but later"), ("assistant", "When?"), ("user", " yes "))
    )
    assert result is not None
    assert (result["text"], result["choice"], result["replies"]) == (
        " yes ",
        "YES",
        ["Yes, but later", " yes "],
    )


def test_without_choices_the_first_reply_counts() -> None:
    watch = ReplyWatch(SENDER, CUSTOMER, baseline=0)
    result = watch.reply(history(("assistant", "Hi"), ("user", "Maybe"), ("user", "YES")))
    assert result is not None
    assert (result["text"], result["choice"], result["message_index"]) == ("Maybe", None, 1)
    assert result["replies"] == ["Maybe", "YES"]


def test_unknown_baseline_is_set_by_the_first_read() -> None:
    watch = ReplyWatch(SENDER, CUSTOMER, baseline=None, choices=("YES",))
    assert watch.reply(history(*BEFORE)) is None
    assert watch.baseline == 2
    result = watch.reply(history(*BEFORE, ("user", "yes")))
    assert result is not None and result["message_index"] == 2


def test_watch_round_trips() -> None:
    watch = ReplyWatch(SENDER, CUSTOMER, baseline=3, choices=("YES", "NO"))
    assert ReplyWatch.from_dict(watch.to_dict()) == watch
    assert watch.to_dict()["choices"] == ["YES", "NO"]
