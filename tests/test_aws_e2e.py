"""AWS end to end on real stand-ins: moto server for EC2/IAM/SSM, a real OpenSSH server as the VM.

The VM stand-in trusts the key pairs registered with (moto's) EC2, as cloud-init does on a real
instance: its sshd asks for authorized keys with ``AuthorizedKeysCommand``, which lists the key
pairs' public keys from EC2's DescribeKeyPairs (tests/vm.py). dqlctl reaches it through the documented test hook
``[providers.aws] ssh_host_override`` in its config file. Runs use ``--runtime native``: the
engine's code is shipped over SFTP and runs under the VM's Python.
"""

from __future__ import annotations

import functools
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.exceptions import ClientError

from dqlctl import registry as reg
from dqlctl import runs
from dqlctl.cli import main
from dqlctl.context import Context
from tests.fake_imds import FakeImds
from tests.held_engine import hold_in
from tests.host_keys import seed_ec2_console
from tests.vm import AWS_KEYS, AWS_KEYS_SIGNED, controller_killed_mid_run, vm_sshd

ROOT = Path(__file__).resolve().parents[1]
CIDR = "198.51.100.7/32"
SECRET = "123456:telegram-secret-token-do-not-leak"


@pytest.fixture()
def vm(aws_env: str, tmp_path: Path) -> Iterator[dict[str, Any]]:
    """An sshd that trusts the key pairs EC2 knows: the VM an instance stands for."""
    with vm_sshd(tmp_path / "vm-disk", keys_command=AWS_KEYS.format(endpoint=aws_env)) as info:
        yield info


@pytest.fixture()
def imds() -> Iterator[FakeImds]:
    """The instance metadata service the VM's SDK asks for its role's credentials."""
    server = FakeImds()
    server.start()
    yield server
    server.stop()


def make_home(home: Path, vm: dict[str, Any], imds: FakeImds, endpoint: str,
              monkeypatch: pytest.MonkeyPatch) -> Path:
    """dqlctl's folder for an AWS test: the VM stand-in, its SDK pointed at ``endpoint``."""
    home.mkdir()
    (home / "config.toml").write_text(
        "[providers.aws]\n"
        f'ssh_host_override = "127.0.0.1:{vm["port"]}"\n'
        'ssh_user = "root"\n'
        f'remote_root = "{vm["root"]}"\n'
        f'remote_python = "{sys.executable}"\n'
        "ready_timeout = 60\n"
        # a controller in a process of its own (tests/test_chaos.py, controller_killed_mid_run)
        # reads moto's bare console (seed_ec2_console patches this process only): it trusts the
        # first key after this wait, not after ready_timeout; here the seeded keys come at once
        "host_key_wait = 0.5\n"
        # test hook: the VM's SDK reaches moto, and the metadata service here (no keys)
        "[providers.aws.vm_env]\n"
        f'AWS_ENDPOINT_URL = "{endpoint}"\n'
        f'AWS_EC2_METADATA_SERVICE_ENDPOINT = "{imds.url}"\n'
        # the stand-in answers in milliseconds, as EC2's does, but a loaded machine may not
        # run it for a while: the SDK's 1 s (one try) would then find no credentials
        'AWS_METADATA_SERVICE_TIMEOUT = "10"\nAWS_METADATA_SERVICE_NUM_ATTEMPTS = "3"\n')
    monkeypatch.setenv("DQLCTL_HOME", str(home))
    monkeypatch.setenv("TELEGRAM_BOT_TOKEN", SECRET)
    seed_ec2_console(monkeypatch, [vm["host_key"]])  # what cloud-init prints on a real VM
    return home


@pytest.fixture()
def home(tmp_path: Path, vm: dict[str, Any], imds: FakeImds, aws_env: str,
         monkeypatch: pytest.MonkeyPatch) -> Path:
    return make_home(tmp_path / "dqlctl-home", vm, imds, aws_env, monkeypatch)


def ami(region: str | None = None) -> str:
    """An image moto knows in ``region`` (default: the environment's), from the server
    AWS_ENDPOINT_URL names. DescribeImages lists all of moto's ~1,300 bundled AMIs (a second
    or more each time), and a reset brings the same ones back: asked once per server and
    region."""
    return _first_image(os.environ.get("AWS_ENDPOINT_URL"),
                        region or os.environ.get("AWS_DEFAULT_REGION"))


