"""A local server that answers the EC2 instance metadata service (IMDSv2) for a VM stand-in.

On a real instance the SDK finds the instance role's temporary credentials at
``http://169.254.169.254``; no emulator serves that (moto's own is not reachable by an SDK
outside its process), so this one answers the shapes botocore reads: ``PUT /latest/api/token``
(the session token, required on every later call), ``GET
/latest/meta-data/iam/security-credentials/`` (the role's name) and ``.../ROLE`` (the
credentials JSON). The engine on the stand-in VM reaches it through
``AWS_EC2_METADATA_SERVICE_ENDPOINT``; ``credential_requests`` counts what it handed out, so a
test can tell the engine used the instance's identity and no key shipped to it.
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

    def handle(self, req: Request) -> Response:
        if req.method == "PUT" and req.path == "/latest/api/token":
            if "x-aws-ec2-metadata-token-ttl-seconds" not in req.headers:
                return Response(400, "missing TTL")
            token = secrets.token_urlsafe(24)
            self.tokens.add(token)
            return Response(200, token)
        if req.headers.get("x-aws-ec2-metadata-token") not in self.tokens:
            return Response(401, "Unauthorized")
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
