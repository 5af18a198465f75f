"""Who may reach a run's GCE or Azure VM and what the VM may reach, as data: the firewall rules
and NSG rule that let only the operator in on tcp:22, the run's service account or managed
identity limited to the run's bucket(s) and its own machine, and each piece found again by its
tags and removed, 'not found' counting as done (providers/gcp/access.py,
providers/azure/access.py).

The clouds' clients are in-memory stand-ins that keep what was asked and answer the clouds'
errors, the request objects the real SDK's: these run in milliseconds (``make mutation`` runs
them once per mutant); tests/test_gcp_e2e.py and tests/test_azure_e2e.py do the same through the
stand-in servers."""

from __future__ import annotations

import copy
import json
import uuid
from dataclasses import dataclass, field
from typing import Any

import pytest
from google.api_core import exceptions as gexc

from providers.azure import access as az
from providers.azure.access import AzureAccess, containers_of
from providers.base import (
    OWNER_TAG,
    RUN_LABEL,
    RUN_TAG,
    USER_TAG,
    JobSpec,
    LaunchSpec,
    ProviderError,
    Resource,
)
from providers.gcp import access as gcp
from providers.gcp.access import GceAccess, owner_words, tags_in

CORE = {RUN_TAG: "r1", OWNER_TAG: "Reg 1", USER_TAG: "ann"}
WORDS = "dqlctl-run=r1 dqlctl-owner=reg_1 dqlctl-user=ann"
IAM = "http://iam.test"
SA_URL = f"{IAM}/v1/projects/proj/serviceAccounts"
ROLES_URL = f"{IAM}/v1/projects/proj/roles"


# == GCP ==========================================================================================

def test_owner_words_are_the_tags_as_label_words_and_come_back() -> None:
    assert owner_words(CORE) == WORDS
    assert tags_in(f"dqlctl run r1: ssh from operator ({WORDS})") == {
        "dqlctl-run": "r1", "dqlctl-owner": "reg_1", "dqlctl-user": "ann"}
    assert tags_in("") == {} and tags_in(None) == {}  # type: ignore[arg-type]
    assert tags_in("xdqlctl-run=r1 other-run=r2 dqlctl-run=R2") == {}


@dataclass
class Reply:
    status_code: int
    body: Any = None
    raw: bytes | None = None

    @property
    def content(self) -> bytes:
        if self.raw is not None:
            return self.raw
        return json.dumps(self.body).encode() if self.body is not None else b""

    @property
    def text(self) -> str:
        return self.content.decode()

    def json(self) -> Any:
        return json.loads(self.content)


class FakeIam:
    """IAM's REST API for service accounts and the project's custom roles (an HTTP session)."""

    def __init__(self, page_size: int = 1) -> None:
        self.accounts: dict[str, dict[str, Any]] = {}
        self.roles: dict[str, dict[str, Any]] = {}
        self.calls: list[tuple[str, str, dict[str, Any]]] = []
        self.page_size = page_size
        self.fail: Reply | None = None

    def request(self, method: str, url: str, timeout: float, **kwargs: Any) -> Reply:
        assert timeout == 60
        self.calls.append((method, url, kwargs))
        if self.fail is not None:
            return self.fail
        if url == SA_URL and method == "POST":
            body = kwargs["json"]
            email = f"{body['accountId']}@proj.iam.gserviceaccount.com"
            self.accounts[email] = {"email": email, **body["serviceAccount"]}
            return Reply(200, self.accounts[email])
        if url == SA_URL and method == "GET":
            emails = sorted(self.accounts)
            start = int(kwargs.get("params", {}).get("pageToken") or 0)
            chunk = [self.accounts[e] for e in emails[start:start + self.page_size]]
            page: dict[str, Any] = {"accounts": chunk} if chunk else {}  # IAM omits it
            if start + self.page_size < len(emails):
                page["nextPageToken"] = str(start + self.page_size)
            return Reply(200, page)
        if url.startswith(SA_URL + "/") and method == "DELETE":
            if self.accounts.pop(url.rsplit("/", 1)[1], None) is None:
                return Reply(404, {"error": {"message": "no such account"}})
            return Reply(200, raw=b"")
        if url == ROLES_URL and method == "POST":
            body = kwargs["json"]
            self.roles[body["roleId"]] = {"name": f"projects/proj/roles/{body['roleId']}",
                                          **body["role"]}
            return Reply(200, self.roles[body["roleId"]])
        if url.startswith(ROLES_URL + "/"):
            role_id, _, verb = url.rsplit("/", 1)[1].partition(":")
            if role_id not in self.roles:
                return Reply(404, {"error": {"message": "no such role"}})
            if verb == "undelete":
                self.roles[role_id]["deleted"] = False
            return Reply(200, self.roles[role_id])
        raise AssertionError(f"unexpected {method} {url}")


class Policy:
    def __init__(self, bindings: list[dict[str, Any]]) -> None:
        self.bindings = bindings


