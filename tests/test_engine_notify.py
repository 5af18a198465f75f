"""Telegram notifications: the real urllib client against a local server speaking the Bot API."""

from __future__ import annotations

import email.parser
import email.policy
import json
import logging
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from engine.notify import Notifier

TOKEN = "123456789:AAH-secret_TOKEN-xyz"
CHAT = "-100987654321"


class BotApi:
    """A local HTTP server answering like api.telegram.org; replies are scripted per test."""

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self.replies: list[tuple[int, dict[str, Any]]] = []
        api = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                api.requests.append({"path": self.path, "body": body,
                                     "type": self.headers.get("Content-Type", "")})
                status, reply = api.replies.pop(0) if api.replies else (
                    200, {"ok": True, "result": {"message_id": len(api.requests)}})
                data = json.dumps(reply).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.base = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever,
                                       kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def api() -> Iterator[BotApi]:
    server = BotApi()
    yield server
    server.close()


@pytest.fixture
def notifier(api: BotApi) -> Notifier:
    return Notifier.from_env({"TELEGRAM_BOT_TOKEN": TOKEN, "TELEGRAM_CHAT_ID": CHAT,
                              "TELEGRAM_API_BASE": api.base}, timeout=5)


def _no_secrets(*texts: str) -> None:
    for text in texts:
        assert TOKEN not in text and "secret_TOKEN" not in text and CHAT not in text


def test_send_message_shape(api: BotApi, notifier: Notifier) -> None:
    assert notifier.enabled
    assert notifier.start("exp1", details={"agent_type": "custom", "episodes": 100})
    assert notifier.finished("exp1", {"total_return": 0.051, "sharpe_ratio": 1.234,
                                      "max_drawdown": 0.08, "n_trades": 12, "win_rate": 0.5,
                                      "exposure": 0.7}, baseline={"total_return": 0.02},
                             elapsed_s=754)
    assert notifier.failed("exp1", "CUDA out of memory\nmore\nlines")
    assert [r["path"] for r in api.requests] == [f"/bot{TOKEN}/sendMessage"] * 3
    msgs = [json.loads(r["body"]) for r in api.requests]
    assert all(m["chat_id"] == CHAT for m in msgs)
    assert "started: exp1" in msgs[0]["text"] and "agent_type: custom" in msgs[0]["text"]
    assert "return +5.10% (buy & hold +2.00%)" in msgs[1]["text"]
    assert "Sharpe 1.23" in msgs[1]["text"] and "Took 12m 34s" in msgs[1]["text"]
    assert "failed: exp1" in msgs[2]["text"] and "CUDA out of memory" in msgs[2]["text"]


def test_send_document_is_multipart(api: BotApi, notifier: Notifier, tmp_path: Path) -> None:
    report = tmp_path / "report.html"
    report.write_bytes(b"<html>\x00binary\r\n--not-a-boundary</html>")
    assert notifier.send_document(report, caption="exp1 report")
    req = api.requests[0]
    assert req["path"] == f"/bot{TOKEN}/sendDocument"
    assert req["type"].startswith("multipart/form-data; boundary=")
    msg = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
        b"Content-Type: " + req["type"].encode() + b"\r\n\r\n" + req["body"])
    parts = {p.get_param("name", header="content-disposition"): p for p in msg.iter_parts()}
    assert parts["chat_id"].get_content().strip() == CHAT
    assert parts["caption"].get_content().strip() == "exp1 report"
    doc = parts["document"]
    assert doc.get_filename() == "report.html"
    assert doc.get_payload(decode=True) == report.read_bytes()


def test_429_retry_after_then_success(api: BotApi, tmp_path: Path) -> None:
    waits: list[float] = []
    n = Notifier(TOKEN, CHAT, api_base=api.base, sleep=waits.append, timeout=5)
    api.replies = [(429, {"ok": False, "error_code": 429,
                          "description": "Too Many Requests: retry after 3",
                          "parameters": {"retry_after": 3}})]
    assert n.send_message("hello")
    assert waits == [3.0] and len(api.requests) == 2


def test_429_gives_up_after_bounded_retries(api: BotApi,
                                             caplog: pytest.LogCaptureFixture) -> None:
    waits: list[float] = []
    n = Notifier(TOKEN, CHAT, api_base=api.base, sleep=waits.append, max_retries=2,
                 max_retry_wait=5, timeout=5)
    flood = (429, {"ok": False, "error_code": 429, "description": "Too Many Requests",
                   "parameters": {"retry_after": 600}})
    api.replies = [flood] * 5
    with caplog.at_level(logging.DEBUG):
        assert n.send_message("hello") is False
    assert waits == [5.0, 5.0] and len(api.requests) == 3
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "429" in warnings[0].getMessage()


def test_errors_warn_once_never_raise_never_leak(api: BotApi, notifier: Notifier,
                                                 caplog: pytest.LogCaptureFixture,
                                                 capsys: pytest.CaptureFixture[str],
                                                 tmp_path: Path) -> None:
    api.replies = [(400, {"ok": False, "error_code": 400,
                          "description": f"Bad Request: chat {CHAT} not found"}),
                   (200, {"ok": False, "description": "weird"}),
                   (500, {"ok": False})]
    with caplog.at_level(logging.DEBUG):
        assert notifier.send_message("a") is False
        assert notifier.send_message("b") is False
        assert notifier.send_document(tmp_path / "missing.html") is False
        assert notifier.send_message("c") is False
        # unreachable server, and a token that breaks the URL itself (its text names the URL)
        dead = Notifier(TOKEN, CHAT, api_base="http://127.0.0.1:9", timeout=2)
        assert dead.send_message("d") is False
        bad = Notifier(TOKEN + " x\n", CHAT, api_base=api.base, timeout=2)
        bad._token = TOKEN + " x"  # a control-free but invalid URL character
        assert bad.send_message("e") is False
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 6, warnings
    assert "HTTP 400" in warnings[0] and "<redacted>" in warnings[0]
    assert "cannot read missing.html" in warnings[2]
    assert "cannot reach" in warnings[4]
    out = capsys.readouterr()
    _no_secrets(caplog.text, out.out, out.err, "\n".join(warnings), repr(notifier))


def test_disabled_without_env_and_custom_sink(api: BotApi) -> None:
    n = Notifier.from_env({})
    assert not n.enabled and n.missing == ["TELEGRAM_BOT_TOKEN", "TELEGRAM_CHAT_ID"]
    assert n.start("x") is False and n.send_document("nothing") is False
    got: list[str] = []
    n = Notifier(TOKEN, CHAT, api_base=api.base, warn=got.append, timeout=5)
    api.replies = [(403, {"ok": False, "description": "Forbidden: bot was blocked"})]
    assert n.failed("exp", "boom") is False
    assert len(got) == 1 and "Forbidden" in got[0]
    _no_secrets(got[0])
    assert api.requests == [api.requests[0]]
