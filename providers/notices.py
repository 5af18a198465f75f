"""The clouds' preemption notices, watched from inside the VM: one small class per cloud, and
``watch`` (the loop the supervisor runs in a thread, see providers/local/supervisor.py
``--notices``). Standard library only: it runs on the VM under whatever Python the engine has.

What each cloud says, and how long it gives:

* AWS (IMDSv2; 2 minutes): a session token first, ``PUT /latest/api/token`` with header
  ``X-aws-ec2-metadata-token-ttl-seconds``, then every call with ``X-aws-ec2-metadata-token``.
  ``GET /latest/meta-data/spot/instance-action``: 404 while nothing is planned, else 200
  ``{"action": "terminate" | "stop" | "hibernate", "time": "2017-09-18T08:22:00Z"}`` (when,
  UTC). ``GET /latest/meta-data/events/recommendations/rebalance``: 404, else 200
  ``{"noticeTime": "2020-11-05T08:22:00Z"}``, a *rebalance recommendation* (the instance is at
  higher risk; no deadline). AWS advises polling every 5 s; we poll every ``POLL_S``.
* GCE (30 s): ``GET /computeMetadata/v1/instance/preempted`` with header ``Metadata-Flavor:
  Google`` answers ``TRUE`` or ``FALSE``; with ``?wait_for_change=true&timeout_sec=N`` it blocks
  until the value changes (or N s pass), and ``last_etag=`` (the ``ETag`` header of the last
  answer) makes it return at once when the value changed between two calls.
* Azure (Scheduled Events; at least 30 s for a Spot eviction): ``GET
  /metadata/scheduledevents?api-version=2020-07-01`` with header ``Metadata: true`` answers
  ``{"DocumentIncarnation": N, "Events": [{"EventId": "602d9444-...", "EventType": "Preempt",
  "ResourceType": "VirtualMachine", "Resources": ["vm-name"], "EventStatus": "Scheduled",
  "NotBefore": "Mon, 19 Sep 2016 18:29:47 GMT", "Description": "...", "EventSource":
  "Platform", "DurationInSeconds": -1}]}``. An event is acknowledged (the platform may go on at
  once) by ``POST`` of ``{"StartRequests": [{"EventId": "602d9444-..."}]}`` to the same URL;
  we do that once the engine's checkpoint is uploaded. Other event types (Reboot, Redeploy,
  Freeze, Terminate) are not preemptions and are left alone.

Where the metadata service is: the same variables as the rest of the VM's code reads
(``AWS_EC2_METADATA_SERVICE_ENDPOINT``, botocore's; ``DQLCTL_GCE_METADATA_URL`` and
``DQLCTL_AZURE_IMDS_URL``, providers/selfdelete.py's), so the tests point them at stand-ins.
``DQLCTL_NOTICE_POLL_S`` sets the poll interval (tests: a fraction of a second).
"""

from __future__ import annotations

import json
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from datetime import datetime
from email.utils import parsedate_to_datetime

AWS_ENDPOINT = "AWS_EC2_METADATA_SERVICE_ENDPOINT"
GCE_ENDPOINT = "DQLCTL_GCE_METADATA_URL"     # as providers/selfdelete.py GCE_METADATA
AZURE_ENDPOINT = "DQLCTL_AZURE_IMDS_URL"     # as providers/selfdelete.py AZURE_IMDS
POLL_VARIABLE = "DQLCTL_NOTICE_POLL_S"
POLL_S = 2.0
TIMEOUT_S = 5.0
AZURE_EVENTS_API = "2020-07-01"
PREEMPT, REBALANCE = "preempt", "rebalance"


class NoticeError(Exception):
    """The metadata service could not be asked (not there, refused, an answer we cannot read)."""