class FakeBucket:
    def __init__(self, storage: FakeStorage, name: str) -> None:
        self.storage, self.name = storage, name

    def get_iam_policy(self, requested_policy_version: int, timeout: float) -> Policy:
        assert requested_policy_version == 3 and timeout == 60
        if self.storage.read_error:
            raise self.storage.read_error
        if self.name not in self.storage.policies:
            raise gexc.NotFound("no such bucket")
        return Policy(copy.deepcopy(self.storage.policies[self.name]))

    def set_iam_policy(self, policy: Policy, timeout: float) -> None:
        assert timeout == 60
        self.storage.sets += 1
        if self.storage.changed_by_others:
            self.storage.changed_by_others -= 1
            raise gexc.PreconditionFailed("etag")
        if self.storage.write_error:
            raise self.storage.write_error
        self.storage.policies[self.name] = copy.deepcopy(policy.bindings)


@dataclass
class FakeStorage:
    """Buckets' IAM policies (google-cloud-storage's client, bucket handles)."""

    policies: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    sets: int = 0
    changed_by_others: int = 0
    read_error: Exception | None = None
    write_error: Exception | None = None

    def bucket(self, name: str) -> FakeBucket:
        return FakeBucket(self, name)


class NotFound(Exception):
    pass


@dataclass
class FakeFirewalls:
    rules: dict[str, Any] = field(default_factory=dict)
    inserted: list[Any] = field(default_factory=list)
    error: Exception | None = None

    def insert(self, project: str, firewall_resource: Any) -> str:
        assert project == "proj"
        self.inserted.append(firewall_resource)
        self.rules[firewall_resource.name] = firewall_resource
        return f"op-{firewall_resource.name}"

    def delete(self, project: str, firewall: str) -> str:
        assert project == "proj"
        if self.error:
            raise self.error
        if self.rules.pop(firewall, None) is None:
            raise NotFound(firewall)
        return f"op-delete-{firewall}"

    def list(self, project: str) -> list[Any]:
        assert project == "proj"
        return list(self.rules.values())


@dataclass
class FakeInstances:
    policies: list[dict[str, Any]] = field(default_factory=list)

    def set_iam_policy(self, **kwargs: Any) -> None:
        self.policies.append(kwargs)


class Gce(GceAccess):
    name = "gcp"
    project_id = "proj"
    iam_endpoint = IAM
    storage_endpoint = "http://storage.test"

    def __init__(self, network: str = "global/networks/default") -> None:
        self.network = network
        self.iam, self.storage = FakeIam(), FakeStorage()
        self.firewalls, self.instances = FakeFirewalls(), FakeInstances()
        self._clients = {"session": self.iam, "storage": self.storage}
        self.waited: list[Any] = []

    def _client(self, kind: str) -> Any:
        return {"Firewalls": self.firewalls, "Instances": self.instances}[kind]

    def _wait(self, op: Any, zone: str | None = None) -> None:
        self.waited.append(op)

    def _credentials(self) -> tuple[Any, str]:
        from google.auth.credentials import AnonymousCredentials

        if not hasattr(self, "creds"):
            self.creds = AnonymousCredentials()
        return self.creds, "proj"


def test_ssh_is_let_in_from_the_operator_only_above_a_deny_for_everyone() -> None:
    gce = Gce()
    gce._create_firewall("r1", "203.0.113.7/32", CORE)
    deny, allow = gce.firewalls.inserted                    # the deny goes in first
    assert gce.waited == ["op-dqlctl-r1-deny-ssh", "op-dqlctl-r1"]
    assert allow.name == "dqlctl-r1"
    assert allow.description == f"dqlctl run r1: ssh from operator ({WORDS})"
    assert allow.network == "projects/proj/global/networks/default"
    assert (allow.direction, allow.priority) == ("INGRESS", gcp.ALLOW_PRIORITY) == ("INGRESS",
                                                                                  1000)
    assert list(allow.source_ranges) == ["203.0.113.7/32"]
    assert list(allow.target_tags) == ["dqlctl-r1"]
    assert [(a.I_p_protocol, list(a.ports)) for a in allow.allowed] == [("tcp", ["22"])]
    assert list(allow.denied) == []
    assert deny.name == "dqlctl-r1-deny-ssh"
    assert deny.description == f"dqlctl run r1: no ssh from anyone else ({WORDS})"
    assert deny.network == allow.network and deny.direction == "INGRESS"
    assert deny.priority == gcp.DENY_PRIORITY == 1001       # below the allow, above 65534
    assert list(deny.source_ranges) == ["0.0.0.0/0"] and list(deny.target_tags) == ["dqlctl-r1"]
    assert [(d.I_p_protocol, list(d.ports)) for d in deny.denied] == [("tcp", ["22"])]
    assert list(deny.allowed) == []
    assert tags_in(allow.description) == tags_in(deny.description) == tags_in(WORDS)


def test_a_network_given_in_full_is_used_as_it_is() -> None:
    gce = Gce(network="projects/shared/global/networks/vpc")
    gce._create_firewall("r1", "10.0.0.1/32", CORE)
    assert {r.network for r in gce.firewalls.inserted} == {"projects/shared/global/networks/vpc"}


