"""The sandbox's conversations over real HTTP on 127.0.0.1: listing, read, sends, customers who write."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import uuid
from typing import TYPE_CHECKING, Any

import pytest
import requests
from sandbox_client import AUTH, OTHER, PHONE, call, freeform, send, serve, stop, wait_for

from famulor_provider.testing import CONVERSATION_ORDERS, FamulorSandbox
from famulor_provider.testing.conversation_index import decode_cursor, encode_cursor

if TYPE_CHECKING:
    from pathlib import Path

SUPPORT = "+14155551234"  # sender 12
BERLIN = "+4930901820"  # sender 21


def listing(sb: FamulorSandbox, **params: Any) -> dict[str, Any]:
    response = call(sb, "GET", "/user/conversations", params=params)
    assert response.status_code == 200, response.text
    result: dict[str, Any] = response.json()
    return result


def walk(sb: FamulorSandbox, **params: Any) -> list[dict[str, Any]]:
    """Every item, following ``next_cursor`` to the last page."""
    page = listing(sb, **params)
    items: list[dict[str, Any]] = page["data"]
    while page["next_cursor"] is not None:
        page = listing(sb, **{**params, "cursor": page["next_cursor"]})
        items += page["data"]
    return items


def read(sb: FamulorSandbox, conversation_id: str) -> dict[str, Any]:
    response = call(sb, "GET", f"/conversations/{conversation_id}")
    assert response.status_code == 200, response.text
    result: dict[str, Any] = response.json()
    return result


def customers(n: int) -> list[str]:
    return [f"+49160{i:07d}" for i in range(n)]


def control(sb: FamulorSandbox) -> str:
    return sb.base_url.removesuffix("/api") + "/_sandbox"


# Sends create and extend conversations


def test_a_send_creates_the_conversation_with_the_template_in_history(sandbox: FamulorSandbox) -> None:
    assert listing(sandbox)["data"] == []
    answer = send(sandbox, recipient_name="Jane Doe").json()
    assert (answer["conversation_id"], answer["message_id"]) == (501, 1001)  # integers, as the API's
    page = listing(sandbox)
    (item,) = page["data"]
    assert page["path"] == f"{sandbox.base_url}/user/conversations"
    assert (page["per_page"], page["next_cursor"], page["prev_cursor"]) == (15, None, None)
    assert uuid.UUID(item["id"]).version == 4 and str(uuid.UUID(item["id"])) == item["id"]
    assert item["type"] == "whatsapp"
    assert item["message_count"] == 1
    assert item["whatsapp_sender"] == {"name": "Acme Corp Support", "phone": SUPPORT}
    assert item["customer"] == {"name": "Jane Doe", "phone": PHONE}
    assert item["variables"] is None
    assert item["ai_enabled"] is False
    assert isinstance(item["assistant_id"], str) and item["assistant_name"] == "Acme Corp Support Assistant"
    assert isinstance(item["total_cost"], float)
    assert time.strptime(item["created_at"], "%Y-%m-%d %H:%M:%S")
    assert item["updated_at"] == item["created_at"]
    conversation = read(sandbox, item["id"])
    assert conversation == {
        "status": True,
        "history": [{"role": "assistant", "content": "Hi, your order A-17 is on its way."}],
        "variables": None,
        "whatsapp_sender": {"name": "Acme Corp Support", "phone": SUPPORT},
        "customer": {"name": "Jane Doe", "phone": PHONE},
    }


def test_sends_to_the_same_customer_extend_one_conversation(sandbox: FamulorSandbox) -> None:
    send(sandbox)
    assert freeform(sandbox).status_code == 200  # the template opened the window
    assert send(sandbox, recipient_phone=OTHER).json()["conversation_id"] == 502
    assert send(sandbox, sender_id=21, template_id=2102).json()["conversation_id"] == 503  # another sender
    by_pair = {(c["whatsapp_sender"]["phone"], c["customer"]["phone"]): c for c in sandbox.conversations}
    assert set(by_pair) == {(SUPPORT, PHONE), (SUPPORT, OTHER), (BERLIN, PHONE)}
    assert [m["content"] for m in by_pair[(SUPPORT, PHONE)]["history"]] == [
        "Hi, your order A-17 is on its way.",
        "Your parcel left the warehouse.",
    ]
    assert by_pair[(BERLIN, PHONE)]["history"] == [
        {"role": "assistant", "content": "Welcome to Acme! Reply to this message to chat."}
    ]


def test_sends_in_history_false_creates_but_does_not_extend() -> None:
    with FamulorSandbox(sends_in_history=False) as sb:
        send(sb)
        send(sb)
        (item,) = listing(sb)["data"]
        assert item["message_count"] == 0
        assert read(sb, item["id"])["history"] == []
        sb.receive(SUPPORT, PHONE, "Thanks")
        assert read(sb, item["id"])["history"] == [{"role": "user", "content": "Thanks"}]


def test_refused_and_lost_sends(sandbox: FamulorSandbox) -> None:
    assert send(sandbox, template_id=1204).status_code == 422  # not approved: no conversation
    assert sandbox.conversations == []
    sandbox.inject("accept_then_drop")
    with pytest.raises(requests.ConnectionError):
        send(sandbox)
    (conversation,) = sandbox.conversations  # billed, so it is in the conversation
    assert conversation["message_count"] == 1


# Customers who write


def test_receive_appends_a_customer_message_and_opens_the_window(sandbox: FamulorSandbox) -> None:
    assert freeform(sandbox).json()["error_code"] == "SESSION_EXPIRED"
    first = sandbox.receive(SUPPORT, PHONE, "Hello?", customer_name="Jane")
    assert uuid.UUID(first["conversation_id"]).version == 4
    assert first["message_index"] == 0
    second = sandbox.receive(SUPPORT, PHONE, "Anyone?", assistant_reply="Hi Jane, how can I help?")
    assert second == {"conversation_id": first["conversation_id"], "message_index": 1}
    conversation = read(sandbox, first["conversation_id"])
    assert conversation["history"] == [
        {"role": "user", "content": "Hello?"},
        {"role": "user", "content": "Anyone?"},
        {"role": "assistant", "content": "Hi Jane, how can I help?"},
    ]
    assert conversation["customer"] == {"name": "Jane", "phone": PHONE}
    assert freeform(sandbox).status_code == 200  # the customer's message opened the 24 h window
    assert listing(sandbox)["data"][0]["message_count"] == 4


def test_receive_refuses_bad_arguments(sandbox: FamulorSandbox) -> None:
    with pytest.raises(
        ValueError, match=r"sender_phone '\+10000000000' is not the phone_number of any sender"
    ):
        sandbox.receive("+10000000000", PHONE, "Hi")
    with pytest.raises(ValueError, match=r"customer_phone must be an E\.164 number"):
        sandbox.receive(SUPPORT, "0151 1234", "Hi")
    with pytest.raises(ValueError, match="text must be a non-empty string"):
        sandbox.receive(SUPPORT, PHONE, "")
    with pytest.raises(ValueError, match="after_seconds must be at least 0"):
        sandbox.schedule_receive(-1, SUPPORT, PHONE, "Hi")
    with pytest.raises(ValueError, match="sender_phone"):
        sandbox.schedule_receive(1, "+10000000000", PHONE, "Hi")
    assert sandbox.conversations == []


def test_schedule_receive_delivers_later_and_stop_cancels() -> None:
    with FamulorSandbox() as sb:
        sb.schedule_receive(0.3, SUPPORT, PHONE, "Later")
        sb.schedule_receive(0.6, SUPPORT, OTHER, "Cancelled")
        assert sb.conversations == []
        assert listing(sb)["data"] == []
        wait_for(lambda: len(listing(sb)["data"]) == 1)
        (conversation,) = sb.conversations
        assert conversation["history"] == [{"role": "user", "content": "Later"}]
    with sb:  # the same sandbox, started again after stop()
        time.sleep(0.7)  # past the cancelled message's time
        assert [c["customer"]["phone"] for c in sb.conversations] == [PHONE]


def test_customer_reply_answers_every_accepted_send() -> None:
    with FamulorSandbox(customer_reply=("YES", 0.2), send_rate_limit=None) as sb:
        send(sb)
        send(sb, recipient_phone=OTHER)
        assert send(sb, template_id=1204).status_code == 422  # refused: nobody answers it

        def replies() -> list[list[str]]:
            return [[m["content"] for m in c["history"] if m["role"] == "user"] for c in sb.conversations]

        assert replies() == [[], []]
        wait_for(lambda: replies() == [["YES"], ["YES"]])
        (item, _) = walk(sb)
        assert [m["role"] for m in read(sb, item["id"])["history"]] == ["assistant", "user"]
    with pytest.raises(ValueError, match="customer_reply"):
        FamulorSandbox(customer_reply=("", 1))


def test_add_conversation_with_history(sandbox: FamulorSandbox) -> None:
    history = [{"role": "assistant", "content": "Your code is 1234"}, {"role": "user", "content": "ok"}]
    conversation_id = sandbox.add_conversation(
        BERLIN,
        PHONE,
        history=history,
        customer_name="Max",
        variables={"order": "A-17"},
        external_identifier="crm-42",
    )
    conversation = read(sandbox, conversation_id)
    assert conversation["history"] == history
    assert conversation["variables"] == {"order": "A-17"}
    assert conversation["external_identifier"] == "crm-42"
    (item,) = listing(sandbox)["data"]
    assert (item["message_count"], item["customer"]["name"]) == (2, "Max")
    assert sandbox.receive(BERLIN, PHONE, "again")["message_index"] == 2
    with pytest.raises(ValueError, match="already exists"):
        sandbox.add_conversation(BERLIN, PHONE)
    with pytest.raises(ValueError, match="history entries must be"):
        sandbox.add_conversation(BERLIN, OTHER, history=[{"role": "system", "content": "x"}])


def test_conversations_are_deep_copies_in_creation_order(sandbox: FamulorSandbox) -> None:
    ids = [sandbox.add_conversation(SUPPORT, phone) for phone in customers(3)]
    sandbox.receive(SUPPORT, customers(3)[0], "hi")  # most recent activity: creation order stays
    copies = sandbox.conversations
    assert [c["id"] for c in copies] == ids
    copies[0]["history"].append({"role": "user", "content": "tampered"})
    assert sandbox.conversations[0]["history"] == [{"role": "user", "content": "hi"}]


def test_read_unknown_conversation_and_auth(sandbox: FamulorSandbox) -> None:
    missing = call(sandbox, "GET", f"/conversations/{uuid.uuid4()}")
    assert (missing.status_code, missing.json()) == (
        404,
        {"status": False, "error": "Conversation not found"},
    )
    conversation_id = sandbox.receive(SUPPORT, PHONE, "Hi")["conversation_id"]
    for path in ("/user/conversations", f"/conversations/{conversation_id}"):
        assert call(sandbox, "GET", path, headers={}).status_code == 401
        assert call(sandbox, "POST", path).status_code == 405


# Listing: pages, cursors, filters, orders


def test_cursor_pages_walk_forward_and_back(sandbox: FamulorSandbox) -> None:
    ids = [sandbox.add_conversation(SUPPORT, phone) for phone in customers(35)]
    first = listing(sandbox, per_page=10)
    assert (len(first["data"]), first["per_page"], first["prev_cursor"]) == (10, 10, None)
    pages = [first]
    while pages[-1]["next_cursor"] is not None:
        pages.append(listing(sandbox, per_page=10, cursor=pages[-1]["next_cursor"]))
    assert [len(p["data"]) for p in pages] == [10, 10, 10, 5]
    assert [c["id"] for p in pages for c in p["data"]] == ids[::-1]  # updated_desc: newest first
    assert all(p["prev_cursor"] is not None for p in pages[1:])
    back = listing(sandbox, per_page=10, cursor=pages[-1]["prev_cursor"])
    assert back["data"] == pages[2]["data"]
    back = listing(sandbox, per_page=10, cursor=back["prev_cursor"])
    assert back["data"] == pages[1]["data"]
    back = listing(sandbox, per_page=10, cursor=back["prev_cursor"])
    assert (back["data"], back["prev_cursor"]) == (pages[0]["data"], None)
    assert back["next_cursor"] is not None
    assert len(listing(sandbox)["data"]) == 15  # the API's default per_page


@pytest.mark.parametrize(
    ("params", "field", "message"),
    [
        ({"per_page": 0}, "per_page", "The per page field must be at least 1."),
        ({"per_page": 101}, "per_page", "The per page field must not be greater than 100."),
        ({"per_page": "ten"}, "per_page", "The per page field must be an integer."),
        ({"cursor": "not-a-cursor"}, "cursor", "The cursor is invalid."),
        ({"cursor": "eyJrZXkiOiAiYSJ9"}, "cursor", "The cursor is invalid."),  # {"key": "a"}
        ({"type": "sms"}, "type", "The selected type is invalid."),
    ],
)
def test_listing_validation_errors(
    sandbox: FamulorSandbox, params: dict[str, Any], field: str, message: str
) -> None:
    response = call(sandbox, "GET", "/user/conversations", params=params)
    assert response.status_code == 422
    assert response.json() == {"message": message, "errors": {field: [message]}}


def test_cursor_round_trip() -> None:
    assert decode_cursor(encode_cursor(12345, True)) == (12345, True)
    assert decode_cursor(encode_cursor(0, False)) == (0, False)


def test_filters(sandbox: FamulorSandbox) -> None:
    sandbox.add_conversation(SUPPORT, PHONE, external_identifier="crm-1")
    sandbox.add_conversation(BERLIN, PHONE)
    sandbox.add_conversation(SUPPORT, OTHER)
    for phone in customers(30):
        sandbox.add_conversation(BERLIN, phone)

    def pairs(**params: Any) -> set[tuple[str, str]]:
        return {(c["whatsapp_sender"]["phone"], c["customer"]["phone"]) for c in walk(sandbox, **params)}

    assert pairs(customer_phone=PHONE) == {(SUPPORT, PHONE), (BERLIN, PHONE)}
    assert pairs(customer_phone=PHONE, whatsapp_sender_phone=BERLIN) == {(BERLIN, PHONE)}
    assert pairs(whatsapp_sender_phone=SUPPORT) == {(SUPPORT, PHONE), (SUPPORT, OTHER)}
    assert pairs(external_identifier="crm-1") == {(SUPPORT, PHONE)}
    assert pairs(customer_phone="+4915199999999") == set()
    support_assistant = listing(sandbox, whatsapp_sender_phone=SUPPORT)["data"][0]["assistant_id"]
    assert pairs(assistant_id=support_assistant) == {(SUPPORT, PHONE), (SUPPORT, OTHER)}
    assert len(walk(sandbox, whatsapp_sender_phone=BERLIN, per_page=7)) == 31
    assert len(walk(sandbox, type="whatsapp", per_page=100)) == 33
    assert listing(sandbox, type="widget")["data"] == []


def test_a_filtered_customer_walks_pages_in_order(sandbox: FamulorSandbox) -> None:
    senders = [s["phone_number"] for s in sandbox.senders]
    for sender in senders:
        sandbox.add_conversation(sender, PHONE)
    items = walk(sandbox, customer_phone=PHONE, per_page=2)
    assert [c["whatsapp_sender"]["phone"] for c in items] == senders[::-1]


@pytest.mark.parametrize("order", CONVERSATION_ORDERS)
def test_orders(order: str) -> None:
    with FamulorSandbox(conversation_order=order) as sb:
        phones = customers(40)
        ids = [sb.add_conversation(SUPPORT, phone) for phone in phones]
        sb.receive(SUPPORT, phones[7], "news")  # the 8th created is now the most recently active
        listed = [c["id"] for c in walk(sb, per_page=9)]
        assert sorted(listed) == sorted(ids)
        expected = {
            "updated_desc": [ids[7]] + [i for i in ids[::-1] if i != ids[7]],
            "created_asc": ids,
            "created_desc": ids[::-1],
        }
        if order in expected:
            assert listed == expected[order]
        else:  # shuffled: the same fixed order on every walk, by neither creation nor activity
            assert listed not in (ids, ids[::-1], expected["updated_desc"])
            sb.receive(SUPPORT, phones[20], "more news")
            assert [c["id"] for c in walk(sb, per_page=13)] == listed


def test_unknown_order_is_refused() -> None:
    with pytest.raises(ValueError, match="conversation_order must be one of"):
        FamulorSandbox(conversation_order="random")


def test_a_walk_is_stable_while_messages_arrive(sandbox: FamulorSandbox) -> None:
    phones = customers(30)
    ids = [sandbox.add_conversation(SUPPORT, phone) for phone in phones]
    first = listing(sandbox, per_page=10)
    assert [c["id"] for c in first["data"]] == ids[29:19:-1]
    sandbox.receive(SUPPORT, phones[25], "seen already")  # on page 1: moves to the front
    sandbox.receive(SUPPORT, phones[5], "not seen yet")  # on page 3: moves to the front, behind the walk
    sandbox.add_conversation(SUPPORT, OTHER)  # new: in front
    rest = walk(sandbox, per_page=10, cursor=first["next_cursor"])
    seen = [c["id"] for c in first["data"]] + [c["id"] for c in rest]
    assert len(seen) == len(set(seen))  # never twice in one walk
    assert seen == ids[29:19:-1] + ids[19:5:-1] + ids[4::-1]  # the one that moved behind is missed
    next_walk = [c["id"] for c in walk(sandbox, per_page=10)]
    assert next_walk[:3] == [sandbox.conversations[-1]["id"], ids[5], ids[25]]  # and seen first next time
    assert len(next_walk) == 31


def test_listing_handles_100k_conversations() -> None:
    with FamulorSandbox(conversation_order="updated_desc") as sb:
        for i in range(100_000):
            sb.add_conversation(BERLIN, f"+4916{i:08d}")
        sb.receive(BERLIN, "+491600050000", "hello")
        page = listing(sb, per_page=100)
        assert page["data"][0]["customer"]["phone"] == "+491600050000"
        assert [c["customer"]["phone"] for c in page["data"][1:3]] == ["+491600099999", "+491600099998"]
        last = listing(sb, per_page=100, cursor=encode_cursor(100, True))  # keys 99..0 remain
        assert [c["customer"]["phone"] for c in last["data"]][-1] == "+491600000000"
        assert last["next_cursor"] is None
        (only,) = listing(sb, customer_phone="+491600012345")["data"]
        assert only["message_count"] == 0


# Faults, limits and the control API


def test_faults_apply_to_the_conversation_routes(sandbox: FamulorSandbox) -> None:
    conversation_id = sandbox.receive(SUPPORT, PHONE, "Hi")["conversation_id"]
    sandbox.inject("status", path="/user/conversations", status=503)
    sandbox.inject("status", path="/user/conversations", status=429, retry_after=7)
    sandbox.inject("drop", path=f"/conversations/{conversation_id}")
    sandbox.inject("invalid_json", path=f"/conversations/{conversation_id}")
    assert call(sandbox, "GET", "/user/conversations").status_code == 503
    limited = call(sandbox, "GET", "/user/conversations")
    assert (limited.status_code, limited.headers["Retry-After"]) == (429, "7")
    assert listing(sandbox)["data"][0]["id"] == conversation_id
    with pytest.raises(requests.ConnectionError):
        call(sandbox, "GET", f"/conversations/{conversation_id}")
    with pytest.raises(json.JSONDecodeError):
        call(sandbox, "GET", f"/conversations/{conversation_id}").json()
    assert read(sandbox, conversation_id)["history"] == [{"role": "user", "content": "Hi"}]
    sandbox.inject("status", status=500, recipient_phone=OTHER)  # a listing filtered by customer_phone
    assert call(sandbox, "GET", "/user/conversations", params={"customer_phone": PHONE}).status_code == 200
    assert call(sandbox, "GET", "/user/conversations", params={"customer_phone": OTHER}).status_code == 500
    assert call(sandbox, "GET", "/user/conversations", params={"customer_phone": OTHER}).status_code == 200


def test_request_rate_limit_for_reads() -> None:
    with FamulorSandbox(request_rate_limit=3, send_rate_limit=None) as sb:
        for _ in range(3):
            assert call(sb, "GET", "/user/conversations").status_code == 200
        refused = call(sb, "GET", "/user/conversations")
        assert refused.status_code == 429
        assert 1 <= int(refused.headers["Retry-After"]) <= 60
        assert refused.json()["message"] == "Too Many Attempts."
        assert call(sb, "GET", "/user/me").status_code == 429  # every read counts
        assert send(sb).status_code == 200  # sends have their own limit
        sb.request_rate_limit = None
        assert call(sb, "GET", "/user/conversations").status_code == 200
    with FamulorSandbox() as sb:  # off by default
        assert all(call(sb, "GET", "/user/me").status_code == 200 for _ in range(120))
    with pytest.raises(ValueError, match="request_rate_limit"):
        FamulorSandbox(request_rate_limit=-1)


def test_control_api_receive_and_conversations(sandbox: FamulorSandbox) -> None:
    url = control(sandbox)
    body = {"sender_phone": SUPPORT, "customer_phone": PHONE, "text": "Hi", "customer_name": "Jane"}
    answer = requests.post(f"{url}/conversations/receive", json=body, timeout=5).json()
    assert answer["message_index"] == 0
    scheduled = requests.post(
        f"{url}/conversations/receive", json={**body, "text": "Later", "after_seconds": 0.2}, timeout=5
    )
    assert scheduled.json() == {"scheduled": True}
    bad = requests.post(f"{url}/conversations/receive", json={**body, "customer_phone": "x"}, timeout=5)
    assert bad.status_code == 400 and "customer_phone" in bad.json()["message"]
    missing = requests.post(f"{url}/conversations/receive", json={"text": "Hi"}, timeout=5)
    assert missing.status_code == 400
    wait_for(lambda: len(read(sandbox, answer["conversation_id"])["history"]) == 2)
    sandbox.add_conversation(BERLIN, OTHER)
    page = requests.get(f"{url}/conversations", params={"since": 0, "limit": 1}, timeout=5).json()
    assert (page["total"], page["next_since"]) == (2, 1)
    (first,) = page["data"]
    assert first["id"] == answer["conversation_id"]
    assert [m["content"] for m in first["history"]] == ["Hi", "Later"]
    rest = requests.get(f"{url}/conversations", params={"since": 1}, timeout=5).json()
    assert [c["customer"]["phone"] for c in rest["data"]] == [OTHER]
    assert rest["next_since"] == 2
    assert sandbox.requests == [r for r in sandbox.requests if not r.path.startswith("/_sandbox")]


# CLI


def test_cli_customer_reply_and_receive(tmp_path: Path) -> None:
    args = ("--customer-reply", "YES", "--customer-reply-after", "0.2")
    with serve(tmp_path, *args) as (proc, port):
        base_url = f"http://127.0.0.1:{port}/api"
        payload = {"sender_id": 12, "template_id": 1202, "recipient_phone": PHONE}
        assert requests.post(f"{base_url}/user/whatsapp/send", json=payload, headers=AUTH, timeout=5).ok
        received = subprocess.run(
            [sys.executable, "-m", "famulor_provider.testing", "receive", "--url", base_url,
             "--sender-phone", SUPPORT, "--customer-phone", OTHER, "--text", "Where is my order?",
             "--customer-name", "Max"],
            capture_output=True, text=True, timeout=30, check=True,
        )  # fmt: skip
        result = json.loads(received.stdout)
        assert result["message_index"] == 0

        def history(conversation_id: str) -> list[dict[str, str]]:
            response = requests.get(f"{base_url}/conversations/{conversation_id}", headers=AUTH, timeout=5)
            return list(response.json()["history"])

        assert history(result["conversation_id"]) == [{"role": "user", "content": "Where is my order?"}]
        listed = requests.get(
            f"{base_url}/user/conversations", params={"customer_phone": PHONE}, headers=AUTH, timeout=5
        )
        (item,) = listed.json()["data"]
        wait_for(lambda: [m["content"] for m in history(item["id"])][-1:] == ["YES"])
        refused = subprocess.run(
            [sys.executable, "-m", "famulor_provider.testing", "receive", "--url", f"http://127.0.0.1:{port}",
             "--sender-phone", "+10000000000", "--customer-phone", OTHER, "--text", "x"],
            capture_output=True, text=True, timeout=30,
        )  # fmt: skip
        assert refused.returncode == 1
        assert "The sandbox refused the message: sender_phone '+10000000000'" in refused.stderr
        out = stop(proc)
    assert "customers reply 'YES' after 0.2 s" in out


def test_cli_receive_without_a_sandbox() -> None:
    refused = subprocess.run(
        [sys.executable, "-m", "famulor_provider.testing", "receive", "--url", "http://127.0.0.1:9",
         "--sender-phone", SUPPORT, "--customer-phone", PHONE, "--text", "x"],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert refused.returncode == 1
    assert "No sandbox answers at http://127.0.0.1:9" in refused.stderr