@dataclass(frozen=True)
class Notice:
    """One notice: ``kind`` is ``preempt`` (the machine goes at ``deadline``) or ``rebalance``
    (AWS: at risk, no deadline); ``action`` is the cloud's word for it; ``event_id`` what
    Azure wants acknowledged."""

    cloud: str
    kind: str
    action: str
    deadline: float | None = None       # unix seconds
    event_id: str | None = None

    def fields(self) -> dict[str, object]:
        return {k: v for k, v in asdict(self).items() if v is not None}


def _iso(text: str) -> float | None:
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()
    except (TypeError, ValueError):
        return None


def _http_date(text: str) -> float | None:
    try:
        return parsedate_to_datetime(text).timestamp()
    except (TypeError, ValueError, IndexError):
        return None


def _call(method: str, url: str, headers: dict[str, str], body: bytes | None = None,
          timeout: float = TIMEOUT_S) -> tuple[int, bytes, dict[str, str]]:
    """One request: (status, body, headers); 404 is an answer, other errors NoticeError."""
    req = urllib.request.Request(url, data=body, method=method, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, bytes(resp.read()), dict(resp.headers.items())
    except urllib.error.HTTPError as exc:
        if exc.code == 404:
            return 404, b"", {}
        raise NoticeError(f"{method} {url.split('?')[0]}: HTTP {exc.code}") from None
    except OSError as exc:
        raise NoticeError(f"{method} {url.split('?')[0]}: {exc}") from None


def _json(data: bytes, what: str) -> dict[str, object]:
    try:
        value = json.loads(data)
    except ValueError:
        raise NoticeError(f"{what}: not JSON: {data[:80]!r}") from None
    if not isinstance(value, dict):
        raise NoticeError(f"{what}: not a JSON object")
    return value


class Watcher:
    """One cloud's notices: ``poll()`` looks once (a GCE look may block up to the interval) and
    returns what is announced now; ``acknowledge`` tells the cloud the VM is ready."""

    cloud = ""
    window_s = 0.0      # how long the cloud gives between notice and end

    def __init__(self, base: str, poll_s: float = POLL_S) -> None:
        self.base = base.rstrip("/")
        self.poll_s = poll_s

    def poll(self) -> list[Notice]:  # pragma: no cover - overridden
        raise NotImplementedError

    def acknowledge(self, notice: Notice) -> bool:
        """Tell the cloud to go on (Azure); whether it was told. Nothing to do elsewhere."""
        return False


class AwsWatcher(Watcher):
    cloud = "aws"
    window_s = 120.0
    TOKEN_TTL_S = 21600

    def __init__(self, base: str, poll_s: float = POLL_S) -> None:
        super().__init__(base, poll_s)
        self._token: str | None = None

    def _get(self, path: str) -> tuple[int, bytes]:
        for attempt in (1, 2):
            if self._token is None:
                _, body, _ = _call("PUT", f"{self.base}/latest/api/token", {
                    "X-aws-ec2-metadata-token-ttl-seconds": str(self.TOKEN_TTL_S)})
                self._token = body.decode().strip()
            try:
                status, body, _ = _call("GET", f"{self.base}{path}",
                                        {"X-aws-ec2-metadata-token": self._token})
                return status, body
            except NoticeError:
                self._token = None      # expired or refused: a new token, once
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    def poll(self) -> list[Notice]:
        found: list[Notice] = []
        status, body = self._get("/latest/meta-data/spot/instance-action")
        if status == 200:
            action = _json(body, "spot/instance-action")
            found.append(Notice(self.cloud, PREEMPT, str(action.get("action", "terminate")),
                                _iso(str(action.get("time", "")))))
        status, body = self._get("/latest/meta-data/events/recommendations/rebalance")
        if status == 200:
            _json(body, "recommendations/rebalance")
            found.append(Notice(self.cloud, REBALANCE, "rebalance-recommendation"))
        return found


class GceWatcher(Watcher):
    cloud = "gcp"
    window_s = 30.0

    def __init__(self, base: str, poll_s: float = POLL_S) -> None:
        super().__init__(base, poll_s)
        self._etag: str | None = None

    def poll(self) -> list[Notice]:
        url = f"{self.base}/computeMetadata/v1/instance/preempted"
        if self._etag is not None:  # block until it changes (or the interval passes)
            wait = max(1, round(self.poll_s))
            url += f"?wait_for_change=true&timeout_sec={wait}&last_etag={self._etag}"
            timeout = wait + TIMEOUT_S
        else:
            timeout = TIMEOUT_S
        status, body, headers = _call("GET", url, {"Metadata-Flavor": "Google"},
                                      timeout=timeout)
        if status != 200:
            raise NoticeError("instance/preempted: not found (not a GCE VM?)")
        etag = {k.lower(): v for k, v in headers.items()}.get("etag")
        self._etag = etag
        if body.decode().strip().upper() == "TRUE":
            return [Notice(self.cloud, PREEMPT, "preempted", time.time() + self.window_s)]
        if etag is None:        # no ETag to wait on: do not spin
            time.sleep(self.poll_s)
        return []


class AzureWatcher(Watcher):
    cloud = "azure"
    window_s = 30.0

    def _url(self) -> str:
        return f"{self.base}/metadata/scheduledevents?api-version={AZURE_EVENTS_API}"

    def poll(self) -> list[Notice]:
        status, body, _ = _call("GET", self._url(), {"Metadata": "true"})
        if status != 200:
            raise NoticeError("scheduledevents: not found (not an Azure VM?)")
        doc = _json(body, "scheduledevents")
        found = []
        for event in doc.get("Events") or []:  # type: ignore[union-attr]
            if isinstance(event, dict) and event.get("EventType") == "Preempt":
                found.append(Notice(self.cloud, PREEMPT, "Preempt",
                                    _http_date(str(event.get("NotBefore") or "")),
                                    str(event.get("EventId") or "") or None))
        return found

    def acknowledge(self, notice: Notice) -> bool:
        if not notice.event_id:
            return False
        body = json.dumps({"StartRequests": [{"EventId": notice.event_id}]}).encode()
        status, _, _ = _call("POST", self._url(), {"Metadata": "true",
                                                   "Content-Type": "application/json"}, body)
        return status == 200


DEFAULTS = {"aws": (AwsWatcher, AWS_ENDPOINT, "http://169.254.169.254"),
            "gcp": (GceWatcher, GCE_ENDPOINT, "http://metadata.google.internal"),
            "azure": (AzureWatcher, AZURE_ENDPOINT, "http://169.254.169.254")}
CLOUDS = tuple(DEFAULTS)


def watcher_for(cloud: str, env: Mapping[str, str]) -> Watcher:
    """The watcher of ``cloud`` (aws, gcp, azure), its endpoint and interval from ``env``."""
    cls, variable, default = DEFAULTS[cloud]
    try:
        poll_s = float(env.get(POLL_VARIABLE) or POLL_S)
    except ValueError:
        poll_s = POLL_S
    return cls(env.get(variable) or default, poll_s)


def watch(watcher: Watcher, on_notice: Callable[[Notice], None], stop: threading.Event,
          on_error: Callable[[str], None] = print) -> None:
    """Poll until ``stop`` is set; ``on_notice`` once per new notice (a preemption is announced
    only once, whatever the service keeps answering). The service failing is said once (then
    once more each time it comes back and fails again), never fatal: the run goes on."""
    seen: set[tuple[str, str, str | None]] = set()
    failing = False
    while not stop.is_set():
        try:
            notices = watcher.poll()
            failing = False
        except NoticeError as exc:
            if not failing:
                on_error(f"dqlctl: cannot read {watcher.cloud} preemption notices: {exc}")
            failing = True
            notices = []
        for notice in notices:
            key = (notice.kind, notice.action, notice.event_id)
            if key not in seen:
                seen.add(key)
                on_notice(notice)
        if not isinstance(watcher, GceWatcher) or failing:  # GCE's look is itself the wait
            stop.wait(watcher.poll_s)