@functools.cache
def _first_image(endpoint: str | None, region: str | None) -> str:
    return boto3.client("ec2", region_name=region).describe_images()["Images"][0]["ImageId"]


def launch_args(*extra: str) -> list[str]:
    return ["launch", "--provider", "aws", "--gpu", "T4:1", "--data", "test_small.csv",
            "--agent-type", "dql", "--command", "train", "--ssh-cidr", CIDR,
            "--image-id", ami(), *extra, "--", "--n_envs", "4"]


def leftovers(run_id: str, region: str | None = None) -> dict[str, list[str]]:
    """What the run left: instances, key pairs and groups in ``region`` (the default one), and
    IAM's (global) profiles and roles."""
    ec2, iam = boto3.client("ec2", region_name=region), boto3.client("iam")
    live = [i["InstanceId"] for r in ec2.describe_instances(
        Filters=[{"Name": "tag:dqlctl:run", "Values": [run_id]}])["Reservations"]
        for i in r["Instances"] if i["State"]["Name"] != "terminated"]
    return {
        "instances": live,
        "key_pairs": [k["KeyName"] for k in ec2.describe_key_pairs()["KeyPairs"]
                      if k["KeyName"].startswith("dqlctl-")],
        "security_groups": [g["GroupName"] for g in ec2.describe_security_groups()
                            ["SecurityGroups"] if g["GroupName"].startswith("dqlctl-")],
        "profiles": [p["InstanceProfileName"] for p in iam.list_instance_profiles()
                     ["InstanceProfiles"] if p["InstanceProfileName"].startswith("dqlctl-")],
        "roles": [r["RoleName"] for r in iam.list_roles()["Roles"]
                  if r["RoleName"].startswith("dqlctl-")],
    }


def kill_vm_processes(run_id: str) -> None:
    """The run's processes on the VM die with it: the supervisor's whole session, the engine
    included (else it would go on training, and pruning checkpoints, after the test). (``--``:
    else pgrep takes the pattern for an option, finds nothing, and the old engine lives on.)"""
    found = subprocess.run(["pgrep", "-f", "--", f"--tag=dqlctl:run={run_id}"],
                           capture_output=True, text=True)
    assert found.returncode in (0, 1), found.stderr
    for pid in found.stdout.split():
        try:
            sid = os.getsid(int(pid))
        except ProcessLookupError:
            continue
        subprocess.run(["pkill", "-KILL", "-s", str(sid)], check=False)


NOTHING = {"instances": [], "key_pairs": [], "security_groups": [], "profiles": [], "roles": []}


