"""A VM's own identity, read from its cloud's metadata service: what code running *on* the VM
uses when it has to prove who it is without any key shipped to it. Standard library only (it runs
under the VM's Python, with no SDK installed).

* AWS: the instance role's temporary credentials from IMDSv2 (a session token first, then
  ``iam/security-credentials/ROLE``), and ``ecr_authorization`` (ECR's GetAuthorizationToken,
  signed with those credentials by ``sigv4``: AWS Signature Version 4, as the SDKs sign).
* GCE: an OAuth2 access token of the VM's service account from the metadata server.
* Azure: a managed-identity token for a resource from IMDS.
* Registries (``registry_password``): Artifact Registry takes user ``oauth2accesstoken`` and the
  service account's token; ACR takes user ``00000000-0000-0000-0000-000000000000`` and the
  refresh token its ``/oauth2/exchange`` trades for an Azure AD token (``acr_refresh_token``,
  also what dqlctl's own push uses; ``DQLCTL_ACR_EXCHANGE_URL``: a stand-in's exchange).

Endpoints come from the environment, as the SDKs read them: ``AWS_EC2_METADATA_SERVICE_ENDPOINT``
and ``AWS_ENDPOINT_URL_ECR``/``AWS_ENDPOINT_URL`` (botocore's), ``DQLCTL_GCE_METADATA_URL`` and
``DQLCTL_AZURE_IMDS_URL`` (as providers/notices.py reads them); the defaults are the clouds' own.
Every failure is an ``IdentityError`` naming the call, never a secret.
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import hmac
import json
import os
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

TIMEOUT_S = 30.0
AWS_METADATA = "AWS_EC2_METADATA_SERVICE_ENDPOINT"
GCE_METADATA = "DQLCTL_GCE_METADATA_URL"
AZURE_IMDS = "DQLCTL_AZURE_IMDS_URL"


class IdentityError(Exception):
    """The VM's identity could not be read or used (no role, no endpoint, refused)."""


def call(method: str, url: str, headers: Mapping[str, str], body: bytes | None = None) -> bytes:
    """One HTTP call; IdentityError with the status and the start of the answer (the URL without
    its query: a query may carry a token)."""
    req = urllib.request.Request(url, data=body, method=method, headers=dict(headers))
    try:
        with urllib.request.urlopen(req, timeout=TIMEOUT_S) as resp:
            return bytes(resp.read())
    except urllib.error.HTTPError as exc:
        text = exc.read(300).decode(errors="replace").strip()
        raise IdentityError(f"{method} {url.split('?')[0]}: HTTP {exc.code}: {text}") from None
    except OSError as exc:
        raise IdentityError(f"{method} {url.split('?')[0]}: {exc}") from None


def call_json(method: str, url: str, headers: Mapping[str, str],
              body: bytes | None = None) -> dict[str, Any]:
    data = call(method, url, headers, body)
    try:
        value = json.loads(data)
    except ValueError:
        raise IdentityError(f"{url.split('?')[0]}: not JSON: {data[:80]!r}") from None
    if not isinstance(value, dict):
        raise IdentityError(f"{url.split('?')[0]}: not a JSON object")
    return value


def _endpoint(env: Mapping[str, str], variable: str, default: str) -> str:
    return (env.get(variable) or default).rstrip("/")


# -- AWS ------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class AwsCredentials:
    access_key: str
    secret_key: str
    token: str | None = None

    def __repr__(self) -> str:        # never print a secret
        return f"AwsCredentials({self.access_key[:4]}...)"


