"""Who may reach a run's EC2 instance and what the instance may reach: its key pair, its
security group (tcp:22 from the operator's address only) and its IAM role + instance profile,
whose one inline policy names the run's bucket(s) and nothing else. Each is created per run,
tagged with the run's id, found again by tag (orphans) and removed with 'not found' as done.
A mixin of ``AwsProvider``: it uses the provider's clients and SSH key."""

from __future__ import annotations

import json
import time
from typing import TYPE_CHECKING, Any

from providers.aws.api import code, quietly, tag_filters, tags_of
from providers.base import RUN_TAG, LaunchSpec, ProviderError, Resource, core_tags
from providers.vm import has_tags

#: what the access half owns, as ``Resource.kind``
ACCESS_KINDS = ("security-group", "key-pair", "instance-profile", "role")


def bucket_of(uri: str | None) -> str | None:
    if uri and uri.startswith("s3://"):
        return uri[len("s3://"):].split("/", 1)[0]
    return None


def buckets_of(spec: LaunchSpec) -> list[str]:
    """The run's bucket(s): those of its results and data URIs."""
    return sorted({b for b in (bucket_of(spec.job.results_dir),
                               bucket_of(spec.job.data_file)) if b})


def bucket_policy(buckets: list[str]) -> dict[str, Any]:
    """The instance role's only permissions: the run's bucket(s), nothing else."""
    resources = [r for b in buckets for r in (f"arn:aws:s3:::{b}", f"arn:aws:s3:::{b}/*")]
    statements: list[dict[str, Any]] = []
    if resources:
        statements.append({"Effect": "Allow", "Action": ["s3:GetObject", "s3:PutObject",
                                                        "s3:DeleteObject", "s3:ListBucket",
                                                        "s3:AbortMultipartUpload"],
                           "Resource": resources})
    else:  # a policy needs a statement: deny everything
        statements.append({"Effect": "Deny", "Action": "s3:*", "Resource": "*"})
    return {"Version": "2012-10-17", "Statement": statements}


def image_pull_statements(spec: LaunchSpec, registry: str | None,
                          region: str | None = None) -> list[dict[str, Any]]:
    """A ``--runtime docker`` run whose image is in ECR may pull that repository (and get the
    registry token that takes), nothing else of ECR; none for any other run. ``region``: the
    instance's (that of an image at the configured ``registry`` address)."""
    from providers.aws.images import ECR_HOST, ecr_region
    from providers.containers import split_reference

    if spec.runtime != "docker" or not spec.image:
        return []
    found = ecr_region(spec.image, registry, region or spec.region or "*")
    if found is None:
        return []
    host, repo, _, _ = split_reference(spec.image)
    account = host.split(".", 1)[0] if ECR_HOST.match(host) else "*"
    return [{"Effect": "Allow", "Action": "ecr:GetAuthorizationToken", "Resource": "*"},
            {"Effect": "Allow", "Action": ["ecr:BatchGetImage", "ecr:GetDownloadUrlForLayer",
                                           "ecr:BatchCheckLayerAvailability"],
             "Resource": f"arn:aws:ecr:{found}:{account}:repository/{repo}"}]


def delete_group(ec2: Any, group_id: str) -> None:
    """Delete a security group, waiting while an instance still uses it; gone is fine."""
    for attempt in range(30):  # the group stays in use until the instance is gone
        try:
            quietly(ec2.delete_security_group, GroupId=group_id)
            return
        except Exception as exc:
            if code(exc) != "DependencyViolation" or attempt == 29:
                raise
            time.sleep(2)


