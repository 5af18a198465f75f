"""AWS Batch (``aws-batch``): each run one Batch job, on a managed SPOT compute environment,
with the seed guide's ``DQL-Training`` job definition. Sweeps use it as their AWS Batch backend:
every member an ordinary run (``ps``, ``logs``, ``show``, ``down`` work on it), so Batch, not
dqlctl, queues them and gets them machines.

The "instance" of a run is its Batch job (the instance id is the job id): ``launch`` makes sure
the reusable infrastructure is there, ``start_job`` submits the job, ``describe`` and ``job()``
read ``describe_jobs`` and CloudWatch Logs (``providers/aws/batch_jobs.py``), ``terminate`` is
``terminate_job``. No SSH: nothing of dqlctl runs on the host.

Created on first use, found again by name and reused (tagged ``dqlctl:run`` with the run that
created it, and the owner and user tags):

* per instance type (from ``--gpu``/``--instance-type`` as on ``aws``: the catalog's types): a
  MANAGED SPOT compute environment ``dqlctl-spot-<type>`` (0 vCPUs when idle, so it costs
  nothing between runs) and a job queue of the same name;
* the ``DQL-Training`` job definition: the guide's command (``full-workflow --agent_type
  Ref::agent_type --data_file Ref::data_file --experiment_name Ref::experiment_name --episodes
  Ref::episodes``) plus what a run needs (``--results_dir Ref::results_dir --events_stdout
  --resume``: events on the log stream, and an attempt Batch retries resumes from the bucket's
  checkpoint), the engine image, the run's bucket role as job role, a retry strategy that
  retries when the host went (``Host EC2*``: a spot interruption) and exits otherwise. A new
  revision only when the image, role, secrets or GPU count differ from an active one's;
* the job role ``dqlctl-batch-<hash of the buckets>``: the run's bucket(s) and the owner's SSM
  parameters under ``/dqlctl/<owner>/``, nothing else (also the execution role that reads the
  secrets); the hosts' instance role and profile ``dqlctl-batch-instance``, Batch's service role
  ``dqlctl-batch-service`` and a security group ``dqlctl-batch`` without ingress in the
  default VPC.

Each member's parameters are its own (agent type, data, experiment, episodes, results place);
a member with engine flags beyond the guide's (a seed, ``--skip_tuning``, grid settings, the
``train`` command) gets a command override: the job definition's command with its own flags
after (Batch fills the ``Ref::`` placeholders of the override from the same parameters).

Results go straight to the bucket: the run's ``--results-dir`` when it is an ``s3://`` URI,
else ``<bucket>/<run id>`` (``[providers.aws-batch] bucket``), which ``collect`` then copies to
the run's folder here (so a sweep's comparison reads them). A local data file is uploaded next
to the results first. Secrets (the Telegram token) never go into the job definition's
``environment``: each is an SSM SecureString parameter, named in the container's ``secrets``.

``job_env`` (config) adds plain settings to every job's environment: the stand-ins' endpoint
(``AWS_ENDPOINT_URL``) and credentials endpoint (``AWS_CONTAINER_CREDENTIALS_FULL_URI``), as
``[providers.aws] vm_env`` does for VMs; real Batch gives the job role's credentials itself.
A run is priced at its instance type's spot price from RUNNING (submission) on: an upper bound,
since a job waiting in the queue costs nothing.
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path
from typing import Any, NoReturn

from providers.aws.access import Ec2Access, bucket_of, bucket_policy, delete_group
from providers.aws.api import boto3_sdk, code, quietly, tags_of
from providers.aws.batch_jobs import (
    ACTIVE,
    LOG_GROUP,
    STATES,
    UNSUBMITTED,
    BatchJobHandle,
    describe_job,
)
from providers.base import (
    OWNER_TAG,
    RUN_TAG,
    Capability,
    CheckResult,
    Instance,
    LaunchSpec,
    ProviderError,
    Resource,
    core_tags,
    instance_resource,
)
from providers.vm import has_tags, parse_gpu

JOB_DEFINITION = "DQL-Training"
#: the seed guide's command, as its job definition has it
GUIDE_COMMAND = ["full-workflow", "--agent_type", "Ref::agent_type", "--data_file",
                 "Ref::data_file", "--experiment_name", "Ref::experiment_name", "--episodes",
                 "Ref::episodes"]
#: what a run needs besides (see the module docstring)
RUN_FLAGS = ["--results_dir", "Ref::results_dir", "--events_stdout", "--resume"]
#: engine flags that are the guide's parameters
GUIDE_PARAMETERS = {"--agent_type": "agent_type", "--experiment_name": "experiment_name",
                    "--episodes": "episodes"}
RETRY_STRATEGY = {"attempts": 3, "evaluateOnExit": [
    {"onStatusReason": "Host EC2*", "action": "RETRY"},
    {"onReason": "*", "action": "EXIT"}]}
#: the repository ``dqlctl image push --provider aws`` pushes to (providers/aws/images.py)
IMAGE_REPOSITORY = "dqlctl-engine"
SECRET_ROOT = "/dqlctl"
INSTANCE_ROLE = "dqlctl-batch-instance"
SERVICE_ROLE = "dqlctl-batch-service"
SECURITY_GROUP = "dqlctl-batch"
ROLE_PREFIX = "dqlctl-batch-"
MANAGED = "arn:aws:iam::aws:policy/service-role/"
#: the run that made a shared security group, role or instance profile (and the tag of the
#: compute environment's hosts): the ``aws`` provider lists those kinds by ``RUN_TAG``, and
#: its ``gc`` would take them from under a running queue (reported here as ``RUN_TAG``)
BATCH_TAG = "dqlctl:batch-run"
#: what gc removes, in this order (after the jobs, which are ``instance``s)
KINDS = ("job-queue", "compute-environment", "job-definition", "batch-secret", "batch-role",
         "batch-instance-profile", "batch-security-group")


def infra_name(instance_type: str) -> str:
    """The compute environment's and queue's name for ``instance_type``."""
    return f"dqlctl-spot-{instance_type.replace('.', '-')}"


def infra_tags(tags: dict[str, str]) -> list[dict[str, str]]:
    """``tags`` for a shared security group, role or host: ``RUN_TAG`` as ``BATCH_TAG``."""
    return [{"Key": BATCH_TAG if k == RUN_TAG else k, "Value": v} for k, v in tags.items()]


def split_engine_args(args: list[str]) -> tuple[str, dict[str, str], list[str]]:
    """The engine command, the guide's parameters among its flags, and the other flags."""
    command, rest = (args[0], args[1:]) if args else ("full-workflow", [])
    params: dict[str, str] = {}
    extra: list[str] = []
    i = 0
    while i < len(rest):
        if rest[i] in GUIDE_PARAMETERS and i + 1 < len(rest):
            params[GUIDE_PARAMETERS[rest[i]]] = rest[i + 1]
            i += 2
            continue
        if rest[i] not in RUN_FLAGS:      # --resume and --events_stdout are the definition's
            extra.append(rest[i])
        i += 1
    return command, params, extra