def aws_credentials(env: Mapping[str, str] | None = None) -> AwsCredentials:
    """The environment's keys when set (as the SDK's chain starts), else the instance role's
    temporary credentials from IMDSv2."""
    env = os.environ if env is None else env
    if env.get("AWS_ACCESS_KEY_ID") and env.get("AWS_SECRET_ACCESS_KEY"):
        return AwsCredentials(env["AWS_ACCESS_KEY_ID"], env["AWS_SECRET_ACCESS_KEY"],
                              env.get("AWS_SESSION_TOKEN"))
    base = _endpoint(env, AWS_METADATA, "http://169.254.169.254")
    token = call("PUT", f"{base}/latest/api/token",
                 {"X-aws-ec2-metadata-token-ttl-seconds": "300"}).decode().strip()
    auth = {"X-aws-ec2-metadata-token": token}
    roles = call("GET", f"{base}/latest/meta-data/iam/security-credentials/", auth).decode()
    role = next((r.strip() for r in roles.splitlines() if r.strip()), "")
    if not role:
        raise IdentityError("the instance has no role (IMDS lists no security credentials)")
    doc = call_json("GET", f"{base}/latest/meta-data/iam/security-credentials/"
                    f"{urllib.parse.quote(role)}", auth)
    if not doc.get("AccessKeyId") or not doc.get("SecretAccessKey"):
        raise IdentityError(f"IMDS gave no credentials for role {role!r}")
    return AwsCredentials(str(doc["AccessKeyId"]), str(doc["SecretAccessKey"]),
                          str(doc["Token"]) if doc.get("Token") else None)


def sigv4(method: str, url: str, headers: dict[str, str], body: bytes, *, service: str,
          region: str, creds: AwsCredentials,
          now: datetime.datetime | None = None) -> dict[str, str]:
    """``headers`` plus ``X-Amz-Date``, the session token and ``Authorization`` for an AWS
    Signature Version 4 request (every header given is signed; ``Host`` is added)."""
    now = now or datetime.datetime.now(datetime.UTC)
    stamp, day = now.strftime("%Y%m%dT%H%M%SZ"), now.strftime("%Y%m%d")
    parts = urllib.parse.urlsplit(url)
    out = {**headers, "Host": parts.netloc, "X-Amz-Date": stamp}
    if creds.token:
        out["X-Amz-Security-Token"] = creds.token
    signed = {k.lower(): " ".join(str(v).split()) for k, v in out.items()}
    names = ";".join(sorted(signed))
    query = "&".join(f"{urllib.parse.quote(k, safe='-_.~')}={urllib.parse.quote(v, safe='-_.~')}"
                     for k, v in sorted(urllib.parse.parse_qsl(parts.query,
                                                               keep_blank_values=True)))
    canonical = "\n".join([method, urllib.parse.quote(parts.path or "/", safe="/-_.~"), query,
                           "".join(f"{k}:{signed[k]}\n" for k in sorted(signed)), names,
                           hashlib.sha256(body).hexdigest()])
    scope = f"{day}/{region}/{service}/aws4_request"
    to_sign = "\n".join(["AWS4-HMAC-SHA256", stamp, scope,
                         hashlib.sha256(canonical.encode()).hexdigest()])
    key = f"AWS4{creds.secret_key}".encode()
    for part in (day, region, service, "aws4_request"):
        key = hmac.new(key, part.encode(), hashlib.sha256).digest()
    signature = hmac.new(key, to_sign.encode(), hashlib.sha256).hexdigest()
    out["Authorization"] = (f"AWS4-HMAC-SHA256 Credential={creds.access_key}/{scope}, "
                            f"SignedHeaders={names}, Signature={signature}")
    return out


def ecr_authorization(region: str, env: Mapping[str, str] | None = None) -> tuple[str, str, str]:
    """(user, password, registry) from ECR's GetAuthorizationToken, signed with this machine's
    AWS identity (the instance role on a VM). The password lives 12 hours."""
    env = os.environ if env is None else env
    endpoint = _endpoint(env, "AWS_ENDPOINT_URL_ECR",
                         env.get("AWS_ENDPOINT_URL") or f"https://api.ecr.{region}.amazonaws.com")
    body = b"{}"
    headers = sigv4("POST", endpoint + "/", {
        "Content-Type": "application/x-amz-json-1.1",
        "X-Amz-Target": "AmazonEC2ContainerRegistry_V20150921.GetAuthorizationToken"},
        body, service="ecr", region=region, creds=aws_credentials(env))
    return ecr_login(call_json("POST", endpoint + "/", headers, body))


