"""FamulorHook conversations: pages, filters, the 404 of a read, bad cursors, odd fields (requests-mock)."""

from __future__ import annotations

import asyncio
import logging
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
import requests_mock
from famulor_fixtures import BASE, set_conn

from famulor_provider.exceptions import (
    FamulorAPIError,
    FamulorConversationNotFoundError,
    FamulorError,
    FamulorResponseError,
    FamulorValidationError,
)
from famulor_provider.hooks.famulor import FamulorHook
from famulor_provider.models import ConversationHistory, WhatsAppConversation

LIST_URL = f"{BASE}/user/conversations"
SENDER = "+4930901820"
CUSTOMER = "+4915112345678"


def item(n: int, **changes: Any) -> dict[str, Any]:
    """A conversation as the API lists it."""
    return {
        "id": f"00000000-0000-4000-8000-{n:012d}",
        "assistant_id": "a1",
        "assistant_name": "Support",
        "type": "whatsapp",
        "variables": None,
        "message_count": n % 7,
        "total_cost": 0.0032,
        "ai_enabled": True,
        "created_at": "2025-01-25 10:15:00",
        "updated_at": "2025-01-25 10:28:45",
        "whatsapp_sender": {"name": "Acme", "phone": SENDER},
        "customer": {"name": f"Customer {n}", "phone": f"+49151{n:08d}"},
        **changes,
    }


def pages(count: int, per_page: int) -> list[dict[str, Any]]:
    """The answers of a listing of ``count`` conversations, chained by cursors c1, c2, ..."""
    answers = []
    chunks = [list(range(i, min(i + per_page, count))) for i in range(0, count, per_page)] or [[]]
    for number, chunk in enumerate(chunks):
        last = number == len(chunks) - 1
        answers.append(
            {
                "json": {
                    "data": [item(n) for n in chunk],
                    "path": LIST_URL,
                    "per_page": per_page,
                    "next_cursor": None if last else f"c{number + 1}",
                    "prev_cursor": None if number == 0 else f"p{number}",
                }
            }
        )
    return answers


@pytest.fixture
def hook(monkeypatch: pytest.MonkeyPatch, sleeps: list[float]) -> FamulorHook:
    set_conn(monkeypatch)
    return FamulorHook()


def query(request: Any) -> dict[str, list[str]]:
    return parse_qs(urlsplit(request.url).query)


def test_list_walks_every_page_with_per_page_100(hook: FamulorHook) -> None:
    with requests_mock.Mocker() as m:
        m.get(LIST_URL, pages(250, 100))
        conversations = hook.list_conversations()
    assert [c.id for c in conversations] == [item(n)["id"] for n in range(250)]
    assert len(m.request_history) == 3
    assert [query(r).get("cursor") for r in m.request_history] == [None, ["c1"], ["c2"]]
    assert all(
        query(r)["per_page"] == ["100"] and query(r)["type"] == ["whatsapp"] for r in m.request_history
    )


def test_model_fields(hook: FamulorHook) -> None:
    with requests_mock.Mocker() as m:
        m.get(LIST_URL, json={"data": [item(3, variables={"order": "A-1"})], "next_cursor": None})
        (conversation,) = hook.list_conversations()
    assert conversation == WhatsAppConversation(
        id="00000000-0000-4000-8000-000000000003",
        type="whatsapp",
        message_count=3,
        updated_at="2025-01-25 10:28:45",
        created_at="2025-01-25 10:15:00",
        sender_phone=SENDER,
        sender_name="Acme",
        customer_phone="+4915100000003",
        customer_name="Customer 3",
        variables={"order": "A-1"},
        assistant_id="a1",
        ai_enabled=True,
    )
    assert conversation.is_between("+49 30 901820", "+49 151 00000003")
    assert not conversation.is_between(SENDER, CUSTOMER)


