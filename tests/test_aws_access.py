"""What a run's EC2 instance may be reached by and may reach (providers/aws/access.py): the
security group opens tcp:22 and only 22 to the operator's address only; the instance role may
touch the run's bucket(s) and nothing else; each piece is found again by its tags and removed,
'not found' counting as done.

The EC2 and IAM clients are an in-memory stand-in (``FakeEc2`` / ``FakeIam``) that keeps what
was created and answers AWS's error codes, so these run in milliseconds (``make mutation`` runs
them once per mutant of access.py); tests/test_aws_e2e.py does the same through moto's server.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from providers.aws import access
from providers.aws.access import Ec2Access, bucket_of, bucket_policy, buckets_of, delete_group
from providers.base import OWNER_TAG, RUN_TAG, USER_TAG, JobSpec, LaunchSpec, ProviderError

TAGS = [{"Key": RUN_TAG, "Value": "r1"}, {"Key": OWNER_TAG, "Value": "reg1"},
        {"Key": USER_TAG, "Value": "ann"}, {"Key": "Name", "Value": "dqlctl-r1"}]
CORE = {RUN_TAG: "r1", OWNER_TAG: "reg1", USER_TAG: "ann"}


class AwsError(Exception):
    def __init__(self, code: str) -> None:
        super().__init__(code)
        self.response = {"Error": {"Code": code}}


def _matches(tags: list[dict[str, str]], filters: list[dict[str, Any]]) -> bool:
    have = {t["Key"]: t["Value"] for t in tags}
    for f in filters:
        if f["Name"] == "tag-key":
            if not set(f["Values"]) & set(have):
                return False
        elif f["Name"].startswith("tag:"):
            if have.get(f["Name"][4:]) not in f["Values"]:
                return False
    return True


class FakeEc2:
    def __init__(self, default_vpc: bool = True, busy: int = 0) -> None:
        self.groups: dict[str, dict[str, Any]] = {}
        self.keys: dict[str, dict[str, Any]] = {}
        self.default_vpc = default_vpc
        self.busy = busy                    # DependencyViolation answers before a delete works
        self.calls: list[str] = []

    def import_key_pair(self, KeyName: str, PublicKeyMaterial: bytes,
                        TagSpecifications: list[dict[str, Any]]) -> None:
        assert TagSpecifications[0]["ResourceType"] == "key-pair"
        self.keys[KeyName] = {"KeyName": KeyName, "material": PublicKeyMaterial,
                              "Tags": TagSpecifications[0]["Tags"]}

    def describe_vpcs(self, Filters: list[dict[str, Any]]) -> dict[str, Any]:
        assert Filters == [{"Name": "isDefault", "Values": ["true"]}]
        return {"Vpcs": [{"VpcId": "vpc-default"}] if self.default_vpc else []}

    def create_security_group(self, GroupName: str, Description: str,
                              TagSpecifications: list[dict[str, Any]],
                              VpcId: str | None = None) -> dict[str, str]:
        assert TagSpecifications[0]["ResourceType"] == "security-group"
        gid = f"sg-{len(self.groups) + 1}"
        self.groups[gid] = {"GroupId": gid, "GroupName": GroupName, "Description": Description,
                            "VpcId": VpcId, "Tags": TagSpecifications[0]["Tags"],
                            "IpPermissions": []}
        return {"GroupId": gid}

    def authorize_security_group_ingress(self, GroupId: str,
                                         IpPermissions: list[dict[str, Any]]) -> None:
        self.groups[GroupId]["IpPermissions"] += IpPermissions

    def describe_security_groups(self, Filters: list[dict[str, Any]]) -> dict[str, Any]:
        return {"SecurityGroups": [g for g in self.groups.values()
                                   if _matches(g["Tags"], Filters)]}

    def describe_key_pairs(self, Filters: list[dict[str, Any]]) -> dict[str, Any]:
        return {"KeyPairs": [k for k in self.keys.values() if _matches(k["Tags"], Filters)]}

    def delete_security_group(self, GroupId: str) -> None:
        self.calls.append(f"delete_security_group {GroupId}")
        if GroupId not in self.groups:
            raise AwsError("InvalidGroup.NotFound")
        if self.busy:
            self.busy -= 1
            raise AwsError("DependencyViolation")
        del self.groups[GroupId]

    def delete_key_pair(self, KeyName: str) -> None:
        self.calls.append(f"delete_key_pair {KeyName}")
        if KeyName not in self.keys:
            raise AwsError("InvalidKeyPair.NotFound")
        del self.keys[KeyName]


class _Pages:
    def __init__(self, pages: list[dict[str, Any]]) -> None:
        self.pages = pages

    def paginate(self) -> list[dict[str, Any]]:
        return self.pages


class FakeIam:
    def __init__(self) -> None:
        self.roles: dict[str, dict[str, Any]] = {}
        self.profiles: dict[str, dict[str, Any]] = {}
        self.calls: list[str] = []

    def _role(self, name: str) -> dict[str, Any]:
        if name not in self.roles:
            raise AwsError("NoSuchEntity")
        return self.roles[name]

    def _profile(self, name: str) -> dict[str, Any]:
        if name not in self.profiles:
            raise AwsError("NoSuchEntity")
        return self.profiles[name]

    def create_role(self, RoleName: str, AssumeRolePolicyDocument: str,
                    Tags: list[dict[str, str]], Description: str) -> None:
        self.roles[RoleName] = {"RoleName": RoleName, "Tags": Tags, "Description": Description,
                                "trust": json.loads(AssumeRolePolicyDocument), "inline": {},
                                "attached": []}

    def put_role_policy(self, RoleName: str, PolicyName: str, PolicyDocument: str) -> None:
        self._role(RoleName)["inline"][PolicyName] = json.loads(PolicyDocument)

    def create_instance_profile(self, InstanceProfileName: str, Tags: list[dict[str, str]]) -> None:
        self.profiles[InstanceProfileName] = {"InstanceProfileName": InstanceProfileName,
                                              "Tags": Tags, "Roles": []}

    def add_role_to_instance_profile(self, InstanceProfileName: str, RoleName: str) -> None:
        self._profile(InstanceProfileName)["Roles"].append({"RoleName": self._role(RoleName)
                                                            ["RoleName"]})

    def get_paginator(self, name: str) -> _Pages:
        """Pages of three items (the list calls carry no tags)."""
        if name == "list_roles":
            names, key, item = list(self.roles), "Roles", "RoleName"
        else:
            assert name == "list_instance_profiles"
            names, key, item = list(self.profiles), "InstanceProfiles", "InstanceProfileName"
        return _Pages([{key: [{item: n} for n in names[i:i + 3]]}
                       for i in range(0, len(names), 3)])

    def get_role(self, RoleName: str) -> dict[str, Any]:
        return {"Role": {"RoleName": RoleName, "Tags": self._role(RoleName)["Tags"]}}

    def get_instance_profile(self, InstanceProfileName: str) -> dict[str, Any]:
        p = self._profile(InstanceProfileName)
        return {"InstanceProfile": {"InstanceProfileName": InstanceProfileName,
                                    "Tags": p["Tags"], "Roles": list(p["Roles"])}}

    def remove_role_from_instance_profile(self, InstanceProfileName: str, RoleName: str) -> None:
        self.calls.append(f"remove_role_from_instance_profile {InstanceProfileName} {RoleName}")
        p = self._profile(InstanceProfileName)
        before = len(p["Roles"])
        p["Roles"] = [r for r in p["Roles"] if r["RoleName"] != RoleName]
        if len(p["Roles"]) == before:
            raise AwsError("NoSuchEntity")

    def delete_instance_profile(self, InstanceProfileName: str) -> None:
        self.calls.append(f"delete_instance_profile {InstanceProfileName}")
        if self._profile(InstanceProfileName)["Roles"]:
            raise AwsError("DeleteConflict")
        del self.profiles[InstanceProfileName]

    def list_instance_profiles_for_role(self, RoleName: str) -> dict[str, Any]:
        self._role(RoleName)
        return {"InstanceProfiles": [{"InstanceProfileName": n} for n, p in
                                     self.profiles.items()
                                     if any(r["RoleName"] == RoleName for r in p["Roles"])]}

    def list_role_policies(self, RoleName: str) -> dict[str, Any]:
        return {"PolicyNames": list(self._role(RoleName)["inline"])}

    def list_attached_role_policies(self, RoleName: str) -> dict[str, Any]:
        return {"AttachedPolicies": [{"PolicyArn": a} for a in self._role(RoleName)["attached"]]}

    def delete_role_policy(self, RoleName: str, PolicyName: str) -> None:
        self.calls.append(f"delete_role_policy {RoleName} {PolicyName}")
        inline = self._role(RoleName)["inline"]
        if PolicyName not in inline:
            raise AwsError("NoSuchEntity")
        del inline[PolicyName]

    def detach_role_policy(self, RoleName: str, PolicyArn: str) -> None:
        self.calls.append(f"detach_role_policy {RoleName} {PolicyArn}")
        self._role(RoleName)["attached"].remove(PolicyArn)

    def delete_role(self, RoleName: str) -> None:
        self.calls.append(f"delete_role {RoleName}")
        role = self._role(RoleName)
        if role["inline"] or role["attached"] or any(
                r["RoleName"] == RoleName for p in self.profiles.values() for r in p["Roles"]):
            raise AwsError("DeleteConflict")
        del self.roles[RoleName]


class Access(Ec2Access):
    """The mixin on a stand-in provider: the fakes for clients, a fixed operator address."""

    name = "aws"

    def __init__(self, ec2: FakeEc2 | None = None, iam: FakeIam | None = None) -> None:
        self.ec2 = ec2 or FakeEc2()
        self.iam = iam or FakeIam()
        self.clients: list[tuple[str, str | None]] = []

    def _client(self, service: str, region: str | None = None) -> Any:
        self.clients.append((service, region))
        return {"ec2": self.ec2, "iam": self.iam}[service]

    def _new_key(self, run_id: str) -> str:
        return f"ssh-ed25519 AAAA {run_id}"

    def _operator_cidr(self, cidr: str | None = None) -> str:
        return cidr or "203.0.113.7/32"


def spec(results: str = "s3://res-bkt/runs", data: str = "s3://data-bkt/x.csv") -> LaunchSpec:
    job = JobSpec(engine_args=["train"], data_file=data, results_dir=results, experiment="e")
    return LaunchSpec(run_id="r1", name="n", job=job, region="eu-west-1")


def test_the_security_group_opens_port_22_only_and_only_to_the_operator() -> None:
    """One ingress rule: tcp, from port 22 to port 22, from the operator's /32. A ToPort of
    65535 would open every port above 22 to that address; a wider CIDR, to everyone."""
    a = Access()
    gid = a._ensure_security_group(a.ec2, "r1", TAGS)
    group = a.ec2.groups[gid]
    assert group["IpPermissions"] == [{
        "IpProtocol": "tcp", "FromPort": 22, "ToPort": 22,
        "IpRanges": [{"CidrIp": "203.0.113.7/32", "Description": "dqlctl operator"}]}]
    assert (group["GroupName"], group["VpcId"], group["Tags"]) == ("dqlctl-r1", "vpc-default",
                                                                   TAGS)
    assert group["Description"] == "dqlctl run r1: ssh from operator"
    # --ssh-cidr: that block, still port 22 only
    gid = a._ensure_security_group(a.ec2, "r2", TAGS, cidr="198.51.100.0/24")
    assert a.ec2.groups[gid]["IpPermissions"][0]["IpRanges"][0]["CidrIp"] == "198.51.100.0/24"
    assert a.ec2.groups[gid]["IpPermissions"][0]["ToPort"] == 22
    # an account without a default VPC: the group is made without a VpcId (EC2-classic style)
    b = Access(FakeEc2(default_vpc=False))
    assert b.ec2.groups[b._ensure_security_group(b.ec2, "r1", TAGS)]["VpcId"] is None


def test_the_key_pair_is_the_runs_own_and_tagged() -> None:
    a = Access()
    assert a._ensure_key(a.ec2, "r1", TAGS) == "dqlctl-r1"
    assert a.ec2.keys["dqlctl-r1"]["material"] == b"ssh-ed25519 AAAA r1"
    assert a.ec2.keys["dqlctl-r1"]["Tags"] == TAGS


def test_the_bucket_policy_names_the_runs_buckets_and_nothing_else() -> None:
    assert bucket_of("s3://bkt/a/b") == "bkt" and bucket_of("s3://bkt") == "bkt"
    assert bucket_of("gs://bkt/a") is None and bucket_of("/local/x") is None
    assert bucket_of(None) is None and bucket_of("") is None
    assert buckets_of(spec()) == ["data-bkt", "res-bkt"]
    assert buckets_of(spec("s3://same/r", "s3://same/d.csv")) == ["same"]
    assert buckets_of(spec("/tmp/res", "data.csv")) == []
    assert bucket_policy(["a", "b"]) == {"Version": "2012-10-17", "Statement": [{
        "Effect": "Allow",
        "Action": ["s3:GetObject", "s3:PutObject", "s3:DeleteObject", "s3:ListBucket",
                   "s3:AbortMultipartUpload"],
        "Resource": ["arn:aws:s3:::a", "arn:aws:s3:::a/*", "arn:aws:s3:::b",
                     "arn:aws:s3:::b/*"]}]}
    # no bucket: a statement that denies everything (a policy must have one)
    assert bucket_policy([]) == {"Version": "2012-10-17", "Statement": [
        {"Effect": "Deny", "Action": "s3:*", "Resource": "*"}]}


def test_the_role_may_be_assumed_by_ec2_only_and_holds_the_bucket_policy() -> None:
    a = Access()
    assert a._ensure_role(spec(), TAGS) == "dqlctl-r1"
    assert a.clients == [("iam", "eu-west-1")]
    role = a.iam.roles["dqlctl-r1"]
    assert role["trust"] == {"Version": "2012-10-17", "Statement": [{
        "Effect": "Allow", "Principal": {"Service": "ec2.amazonaws.com"},
        "Action": "sts:AssumeRole"}]}
    assert role["inline"] == {"run-bucket": bucket_policy(["data-bkt", "res-bkt"])}
    assert (role["Tags"], role["Description"]) == (TAGS, "dqlctl run r1")
    profile = a.iam.profiles["dqlctl-r1"]
    assert profile["Roles"] == [{"RoleName": "dqlctl-r1"}] and profile["Tags"] == TAGS


def _made(a: Access, run_id: str, tags: list[dict[str, str]]) -> None:
    a._ensure_key(a.ec2, run_id, tags)
    a._ensure_security_group(a.ec2, run_id, tags)
    a._ensure_role(LaunchSpec(run_id=run_id, name="n", job=spec().job, region="eu-west-1"), tags)


def test_what_a_run_made_is_found_again_by_its_tags() -> None:
    a = Access()
    _made(a, "r1", TAGS)
    theirs = [{"Key": RUN_TAG, "Value": "r9"}, {"Key": OWNER_TAG, "Value": "other"}]
    _made(a, "r9", theirs)
    # carries the tags, not dqlctl's name; listed first: the ones after it still count
    a.iam.roles = {"not-ours": {"RoleName": "not-ours", "Tags": TAGS, "inline": {},
                                "attached": []}, **a.iam.roles}
    a.iam.profiles = {"other": {"InstanceProfileName": "other", "Tags": TAGS, "Roles": []},
                      **a.iam.profiles}
    found = a._region_access(a.ec2, "eu-west-1", {RUN_TAG: "r1"})
    assert [(r.provider, r.kind, r.resource_id, r.region, r.tags, r.extra) for r in found] == [
        ("aws", "security-group", "sg-1", "eu-west-1", CORE, {"name": "dqlctl-r1"}),
        ("aws", "key-pair", "dqlctl-r1", "eu-west-1", CORE, {})]
    mine = a._iam_access({OWNER_TAG: "reg1"})
    assert [(r.provider, r.kind, r.resource_id, r.region, r.tags) for r in mine] == [
        ("aws", "instance-profile", "dqlctl-r1", None, CORE),
        ("aws", "role", "dqlctl-r1", None, CORE)]
    everyone = a._iam_access({RUN_TAG: None})
    assert sorted((r.kind, r.resource_id) for r in everyone) == [
        ("instance-profile", "dqlctl-r1"), ("instance-profile", "dqlctl-r9"),
        ("role", "dqlctl-r1"), ("role", "dqlctl-r9")]
    assert [r.resource_id for r in a._region_access(a.ec2, "eu-west-1", {RUN_TAG: None})] == [
        "sg-1", "sg-2", "dqlctl-r1", "dqlctl-r9"]


def test_a_role_deleted_between_list_and_get_is_skipped() -> None:
    a = Access()
    _made(a, "r0", TAGS)                          # listed first, gone by the time it is read
    _made(a, "r1", TAGS)
    real_get = a.iam.get_role

    def vanishing(RoleName: str) -> dict[str, Any]:
        if RoleName == "dqlctl-r0":
            del a.iam.roles[RoleName]
        return real_get(RoleName)

    a.iam.get_role = vanishing  # type: ignore[method-assign]
    assert [(r.kind, r.resource_id) for r in a._iam_access({RUN_TAG: "r1"})] == [
        ("instance-profile", "dqlctl-r0"), ("instance-profile", "dqlctl-r1"),
        ("role", "dqlctl-r1")]

    def denied(RoleName: str) -> dict[str, Any]:
        raise AwsError("AccessDenied")

    a.iam.get_role = denied  # type: ignore[method-assign]
    a.iam.roles["dqlctl-r2"] = {"RoleName": "dqlctl-r2", "Tags": TAGS}
    with pytest.raises(AwsError, match="AccessDenied"):
        a._iam_access({RUN_TAG: "r1"})


def test_each_kind_is_removed_and_not_found_is_done() -> None:
    a = Access()
    _made(a, "r1", TAGS)
    a.iam.roles["dqlctl-r1"]["attached"].append("arn:aws:iam::aws:policy/Extra")
    found = (a._region_access(a.ec2, "eu-west-1", {RUN_TAG: "r1"})
             + a._iam_access({RUN_TAG: "r1"}))
    for resource in found[::-1]:                  # the role before its profile: still works
        a._delete_access(resource)
    assert (a.ec2.groups, a.ec2.keys, a.iam.roles, a.iam.profiles) == ({}, {}, {}, {})
    assert ("ec2", "eu-west-1") in a.clients
    for resource in found:                        # a second time: all gone, no error
        a._delete_access(resource)
    with pytest.raises(ProviderError, match="aws: no such kind of resource: bucket"):
        a._delete_access(type(found[0])("aws", "bucket", "b"))


def test_a_profile_is_removed_before_its_role() -> None:
    a = Access()
    _made(a, "r1", TAGS)
    profile, role = a._iam_access({RUN_TAG: "r1"})
    a._delete_access(profile)
    assert "dqlctl-r1" not in a.iam.profiles and "dqlctl-r1" in a.iam.roles
    a._delete_access(role)
    assert a.iam.roles == {}


def test_iam_errors_other_than_not_found_are_raised() -> None:
    a = Access()
    _made(a, "r1", TAGS)
    profile, role = a._iam_access({RUN_TAG: "r1"})

    def denied(**_: Any) -> dict[str, Any]:
        raise AwsError("AccessDenied")

    a.iam.get_instance_profile = denied  # type: ignore[method-assign]
    with pytest.raises(AwsError, match="AccessDenied"):
        a._delete_access(profile)
    a.iam.list_instance_profiles_for_role = denied  # type: ignore[method-assign]
    with pytest.raises(AwsError, match="AccessDenied"):
        a._delete_access(role)
    assert "dqlctl-r1" in a.iam.roles


def test_remove_access_deletes_everything_the_run_made_and_only_that() -> None:
    a = Access()
    _made(a, "r1", TAGS)
    _made(a, "r2", [{"Key": RUN_TAG, "Value": "r2"}])
    a.clients.clear()
    a._remove_access("eu-west-1", "r1")
    assert list(a.ec2.keys) == ["dqlctl-r2"] and list(a.iam.roles) == ["dqlctl-r2"]
    assert list(a.iam.profiles) == ["dqlctl-r2"]
    assert [g["GroupName"] for g in a.ec2.groups.values()] == ["dqlctl-r2"]
    assert a.clients == [("ec2", "eu-west-1"), ("iam", "eu-west-1")]
    a._remove_access("eu-west-1", "r1")            # again: everything already gone, no error
    assert list(a.ec2.keys) == ["dqlctl-r2"]


def test_a_group_in_use_is_deleted_once_the_instance_lets_go(
        monkeypatch: pytest.MonkeyPatch) -> None:
    slept: list[float] = []
    monkeypatch.setattr(access.time, "sleep", slept.append)
    ec2 = FakeEc2(busy=3)
    gid = ec2.create_security_group(GroupName="g", Description="d", TagSpecifications=[
        {"ResourceType": "security-group", "Tags": TAGS}])["GroupId"]
    delete_group(ec2, gid)
    assert ec2.groups == {} and slept == [2, 2, 2]
    delete_group(ec2, gid)                          # gone: fine
    # still in use after 30 tries: the error is raised, not swallowed
    slept.clear()
    ec2 = FakeEc2(busy=100)
    gid = ec2.create_security_group(GroupName="g", Description="d", TagSpecifications=[
        {"ResourceType": "security-group", "Tags": TAGS}])["GroupId"]
    with pytest.raises(AwsError, match="DependencyViolation"):
        delete_group(ec2, gid)
    assert len(slept) == 29 and ec2.calls.count(f"delete_security_group {gid}") == 30

    def broken(GroupId: str) -> None:
        raise AwsError("UnauthorizedOperation")

    ec2.delete_security_group = broken  # type: ignore[method-assign]
    slept.clear()
    with pytest.raises(AwsError, match="UnauthorizedOperation"):
        delete_group(ec2, gid)
    assert slept == []