def test_launch_train_collect_and_tear_down(home: Path, vm: dict[str, Any],
                                            imds: FakeImds) -> None:
    boto3.client("s3").create_bucket(Bucket="dqlctl-results")
    ctx = Context(home=home)
    assert main(launch_args("--episodes", "2", "--name", "e2e", "--json", "--results-dir",
                            "s3://dqlctl-results/runs"), ctx=ctx) == 0
    ctx = Context(home=home)
    (run,) = ctx.registry.list()
    assert run.state == reg.RUNNING, run.reason
    # security while it runs: port 22 from the given address only; the role names no bucket
    ec2 = boto3.client("ec2")
    (group,) = ec2.describe_security_groups(
        Filters=[{"Name": "tag:dqlctl:run", "Values": [run.id]}])["SecurityGroups"]
    assert [(p["IpProtocol"], p["FromPort"], p["ToPort"], [r["CidrIp"] for r in p["IpRanges"]])
            for p in group["IpPermissions"]] == [("tcp", 22, 22, [CIDR])]
    policy = boto3.client("iam").get_role_policy(RoleName=f"dqlctl-{run.id}",
                                                  PolicyName="run-bucket")["PolicyDocument"]
    resources = {r for st in policy["Statement"] for r in st["Resource"]}
    assert resources == {"arn:aws:s3:::dqlctl-results", "arn:aws:s3:::dqlctl-results/*"}
    inst = boto3.client("ec2").describe_instances(InstanceIds=run.instance_ids)
    raw = inst["Reservations"][0]["Instances"][0]
    assert raw.get("InstanceLifecycle") == "spot" and raw["InstanceType"] == "g4dn.xlarge"
    assert run.instance["extra"]["host_key"].startswith("ssh-ed25519 ")

    final = runs.follow(ctx, run)
    assert final.state == reg.SUCCEEDED, final.reason
    # the engine wrote to the run's bucket itself, with the instance role's credentials from
    # the metadata service: no key was shipped to the VM
    assert final.instance["extra"]["direct"] and imds.credential_requests >= 1
    # the secrets file was deleted once the supervisor had read it
    assert not (Path(final.instance["extra"]["workdir"]) / "secrets.env").exists()
    body = boto3.client("s3").get_object(Bucket="dqlctl-results",
                                         Key="runs/e2e/events.jsonl")["Body"].read()
    events = body.decode().splitlines()
    keys = {o["Key"] for o in boto3.client("s3").list_objects_v2(
        Bucket="dqlctl-results", Prefix="runs/e2e/")["Contents"]}
    assert {"runs/e2e/model.pth", "runs/e2e/config.json"} <= keys
    kinds = [json.loads(x)["event"] for x in events]
    assert kinds.count("episode") == 2 and kinds[-1] == "finished"
    assert leftovers(run.id) == NOTHING
    # the secret reached the VM only as a 0600 file, never a command line, log or registry row
    workdir = Path(final.instance["extra"]["workdir"])
    assert not (workdir / "secrets.env").exists()
    assert SECRET not in (workdir / "engine.log").read_text()
    assert SECRET.encode() not in (home / "registry.db").read_bytes()
    assert SECRET not in json.dumps(final.to_dict())


def test_a_run_without_a_bucket_gets_a_role_that_can_do_nothing(home: Path,
                                                                 vm: dict[str, Any]) -> None:
    ctx = Context(home=home)
    assert main(launch_args("--episodes", "2", "--name", "nobucket"), ctx=ctx) == 0
    (run,) = Context(home=home).registry.list()
    policy = boto3.client("iam").get_role_policy(RoleName=f"dqlctl-{run.id}",
                                                  PolicyName="run-bucket")["PolicyDocument"]
    assert [st["Effect"] for st in policy["Statement"]] == ["Deny"]
    assert main(["down", run.id, "--yes"], ctx=Context(home=home)) == 0
    assert leftovers(run.id) == NOTHING


def test_follow_survives_a_dropped_connection(home: Path, vm: dict[str, Any]) -> None:
    release = hold_in(home, 1)    # the engine waits mid-episode 2 until the link has dropped
    ctx = Context(home=home)
    assert main(launch_args("--episodes", "4", "--name", "drop"), ctx=ctx) == 0
    run = Context(home=home).registry.list()[0]
    seen: list[str] = []
    dropped = threading.Event()

    def on_event(ev: dict[str, Any]) -> None:
        if ev["event"] == "episode" and not dropped.is_set():
            # kill the sshd processes serving our connection (not the listener): the link drops
            children = subprocess.run(["pgrep", "-P", str(vm["pid"])], capture_output=True,
                                      text=True).stdout.split()
            for pid in children:
                os.kill(int(pid), signal.SIGKILL)
            dropped.set()
            release.touch()     # the rest of the run comes while follow reconnects

    ctx = Context(home=home)
    final = runs.follow(ctx, run, on_event=on_event, on_log=seen.append)
    assert dropped.is_set()
    assert final.state == reg.SUCCEEDED, final.reason
    log = (Path(final.instance["extra"]["workdir"]) / "engine.log").read_text()
    assert seen == log.splitlines()  # nothing lost, nothing doubled
    assert leftovers(run.id) == NOTHING


