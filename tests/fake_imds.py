"""A local server that answers the EC2 instance metadata service (IMDSv2) for a VM stand-in.

On a real instance the SDK finds the instance role's temporary credentials at
``http://169.254.169.254``; no emulator serves that (moto's own is not reachable by an SDK
outside its process), so this one answers the shapes botocore reads: ``PUT /latest/api/token``
(the session token, required on every later call), ``GET
/latest/meta-data/iam/security-credentials/`` (the role's name) and ``.../ROLE`` (the
credentials JSON). The engine on the stand-in VM reaches it through
``AWS_EC2_METADATA_SERVICE_ENDPOINT``; ``credential_requests`` counts what it handed out, so a
test can tell the engine used the instance's identity and no key shipped to it.

Spot notices, switched on by the test (``notice()``, ``rebalance()``, or ``POST /_fake/notice``
with ``{"action": ..., "in_s": ...}`` / ``POST /_fake/rebalance``): ``GET
/latest/meta-data/spot/instance-action`` answers 404 until then, then ``{"action":
"terminate", "time": "2026-01-01T12:02:00Z"}`` (EC2's shape: the time the action happens,
UTC, to the second); ``/latest/meta-data/events/recommendations/rebalance`` 404, then
``{"noticeTime": ...}``. ``notice_reads`` counts the looks at them.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

from tests.fake_gce import FakeHttpServer, Request, Response


class FakeImds(FakeHttpServer):
    """``issue``: the instance role's credentials (``AccessKeyId``, ``SecretAccessKey``,
    ``Token``), e.g. an STS AssumeRole of the instance's role on a moto server that enforces
    IAM; default: made-up keys (for a moto that checks none)."""

    def __init__(self, role: str = "dqlctl-instance-role",
                 issue: Callable[[], dict[str, str]] | None = None) -> None:
        super().__init__()
        self.role = role
        self.issue = issue
        self.tokens: set[str] = set()
        self.credential_requests = 0
        self.instance_action: dict[str, str] | None = None
        self.rebalance_notice: dict[str, str] | None = None
        self.notice_reads = 0

    def notice(self, action: str = "terminate", in_s: float = 120.0) -> dict[str, str]:
        """The cloud decides to take the instance back in ``in_s`` seconds."""
        when = datetime.now(UTC) + timedelta(seconds=in_s)
        self.instance_action = {"action": action, "time": when.strftime("%Y-%m-%dT%H:%M:%SZ")}
        return self.instance_action

    def new_instance(self) -> None:
        """Another instance stands here now: nothing announced for it (yet)."""
        self.instance_action = self.rebalance_notice = None

    def rebalance(self) -> dict[str, str]:
        """A rebalance recommendation (the instance is at higher risk of being taken back)."""
        self.rebalance_notice = {"noticeTime": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")}
        return self.rebalance_notice

    def handle(self, req: Request) -> Response:
        if req.method == "POST" and req.path == "/_fake/notice":
            body = req.body if isinstance(req.body, dict) else {}
            return Response(200, self.notice(str(body.get("action", "terminate")),
                                             float(body.get("in_s", 120.0))))
        if req.method == "POST" and req.path == "/_fake/rebalance":
            return Response(200, self.rebalance())
        if req.method == "PUT" and req.path == "/latest/api/token":
            if "x-aws-ec2-metadata-token-ttl-seconds" not in req.headers:
                return Response(400, "missing TTL")
            token = secrets.token_urlsafe(24)
            self.tokens.add(token)
            return Response(200, token)
        if req.headers.get("x-aws-ec2-metadata-token") not in self.tokens:
            return Response(401, "Unauthorized")
        if req.path in ("/latest/meta-data/spot/instance-action",
                        "/latest/meta-data/events/recommendations/rebalance"):
            self.notice_reads += 1
            found = (self.instance_action if req.path.endswith("instance-action")
                     else self.rebalance_notice)
            return Response(200, found) if found else Response(404, "Not Found")
        base = "/latest/meta-data/iam/security-credentials/"
        if req.path == base:
            return Response(200, self.role)
        if req.path == base + self.role:
            self.credential_requests += 1
            now = datetime.now(UTC)
            keys = self.issue() if self.issue else {
                "AccessKeyId": "ASIA" + secrets.token_hex(8).upper(),
                "SecretAccessKey": secrets.token_urlsafe(30),
                "Token": secrets.token_urlsafe(60)}
            return Response(200, {
                "Code": "Success", "Type": "AWS-HMAC",
                "LastUpdated": now.strftime("%Y-%m-%dT%H:%M:%SZ"), **keys,
                "Expiration": (now + timedelta(hours=6)).strftime("%Y-%m-%dT%H:%M:%SZ")})
        return Response(404, "Not Found")