def test_filters_are_sent_with_the_plus_encoded(hook: FamulorHook) -> None:
    with requests_mock.Mocker() as m:
        m.get(LIST_URL, json={"data": [], "next_cursor": None})
        assert (
            hook.list_conversations(
                customer_phone="+49 151 1234-5678",
                whatsapp_sender_phone=SENDER,
                assistant_id=7,
                external_identifier="crm 42",
                per_page=25,
            )
            == []
        )
    url = m.request_history[0].url
    assert "customer_phone=%2B4915112345678" in url
    assert "whatsapp_sender_phone=%2B4930901820" in url
    assert query(m.request_history[0]) == {
        "per_page": ["25"],
        "type": ["whatsapp"],
        "customer_phone": [CUSTOMER],
        "whatsapp_sender_phone": [SENDER],
        "assistant_id": ["7"],
        "external_identifier": ["crm 42"],
    }


def test_type_none_lists_every_type(hook: FamulorHook) -> None:
    with requests_mock.Mocker() as m:
        m.get(LIST_URL, json={"data": [item(1, type="widget")], "next_cursor": None})
        (conversation,) = hook.list_conversations(type=None)
    assert "type" not in query(m.request_history[0])
    assert conversation.type == "widget"


def test_an_unknown_filter_is_a_type_error(hook: FamulorHook) -> None:
    with requests_mock.Mocker() as m, pytest.raises(TypeError, match=r"\['customer'\].*customer_phone"):
        hook.list_conversations(customer="+4915112345678")  # type: ignore[call-arg]
    assert m.call_count == 0


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"per_page": 0}, "per_page"),
        ({"per_page": 101}, "per_page"),
        ({"per_page": "many"}, "per_page"),
        ({"type": "sms"}, "type"),
        ({"customer_phone": "0151 1234"}, "customer_phone"),
        ({"whatsapp_sender_phone": "sender"}, "whatsapp_sender_phone"),
    ],
)
def test_bad_filters_fail_before_any_request(hook: FamulorHook, kwargs: dict[str, Any], field: str) -> None:
    with requests_mock.Mocker() as m, pytest.raises(FamulorValidationError, match=field) as err:
        hook.list_conversations(**kwargs)
    assert err.value.field == field
    assert m.call_count == 0


def test_iter_pages_stops_early(hook: FamulorHook) -> None:
    with requests_mock.Mocker() as m:
        m.get(LIST_URL, pages(1000, 100))
        first = next(iter(hook.iter_conversation_pages()))
    assert len(first) == 100
    assert m.call_count == 1


def test_bad_cursor_is_a_typed_error_not_a_retry(hook: FamulorHook, sleeps: list[float]) -> None:
    with requests_mock.Mocker() as m:
        m.get(LIST_URL, pages(150, 100)[:1])
        m.get(
            f"{LIST_URL}?cursor=c1",
            status_code=422,
            json={"message": "The given data was invalid.", "errors": {"cursor": ["The cursor is invalid."]}},
        )
        with pytest.raises(FamulorAPIError, match="cursor: The cursor is invalid") as err:
            hook.list_conversations()
    assert err.value.status_code == 422
    assert (m.call_count, sleeps) == (2, [])


def test_a_cursor_that_repeats_is_not_followed_forever(hook: FamulorHook) -> None:
    looping = {"json": {"data": [item(1)], "next_cursor": "same"}}
    with requests_mock.Mocker() as m, pytest.raises(FamulorResponseError, match="returned before"):
        m.get(LIST_URL, [looping, looping, looping])
        hook.list_conversations()
    assert m.call_count == 2


def test_unknown_and_missing_fields_are_tolerated(hook: FamulorHook) -> None:
    odd = [
        {"id": "u1", "brand_new_field": {"x": 1}, "message_count": "12", "whatsapp_sender": None},
        {
            "id": "u2",
            "message_count": -1,
            "customer": "not an object",
            "variables": ["a"],
            "ai_enabled": "yes",
        },
        {"id": "u3", "message_count": True},
    ]
    with requests_mock.Mocker() as m:
        m.get(LIST_URL, json={"data": odd, "next_cursor": None, "extra": 1})
        u1, u2, u3 = hook.list_conversations()
    assert (u1.message_count, u1.sender_phone, u1.customer_phone, u1.type) == (12, None, None, None)
    assert (u2.message_count, u2.customer_name, u2.variables, u2.ai_enabled) == (None, None, None, None)
    assert u3.message_count is None