def ecr_login(answer: Mapping[str, Any]) -> tuple[str, str, str]:
    """(user, password, registry) from GetAuthorizationToken's answer (the SDK's or our own)."""
    data = (answer.get("authorizationData") or [{}])[0]
    try:
        user, _, password = base64.b64decode(data["authorizationToken"]).decode().partition(":")
    except (KeyError, ValueError, UnicodeDecodeError):
        raise IdentityError("ECR's GetAuthorizationToken gave no token") from None
    return user, password, str(data.get("proxyEndpoint", "")).removeprefix("https://")


# -- GCE and Azure --------------------------------------------------------------------------------

def gce_token(env: Mapping[str, str] | None = None) -> str:
    """An access token of the VM's service account, from the metadata server."""
    env = os.environ if env is None else env
    meta = _endpoint(env, GCE_METADATA, "http://metadata.google.internal")
    token = call_json("GET", f"{meta}/computeMetadata/v1/instance/service-accounts/default/token",
                      {"Metadata-Flavor": "Google"}).get("access_token")
    if not token:
        raise IdentityError("the metadata server gave no access token")
    return str(token)


def azure_token(resource: str, env: Mapping[str, str] | None = None) -> str:
    """A managed-identity access token for ``resource``, from IMDS."""
    env = os.environ if env is None else env
    imds = _endpoint(env, AZURE_IMDS, "http://169.254.169.254")
    query = urllib.parse.urlencode({"api-version": "2018-02-01", "resource": resource})
    token = call_json("GET", f"{imds}/metadata/identity/oauth2/token?{query}",
                      {"Metadata": "true"}).get("access_token")
    if not token:
        raise IdentityError("IMDS gave no access token (no managed identity?)")
    return str(token)


# -- container registries: GCE's and Azure's logins -------------------------------------------

ACR_EXCHANGE = "DQLCTL_ACR_EXCHANGE_URL"
#: ACR takes an Azure AD token of Azure Resource Manager's audience in its exchange
ARM_RESOURCE = "https://management.azure.com/"
#: the user name that goes with an ACR refresh token (and with a GCE access token)
ACR_USER = "00000000-0000-0000-0000-000000000000"
GCR_USER = "oauth2accesstoken"


def acr_refresh_token(registry: str, aad_token: str,
                      env: Mapping[str, str] | None = None) -> str:
    """ACR's refresh token for ``registry`` (its login server, ``NAME.azurecr.io``) in exchange
    for an Azure AD access token (``POST https://REGISTRY/oauth2/exchange``, ``grant_type=
    access_token``); it is the password of ``ACR_USER``. ``DQLCTL_ACR_EXCHANGE_URL`` in ``env``:
    the exchange's base URL when not the registry's own (a stand-in)."""
    env = os.environ if env is None else env
    base = _endpoint(env, ACR_EXCHANGE, f"https://{registry}")
    form = urllib.parse.urlencode({"grant_type": "access_token", "service": registry,
                                   "access_token": aad_token}).encode()
    token = call_json("POST", f"{base}/oauth2/exchange",
                      {"Content-Type": "application/x-www-form-urlencoded"},
                      form).get("refresh_token")
    if not token:
        raise IdentityError(f"the registry {registry} gave no refresh token")
    return str(token)


def registry_password(cloud: str, registry: str, env: Mapping[str, str] | None = None,
                      region: str | None = None) -> tuple[str, str]:
    """(user, password) for the cloud's registry ``registry`` from this machine's identity:
    ECR's token signed with the instance role (AWS, in ``region``), the service account's
    access token (GCE), the managed identity's token exchanged at ACR (Azure)."""
    if cloud == "aws":
        if not region:
            raise IdentityError("an ECR login needs the registry's region")
        user, password, _ = ecr_authorization(region, env)
        return user, password
    if cloud == "gcp":
        return GCR_USER, gce_token(env)
    if cloud == "azure":
        return ACR_USER, acr_refresh_token(registry, azure_token(ARM_RESOURCE, env), env)
    raise IdentityError(f"no registry login for a {cloud} identity")
