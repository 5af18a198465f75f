"""AWS EC2: spot (default) or on-demand GPU VMs through boto3, reached over SSH.

Everything a run creates is its own and tagged ``dqlctl:run=<id>``: an ed25519 key pair (private
key 0600 in dqlctl's data dir), a security group that opens port 22 to the operator's address
only, an IAM role + instance profile whose policy names only the run's bucket, and the instance.
``terminate`` removes all of it (idempotent), so nothing is left to drift or to leak; the few
extra API calls per run are the price (SkyPilot shares one group per cluster; a per-run group is
simpler to prove clean). No AWS key ever leaves the operator's machine: the VM acts through its
instance role.

boto3 is imported lazily; endpoints come from boto3's own ``AWS_ENDPOINT_URL``, so the moto server
needs no special code path. ``ssh_host_override`` ("host:port", from dqlctl's config file) maps
every instance to one SSH address: the documented hook the tests use to reach a local sshd that
stands in for the VM.

This module is the instance's lifecycle (launch across zones, describe, list, terminate); the key
pair, security group and role are ``providers/aws/access.py``, boto3 and its error shapes
``providers/aws/api.py``.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from providers.aws.access import ACCESS_KINDS, Ec2Access, buckets_of
from providers.aws.api import boto3_sdk, code, tag_filters
from providers.base import (
    RUN_TAG,
    Capability,
    CheckResult,
    ImagePush,
    Instance,
    LaunchSpec,
    NoCapacity,
    Offer,
    ProviderError,
    Resource,
    capacity_attempt,
    core_tags,
    instance_resource,
    refusals,
)
from providers.vm import DEFAULT_GPU, SshVm, catalog_regions, parse_gpu, smallest_for_gpu

# --gpu NAME:COUNT -> instance type (the smallest type with that many of that GPU)
GPU_INSTANCE_TYPES: dict[str, dict[int, str]] = {
    "T4": {1: "g4dn.xlarge", 4: "g4dn.12xlarge", 8: "g4dn.metal"},
    "A10G": {1: "g5.xlarge", 4: "g5.12xlarge", 8: "g5.48xlarge"},
    "L4": {1: "g6.xlarge", 4: "g6.12xlarge", 8: "g6.48xlarge"},
    "V100": {1: "p3.2xlarge", 4: "p3.8xlarge", 8: "p3.16xlarge"},
    "A100": {8: "p4d.24xlarge"},
    "H100": {8: "p5.48xlarge"},
}
DLAMI_PARAMETER = ("/aws/service/deeplearning/ami/x86_64/"
                   "oss-nvidia-driver-gpu-pytorch-2.5-ubuntu-22.04/latest/ami-id")
CAPACITY_ERRORS = frozenset({"InsufficientInstanceCapacity", "SpotMaxPriceTooLow",
                             "MaxSpotInstanceCountExceeded", "InstanceLimitExceeded",
                             "VcpuLimitExceeded", "Unsupported", "InsufficientCapacity"})
TAG = RUN_TAG
#: regions that are not enabled for the account: nothing of dqlctl's can be there
REGION_OFF = frozenset({"OptInRequired", "AuthFailure", "UnauthorizedOperation"})


def instance_type_for(gpu: str | None, instance_type: str | None) -> str:
    if instance_type:
        return instance_type
    return smallest_for_gpu(GPU_INSTANCE_TYPES, gpu, "AWS", "instance")[1]


class AwsProvider(Ec2Access, SshVm):
    name = "aws"
    capabilities = frozenset({Capability.SPOT, Capability.GPU, Capability.SSH,
                              Capability.CONTAINER, Capability.PRICES,
                              Capability.DIRECT_RESULTS,  # the role writes the run's bucket
                              Capability.IMAGE_REGISTRY})  # ECR (providers/aws/images.py)
    direct_scheme = "s3"

    def __init__(self, home: str | os.PathLike[str] | None = None,
                 ssh_host_override: str | None = None, remote_root: str = "dqlctl",
                 remote_python: str = "python3", ssh_user: str = "ubuntu",
                 ssh_cidr: str | None = None, image_id: str | None = None,
                 ready_timeout: float = 600.0, poll_interval: float = 2.0,
                 vm_env: dict[str, str] | None = None, host_key_wait: float = 180.0,
                 registry: str | None = None) -> None:
        self.home = Path(home) if home else Path.home() / ".local/share/dqlctl"
        self.extra_vm_env = dict(vm_env or {})  # test hook: e.g. AWS_ENDPOINT_URL for moto
        self.ssh_host_override = ssh_host_override
        self.remote_root = remote_root
        self.remote_python = remote_python
        self.ssh_user = ssh_user
        self.ssh_cidr = ssh_cidr
        self.image_id = image_id
        self.ready_timeout = ready_timeout
        self.poll_interval = poll_interval
        self.host_key_wait = host_key_wait
        self.registry = registry    # ECR's address when not the account's (providers/aws/images.py)
        self._ready_sessions: dict[str, Any] = {}

    def vm_env(self, instance: Instance) -> dict[str, str]:
        """The region for the SDK on the VM; its credentials come from the instance role."""
        return {"AWS_DEFAULT_REGION": instance.region, **self.extra_vm_env}

    # -- clients ---------------------------------------------------------------------------------

    def _session(self, region: str | None = None) -> Any:
        boto3 = boto3_sdk()
        session = boto3.Session(region_name=region) if region else boto3.Session()
        if session.get_credentials() is None:
            raise ProviderError(
                "no AWS credentials found: set AWS_PROFILE (see `aws configure`) or "
                "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY")
        if not session.region_name:
            raise ProviderError("no AWS region: pass --region or set AWS_DEFAULT_REGION")
        return session

    def _client(self, service: str, region: str | None = None) -> Any:
        return self._session(region).client(service)

    # -- verbs -----------------------------------------------------------------------------------

    def push_image(self, local_ref: str, engine: str, region: str | None = None) -> ImagePush:
        """Push the engine image to ECR (``ImageRegistry``; see providers/aws/images.py)."""
        from providers.aws.images import push_to_ecr

        return push_to_ecr(self._client("ecr", region), local_ref, engine, self.name,
                           self.registry)

    def registry_login(self, image: str, region: str) -> tuple[str, str | None] | None:
        """An image in ECR is pulled with the instance role's token (providers/image_pull.py)."""
        from providers.aws.images import ecr_region

        found = ecr_region(image, self.registry, region)
        return ("aws", found) if found else None

    def check(self) -> CheckResult:
        def probe() -> str:
            return f"account {self._client('sts').get_caller_identity().get('Account')}"

        return self._check("boto3", boto3_sdk, probe, "aws configure", "aws")

    def offers(self, spec: LaunchSpec) -> list[Offer]:
        itype = instance_type_for(spec.gpu, spec.instance_type)
        gpu, count = parse_gpu(spec.gpu)
        return [Offer(self.name, spec.region or self._session().region_name, itype, gpu,
                      count, 0, 0.0, spec.spot, None)]

    def _image(self, ec2: Any, ssm: Any, requested: str | None) -> str:
        if requested or self.image_id:
            return requested or self.image_id  # type: ignore[return-value]
        try:
            return ssm.get_parameter(Name=DLAMI_PARAMETER)["Parameter"]["Value"]
        except Exception as exc:  # noqa: BLE001 - any lookup failure: say what to pass
            raise ProviderError(f"could not find the deep-learning AMI ({code(exc) or exc}); "
                                "pass --image-id") from None

    def launch(self, spec: LaunchSpec) -> Instance:
        run_id = spec.run_id
        region = spec.region or self._session().region_name
        itype = instance_type_for(spec.gpu, spec.instance_type)
        owned = {**spec.tags, TAG: run_id}  # run id, registry id (owner), OS user
        tags = [{"Key": k, "Value": v} for k, v in owned.items()] + [
            {"Key": "Name", "Value": f"dqlctl-{spec.name}"}]
        created: dict[str, Any] = {"region": region, "run_id": run_id}
        ec2 = self._client("ec2", region)
        try:
            created["key_name"] = self._ensure_key(ec2, run_id, tags)
            created["security_group"] = self._ensure_security_group(
                ec2, run_id, tags, spec.extra.get("ssh_cidr"))
            created["instance_profile"] = self._ensure_role(spec, tags, region)
            image = self._image(ec2, self._client("ssm", region), spec.extra.get("image_id"))
            zones = [z["ZoneName"] for z in
                     ec2.describe_availability_zones()["AvailabilityZones"]
                     if z.get("State", "available") == "available"]
            tried: list[dict[str, Any]] = []
            for zone in zones or [None]:  # capacity errors fall through to the next zone
                try:
                    instance = self._run_instance(ec2, spec, itype, image, zone, tags, created)
                except Exception as exc:
                    if not code(exc):
                        raise
                    if code(exc) not in CAPACITY_ERRORS:   # no other zone or region fixes it
                        message = getattr(exc, "response", {}).get("Error", {}).get("Message")
                        raise ProviderError(f"EC2 refused {itype} in {zone or region}: "
                                            f"{code(exc)}: {message}") from None
                    tried.append(capacity_attempt(self.name, region, zone, itype, code(exc)))
                    continue
                instance.extra["attempts"] = tried
                return instance
            raise NoCapacity(f"no capacity for {itype} in {region} ({refusals(tried)})", tried)
        except BaseException:
            self._cleanup(region, run_id)
            raise

    def plan(self, spec: LaunchSpec) -> dict[str, Any]:
        """What launch would create, without creating anything (``--dry-run``)."""
        region = spec.region or self._session().region_name
        buckets = buckets_of(spec)
        return {
            "provider": self.name, "region": region,
            "instance_type": instance_type_for(spec.gpu, spec.instance_type),
            "gpu": spec.gpu or DEFAULT_GPU, "market": "spot" if spec.spot else "on-demand",
            "max_price": spec.max_price, "image": spec.extra.get("image_id") or self.image_id or DLAMI_PARAMETER,
            "security_group": f"dqlctl-{spec.run_id}: tcp 22 from "
                              f"{spec.extra.get('ssh_cidr') or self.ssh_cidr or 'your address/32'}",
            "instance_role": f"dqlctl-{spec.run_id}: s3 on "
                             f"{', '.join(buckets) if buckets else 'no bucket (deny all)'}",
            "key_pair": f"dqlctl-{spec.run_id} (ed25519, private key kept here, 0600)",
            "runtime": "native" if spec.runtime in ("auto", "native") else spec.runtime,
        }

    def _run_instance(self, ec2: Any, spec: LaunchSpec, itype: str, image: str,
                      zone: str | None, tags: list[dict[str, str]],
                      created: dict[str, Any]) -> Instance:
        kwargs: dict[str, Any] = {
            "ImageId": image, "InstanceType": itype, "MinCount": 1, "MaxCount": 1,
            "KeyName": created["key_name"], "SecurityGroupIds": [created["security_group"]],
            "IamInstanceProfile": {"Name": created["instance_profile"]},
            "TagSpecifications": [{"ResourceType": "instance", "Tags": tags},
                                  {"ResourceType": "volume", "Tags": tags}],
            # IMDSv2 only; a container's request crosses one more hop than the host's (docker's
            # bridge), so a docker run needs a hop limit of 2 to reach the instance role
            "MetadataOptions": {"HttpTokens": "required",
                                "HttpPutResponseHopLimit": 2 if spec.runtime == "docker" else 1},
            # the VM shuts itself down when its run is over (providers/remote_job.py): a guest
            # shutdown must end the bill, not leave a stopped instance and its volume
            "InstanceInitiatedShutdownBehavior": "terminate",
        }
        if zone:
            kwargs["Placement"] = {"AvailabilityZone": zone}
        if spec.spot:
            options: dict[str, Any] = {"SpotInstanceType": "one-time",
                                       "InstanceInterruptionBehavior": "terminate"}
            if spec.max_price:
                options["MaxPrice"] = f"{spec.max_price:.4f}"
            kwargs["InstanceMarketOptions"] = {"MarketType": "spot", "SpotOptions": options}
        for attempt in range(10):  # a new instance profile takes seconds to be usable
            try:
                reply = ec2.run_instances(**kwargs)
                break
            except Exception as exc:
                if code(exc) == "InvalidParameterValue" and "profile" in str(exc).lower() \
                        and attempt < 9:
                    time.sleep(2)
                    continue
                raise
        raw = reply["Instances"][0]
        return Instance(
            provider=self.name, instance_id=raw["InstanceId"], state="pending",
            region=created["region"], instance_type=itype, spot=spec.spot,
            launched_at=time.time(), tags=core_tags({**spec.tags, TAG: spec.run_id}),
            extra={**created, "zone": zone, "image": image,
                   "key_path": str(self._key_path(spec.run_id))})

    def _describe_raw(self, instance: Instance) -> dict[str, Any] | None:
        ec2 = self._client("ec2", instance.region)
        try:
            res = ec2.describe_instances(InstanceIds=[instance.instance_id])["Reservations"]
        except Exception as exc:
            if code(exc) == "InvalidInstanceID.NotFound":
                return None
            raise
        return res[0]["Instances"][0] if res and res[0]["Instances"] else None

    def describe(self, instance: Instance) -> Instance:
        raw = self._describe_raw(instance)
        if raw is None:
            instance.state = "terminated"
            return instance
        instance.state = {"shutting-down": "terminated"}.get(raw["State"]["Name"],
                                                             raw["State"]["Name"])
        instance.public_ip = raw.get("PublicIpAddress") or raw.get("PrivateIpAddress")
        return instance

    def cloud_host_keys(self, instance: Instance) -> list[str]:
        """The host keys cloud-init printed to the instance's console (GetConsoleOutput's
        ``SSH HOST KEY KEYS`` / ``FINGERPRINTS`` blocks); [] until they are there."""
        from providers.ssh import host_keys_in_console

        return host_keys_in_console(self._console_output(instance))

    def _console_output(self, instance: Instance) -> str:
        ec2 = self._client("ec2", instance.region)
        try:  # the latest output where the instance type keeps it (Nitro), else the buffered
            reply = ec2.get_console_output(InstanceId=instance.instance_id, Latest=True)
        except Exception as exc:
            if code(exc) not in ("UnsupportedOperation", "InvalidParameterValue",
                                  "InvalidParameterCombination"):
                raise
            reply = ec2.get_console_output(InstanceId=instance.instance_id)
        return reply.get("Output") or ""

    def _regions(self) -> list[str]:
        """Where dqlctl may have created something: the catalog's AWS regions and the
        session's own."""
        own = self._session().region_name
        return sorted({*catalog_regions(self.name), *([own] if own else [])})

    def list_instances(self, tag: dict[str, str | None]) -> list[Instance]:
        """Instances carrying every tag of ``tag`` (a None value matches any), in every
        region dqlctl may use."""
        out: list[Instance] = []
        for region in self._regions():
            try:
                out += self._instances(self._client("ec2", region), tag)
            except Exception as exc:
                if code(exc) not in REGION_OFF:
                    raise
        return out

    def _instances(self, ec2: Any, tag: dict[str, str | None]) -> list[Instance]:
        filters = tag_filters(tag) + [{"Name": "instance-state-name", "Values": [
            "pending", "running", "stopping", "stopped"]}]
        out = []
        for page in ec2.get_paginator("describe_instances").paginate(Filters=filters):
            for res in page["Reservations"]:
                for raw in res["Instances"]:
                    tags = {t["Key"]: t["Value"] for t in raw.get("Tags", [])}
                    out.append(Instance(self.name, raw["InstanceId"], raw["State"]["Name"],
                                        ec2.meta.region_name, raw["InstanceType"],
                                        raw.get("InstanceLifecycle") == "spot",
                                        raw.get("PublicIpAddress"), tags=tags))
        return out

    def list_resources(self, tag: dict[str, str | None]) -> list[Resource]:
        """Everything dqlctl creates that carries ``tag``: instances, security groups and key
        pairs in every region it may use, instance profiles and roles (IAM is global)."""
        out: list[Resource] = []
        for region in self._regions():
            ec2 = self._client("ec2", region)
            try:
                out += [instance_resource(i) for i in self._instances(ec2, tag)]
                out += self._region_access(ec2, region, tag)
            except Exception as exc:
                if code(exc) not in REGION_OFF:
                    raise
        return out + self._iam_access(tag)

    def delete_resource(self, resource: Resource) -> None:
        """Remove one thing ``list_resources`` found; 'not found' is done already."""
        if resource.kind == "instance":
            self.terminate(Instance.from_dict(resource.extra["instance"]))
        elif resource.kind in ACCESS_KINDS:
            self._delete_access(resource)
        else:
            raise ProviderError(f"aws: no such kind of resource: {resource.kind}")

    def terminate(self, instance: Instance) -> None:
        ec2 = self._client("ec2", instance.region)
        try:
            ec2.terminate_instances(InstanceIds=[instance.instance_id])
            ec2.get_waiter("instance_terminated").wait(
                InstanceIds=[instance.instance_id], WaiterConfig={"Delay": 2, "MaxAttempts": 300})
        except Exception as exc:
            if code(exc) != "InvalidInstanceID.NotFound":
                raise
        instance.state = "terminated"
        self._cleanup(instance.region, instance.tags.get(TAG) or instance.extra.get("run_id"))

    def _cleanup(self, region: str | None, run_id: str | None) -> None:
        """Delete what the run created besides its instance; each step tolerates 'not found'."""
        if not run_id:
            return
        self._remove_access(region, run_id)
        self._forget_key(run_id)