@pytest.mark.parametrize("payload", [{"data": [{"message_count": 1}]}, {"data": "x"}, {"items": []}])
def test_malformed_listing(hook: FamulorHook, payload: dict[str, Any]) -> None:
    with requests_mock.Mocker() as m, pytest.raises(FamulorResponseError):
        m.get(LIST_URL, json=payload)
        hook.list_conversations()


# -- one conversation ------------------------------------------------------------------------------


def test_get_conversation_history(hook: FamulorHook) -> None:
    uuid = "8d0f7780-0000-4000-8000-000000000001"
    with requests_mock.Mocker() as m:
        m.get(
            f"{BASE}/conversations/{uuid}",
            json={
                "status": True,
                "history": [
                    {"role": "assistant", "content": "Reply YES to confirm"},
                    {"role": "user", "content": "yes!", "function_calls": []},
                    {"role": "assistant", "content": None},
                    {"content": "no role"},
                    "bare text",
                ],
                "variables": {"order": "A-1"},
                "whatsapp_sender": {"name": "Acme", "phone": SENDER},
                "customer": {"name": "Jo", "phone": CUSTOMER},
                "external_identifier": "crm-1",
            },
        )
        history = hook.get_conversation(uuid)
    assert isinstance(history, ConversationHistory)
    assert (history.conversation_id, history.sender_phone, history.customer_phone) == (uuid, SENDER, CUSTOMER)
    assert (history.customer_name, history.variables) == ("Jo", {"order": "A-1"})
    assert [(m.index, m.role, m.content) for m in history.messages] == [
        (0, "assistant", "Reply YES to confirm"),
        (1, "user", "yes!"),
        (2, "assistant", ""),
        (3, None, "no role"),
        (4, None, "bare text"),
    ]
    assert [m.index for m in history.customer_messages()] == [1]
    assert history.customer_messages(2) == []


def test_get_conversation_not_under_user(hook: FamulorHook) -> None:
    with requests_mock.Mocker() as m:
        m.get(f"{BASE}/conversations/a%2Fb", json={"status": True, "history": []})
        assert hook.get_conversation(" a/b ").messages == ()
    assert m.request_history[0].path == "/api/conversations/a%2fb"


def test_404_is_a_typed_not_found_error_without_retry(hook: FamulorHook, sleeps: list[float]) -> None:
    with requests_mock.Mocker() as m, pytest.raises(FamulorConversationNotFoundError) as err:
        m.get(
            f"{BASE}/conversations/gone",
            status_code=404,
            json={"status": False, "error": "Conversation not found"},
        )
        hook.get_conversation("gone")
    assert err.value.status_code == 404
    assert "Conversation not found" in str(err.value) and "'gone' does not exist" in str(err.value)
    assert (m.call_count, sleeps) == (1, [])


def test_get_conversation_retries_a_5xx(hook: FamulorHook, sleeps: list[float]) -> None:
    with requests_mock.Mocker() as m:
        m.get(f"{BASE}/conversations/u1", [{"status_code": 503}, {"json": {"status": True, "history": []}}])
        assert hook.get_conversation("u1").messages == ()
    assert len(sleeps) == 1


@pytest.mark.parametrize("conversation_id", ["", "  ", None])
def test_blank_conversation_id(hook: FamulorHook, conversation_id: Any) -> None:
    with pytest.raises(FamulorValidationError, match="conversation_id"):
        hook.get_conversation(conversation_id)


@pytest.mark.parametrize("payload", [["not", "an", "object"], {"history": "text"}])
def test_malformed_history(hook: FamulorHook, payload: Any) -> None:
    with requests_mock.Mocker() as m, pytest.raises(FamulorResponseError):
        m.get(f"{BASE}/conversations/u1", json=payload)
        hook.get_conversation("u1")


# -- async (httpx) ----------------------------------------------------------------------------------


def run_async(monkeypatch: pytest.MonkeyPatch, handler: Any, call: Any) -> Any:
    real_client = httpx.AsyncClient

    def client(**kwargs: Any) -> httpx.AsyncClient:
        return real_client(transport=httpx.MockTransport(handler), **kwargs)

    async def no_sleep(seconds: float) -> None:
        return None

    monkeypatch.setattr(httpx, "AsyncClient", client)
    monkeypatch.setattr(FamulorHook, "async_sleep", staticmethod(no_sleep))
    try:
        return asyncio.run(call(FamulorHook()))
    except FamulorError as err:
        return err


