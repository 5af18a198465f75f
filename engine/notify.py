"""Telegram notifications (``--notify``): start, finish, failure, and the report as a document.

Uses the Bot API's ``sendMessage`` and ``sendDocument`` over the standard library's urllib. The
bot token and chat id come from ``TELEGRAM_BOT_TOKEN`` and ``TELEGRAM_CHAT_ID``; the API base URL
from ``TELEGRAM_API_BASE`` (default ``https://api.telegram.org``; tests point it at a local
server).

Rules:

- A notification never breaks a run: every public method returns True/False and never raises.
  A failed send logs one warning (logger ``engine.notify``, or the ``warn`` callback given).
- The token and the chat id are never printed or logged: they are redacted from every message
  this module emits, exception texts included (the request URL holds the token), and they are
  left out of ``repr``.
- HTTP 429 (flood control) is retried after the ``parameters.retry_after`` seconds the API asks
  for (capped by ``max_retry_wait``), at most ``max_retries`` times; any other error gives up at
  once with its warning.
"""

from __future__ import annotations

import json
import logging
import math
import mimetypes
import os
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

log = logging.getLogger("engine.notify")

DEFAULT_API_BASE = "https://api.telegram.org"
TOKEN_ENV, CHAT_ENV, BASE_ENV = "TELEGRAM_BOT_TOKEN", "TELEGRAM_CHAT_ID", "TELEGRAM_API_BASE"
MAX_TEXT = 4096  # Bot API limit for a message
MAX_CAPTION = 1024
REDACTED = "<redacted>"


class _Failed(Exception):
    """A send that did not succeed; the message is already redacted."""


class Notifier:
    """Sends run notifications to one Telegram chat; does nothing when not configured."""

    def __init__(self, token: str | None, chat_id: str | int | None, *,
                 api_base: str = DEFAULT_API_BASE, timeout: float = 15.0,
                 max_retries: int = 3, max_retry_wait: float = 60.0,
                 sleep: Callable[[float], None] = time.sleep,
                 warn: Callable[[str], None] | None = None) -> None:
        self._token = (token or "").strip()
        self._chat = str(chat_id).strip() if chat_id is not None else ""
        self.api_base = (api_base or DEFAULT_API_BASE).rstrip("/")
        self.timeout = float(timeout)
        self.max_retries = max(0, int(max_retries))
        self.max_retry_wait = float(max_retry_wait)
        self._sleep = sleep
        self._warn = warn

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **kwargs: Any) -> Notifier:
        """A notifier configured from ``TELEGRAM_BOT_TOKEN``, ``TELEGRAM_CHAT_ID`` and
        ``TELEGRAM_API_BASE`` (of ``env``, default ``os.environ``). Missing variables give a
        disabled notifier (check :attr:`enabled`; :attr:`missing` names them)."""
        env = os.environ if env is None else env
        return cls(env.get(TOKEN_ENV), env.get(CHAT_ENV),
                   api_base=env.get(BASE_ENV) or DEFAULT_API_BASE, **kwargs)

    @property
    def enabled(self) -> bool:
        return bool(self._token and self._chat)

    @property
    def missing(self) -> list[str]:
        """Names of the environment variables that are not set."""
        return [n for n, v in ((TOKEN_ENV, self._token), (CHAT_ENV, self._chat)) if not v]

    def __repr__(self) -> str:
        state = "enabled" if self.enabled else "disabled"
        return f"Notifier({state}, api_base={self.api_base!r})"

    # -- the messages of a run ------------------------------------------------------------
    def start(self, experiment: str, *, command: str = "full-workflow",
              details: Mapping[str, Any] | None = None) -> bool:
        """``<experiment> started`` with a few settings (agent, data, episodes...)."""
        lines = [f"\u25b6\ufe0f dql-trading {command} started: {experiment}"]
        lines += [f"{k}: {_short(v)}" for k, v in (details or {}).items()]
        return self.send_message("\n".join(lines))

    def finished(self, experiment: str, metrics: Mapping[str, Any] | None = None, *,
                 baseline: Mapping[str, Any] | None = None, elapsed_s: float | None = None,
                 extra: str | None = None) -> bool:
        """``<experiment> finished`` with the key test metrics (and buy-and-hold's return)."""
        m = metrics or {}
        lines = [f"\u2705 dql-trading finished: {experiment}"]
        if m:
            ret = f"return {_pct(m.get('total_return'))}"
            if baseline and baseline.get("total_return") is not None:
                ret += f" (buy & hold {_pct(baseline.get('total_return'))})"
            lines.append(f"Test: {ret}")
            lines.append(f"Sharpe {_num(m.get('sharpe_ratio'))}, Sortino "
                         f"{_num(m.get('sortino_ratio'))}, max drawdown "
                         f"{_pct(m.get('max_drawdown'), signed=False)}")
            lines.append(f"Trades {m.get('n_trades', 'n/a')}, win rate "
                         f"{_pct(m.get('win_rate'), signed=False)}, exposure "
                         f"{_pct(m.get('exposure'), signed=False)}")
        if elapsed_s is not None:
            lines.append(f"Took {_duration(elapsed_s)}")
        if extra:
            lines.append(extra)
        return self.send_message("\n".join(lines))

    def failed(self, experiment: str, reason: str) -> bool:
        """``<experiment> failed: <reason>`` (the reason's first lines)."""
        reason = "\n".join(str(reason).strip().splitlines()[:8])
        return self.send_message(f"\u274c dql-trading failed: {experiment}\n{reason}")

    # -- Bot API --------------------------------------------------------------------------
    def send_message(self, text: str) -> bool:
        """``sendMessage``; True when Telegram accepted it."""
        if not self.enabled:
            return False
        text = text if len(text) <= MAX_TEXT else text[: MAX_TEXT - 1] + "\u2026"
        body = json.dumps({"chat_id": self._chat, "text": text,
                           "disable_web_page_preview": True}).encode("utf-8")
        return self._send("sendMessage", body, "application/json")

    def send_document(self, path: str | os.PathLike[str], caption: str | None = None) -> bool:
        """``sendDocument`` (multipart upload of the file at ``path``); True when accepted."""
        if not self.enabled:
            return False
        p = Path(path)
        try:
            data = p.read_bytes()
        except OSError as exc:
            self._warning(f"cannot read {p.name} to send it: {exc.strerror or exc}")
            return False
        fields: dict[str, str] = {"chat_id": self._chat}
        if caption:
            fields["caption"] = caption[:MAX_CAPTION]
        body, ctype = _multipart(fields, "document", p.name, data)
        return self._send("sendDocument", body, ctype)

    # -- internals ------------------------------------------------------------------------
    def _redact(self, text: str) -> str:
        for secret in (self._token, self._chat):
            if secret and (secret is self._token or len(secret) >= 5):
                text = text.replace(secret, REDACTED)
        return text

    def _warning(self, message: str) -> None:
        message = "telegram notification not sent: " + self._redact(message)
        try:
            if self._warn is not None:
                self._warn(message)
            else:
                log.warning(message)
        except Exception:  # noqa: BLE001 - a broken warning sink must not break the run
            pass

    def _send(self, method: str, body: bytes, content_type: str) -> bool:
        try:
            self._post(method, body, content_type)
            return True
        except _Failed as exc:
            self._warning(f"{method}: {exc}")
        except Exception as exc:  # noqa: BLE001 - never raise into the run
            self._warning(f"{method}: {type(exc).__name__}: {self._redact(str(exc))}")
        return False

    def _post(self, method: str, body: bytes, content_type: str) -> None:
        url = f"{self.api_base}/bot{self._token}/{method}"
        attempt = 0
        while True:
            status, payload = self._request(url, body, content_type)
            if status == 200 and payload.get("ok") is True:
                return
            retry_after = _retry_after(payload) if status == 429 else None
            if retry_after is not None and attempt < self.max_retries:
                attempt += 1
                self._sleep(min(retry_after, self.max_retry_wait))
                continue
            desc = self._redact(str(payload.get("description") or "")) or "no description"
            if status == 429:
                raise _Failed(f"HTTP 429 rate limited after {attempt} retries ({desc})")
            raise _Failed(f"HTTP {status} ({desc})")

    def _request(self, url: str, body: bytes, content_type: str) -> tuple[int, dict[str, Any]]:
        req = urllib.request.Request(url, data=body, method="POST",
                                     headers={"Content-Type": content_type,
                                              "User-Agent": "dql-trading"})
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:  # noqa: S310
                return int(resp.status), _parse(resp.read())
        except urllib.error.HTTPError as exc:
            try:
                raw = exc.read()
            except Exception:  # noqa: BLE001
                raw = b""
            finally:
                exc.close()
            return int(exc.code), _parse(raw)
        except urllib.error.URLError as exc:
            reason = exc.reason
            text = reason if isinstance(reason, str) else f"{type(reason).__name__}: {reason}"
            raise _Failed(f"cannot reach the Bot API at {self._redact(self.api_base)} "
                          f"({self._redact(str(text))})") from None
        except TimeoutError:
            raise _Failed(f"timed out after {self.timeout:g}s") from None