def test_a_spot_instance_taken_back_is_preempted_not_running(home: Path,
                                                            vm: dict[str, Any]) -> None:
    ctx = Context(home=home)
    assert main(launch_args("--episodes", "500", "--name", "reclaimed"), ctx=ctx) == 0
    (run,) = Context(home=home).registry.list()
    # the cloud takes the machine back: the instance terminates and the VM stops answering
    boto3.client("ec2").terminate_instances(InstanceIds=run.instance_ids)
    os.kill(vm["pid"], signal.SIGKILL)
    kill_vm_processes(run.id)
    ctx = Context(home=home)
    (row,) = runs.reconcile_all(ctx)
    assert row.state == reg.PREEMPTED and "taken back" in row.reason
    # a preempted run that cannot be relaunched does not linger: the next look ends it, with why
    assert main(["down", run.id, "--yes"], ctx=Context(home=home)) == 0
    row = Context(home=home).registry.get(run.id)
    assert row.state == reg.FAILED and "not relaunched" in row.reason
    assert leftovers(run.id) == NOTHING


def test_failed_bootstrap_still_tears_everything_down(home: Path, vm: dict[str, Any]) -> None:
    config = home / "config.toml"
    config.write_text(config.read_text().replace(f'remote_python = "{sys.executable}"',
                                                 'remote_python = "/nonexistent/python3"'))
    ctx = Context(home=home)
    code = main(launch_args("--episodes", "2", "--name", "broken"), ctx=ctx)
    assert code == 3
    (run,) = Context(home=home).registry.list()
    assert run.state == reg.FAILED and "cannot run the engine" in run.reason
    assert leftovers(run.id) == NOTHING


def test_dry_run_creates_nothing_and_no_credentials_is_exit_3(
        home: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(launch_args("--dry-run"), ctx=Context(home=home)) == 0
    out = capsys.readouterr().out
    assert "g4dn.xlarge" in out and CIDR in out and "spot" in out
    assert leftovers("none") == NOTHING and Context(home=home).registry.list() == []
    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.delenv(key)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(home / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(home / "none"))
    assert main(launch_args("--episodes", "2"), ctx=Context(home=home)) == 3
    err = capsys.readouterr().err
    assert "no AWS credentials" in err and "AWS_ACCESS_KEY_ID" in err
    assert Context(home=home).registry.list() == []  # refused before any run was recorded


def test_ssh_trusts_only_the_pinned_key_and_stop_keeps_the_checkpoint(
        home: Path, vm: dict[str, Any]) -> None:
    ctx = Context(home=home)
    assert main(launch_args("--episodes", "100000", "--name", "stopme"), ctx=ctx) == 0
    (run,) = Context(home=home).registry.list()
    workdir = run.instance["extra"]["workdir"]
    events = Path(workdir) / "results" / "stopme" / "events.jsonl"
    deadline = time.monotonic() + 120
    while '"episode"' not in (events.read_text() if events.exists() else ""):
        assert time.monotonic() < deadline, "no episode on the VM"
        time.sleep(0.05)

    def ssh(*cmd: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "dqlctl", "ssh", run.id, "--", *cmd],
                              capture_output=True, text=True, cwd=ROOT, timeout=60)

    # the real OpenSSH client, the run's key, in the run's folder on the VM
    there = ssh("pwd")
    assert there.returncode == 0, there.stderr
    assert there.stdout.strip() == workdir
    # a VM answering with another host key than the one pinned at first contact: refused
    registry = Context(home=home).registry
    other = subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f",
                            str(home / "other")], check=True)
    assert other.returncode == 0
    forged = " ".join((home / "other.pub").read_text().split()[:2])
    instance = registry.get(run.id).instance
    registry.update(run.id, instance={**instance, "extra": {**instance["extra"],
                                                            "host_key": forged}})
    refused = ssh("pwd")
    assert refused.returncode == 255 and "host key" in refused.stderr.lower()
    registry.update(run.id, instance=instance)

    # stop: the engine checkpoints on SIGTERM, the results come back, nothing is left
    assert main(["stop", run.id], ctx=Context(home=home)) == 0
    final = Context(home=home).registry.get(run.id)
    assert final.state == reg.CANCELLED, final.reason
    assert final.reason.startswith("stopped at episode") and "checkpoint" in final.reason
    assert list((Path(final.results_uri) / "checkpoints").glob("ckpt-*.pt"))
    assert leftovers(run.id) == NOTHING