def listing_handler(count: int, seen: list[httpx.Request]) -> Any:
    answers = pages(count, 100)

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        cursor = request.url.params.get("cursor")
        return httpx.Response(200, **answers[int(cursor[1:]) if cursor else 0])

    return handler


def test_async_list_walks_every_page_and_encodes_the_plus(monkeypatch: pytest.MonkeyPatch) -> None:
    set_conn(monkeypatch)
    seen: list[httpx.Request] = []

    async def call(hook: FamulorHook) -> list[WhatsAppConversation]:
        return await hook.alist_conversations(whatsapp_sender_phone=SENDER, customer_phone=CUSTOMER)

    result = run_async(monkeypatch, listing_handler(230, seen), call)
    assert len(result) == 230
    assert len(seen) == 3
    assert b"whatsapp_sender_phone=%2B4930901820" in seen[0].url.query
    assert b"customer_phone=%2B4915112345678" in seen[0].url.query
    assert [r.url.params.get("cursor") for r in seen] == [None, "c1", "c2"]


def test_async_pages_stop_early_and_call_before_page(monkeypatch: pytest.MonkeyPatch) -> None:
    set_conn(monkeypatch)
    seen: list[httpx.Request] = []
    slots: list[int] = []

    async def before_page() -> None:
        slots.append(len(seen))

    async def call(hook: FamulorHook) -> int:
        read = 0
        async for page in hook.aiter_conversation_pages(before_page=before_page):
            read += len(page)
            if read >= 200:
                break
        return read

    assert run_async(monkeypatch, listing_handler(1000, seen), call) == 200
    assert (len(seen), slots) == (2, [0, 1])


def test_async_404_is_typed(monkeypatch: pytest.MonkeyPatch) -> None:
    set_conn(monkeypatch)

    def handler(request: httpx.Request) -> httpx.Response:
        assert request.url.path == "/api/conversations/gone"
        return httpx.Response(404, json={"status": False, "error": "Conversation not found"})

    async def call(hook: FamulorHook) -> ConversationHistory:
        return await hook.aget_conversation("gone")

    result = run_async(monkeypatch, handler, call)
    assert isinstance(result, FamulorConversationNotFoundError)
    assert result.status_code == 404


def test_async_history(monkeypatch: pytest.MonkeyPatch) -> None:
    set_conn(monkeypatch)

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json={"status": True, "history": [{"role": "user", "content": "NO"}]})

    async def call(hook: FamulorHook) -> ConversationHistory:
        return await hook.aget_conversation("u9")

    result = run_async(monkeypatch, handler, call)
    assert [(m.index, m.role, m.content) for m in result.messages] == [(0, "user", "NO")]


def test_async_bad_cursor_is_typed(monkeypatch: pytest.MonkeyPatch) -> None:
    set_conn(monkeypatch)

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.params.get("cursor"):
            return httpx.Response(422, json={"message": "Invalid cursor"})
        return httpx.Response(200, json={"data": [item(1)], "next_cursor": "bad"})

    async def call(hook: FamulorHook) -> list[WhatsAppConversation]:
        return await hook.alist_conversations()

    result = run_async(monkeypatch, handler, call)
    assert isinstance(result, FamulorAPIError)
    assert result.status_code == 422
    assert "Invalid cursor" in str(result)


def test_httpx_request_lines_show_the_phones_of_the_query_masked(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """httpx logs each request's URL at INFO, query included; Airflow 2.11's triggerer keeps it."""
    set_conn(monkeypatch)

    async def call(hook: FamulorHook) -> list[WhatsAppConversation]:
        return await hook.alist_conversations(whatsapp_sender_phone=SENDER, customer_phone=CUSTOMER)

    with caplog.at_level(logging.INFO, logger="httpx"):
        run_async(monkeypatch, listing_handler(3, []), call)
    lines = [r.getMessage() for r in caplog.records if r.name == "httpx"]
    assert lines and all("HTTP Request: GET" in line for line in lines)
    assert "customer_phone=+49151****78" in lines[0] and "whatsapp_sender_phone=+4930****20" in lines[0]
    assert not any("4915112345678" in line for line in lines)