def test_the_runs_service_account_is_made_and_granted_its_buckets_only() -> None:
    gce = Gce()
    gce.storage.policies = {"b1": [], "b2": [{"role": "roles/viewer", "members": {"user:x"}}],
                            "other": []}
    email = gce._create_service_account("r1", ["b1", "b2"], CORE)
    assert email == "dqlctl-r1@proj.iam.gserviceaccount.com" == gce._sa_email("r1")
    method, url, kwargs = gce.iam.calls[0]
    assert (method, url) == ("POST", SA_URL)
    assert kwargs["json"] == {"accountId": "dqlctl-r1", "serviceAccount": {
        "displayName": "dqlctl run r1", "description": f"dqlctl run r1: b1, b2 only ({WORDS})"}}
    member = f"serviceAccount:{email}"
    assert gce.storage.policies["b1"] == [{"role": gcp.BUCKET_ROLE, "members": {member}}]
    assert gce.storage.policies["b2"] == [{"role": "roles/viewer", "members": {"user:x"}},
                                          {"role": "roles/storage.objectAdmin",
                                           "members": {member}}]
    assert gce.storage.policies["other"] == []


def test_a_run_without_a_bucket_gets_an_account_with_no_storage() -> None:
    gce = Gce()
    gce._create_service_account("r1", [], CORE)
    assert gce.iam.calls[0][2]["json"]["serviceAccount"]["description"] == (
        f"dqlctl run r1: no bucket ({WORDS})")
    assert gce.storage.sets == 0


def member(email: str = "sa@p") -> str:
    return f"serviceAccount:{email}"


def test_a_grant_joins_the_existing_unconditional_binding_and_keeps_the_rest() -> None:
    gce = Gce()
    conditional = {"role": gcp.BUCKET_ROLE, "members": {"user:c"}, "condition": {"title": "t"}}
    gce.storage.policies["b"] = [conditional, {"role": gcp.BUCKET_ROLE, "members": {"user:a"}},
                                 {"role": "roles/empty", "members": set()}]
    gce._edit_bucket_policy("b", "sa@p", grant=True)
    assert gce.storage.policies["b"] == [
        conditional, {"role": gcp.BUCKET_ROLE, "members": {"user:a", member()}}]


def test_a_grant_already_there_writes_nothing() -> None:
    gce = Gce()
    gce.storage.policies["b"] = [{"role": gcp.BUCKET_ROLE, "members": {member()}}]
    gce._edit_bucket_policy("b", "sa@p", grant=True)
    assert gce.storage.sets == 0


def test_a_revoke_takes_the_member_out_of_every_binding_and_drops_empty_ones() -> None:
    gce = Gce()
    gce.storage.policies["b"] = [{"role": gcp.BUCKET_ROLE, "members": {member()}},
                                 {"role": "roles/viewer", "members": {member(), "user:x"}}]
    gce._edit_bucket_policy("b", "sa@p", grant=False)
    assert gce.storage.policies["b"] == [{"role": "roles/viewer", "members": {"user:x"}}]


def test_a_revoke_of_a_non_member_or_on_a_gone_bucket_writes_nothing() -> None:
    gce = Gce()
    gce.storage.policies["b"] = [{"role": "roles/viewer", "members": {"user:x"}}]
    gce._edit_bucket_policy("b", "sa@p", grant=False)
    gce._edit_bucket_policy("gone", "sa@p", grant=False)
    assert gce.storage.sets == 0


def test_a_grant_on_a_missing_bucket_says_which() -> None:
    with pytest.raises(ProviderError, match=r"^bucket gone not found \(granting the run's "
                                            r"service account access to it\)$"):
        Gce()._edit_bucket_policy("gone", "sa@p", grant=True)


def test_a_policy_changed_meanwhile_is_read_again_then_given_up() -> None:
    gce = Gce()
    gce.storage.policies["b"] = []
    gce.storage.changed_by_others = 4
    gce._edit_bucket_policy("b", "sa@p", grant=True)
    assert gce.storage.sets == 5 and gce.storage.policies["b"][0]["members"] == {member()}
    gce.storage.policies["c"] = []
    gce.storage.changed_by_others, gce.storage.sets = 5, 0
    with pytest.raises(ProviderError, match="^the IAM policy of bucket c kept changing; "
                                            "try again$"):
        gce._edit_bucket_policy("c", "sa@p", grant=True)
    assert gce.storage.sets == 5


def test_policy_errors_name_the_bucket_and_the_step() -> None:
    gce = Gce()
    gce.storage.policies["b"] = []
    gce.storage.read_error = gexc.Forbidden("no storage.buckets.getIamPolicy")
    with pytest.raises(ProviderError, match="^reading the IAM policy of bucket b: no storage"):
        gce._edit_bucket_policy("b", "sa@p", grant=True)
    gce.storage.read_error = None
    gce.storage.write_error = gexc.Forbidden("no storage.buckets.setIamPolicy")
    with pytest.raises(ProviderError, match="^setting the IAM policy of bucket b: no storage"):
        gce._edit_bucket_policy("b", "sa@p", grant=True)