def self_terminating(vm: dict[str, Any], endpoint: str, imds: FakeImds) -> None:
    """What ``shutdown -h now`` does to an instance launched with
    InstanceInitiatedShutdownBehavior=terminate, on the stand-in: the fake ``shutdown`` (tests/vm.py)
    runs this hook, which terminates the instance of the run whose folder it was called from,
    with the instance role's credentials from the metadata service (no key on the VM)."""
    hook = Path(vm["root"]) / "shutdown-hook"
    hook.write_text(
        f"#!{sys.executable}\nimport os, boto3\n"
        "for key in ('AWS_ACCESS_KEY_ID', 'AWS_SECRET_ACCESS_KEY', 'AWS_SESSION_TOKEN'):\n"
        "    os.environ.pop(key, None)\n"
        f"os.environ.update(AWS_ENDPOINT_URL={endpoint!r}, AWS_DEFAULT_REGION='us-east-1',\n"
        f"                  AWS_EC2_METADATA_SERVICE_ENDPOINT={imds.url!r})\n"
        "ec2 = boto3.client('ec2')\n"
        "run = os.path.basename(os.getcwd())\n"
        "ids = [i['InstanceId'] for r in ec2.describe_instances(Filters=[\n"
        "    {'Name': 'tag:dqlctl:run', 'Values': [run]},\n"
        "    {'Name': 'instance-state-name', 'Values': ['pending', 'running']}])['Reservations']\n"
        "    for i in r['Instances']]\n"
        "ec2.terminate_instances(InstanceIds=ids)\n")
    hook.chmod(0o755)


def test_the_vm_shuts_itself_down_when_its_controller_is_gone(
        home: Path, vm: dict[str, Any], imds: FakeImds, aws_env: str) -> None:
    """The operator's dqlctl dies mid-run (the process and its SSH connection): the run ends on
    the VM, nobody collects, and after the collect grace the VM terminates itself."""
    self_terminating(vm, aws_env, imds)
    release = hold_in(home, 1)    # the engine waits mid-episode 2 until the controller is dead
    run = controller_killed_mid_run(home, launch_args(
        "--episodes", "3", "--name", "alone", "--collect-grace", "0.05", "--follow"), "alone")
    release.touch()
    ec2 = boto3.client("ec2")
    behaviour = ec2.describe_instance_attribute(InstanceId=run.instance_ids[0],
                                                Attribute="instanceInitiatedShutdownBehavior")
    assert behaviour["InstanceInitiatedShutdownBehavior"]["Value"] == "terminate"
    workdir = Path(run.instance["extra"]["workdir"])
    assert not (workdir / "secrets.env").exists()

    def state() -> str:
        raw = ec2.describe_instances(InstanceIds=run.instance_ids)["Reservations"]
        return raw[0]["Instances"][0]["State"]["Name"]

    before = imds.credential_requests
    deadline = time.monotonic() + 300
    while state() != "terminated":
        assert time.monotonic() < deadline, "the VM did not shut itself down"
        time.sleep(0.2)
    assert json.loads((workdir / "exit.json").read_text())["exit_code"] == 0  # the run ended
    (call,) = [json.loads(x) for x in (Path(vm["root"]) / "shutdown.log").read_text()
               .splitlines() if json.loads(x)["cwd"] == str(workdir)]
    assert call["argv"] == ["-h", "now"]
    assert imds.credential_requests > before  # with the instance's own identity
    while not (workdir / "selfcare.json").exists():  # written once the shutdown returned
        assert time.monotonic() < deadline, "the supervisor did not record its shutdown"
        time.sleep(0.05)
    care = json.loads((workdir / "selfcare.json").read_text())
    assert care["reason"].startswith("run ended") and care["returncode"] == 0
    # what the VM left (its key, group and role) goes with the run's `down`
    assert main(["down", run.id, "--yes"], ctx=Context(home=home)) == 0
    assert leftovers(run.id) == NOTHING