def _parse(raw: bytes) -> dict[str, Any]:
    try:
        value = json.loads(raw.decode("utf-8")) if raw else {}
    except (UnicodeDecodeError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


def _retry_after(payload: Mapping[str, Any]) -> float | None:
    params = payload.get("parameters")
    value = params.get("retry_after") if isinstance(params, Mapping) else None
    try:
        seconds = float(value) if value is not None else 1.0
    except (TypeError, ValueError):
        seconds = 1.0
    return max(0.0, seconds) if math.isfinite(seconds) else 1.0


def _multipart(fields: Mapping[str, str], file_field: str, filename: str,
               data: bytes) -> tuple[bytes, str]:
    boundary = f"dqlctl-{uuid.uuid4().hex}"
    safe_name = filename.replace('"', "_").replace("\r", "_").replace("\n", "_")
    ctype = mimetypes.guess_type(filename)[0] or "application/octet-stream"
    parts: list[bytes] = []
    for name, value in fields.items():
        parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n'
                     f"{value}\r\n".encode())
    parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{file_field}"; '
                 f'filename="{safe_name}"\r\nContent-Type: {ctype}\r\n\r\n'.encode())
    parts.append(data)
    parts.append(f"\r\n--{boundary}--\r\n".encode())
    return b"".join(parts), f"multipart/form-data; boundary={boundary}"


def _pct(v: Any, signed: bool = True) -> str:
    if not isinstance(v, int | float) or not math.isfinite(float(v)):
        return "n/a"
    return f"{100 * float(v):+.2f}%" if signed else f"{100 * float(v):.2f}%"


def _num(v: Any) -> str:
    if not isinstance(v, int | float) or not math.isfinite(float(v)):
        return "n/a"
    return f"{float(v):.2f}"


def _short(v: Any) -> str:
    text = str(v)
    return text if len(text) <= 120 else text[:117] + "..."


def _duration(seconds: float) -> str:
    s = int(round(seconds))
    h, rem = divmod(s, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h {m:02d}m" if h else f"{m}m {s:02d}s" if m else f"{s}s"