class Ec2Access:
    """Key pair, security group, role and instance profile (see the module's docstring)."""

    name: str
    registry: str | None = None   # ECR's configured address (AwsProvider's)

    if TYPE_CHECKING:  # AwsProvider's (and SshVm's), declared for the type checker only
        def _client(self, service: str, region: str | None = None) -> Any: ...
        def _new_key(self, run_id: str) -> str: ...
        def _operator_cidr(self, cidr: str | None = None) -> str: ...

    def _ensure_key(self, ec2: Any, run_id: str, tags: list[dict[str, str]]) -> str:
        name = f"dqlctl-{run_id}"
        ec2.import_key_pair(KeyName=name, PublicKeyMaterial=self._new_key(run_id).encode(),
                            TagSpecifications=[{"ResourceType": "key-pair", "Tags": tags}])
        return name

    def _ensure_security_group(self, ec2: Any, run_id: str, tags: list[dict[str, str]],
                               cidr: str | None = None) -> str:
        cidr = self._operator_cidr(cidr)
        vpcs = ec2.describe_vpcs(Filters=[{"Name": "isDefault", "Values": ["true"]}])["Vpcs"]
        kwargs = {"VpcId": vpcs[0]["VpcId"]} if vpcs else {}
        group = ec2.create_security_group(
            GroupName=f"dqlctl-{run_id}", Description=f"dqlctl run {run_id}: ssh from operator",
            TagSpecifications=[{"ResourceType": "security-group", "Tags": tags}], **kwargs)
        gid = group["GroupId"]
        ec2.authorize_security_group_ingress(GroupId=gid, IpPermissions=[{
            "IpProtocol": "tcp", "FromPort": 22, "ToPort": 22,
            "IpRanges": [{"CidrIp": cidr, "Description": "dqlctl operator"}]}])
        return gid

    def _ensure_role(self, spec: LaunchSpec, tags: list[dict[str, str]],
                     region: str | None = None) -> str:
        iam = self._client("iam", spec.region)
        name = f"dqlctl-{spec.run_id}"
        trust = {"Version": "2012-10-17", "Statement": [{
            "Effect": "Allow", "Principal": {"Service": "ec2.amazonaws.com"},
            "Action": "sts:AssumeRole"}]}
        iam.create_role(RoleName=name, AssumeRolePolicyDocument=json.dumps(trust), Tags=tags,
                        Description=f"dqlctl run {spec.run_id}")
        policy = bucket_policy(buckets_of(spec))
        policy["Statement"] += image_pull_statements(spec, self.registry, region)
        iam.put_role_policy(RoleName=name, PolicyName="run-bucket",
                            PolicyDocument=json.dumps(policy))
        iam.create_instance_profile(InstanceProfileName=name, Tags=tags)
        iam.add_role_to_instance_profile(InstanceProfileName=name, RoleName=name)
        return name

    # -- found again by tag (orphans) -------------------------------------------------------------

    def _region_access(self, ec2: Any, region: str,
                       tag: dict[str, str | None]) -> list[Resource]:
        """The security groups and key pairs in ``region`` that carry ``tag``."""
        out = []
        for group in ec2.describe_security_groups(Filters=tag_filters(tag))["SecurityGroups"]:
            out.append(Resource(self.name, "security-group", group["GroupId"], region,
                                core_tags(tags_of(group)), {"name": group["GroupName"]}))
        for pair in ec2.describe_key_pairs(Filters=tag_filters(tag))["KeyPairs"]:
            out.append(Resource(self.name, "key-pair", pair["KeyName"], region,
                                core_tags(tags_of(pair))))
        return out

    def _iam_access(self, tag: dict[str, str | None]) -> list[Resource]:
        """The instance profiles and roles (IAM is global) that carry ``tag``."""
        out: list[Resource] = []
        iam = self._client("iam")
        for kind, lister, key, getter in (
                ("instance-profile", "list_instance_profiles", "InstanceProfile",
                 "get_instance_profile"),
                ("role", "list_roles", "Role", "get_role")):
            for page in iam.get_paginator(lister).paginate():
                for item in page[f"{key}s"]:
                    name = item[f"{key}Name"]
                    if not name.startswith("dqlctl-"):
                        continue
                    try:  # the list calls do not return tags
                        tags = tags_of(getattr(iam, getter)(**{f"{key}Name": name})[key])
                    except Exception as exc:
                        if code(exc) != "NoSuchEntity":
                            raise
                        continue
                    if has_tags(tags, tag):
                        out.append(Resource(self.name, kind, name, None, core_tags(tags)))
        return out

    # -- removed ----------------------------------------------------------------------------------

    def _delete_access(self, resource: Resource) -> None:
        """Remove one of ``ACCESS_KINDS`` that ``list_resources`` found; 'not found' is done."""
        kind, rid = resource.kind, resource.resource_id
        if kind in ("security-group", "key-pair"):
            ec2 = self._client("ec2", resource.region)
            if kind == "key-pair":
                quietly(ec2.delete_key_pair, KeyName=rid)
            else:
                delete_group(ec2, rid)
            return
        iam = self._client("iam")
        if kind == "instance-profile":
            try:
                roles = iam.get_instance_profile(InstanceProfileName=rid)[
                    "InstanceProfile"]["Roles"]
            except Exception as exc:
                if code(exc) == "NoSuchEntity":
                    return
                raise
            for role in roles:
                quietly(iam.remove_role_from_instance_profile, InstanceProfileName=rid,
                        RoleName=role["RoleName"])
            quietly(iam.delete_instance_profile, InstanceProfileName=rid)
        elif kind == "role":
            try:
                profiles = iam.list_instance_profiles_for_role(RoleName=rid)["InstanceProfiles"]
                policies = iam.list_role_policies(RoleName=rid)["PolicyNames"]
                attached = iam.list_attached_role_policies(RoleName=rid)["AttachedPolicies"]
            except Exception as exc:
                if code(exc) == "NoSuchEntity":
                    return
                raise
            for prof in profiles:
                quietly(iam.remove_role_from_instance_profile,
                        InstanceProfileName=prof["InstanceProfileName"], RoleName=rid)
            for policy in policies:
                quietly(iam.delete_role_policy, RoleName=rid, PolicyName=policy)
            for policy in attached:
                quietly(iam.detach_role_policy, RoleName=rid, PolicyArn=policy["PolicyArn"])
            quietly(iam.delete_role, RoleName=rid)
        else:
            raise ProviderError(f"aws: no such kind of resource: {kind}")

    def _remove_access(self, region: str | None, run_id: str) -> None:
        """Delete the run's security group(s), key pair, instance profile and role; each step
        tolerates 'not found'."""
        name = f"dqlctl-{run_id}"
        ec2 = self._client("ec2", region)
        iam = self._client("iam", region)

        groups = ec2.describe_security_groups(
            Filters=[{"Name": f"tag:{RUN_TAG}", "Values": [run_id]}])["SecurityGroups"]
        for group in groups:
            delete_group(ec2, group["GroupId"])
        quietly(ec2.delete_key_pair, KeyName=name)
        quietly(iam.remove_role_from_instance_profile, InstanceProfileName=name, RoleName=name)
        quietly(iam.delete_instance_profile, InstanceProfileName=name)
        quietly(iam.delete_role_policy, RoleName=name, PolicyName="run-bucket")
        quietly(iam.delete_role, RoleName=name)