def test_the_self_delete_role_is_made_once_with_the_delete_alone() -> None:
    gce = Gce()
    assert gce._self_delete_role() == "projects/proj/roles/dqlctlSelfDelete"
    posted = [c for c in gce.iam.calls if c[0] == "POST"]
    assert posted == [("POST", ROLES_URL, {"json": {"roleId": "dqlctlSelfDelete", "role": {
        "title": "dqlctl: a run's VM deletes itself",
        "description": "held by a dqlctl run's service account on its own instance only",
        "includedPermissions": ["compute.instances.delete"], "stage": "GA"}}})]
    assert gce._self_delete_role() == "projects/proj/roles/dqlctlSelfDelete"
    assert [c[0] for c in gce.iam.calls] == ["GET", "POST", "GET"]


def test_a_deleted_self_delete_role_is_undeleted() -> None:
    gce = Gce()
    gce.iam.roles["dqlctlSelfDelete"] = {"name": "projects/proj/roles/dqlctlSelfDelete",
                                         "deleted": True}
    assert gce._self_delete_role() == "projects/proj/roles/dqlctlSelfDelete"
    assert gce.iam.calls[-1] == ("POST", f"{ROLES_URL}/dqlctlSelfDelete:undelete", {"json": {}})
    assert gce.iam.roles["dqlctlSelfDelete"]["deleted"] is False


def test_the_role_is_named_as_iam_names_it() -> None:
    gce = Gce()
    gce.iam.roles["dqlctlSelfDelete"] = {"name": "projects/123456/roles/dqlctlSelfDelete"}
    assert gce._self_delete_role() == "projects/123456/roles/dqlctlSelfDelete"


def test_a_role_answer_without_a_name_still_names_the_role() -> None:
    gce = Gce()
    gce.iam.roles["dqlctlSelfDelete"] = {"name": ""}
    assert gce._self_delete_role() == "projects/proj/roles/dqlctlSelfDelete"


def test_the_vm_may_delete_its_own_instance_and_nothing_else() -> None:
    gce = Gce()
    gce._let_delete_itself("europe-west1-b", "dqlctl-r1", "sa@p")
    (call,) = gce.instances.policies
    assert (call["project"], call["zone"], call["resource"]) == ("proj", "europe-west1-b",
                                                                 "dqlctl-r1")
    policy = call["zone_set_policy_request_resource"].policy
    assert [(b.role, list(b.members)) for b in policy.bindings] == [
        ("projects/proj/roles/dqlctlSelfDelete", ["serviceAccount:sa@p"])]


def test_iam_errors_are_one_line_with_the_status_and_the_message() -> None:
    gce = Gce()
    gce.iam.fail = Reply(403, {"error": {"message": "Permission denied"}})
    with pytest.raises(ProviderError) as info:
        gce._rest("GET", f"{SA_URL}?pageSize=5")
    assert str(info.value) == f"GET {SA_URL}: HTTP 403: Permission denied"
    gce.iam.fail = Reply(500, raw=b"<html>" + b"x" * 300)
    with pytest.raises(ProviderError) as info:
        gce._rest("GET", SA_URL)
    assert str(info.value) == f"GET {SA_URL}: HTTP 500: <html>{'x' * 194}"
    gce.iam.fail = Reply(400, {"error": "just a string"})
    with pytest.raises(ProviderError, match='HTTP 400: {"error": "just a string"}'):
        gce._rest("GET", SA_URL)


def test_iam_not_found_is_none_only_where_missing_is_fine() -> None:
    gce = Gce()
    gce.iam.fail = Reply(404, {"error": {"message": "gone"}})
    assert gce._rest("DELETE", f"{SA_URL}/x", ok_missing=True) is None
    with pytest.raises(ProviderError, match="HTTP 404: gone"):
        gce._rest("DELETE", f"{SA_URL}/x")
    gce.iam.fail = Reply(399, raw=b"")
    assert gce._rest("GET", SA_URL) == {}
    gce.iam.fail = Reply(200, {"a": 1})
    assert gce._rest("GET", SA_URL, json={"x": 1}) == {"a": 1}
    assert gce.iam.calls[-1] == ("GET", SA_URL, {"json": {"x": 1}})


def test_the_sessions_and_clients_are_made_once(monkeypatch: pytest.MonkeyPatch) -> None:
    gce = Gce()
    gce._clients = {}
    session = gce._session()
    assert gce._session() is session
    assert type(session).__name__ == "AuthorizedSession"
    assert session.credentials is gce.creds
    client = gce._storage()
    assert gce._storage() is client
    assert client.project == "proj"
    assert client._connection.API_BASE_URL == "http://storage.test"


def test_without_google_cloud_storage_the_error_says_what_to_install(
        monkeypatch: pytest.MonkeyPatch) -> None:
    import builtins

    real = builtins.__import__

    def no_storage(name: str, *args: Any, **kwargs: Any) -> Any:
        if name == "google.cloud" and "storage" in (args[2] if len(args) > 2 else ()):
            raise ImportError(name)
        return real(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_storage)
    gce = Gce()
    gce._clients = {}
    from providers.base import install_hint

    with pytest.raises(ProviderError) as info:
        gce._storage()
    assert str(info.value) == ("the GCP provider needs google-cloud-storage: "
                               f"{install_hint('gcp')}")