def job_command(args: list[str]) -> list[str] | None:
    """A member's command override: None when its flags are the guide's alone."""
    command, _, extra = split_engine_args(args)
    if command == GUIDE_COMMAND[0] and not extra:
        return None
    return [command, *GUIDE_COMMAND[1:], *RUN_FLAGS, *extra]


class AwsBatchProvider(Ec2Access):
    """Runs as AWS Batch jobs (see the module docstring); roles are removed as ``aws``
    removes its own (``Ec2Access``)."""

    name = "aws-batch"
    capabilities = frozenset({Capability.SPOT, Capability.GPU, Capability.CONTAINER,
                              Capability.DIRECT_RESULTS})

    def __init__(self, home: str | None = None, bucket: str | None = None,
                 image: str | None = None, registry: str | None = None,
                 job_env: dict[str, str] | None = None, max_vcpus: int = 256,
                 vcpus: int = 4, memory_mib: int = 15000, poll_interval: float = 1.0,
                 stop_wait_s: float = 120.0) -> None:
        self.home = Path(home) if home else Path.home() / ".local/share/dqlctl"
        self.bucket = bucket.rstrip("/") if bucket else None   # s3://BUCKET[/PREFIX]
        self.image = image                  # else the newest image in ECR's dqlctl-engine
        self.registry = registry            # ECR's address when not the account's
        self.job_env = dict(job_env or {})  # plain settings for every job (see the docstring)
        self.max_vcpus = max_vcpus
        self.vcpus = vcpus
        self.memory_mib = memory_mib
        self.poll_interval = poll_interval
        self.stop_wait_s = stop_wait_s      # how long terminate waits for the job to end

    # -- clients ---------------------------------------------------------------------------------

    def _session(self, region: str | None = None) -> Any:
        from providers.aws.compute import AwsProvider

        return AwsProvider._session(self, region)   # type: ignore[arg-type]

    def _client(self, service: str, region: str | None = None) -> Any:
        return self._session(region).client(service)

    def _region(self, spec: LaunchSpec | None = None) -> str:
        return (spec.region if spec and spec.region else None) or self._session().region_name

    # -- what a run is given ----------------------------------------------------------------------

    def instance_type(self, spec: LaunchSpec) -> str:
        from providers.aws.compute import instance_type_for

        return instance_type_for(spec.gpu, spec.instance_type)

    def results_place(self, spec: LaunchSpec) -> str:
        """Where the engine writes: the run's bucket URI, else ``<bucket>/<run id>``."""
        results = spec.job.results_dir
        if results.startswith("s3://"):
            return results.rstrip("/")
        if self.bucket:
            return f"{self.bucket}/{spec.run_id}"
        raise ProviderError("aws-batch writes results straight to a bucket: give --results-dir "
                            "s3://BUCKET/PREFIX, or set `bucket = \"s3://BUCKET/PREFIX\"` under "
                            "[providers.aws-batch] in dqlctl's config", field="results_dir")

    def _shown_place(self, spec: LaunchSpec) -> str:
        place = self.results_place(spec)
        return place if spec.job.results_dir.startswith("s3://") else f"{self.bucket}/<run id>"

    def buckets(self, spec: LaunchSpec) -> list[str]:
        found = {bucket_of(self.results_place(spec)), bucket_of(spec.job.data_file)}
        return sorted(b for b in found if b)

    def engine_image(self, spec: LaunchSpec, region: str) -> str:
        """``--image``, else ``[providers.aws-batch] image``, else the newest image pushed to
        ECR's ``dqlctl-engine`` (``dqlctl image push --provider aws``), by its digest."""
        if spec.image or self.image:
            return str(spec.image or self.image)
        ecr = self._client("ecr", region)
        try:
            repo = ecr.describe_repositories(repositoryNames=[IMAGE_REPOSITORY])["repositories"][0]
            images = ecr.describe_images(repositoryName=IMAGE_REPOSITORY)["imageDetails"]
        except Exception as exc:
            if code(exc) != "RepositoryNotFoundException":
                raise
            images = []
        if not images:
            raise ProviderError("aws-batch: no engine image: push one with `dqlctl image push "
                                "--provider aws`, or give --image", field="image")
        newest = max(images, key=lambda i: str(i.get("imagePushedAt", "")))
        uri = repo["repositoryUri"]
        if self.registry:
            uri = f"{self.registry}/{uri.split('/', 1)[1]}"
        return f"{uri}@{newest['imageDigest']}"

    # -- verbs -----------------------------------------------------------------------------------

    def check(self) -> CheckResult:
        from providers.base import CheckItem, install_hint

        try:
            boto3_sdk()
        except ProviderError as exc:
            return CheckResult(self.name, False, [CheckItem("boto3", False, str(exc),
                                                            install_hint("aws"))])
        items = [CheckItem("boto3", True, "installed")]
        try:
            account = self._client("sts").get_caller_identity().get("Account")
            items.append(CheckItem("credentials", True, f"account {account}"))
        except Exception as exc:  # noqa: BLE001 - any SDK failure is a failed check
            items.append(CheckItem("credentials", False, str(exc) if isinstance(
                exc, ProviderError) else f"{type(exc).__name__}: {exc}", "aws configure"))
        items.append(CheckItem("results bucket", True, self.bucket or
                               "none configured: each run needs --results-dir s3://..."))
        return CheckResult(self.name, all(i.ok for i in items), items)

    def offers(self, spec: LaunchSpec) -> list[Any]:
        """One offer: the instance type's, at its spot price (from the catalog)."""
        from providers.base import Offer

        gpu, count = parse_gpu(spec.gpu)
        region = self._region(spec)
        itype = self.instance_type(spec)
        return [Offer(self.name, region, itype, gpu, count, self.vcpus,
                      self.memory_mib / 1024, True, self._price(itype, region))]

    def _price(self, itype: str, region: str) -> float | None:
        from providers.prices.estimate import lookup

        offer = lookup("aws", itype, region, spot=True, home=self.home)
        return offer.price_per_hour if offer is not None else None

    def price_per_hour(self, instance: Instance) -> float | None:
        if not instance.instance_type or not instance.region:
            return None
        return self._price(instance.instance_type, instance.region)

    def plan(self, spec: LaunchSpec) -> dict[str, Any]:
        """Where the run would go (``--dry-run``); creates nothing."""
        region = self._region(spec)
        itype = self.instance_type(spec)
        price = self._price(itype, region)
        return {
            "provider": self.name, "region": region, "instance_type": itype,
            "queue": infra_name(itype),
            "compute_environment": f"{infra_name(itype)}: managed, SPOT, {itype}, "
                                   f"0-{self.max_vcpus} vCPUs (created on first use, reused)",
            "job_definition": f"{JOB_DEFINITION}: {' '.join(GUIDE_COMMAND)} "
                              f"{' '.join(RUN_FLAGS)}; retried when the spot host goes",
            "image": spec.image or self.image or
            f"the newest in ECR {IMAGE_REPOSITORY} (`dqlctl image push --provider aws`)",
            "results": f"{self._shown_place(spec)} (written by the job itself)",
            "job_role": f"{self._role_name(spec)}: s3 on {', '.join(self.buckets(spec))}",
            "price": f"${price:.4f}/h while it runs (spot, catalog)" if price is not None
            else "unknown (not in the price catalog)",
        }

    def launch(self, spec: LaunchSpec) -> Instance:
        """The queue and compute environment ready (made on first use); the job is submitted by
        ``start_job``, which also has the run's secrets."""
        region = self._region(spec)
        itype = self.instance_type(spec)
        self.results_place(spec)            # no bucket: refused before anything is made
        infra = self._ensure_queue(region, itype, spec.tags)
        return Instance(self.name, f"{UNSUBMITTED}{spec.run_id}", "pending", region, itype,
                        True, launched_at=time.time(),
                        tags={k: v for k, v in spec.tags.items()},
                        extra={"queue": infra["queue"], "direct": True,
                               "results": self.results_place(spec)})

    def wait_ready(self, instance: Instance) -> Instance:
        return instance                     # Batch gets the machine when the job runs

    def start_job(self, instance: Instance, spec: LaunchSpec,
                  secrets: dict[str, str] | None = None) -> Instance:
        """The job definition (a matching revision, or a new one), the secrets in SSM, a local
        data file in the bucket; the job submitted. The instance id becomes the job id."""
        if not instance.instance_id.startswith(UNSUBMITTED):
            return instance
        region = instance.region or self._region(spec)
        owner = spec.tags.get(OWNER_TAG, "default")
        secret_arns = self._put_secrets(region, owner, secrets or {}, spec.tags)
        role = self._ensure_job_role(region, spec, owner)
        image = self.engine_image(spec, region)
        definition = self._ensure_definition(region, image, role, secret_arns, spec)
        results = self.results_place(spec)
        command, params, _ = split_engine_args(spec.job.engine_args)
        parameters = {"agent_type": params.get("agent_type", "custom"),
                      "episodes": params.get("episodes", "20"),
                      "experiment_name": params.get("experiment_name", spec.job.experiment),
                      "data_file": self._data_uri(spec, results), "results_dir": results}
        overrides: dict[str, Any] = {}
        own = job_command(spec.job.engine_args)
        if own is not None:
            overrides["command"] = own
        env = {"AWS_DEFAULT_REGION": region, **self.job_env, **spec.job.env}
        overrides["environment"] = [{"name": k, "value": v} for k, v in sorted(env.items())]
        batch = self._client("batch", region)
        kwargs: dict[str, Any] = {
            "jobName": f"dqlctl-{spec.run_id}", "jobQueue": instance.extra["queue"],
            "jobDefinition": definition, "parameters": parameters,
            "tags": dict(spec.tags), "propagateTags": True}
        if overrides:
            kwargs["containerOverrides"] = overrides
        try:
            job = batch.submit_job(**kwargs)
        except Exception as exc:
            raise ProviderError(f"AWS Batch refused the job: {code(exc) or exc}") from None
        instance.instance_id = job["jobId"]
        instance.extra.update({"job_definition": definition, "engine_image": image,
                               "results": results, "command": command})
        return instance

    def describe(self, instance: Instance) -> Instance:
        if instance.instance_id.startswith(UNSUBMITTED):
            state = "terminated" if instance.state == "terminated" else "pending"
            return Instance(**{**instance.to_dict(), "state": state})
        try:
            job = describe_job(self._client("batch", instance.region), instance.instance_id)
        except Exception as exc:
            raise ProviderError(f"AWS Batch: {code(exc) or exc}") from None
        state = STATES.get(str((job or {}).get("status")), "terminated")
        return Instance(**{**instance.to_dict(), "state": state})

    def job(self, instance: Instance, spec: dict[str, Any]) -> BatchJobHandle:
        if instance.instance_id.startswith(UNSUBMITTED):
            raise ProviderError("the run's Batch job is not submitted yet")
        return BatchJobHandle(self._client("batch", instance.region),
                              self._client("logs", instance.region), instance.instance_id,
                              LOG_GROUP)

    def terminate(self, instance: Instance) -> None:
        """End the job and wait (up to ``stop_wait_s``) until Batch says it ended: its
        container stopped, its host released to the compute environment (idempotent; an ended or
        unknown job is left as it is). The reusable queue and compute environment stay: they
        cost nothing idle (``gc`` removes them)."""
        if not instance.instance_id.startswith(UNSUBMITTED):
            batch = self._client("batch", instance.region)
            deadline = time.monotonic() + self.stop_wait_s
            try:
                job = describe_job(batch, instance.instance_id)
                if job is not None and job.get("status") in ACTIVE:
                    batch.terminate_job(jobId=instance.instance_id,
                                        reason="dqlctl: run brought down")
                while job is not None and job.get("status") in ACTIVE and \
                        time.monotonic() < deadline:
                    time.sleep(self.poll_interval)
                    job = describe_job(batch, instance.instance_id)
            except Exception as exc:
                if not code(exc):
                    raise
                raise ProviderError(f"AWS Batch: terminate_job: {code(exc)}") from None
            if job is not None and job.get("status") in ACTIVE:
                raise ProviderError(f"AWS Batch job {instance.instance_id} is still "
                                    f"{job.get('status')} {self.stop_wait_s:.0f} s after "
                                    "terminate_job")
        instance.state = "terminated"

    def collect(self, instance: Instance, spec: dict[str, Any]) -> None:
        """Copy the results from the bucket to the run's results place when that is a folder
        here (nothing to do when it is the bucket itself)."""
        job = spec["job"]
        results = str(instance.extra.get("results") or "")
        if not results or job["results_dir"].rstrip("/") == results:
            return
        from providers.sync import sync

        done = sync(f"{results}/{job['experiment']}",
                    f"{job['results_dir'].rstrip('/')}/{job['experiment']}")
        if not done.ok:
            raise ProviderError(f"copying the results from {results} failed")

    def ssh_target(self, instance: Instance) -> NoReturn:
        raise ProviderError("aws-batch jobs are not reached over SSH (`dqlctl logs` reads "
                            "CloudWatch)")

    def list_instances(self, tag: dict[str, str | None]) -> list[Instance]:
        """The unfinished jobs carrying ``tag``, on dqlctl's queues of this region."""
        region = self._region()
        batch = self._client("batch", region)
        out: list[Instance] = []
        for queue in self._queues(batch):
            ids = [j["jobId"] for status in ACTIVE for j in batch.list_jobs(
                jobQueue=queue["jobQueueName"], jobStatus=status).get("jobSummaryList", [])]
            for start in range(0, len(ids), 100):
                for job in batch.describe_jobs(jobs=ids[start:start + 100])["jobs"]:
                    tags = job.get("tags") or {}
                    if job.get("status") in ACTIVE and has_tags(tags, tag):
                        out.append(Instance(self.name, job["jobId"], STATES[job["status"]],
                                            region, None, True, tags=dict(tags),
                                            extra={"queue": queue["jobQueueName"]}))
        return out

    # -- the reusable infrastructure -------------------------------------------------------------

    def _queues(self, batch: Any) -> list[dict[str, Any]]:
        return [q for q in batch.describe_job_queues().get("jobQueues", [])
                if q["jobQueueName"].startswith("dqlctl-spot-")]

    def _ensure_queue(self, region: str, itype: str,
                      tags: dict[str, str]) -> dict[str, str]:
        """The compute environment and queue for ``itype``, made when missing (looked up each
        time: ``gc`` may have removed them since)."""
        batch = self._client("batch", region)
        name = infra_name(itype)
        envs = batch.describe_compute_environments(computeEnvironments=[name])
        found = envs.get("computeEnvironments") or []
        if found:
            env_arn = found[0]["computeEnvironmentArn"]
        else:
            env_arn = self._create_environment(region, name, itype, tags)
        queues = batch.describe_job_queues(jobQueues=[name]).get("jobQueues") or []
        if not queues:
            batch.create_job_queue(jobQueueName=name, state="ENABLED", priority=1,
                                   computeEnvironmentOrder=[{"order": 1,
                                                             "computeEnvironment": env_arn}],
                                   tags=dict(tags))
            self._wait(lambda: (batch.describe_job_queues(jobQueues=[name])["jobQueues"] or
                                [{}])[0].get("status"), "job queue " + name)
        return {"queue": name, "environment": env_arn}

    def _wait(self, status: Any, what: str, timeout: float = 300) -> None:
        deadline = time.monotonic() + timeout
        while (found := status()) != "VALID":
            if found == "INVALID" or time.monotonic() > deadline:
                raise ProviderError(f"AWS Batch: {what} is {found or 'missing'}")
            time.sleep(self.poll_interval)

    def _create_environment(self, region: str, name: str, itype: str,
                            tags: dict[str, str]) -> str:
        ec2 = self._client("ec2", region)
        vpcs = ec2.describe_vpcs(Filters=[{"Name": "isDefault", "Values": ["true"]}])["Vpcs"]
        if not vpcs:
            raise ProviderError(f"aws-batch: no default VPC in {region} for the compute "
                                "environment", field="region")
        vpc = vpcs[0]["VpcId"]
        subnets = [s["SubnetId"] for s in ec2.describe_subnets(Filters=[
            {"Name": "vpc-id", "Values": [vpc]}])["Subnets"]]
        tag_list = infra_tags(tags)
        groups = ec2.describe_security_groups(Filters=[
            {"Name": "group-name", "Values": [SECURITY_GROUP]},
            {"Name": "vpc-id", "Values": [vpc]}])["SecurityGroups"]
        group = groups[0]["GroupId"] if groups else ec2.create_security_group(
            GroupName=SECURITY_GROUP, VpcId=vpc,
            Description="dqlctl AWS Batch hosts: no inbound access",
            TagSpecifications=[{"ResourceType": "security-group", "Tags": tag_list}])["GroupId"]
        profile = self._ensure_host_roles(tag_list)
        service = self._role(SERVICE_ROLE, "batch.amazonaws.com", tag_list,
                             MANAGED + "AWSBatchServiceRole")
        batch = self._client("batch", region)
        arn = batch.create_compute_environment(
            computeEnvironmentName=name, type="MANAGED", state="ENABLED", serviceRole=service,
            computeResources={
                "type": "SPOT", "allocationStrategy": "SPOT_CAPACITY_OPTIMIZED",
                "minvCpus": 0, "desiredvCpus": 0, "maxvCpus": self.max_vcpus,
                "instanceTypes": [itype], "subnets": subnets, "securityGroupIds": [group],
                "instanceRole": profile,
                "tags": {t["Key"]: t["Value"] for t in tag_list}},
            tags=dict(tags))["computeEnvironmentArn"]
        self._wait(lambda: (batch.describe_compute_environments(computeEnvironments=[name])[
            "computeEnvironments"] or [{}])[0].get("status"), "compute environment " + name)
        return str(arn)

    def _role(self, name: str, service: str, tags: list[dict[str, str]],
              managed: str | None = None) -> str:
        """The role ``name`` that ``service`` assumes (made when missing); its ARN."""
        iam = self._client("iam")
        trust = {"Version": "2012-10-17", "Statement": [{
            "Effect": "Allow", "Principal": {"Service": service}, "Action": "sts:AssumeRole"}]}
        try:
            arn = iam.create_role(RoleName=name, AssumeRolePolicyDocument=json.dumps(trust),
                                  Tags=tags, Description="dqlctl AWS Batch")["Role"]["Arn"]
        except Exception as exc:
            if code(exc) != "EntityAlreadyExists":
                raise
            return str(iam.get_role(RoleName=name)["Role"]["Arn"])
        if managed:
            iam.attach_role_policy(RoleName=name, PolicyArn=managed)
        return str(arn)

    def _ensure_host_roles(self, tags: list[dict[str, str]]) -> str:
        """The hosts' instance role and profile (ECS's managed policy); the profile's ARN."""
        iam = self._client("iam")
        self._role(INSTANCE_ROLE, "ec2.amazonaws.com", tags,
                   MANAGED + "AmazonEC2ContainerServiceforEC2Role")
        try:
            profile = iam.create_instance_profile(InstanceProfileName=INSTANCE_ROLE, Tags=tags)
            iam.add_role_to_instance_profile(InstanceProfileName=INSTANCE_ROLE,
                                             RoleName=INSTANCE_ROLE)
        except Exception as exc:
            if code(exc) != "EntityAlreadyExists":
                raise
            profile = iam.get_instance_profile(InstanceProfileName=INSTANCE_ROLE)
        return str(profile["InstanceProfile"]["Arn"])

    def _role_name(self, spec: LaunchSpec) -> str:
        digest = hashlib.sha256(",".join(self.buckets(spec)).encode()).hexdigest()[:12]
        return f"{ROLE_PREFIX}{digest}"

    def _ensure_job_role(self, region: str, spec: LaunchSpec, owner: str) -> str:
        """The job role of the run's bucket(s): the buckets, and the owner's SSM parameters
        (read as the execution role, for the container's ``secrets``)."""
        tag_list = infra_tags(spec.tags)
        arn = self._role(self._role_name(spec), "ecs-tasks.amazonaws.com", tag_list)
        account = arn.split(":")[4]
        policy = bucket_policy(self.buckets(spec))
        policy["Statement"].append({
            "Effect": "Allow", "Action": ["ssm:GetParameters", "ssm:GetParameter"],
            "Resource": f"arn:aws:ssm:{region}:{account}:parameter{SECRET_ROOT}/{owner}/*"})
        self._client("iam").put_role_policy(RoleName=self._role_name(spec),
                                            PolicyName="run-bucket",
                                            PolicyDocument=json.dumps(policy))
        return arn

    def _put_secrets(self, region: str, owner: str, secrets: dict[str, str],
                     tags: dict[str, str]) -> dict[str, str]:
        """Each secret as an SSM SecureString parameter; {name: parameter ARN}."""
        if not secrets:
            return {}
        ssm = self._client("ssm", region)
        account = self._client("sts", region).get_caller_identity()["Account"]
        out = {}
        for key, value in sorted(secrets.items()):
            name = f"{SECRET_ROOT}/{owner}/{key}"
            ssm.put_parameter(Name=name, Value=value, Type="SecureString", Overwrite=True,
                              Description="dqlctl: read by its AWS Batch jobs' role only")
            ssm.add_tags_to_resource(ResourceType="Parameter", ResourceId=name,
                                     Tags=[{"Key": k, "Value": v} for k, v in tags.items()])
            out[key] = f"arn:aws:ssm:{region}:{account}:parameter{name}"
        return out

    def _ensure_definition(self, region: str, image: str, role: str,
                           secrets: dict[str, str], spec: LaunchSpec) -> str:
        """An active ``DQL-Training`` revision with this image, role, secrets and GPUs (a new
        revision when none); its ARN."""
        _, gpus = parse_gpu(spec.gpu)
        resources = [{"type": "VCPU", "value": str(self.vcpus)},
                     {"type": "MEMORY", "value": str(self.memory_mib)},
                     {"type": "GPU", "value": str(max(gpus, 1))}]
        container = {"image": image, "command": [*GUIDE_COMMAND, *RUN_FLAGS],
                     "jobRoleArn": role, "executionRoleArn": role,
                     "resourceRequirements": resources,
                     "secrets": [{"name": k, "valueFrom": v} for k, v in sorted(secrets.items())]}
        batch = self._client("batch", region)
        found = batch.describe_job_definitions(jobDefinitionName=JOB_DEFINITION,
                                               status="ACTIVE").get("jobDefinitions", [])
        def needs(items: list[dict[str, str]]) -> list[tuple[str, str]]:
            return sorted((str(r.get("type")), str(r.get("value"))) for r in items)

        for known in sorted(found, key=lambda d: -int(d.get("revision", 0))):
            props = known.get("containerProperties") or {}
            if all(props.get(k) == v for k, v in container.items()
                   if k != "resourceRequirements") and \
                    needs(props.get("resourceRequirements") or []) == needs(resources):
                return str(known["jobDefinitionArn"])
        return str(batch.register_job_definition(
            jobDefinitionName=JOB_DEFINITION, type="container", containerProperties=container,
            parameters={"agent_type": "custom", "episodes": "20"},
            retryStrategy=RETRY_STRATEGY, tags=dict(spec.tags),
            propagateTags=True)["jobDefinitionArn"])

    def _data_uri(self, spec: LaunchSpec, results: str) -> str:
        """The data file's URI: as given, or a local file uploaded beside the results."""
        data = spec.job.data_file
        if "://" in data:
            return data
        from providers.storage import open_store

        uri = f"{results}/input/{Path(data).name}"
        store, key = open_store(uri)
        store.put(key, Path(data))
        return uri

    # -- found again (gc) ------------------------------------------------------------------------

    def list_resources(self, tag: dict[str, str | None]) -> list[Resource]:
        """The unfinished jobs carrying ``tag``; and, asked for every run's (``gc``, ``ps
        --orphans``), the reusable infrastructure, reported under the run of one of the
        unfinished jobs while any runs (so ``gc`` leaves it alone in use), else under the run
        that made it. A run's own release (its run id asked for) never takes it."""
        region = self._region()
        jobs = self.list_instances({RUN_TAG: None})
        out = [instance_resource(i) for i in jobs if has_tags(i.tags, tag)]
        if tag.get(RUN_TAG) is not None:
            return out
        in_use = {RUN_TAG: jobs[0].tags[RUN_TAG]} if jobs else {}
        batch = self._client("batch", region)

        def batch_tags(arn: str) -> dict[str, str]:
            return dict(batch.list_tags_for_resource(resourceArn=arn).get("tags") or {})

        found: list[tuple[str, str, dict[str, str]]] = []
        for queue in self._queues(batch):
            found.append(("job-queue", queue["jobQueueName"], batch_tags(queue["jobQueueArn"])))
        for env in batch.describe_compute_environments().get("computeEnvironments", []):
            if env["computeEnvironmentName"].startswith("dqlctl-spot-"):
                found.append(("compute-environment", env["computeEnvironmentName"],
                              batch_tags(env["computeEnvironmentArn"])))
        for known in batch.describe_job_definitions(jobDefinitionName=JOB_DEFINITION,
                                                    status="ACTIVE").get("jobDefinitions", []):
            arn = known["jobDefinitionArn"]
            found.append(("job-definition", arn, batch_tags(arn)))
        ssm = self._client("ssm", region)
        for param in ssm.describe_parameters(ParameterFilters=[{
                "Key": "Path", "Option": "Recursive", "Values": [SECRET_ROOT]}])["Parameters"]:
            found.append(("batch-secret", param["Name"], tags_of({"Tags": ssm.list_tags_for_resource(
                ResourceType="Parameter", ResourceId=param["Name"])["TagList"]})))
        found += self._iam_resources()
        for group in self._client("ec2", region).describe_security_groups(Filters=[
                {"Name": "group-name", "Values": [SECURITY_GROUP]}])["SecurityGroups"]:
            found.append(("batch-security-group", group["GroupId"], tags_of(group)))
        for kind, rid, tags in found:
            if BATCH_TAG in tags:
                tags = {**tags, RUN_TAG: tags[BATCH_TAG]}
            if RUN_TAG in tags and has_tags({**tags, **in_use}, tag):
                out.append(Resource(self.name, kind, rid, region,
                                    {**core_tags(tags), **in_use}))
        return out

    def _iam_resources(self) -> list[tuple[str, str, dict[str, str]]]:
        """The roles (``dqlctl-batch-*``) and the hosts' instance profile (IAM is global)."""
        iam = self._client("iam")
        out: list[tuple[str, str, dict[str, str]]] = []
        for page in iam.get_paginator("list_roles").paginate():
            for role in page["Roles"]:
                if role["RoleName"].startswith(ROLE_PREFIX):
                    tags = tags_of(iam.get_role(RoleName=role["RoleName"])["Role"])
                    out.append(("batch-role", role["RoleName"], tags))
        try:
            profile = iam.get_instance_profile(InstanceProfileName=INSTANCE_ROLE)
            out.insert(0, ("batch-instance-profile", INSTANCE_ROLE,
                           tags_of(profile["InstanceProfile"])))
        except Exception as exc:
            if code(exc) != "NoSuchEntity":
                raise
        return out

    def delete_resource(self, resource: Resource) -> None:
        """Remove one thing ``list_resources`` found; gone already is fine."""
        kind, rid = resource.kind, resource.resource_id
        if kind == "instance":
            self.terminate(Instance.from_dict(resource.extra["instance"]))
            return
        if kind not in KINDS:
            raise ProviderError(f"aws-batch: no such kind of resource: {kind}")
        region = resource.region
        if kind in ("job-queue", "compute-environment", "job-definition"):
            self._delete_batch(kind, rid, region)
        elif kind == "batch-secret":
            quietly(self._client("ssm", region).delete_parameter, Name=rid)
        elif kind == "batch-security-group":
            delete_group(self._client("ec2", region), rid)
        else:       # as ``aws`` removes its own roles and profiles
            self._delete_access(Resource(self.name, kind.removeprefix("batch-"), rid))

    def _delete_batch(self, kind: str, rid: str, region: str | None) -> None:
        batch = self._client("batch", region)
        if kind == "job-definition":
            batch.deregister_job_definition(jobDefinition=rid)
            return
        if kind == "job-queue":
            describe, key, names = batch.describe_job_queues, "jobQueues", "jobQueues"
            update, delete = batch.update_job_queue, batch.delete_job_queue
            arg = "jobQueue"
        else:
            describe, key, names = (batch.describe_compute_environments, "computeEnvironments",
                                    "computeEnvironments")
            update, delete = batch.update_compute_environment, batch.delete_compute_environment
            arg = "computeEnvironment"
        if not describe(**{names: [rid]}).get(key):
            return
        update(**{arg: rid, "state": "DISABLED"})
        delete(**{arg: rid})
        deadline = time.monotonic() + 300
        while describe(**{names: [rid]}).get(key):   # gone before what it uses goes
            if time.monotonic() > deadline:
                raise ProviderError(f"AWS Batch: {kind} {rid} is not gone after 5 min")
            time.sleep(self.poll_interval)