class InstanceRole:
    """What EC2 hands the running instance at its metadata service: a session of the role of
    its instance profile, made once (the SDK on the VM waits a second or so for it). moto
    matches only AWS principals in a trust policy, so the ``ec2.amazonaws.com`` one dqlctl
    writes cannot be assumed there: the stand-in for EC2 puts the operator in that principal's
    place, keeping dqlctl's in ``trust``."""

    def __init__(self, operator_arn: str) -> None:
        self.operator_arn = operator_arn
        self.ec2, self.iam, self.sts = (boto3.client(s) for s in ("ec2", "iam", "sts"))
        self.trust: dict[str, Any] | None = None
        self.session: dict[str, str] | None = None
        self.lock = threading.Lock()

    def __call__(self) -> dict[str, str]:
        with self.lock:
            if self.session is None:
                (inst,) = [i for r in self.ec2.describe_instances(Filters=[
                    {"Name": "instance-state-name", "Values": ["running"]}])["Reservations"]
                    for i in r["Instances"]]
                profile = inst["IamInstanceProfile"]["Arn"].rsplit("/", 1)[1]
                (role,) = self.iam.get_instance_profile(
                    InstanceProfileName=profile)["InstanceProfile"]["Roles"]
                self.trust = role["AssumeRolePolicyDocument"]
                self.iam.update_assume_role_policy(
                    RoleName=role["RoleName"], PolicyDocument=json.dumps(
                        {"Version": "2012-10-17", "Statement": [{
                            "Effect": "Allow", "Principal": {"AWS": self.operator_arn},
                            "Action": "sts:AssumeRole"}]}))
                creds = self.sts.assume_role(RoleArn=role["Arn"],
                                             RoleSessionName=inst["InstanceId"])["Credentials"]
                self.session = {"AccessKeyId": creds["AccessKeyId"],
                                "SecretAccessKey": creds["SecretAccessKey"],
                                "Token": creds["SessionToken"]}
            return self.session


def test_the_instance_role_may_use_its_runs_bucket_and_no_other(
        iam_moto: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """With IAM enforced: the engine on the VM writes its results with the instance role's
    session (from the metadata service), and that session is refused on another bucket."""
    from botocore.credentials import InstanceMetadataFetcher, InstanceMetadataProvider

    s3 = boto3.client("s3")
    s3.create_bucket(Bucket="dqlctl-results")
    s3.create_bucket(Bucket="someone-elses")
    role = InstanceRole(iam_moto["arn"])
    imds = FakeImds(issue=role)
    imds.start()
    keys = AWS_KEYS_SIGNED.format(**iam_moto)
    try:
        with vm_sshd(tmp_path / "vm-disk", keys_command=keys) as vm:
            home = make_home(tmp_path / "dqlctl-home", vm, imds, iam_moto["endpoint"],
                             monkeypatch)
            assert main(launch_args("--episodes", "2", "--name", "scoped", "--results-dir",
                                    "s3://dqlctl-results/runs"), ctx=Context(home=home)) == 0
            (run,) = Context(home=home).registry.list()
            # the instance's own session, as the SDK on the VM finds it
            fetcher = InstanceMetadataFetcher(
                timeout=5, num_attempts=2, config={"ec2_metadata_service_endpoint": imds.url})
            creds = InstanceMetadataProvider(iam_role_fetcher=fetcher).load()
            assert creds is not None
            frozen = creds.get_frozen_credentials()
            as_vm = boto3.client("s3", aws_access_key_id=frozen.access_key,
                                 aws_secret_access_key=frozen.secret_key,
                                 aws_session_token=frozen.token)
            as_vm.put_object(Bucket="dqlctl-results", Key="probe/by-the-vm", Body=b"ok")
            for call in (lambda: as_vm.put_object(Bucket="someone-elses", Key="x", Body=b"x"),
                         lambda: as_vm.list_objects_v2(Bucket="someone-elses")):
                with pytest.raises(ClientError) as refused:
                    call()
                assert refused.value.response["Error"]["Code"] == "AccessDenied"
            assert role.trust is not None           # what dqlctl wrote: EC2 may assume it
            assert [st["Principal"] for st in role.trust["Statement"]] == [
                {"Service": "ec2.amazonaws.com"}]

            final = runs.follow(Context(home=home), run)
            assert final.state == reg.SUCCEEDED, final.reason
            assert final.instance["extra"]["direct"] and imds.credential_requests >= 2
            keys_there = {o["Key"] for o in s3.list_objects_v2(
                Bucket="dqlctl-results", Prefix="runs/scoped/")["Contents"]}
            assert {"runs/scoped/model.pth", "runs/scoped/events.jsonl"} <= keys_there
            assert leftovers(run.id) == NOTHING
    finally:
        imds.stop()