def test_a_firewall_already_gone_is_done_other_errors_are_not() -> None:
    gce = Gce()
    gce._create_firewall("r1", "10.0.0.1/32", CORE)
    gce.waited.clear()
    gce._delete_firewall("dqlctl-r1")
    assert gce.waited == ["op-delete-dqlctl-r1"]
    gce._delete_firewall("dqlctl-r1")                       # 'not found': done
    gce.firewalls.error = gexc.Forbidden("no compute.firewalls.delete")
    with pytest.raises(gexc.Forbidden):
        gce._delete_firewall("dqlctl-r1-deny-ssh")


def test_deleting_the_account_takes_it_out_of_its_buckets_first() -> None:
    gce = Gce()
    gce.storage.policies = {"b1": [], "b2": []}
    email = gce._create_service_account("r1", ["b1", "b2"], CORE)
    gce._delete_service_account(email, ["b1", "b2", "gone"])
    assert gce.storage.policies == {"b1": [], "b2": []}
    assert gce.iam.accounts == {}
    assert gce.iam.calls[-1][:2] == ("DELETE", f"{SA_URL}/{email}")
    gce._delete_service_account(email, [])                   # already gone: done


def test_the_access_pieces_are_found_again_by_their_tags_and_removed() -> None:
    gce = Gce()
    gce.storage.policies = {"b1": [], "b2": []}
    gce._create_firewall("r1", "10.0.0.1/32", CORE)
    gce._create_firewall("r2", "10.0.0.1/32", {**CORE, RUN_TAG: "r2"})
    gce._create_service_account("r1", ["b1", "b2"], CORE)
    gce._create_service_account("r2", [], {**CORE, RUN_TAG: "r2"})
    gce.iam.accounts["someone@proj.iam.gserviceaccount.com"] = {
        "email": "someone@proj.iam.gserviceaccount.com", "description": WORDS}
    gce.firewalls.rules["default-allow-ssh"] = type(gce.firewalls.inserted[0])(
        name="default-allow-ssh", description=WORDS)
    found = gce._access_resources({"dqlctl-run": "r1"})
    core = {RUN_TAG: "r1", OWNER_TAG: "reg_1", USER_TAG: "ann"}
    assert sorted((r.kind, r.resource_id) for r in found) == [
        ("firewall", "dqlctl-r1"), ("firewall", "dqlctl-r1-deny-ssh"),
        ("service-account", "dqlctl-r1@proj.iam.gserviceaccount.com")]
    assert all(r.provider == "gcp" and r.region is None and r.tags == core for r in found)
    account = next(r for r in found if r.kind == "service-account")
    assert account.extra == {"description": f"dqlctl run r1: b1, b2 only ({WORDS})"}
    assert len(gce._access_resources({"dqlctl-owner": None})) == 6
    for resource in found:
        gce._delete_access(resource)
    assert sorted(gce.firewalls.rules) == ["default-allow-ssh", "dqlctl-r2", "dqlctl-r2-deny-ssh"]
    assert sorted(gce.iam.accounts) == ["dqlctl-r2@proj.iam.gserviceaccount.com",
                                        "someone@proj.iam.gserviceaccount.com"]
    assert gce.storage.policies == {"b1": [], "b2": []}


def test_an_account_without_buckets_in_its_description_leaves_no_policy_to_edit() -> None:
    gce = Gce()
    gce._create_service_account("r1", [], CORE)
    (account,) = gce._access_resources({"dqlctl-run": "r1"})
    gce._delete_access(account)
    assert gce.iam.accounts == {} and gce.storage.sets == 0


def test_an_account_without_a_description_is_listed_and_removed() -> None:
    gce = Gce()
    gce.iam.accounts["dqlctl-old@proj.iam.gserviceaccount.com"] = {
        "email": "dqlctl-old@proj.iam.gserviceaccount.com"}
    gce.iam.accounts["no-email"] = {"description": WORDS}
    (found,) = gce._access_resources({})
    assert (found.resource_id, found.tags, found.extra) == (
        "dqlctl-old@proj.iam.gserviceaccount.com", {}, {"description": ""})
    gce._delete_access(found)
    assert list(gce.iam.accounts) == ["no-email"]


def test_an_account_named_without_its_description_is_removed() -> None:
    gce = Gce()
    gce._create_service_account("r1", [], CORE)
    gce._delete_access(Resource("gcp", "service-account", gce._sa_email("r1")))
    assert gce.iam.accounts == {}


def test_an_empty_project_has_no_access_pieces() -> None:
    assert Gce()._access_resources({"dqlctl-run": "r1"}) == []


def test_a_kind_the_access_half_does_not_own_is_refused() -> None:
    with pytest.raises(ProviderError, match="^gcp: no such kind of resource: instance$"):
        Gce()._delete_access(Resource("gcp", "instance", "i-1"))
    assert gcp.ACCESS_KINDS == ("firewall", "service-account")


# == Azure ========================================================================================

ACCOUNT = "/subscriptions/sub-1/resourceGroups/data/providers/Microsoft.Storage/storageAccounts/acct"
AZ_TAGS = {RUN_LABEL: "r1", "dqlctl-owner": "reg1", "dqlctl-user": "ann"}


def az_error(code: str) -> Exception:
    from types import SimpleNamespace

    from azure.core.exceptions import HttpResponseError

    exc = HttpResponseError(message=f"{code}: something")
    exc.error = SimpleNamespace(code=code)  # type: ignore[assignment]
    return exc


def az_not_found(what: str = "gone") -> Exception:
    from azure.core.exceptions import ResourceNotFoundError

    return ResourceNotFoundError(what)


class Poller:
    def __init__(self, value: Any = None, error: Exception | None = None) -> None:
        self.value, self.error, self.waited = value, error, False

    def result(self) -> Any:
        self.waited = True
        if self.error:
            raise self.error
        return self.value


class Made:
    """Each network piece as the SDK model asked for, given an id the way ARM does."""

    def __init__(self) -> None:
        self.models: dict[str, Any] = {}
        self.order: list[str] = []

    def begin_create_or_update(self, rg: str, name: str, model: Any) -> Poller:
        model.id = f"/rg/{rg}/{name}"
        for i, subnet in enumerate(getattr(model, "subnets", None) or []):
            subnet.id = f"{model.id}/subnets/{i}"
        self.models[name] = model
        self.order.append(name)
        return Poller(model)


@dataclass
class Group:
    name: str
    location: str
    tags: dict[str, str] | None


class FakeGroups:
    def __init__(self) -> None:
        self.groups: dict[str, Group] = {}
        self.deleted: list[Poller] = []
        self.delete_error: Exception | None = None

    def create_or_update(self, name: str, model: Any) -> None:
        self.groups[name] = Group(name, model.location, dict(model.tags))

    def list(self) -> list[Group]:
        return list(self.groups.values())

    def get(self, name: str) -> Group:
        if name not in self.groups:
            raise az_not_found(name)
        return self.groups[name]

    def begin_delete(self, name: str) -> Poller:
        self.groups.pop(name, None)
        poller = Poller(error=self.delete_error)
        self.deleted.append(poller)
        return poller


@dataclass
class Assignment:
    id: str
    scope: str
    principal_id: str
    role: str


class FakeAssignments:
    def __init__(self, unreplicated: int = 0, error: str | None = None) -> None:
        self.made: dict[str, Assignment] = {}
        self.unreplicated = unreplicated         # PrincipalNotFound answers before it works
        self.error = error
        self.filters: list[str] = []
        self.vanish: set[str] = set()            # deleted meanwhile by someone else

    def create(self, scope: str, name: str, params: Any) -> None:
        if self.error:
            raise az_error(self.error)
        if self.unreplicated:
            self.unreplicated -= 1
            raise az_error("PrincipalNotFound")
        assert params.principal_type == "ServicePrincipal"
        self.made[name] = Assignment(f"{scope}/ra/{name}", scope, params.principal_id,
                                     params.role_definition_id)

    def list_for_subscription(self, filter: str) -> list[Assignment]:  # noqa: A002 - the SDK's
        self.filters.append(filter)
        principal = filter.split("'")[1]
        return [a for a in self.made.values() if a.principal_id == principal]

    def delete_by_id(self, assignment_id: str) -> None:
        name = next(n for n, a in self.made.items() if a.id == assignment_id)
        del self.made[name]
        if name in self.vanish:
            raise az_not_found(assignment_id)


class FakeVms:
    def __init__(self) -> None:
        self.vms: dict[tuple[str, str], Any] = {}

    def get(self, rg: str, name: str) -> Any:
        if (rg, name) not in self.vms:
            raise az_not_found(name)
        return self.vms[(rg, name)]


class Az(AzureAccess):
    name = "azure"
    subscription = "sub-1"                          # a property of AzureProvider

    def __init__(self, account: str | None = ACCOUNT, **assignments: Any) -> None:
        from types import SimpleNamespace

        self.storage_account_id = account
        self.poll_interval = 0.25
        self.network = SimpleNamespace(network_security_groups=Made(),
                                       public_ip_addresses=Made(), virtual_networks=Made(),
                                       network_interfaces=Made())
        self.groups = FakeGroups()
        self.assignments = FakeAssignments(**assignments)
        self.vms = FakeVms()
        self.clients = {"network": self.network,
                        "resource": SimpleNamespace(resource_groups=self.groups),
                        "authorization": SimpleNamespace(role_assignments=self.assignments),
                        "compute": SimpleNamespace(virtual_machines=self.vms)}

    def _client(self, kind: str) -> Any:
        return self.clients[kind]


def launch_spec(results: str, data: str) -> LaunchSpec:
    return LaunchSpec(run_id="r1", name="n", job=JobSpec(
        engine_args=["train"], data_file=data, results_dir=results, experiment="e"))


def test_containers_are_the_runs_az_uris_first_segments_once_each() -> None:
    assert containers_of("az://res/exp/x", "az://data", None, "", "s3://b/k",
                         "az://res/other", "/local/az://x") == ["data", "res"]
    assert containers_of() == []


def test_the_identitys_scopes_are_the_runs_containers_in_the_account() -> None:
    scopes = Az()._scopes(launch_spec("az://res/exp", "az://data/prices.csv"))
    assert scopes == [f"{ACCOUNT}/blobServices/default/containers/data",
                      f"{ACCOUNT}/blobServices/default/containers/res"]
    assert Az(account=None)._scopes(launch_spec("/tmp/r", "s3://b/d.csv")) == []


def test_az_storage_without_a_storage_account_is_refused_saying_what_to_set() -> None:
    with pytest.raises(ProviderError) as info:
        Az(account=None)._scopes(launch_spec("az://res/exp", "d.csv"))
    assert str(info.value) == (
        "the run uses az:// storage: set storage_account_id under [providers.azure] in "
        "config.toml (/subscriptions/.../storageAccounts/NAME) so that the VM's identity can "
        "be limited to the run's container")


def test_the_network_lets_ssh_in_from_the_operator_only() -> None:
    azure = Az()
    nic_id = azure._create_network("dqlctl-r1", "westeurope", AZ_TAGS, "203.0.113.7/32")
    assert nic_id == "/rg/dqlctl-r1/dqlctl-r1-nic"
    assert azure.groups.groups == {"dqlctl-r1": Group("dqlctl-r1", "westeurope", AZ_TAGS)}
    nsg = azure.network.network_security_groups.models["dqlctl-r1-nsg"]
    assert (nsg.location, nsg.tags) == ("westeurope", AZ_TAGS)
    (rule,) = nsg.security_rules
    assert {k: getattr(rule, k) for k in (
        "name", "protocol", "access", "direction", "priority", "source_address_prefix",
        "source_port_range", "destination_address_prefix", "destination_port_range")} == {
        "name": "ssh-from-operator", "protocol": "Tcp", "access": "Allow",
        "direction": "Inbound", "priority": 100, "source_address_prefix": "203.0.113.7/32",
        "source_port_range": "*", "destination_address_prefix": "*",
        "destination_port_range": "22"}
    ip = azure.network.public_ip_addresses.models["dqlctl-r1-ip"]
    assert (ip.location, ip.tags, ip.sku.name, ip.public_ip_allocation_method) == (
        "westeurope", AZ_TAGS, "Standard", "Static")
    vnet = azure.network.virtual_networks.models["dqlctl-r1-vnet"]
    assert (vnet.location, vnet.tags) == ("westeurope", AZ_TAGS)
    assert vnet.address_space.address_prefixes == ["10.42.0.0/16"]
    (subnet,) = vnet.subnets
    assert (subnet.name, subnet.address_prefix) == ("default", "10.42.0.0/24")
    assert subnet.network_security_group.id == "/rg/dqlctl-r1/dqlctl-r1-nsg"
    nic = azure.network.network_interfaces.models["dqlctl-r1-nic"]
    assert (nic.location, nic.tags) == ("westeurope", AZ_TAGS)
    assert nic.network_security_group.id == "/rg/dqlctl-r1/dqlctl-r1-nsg"
    (config,) = nic.ip_configurations
    assert config.name == "ipconfig1"
    assert config.subnet.id == "/rg/dqlctl-r1/dqlctl-r1-vnet/subnets/0"
    assert config.public_ip_address.id == "/rg/dqlctl-r1/dqlctl-r1-ip"


def role(role_id: str) -> str:
    return f"/subscriptions/sub-1/providers/Microsoft.Authorization/roleDefinitions/{role_id}"


def test_the_identity_gets_blob_data_on_each_container_by_a_stable_name() -> None:
    azure = Az()
    scopes = [f"{ACCOUNT}/blobServices/default/containers/{c}" for c in ("a", "b")]
    azure._grant("r1", "p-1", scopes)
    azure._grant("r1", "p-1", scopes)                        # again: the same assignments
    assert sorted(azure.assignments.made) == sorted(
        str(uuid.uuid5(uuid.NAMESPACE_URL, f"dqlctl:r1:{s}")) for s in scopes)
    assert {(a.scope, a.principal_id, a.role) for a in azure.assignments.made.values()} == {
        (s, "p-1", role("ba92f5b4-2d11-453d-a403-e96b0029c9fe")) for s in scopes}
    assert az.BLOB_DATA_CONTRIBUTOR == "ba92f5b4-2d11-453d-a403-e96b0029c9fe"


def test_the_vm_may_delete_itself_through_vm_contributor_on_its_own_scope() -> None:
    azure = Az()
    azure._grant("r1", "p-1", ["/vm/dqlctl-r1"], role_id=az.VM_CONTRIBUTOR)
    (made,) = azure.assignments.made.values()
    assert (made.scope, made.role) == ("/vm/dqlctl-r1",
                                       role("9980e02c-c2be-4d73-94e8-173b1dc7cf3c"))


def test_a_new_identity_is_waited_for_until_it_replicates(
        monkeypatch: pytest.MonkeyPatch) -> None:
    slept: list[float] = []
    monkeypatch.setattr(az.time, "sleep", slept.append)
    azure = Az(unreplicated=19)
    azure._grant("r1", "p-1", ["/c"])
    assert len(azure.assignments.made) == 1 and slept == [0.25] * 19
    azure = Az(unreplicated=20)
    with pytest.raises(ProviderError, match="^granting /c: PrincipalNotFound$"):
        azure._grant("r1", "p-1", ["/c"])
    assert azure.assignments.made == {}


def test_another_grant_error_is_said_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    slept: list[float] = []
    monkeypatch.setattr(az.time, "sleep", slept.append)
    with pytest.raises(ProviderError, match="^granting /c: AuthorizationFailed$"):
        Az(error="AuthorizationFailed")._grant("r1", "p-1", ["/c", "/d"])
    assert slept == []


def test_the_runs_groups_are_found_by_their_tags() -> None:
    azure = Az()
    azure.groups.groups = {
        "dqlctl-r1": Group("dqlctl-r1", "westeurope", AZ_TAGS),
        "dqlctl-r2": Group("dqlctl-r2", "eastus", {**AZ_TAGS, RUN_LABEL: "r2"}),
        "mine": Group("mine", "eastus", AZ_TAGS),
        "dqlctl-untagged": Group("dqlctl-untagged", "eastus", None)}
    found = azure._groups({RUN_LABEL: "r1"})
    assert found == [Resource("azure", "resource-group", "dqlctl-r1", "westeurope",
                              {RUN_TAG: "r1", OWNER_TAG: "reg1", USER_TAG: "ann"})]
    assert [g.resource_id for g in azure._groups({RUN_LABEL: None})] == ["dqlctl-r1",
                                                                          "dqlctl-r2"]


def test_removing_access_takes_the_assignments_then_the_group() -> None:
    from types import SimpleNamespace

    azure = Az()
    azure._grant("r1", "p-1", ["/c1", "/c2"])
    azure._grant("r2", "p-2", ["/c1"])
    azure._create_network("dqlctl-r1", "westeurope", AZ_TAGS, "10.0.0.1/32")
    azure.vms.vms[("dqlctl-r1", "dqlctl-r1")] = SimpleNamespace(
        identity=SimpleNamespace(principal_id="p-1"))
    azure._remove_access("r1", "dqlctl-r1", None)           # the principal read from the VM
    assert azure.assignments.filters == ["principalId eq 'p-1'"]
    assert [a.principal_id for a in azure.assignments.made.values()] == ["p-2"]
    assert azure.groups.groups == {} and azure.groups.deleted[0].waited


def test_removing_access_with_the_principal_given_skips_the_vm() -> None:
    azure = Az()
    azure._grant("r1", "p-1", ["/c1", "/c2"])
    azure.assignments.vanish = set(azure.assignments.made)   # gone meanwhile: done
    azure._remove_access("r1", "dqlctl-r1", "p-1")
    assert azure.assignments.made == {}
    assert azure.groups.deleted == []                        # no group: nothing to delete


@pytest.mark.parametrize("vm", ["missing", "no identity"])
def test_without_an_identity_only_the_group_goes(vm: str) -> None:
    from types import SimpleNamespace

    azure = Az()
    azure._grant("r1", "p-1", ["/c1"])
    azure.groups.groups["dqlctl-r1"] = Group("dqlctl-r1", "westeurope", AZ_TAGS)
    if vm == "no identity":
        azure.vms.vms[("dqlctl-r1", "dqlctl-r1")] = SimpleNamespace(identity=None)
    azure._remove_access("r1", "dqlctl-r1", None)
    assert azure.assignments.filters == [] and len(azure.assignments.made) == 1
    assert azure.groups.groups == {}


def test_a_group_not_tagged_as_the_run_is_left_alone() -> None:
    azure = Az()
    azure.groups.groups["dqlctl-r1"] = Group("dqlctl-r1", "westeurope", {RUN_LABEL: "r9"})
    azure.groups.groups["dqlctl-r2"] = Group("dqlctl-r2", "westeurope", None)
    with pytest.raises(ProviderError) as info:
        azure._remove_access("r1", "dqlctl-r1", "p-1")
    assert str(info.value) == ("resource group dqlctl-r1 is not tagged dqlctl-run=r1; "
                               "left alone")
    with pytest.raises(ProviderError, match="not tagged"):
        azure._remove_access("r2", "dqlctl-r2", "p-1")
    assert sorted(azure.groups.groups) == ["dqlctl-r1", "dqlctl-r2"]


def test_a_group_deleted_meanwhile_is_done() -> None:
    azure = Az()
    azure.groups.groups["dqlctl-r1"] = Group("dqlctl-r1", "westeurope", AZ_TAGS)
    azure.groups.delete_error = az_not_found("dqlctl-r1")
    azure._remove_access("r1", "dqlctl-r1", "p-1")
    assert azure.groups.deleted[0].waited
