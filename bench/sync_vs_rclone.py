"""``dqlctl sync`` (its core, ``python -m providers.sync_cli``) side by side with rclone.

Both tools run as fresh processes against the same local stand-ins (moto server, Azurite,
fake-gcs-server; see ../shared/reference/LOCAL_CLOUD.md), on the same trees, with 4 transfers:

    500 files x 4 KiB;  one 200 MiB file;  both

For each case and store: a fresh sync into an empty bucket, then a no-op re-sync, as fresh
processes; then the same no-op in a warm process (clients built, as the TUI calls it). Beside the
CLI no-op, its floor: a fresh process that only imports the store's SDK and builds its client
(``open_store``), and how far above it the no-op is (the target: 0.05 s at most).

This machine's host is shared, and a run's speed drifts by 2x within minutes (seen as ``steal``
in /proc/stat, printed per row). So the tools are paired: in each of ``--reps`` (3) repetitions
both run the same case, each going first in every other one, and the ratio ours/rclone (below
1.0: we are faster) is the median of the repetitions' ratios, printed with their range. Each
no-op is paired with a floor run right after it, ``--noop-pairs`` (3) times per repetition.

    .venv/bin/python bench/sync_vs_rclone.py [--reps 3] [--only s3,gcs,azure] [--small]

rclone (Debian's 1.60 package, `make system-deps`) is set up the way LOCAL_CLOUD.md says works
here: ``env -u AWS_CA_BUNDLE``, ``--s3-no-head`` against moto, an account SAS URL for Azurite.
"""

from __future__ import annotations

import argparse
import compileall
import datetime as dt
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests import servers  # noqa: E402

MIB = 1024 * 1024


def make_trees(base: Path, big_mib: int, small_files: int) -> dict[str, Path]:
    small = base / "small"
    for i in range(small_files):
        path = small / f"d{i % 10}" / f"file-{i:04d}.bin"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(os.urandom(4096))
    big = base / "big"
    big.mkdir()
    with open(big / "model.bin", "wb") as out:
        for _ in range(big_mib):
            out.write(os.urandom(MIB))
    both = base / "both"
    shutil.copytree(small, both / "small")
    os.link(big / "model.bin", both / "model.bin")
    return {f"{small_files} x 4 KiB": small, f"one {big_mib} MiB": big,
            f"{small_files} x 4 KiB + {big_mib} MiB": both}


class Backend:
    """One stand-in: how to make and drop buckets, and how rclone and we name them."""

    def __init__(self, name: str, env: dict[str, str], rclone_env: dict[str, str],
                 rclone_flags: list[str], make: Callable[[str], None],
                 drop: Callable[[str], None], ours: Callable[[str], str],
                 theirs: Callable[[str], str], server: servers.Server,
                 list_url: Callable[[str], str], one_core: bool) -> None:
        self.name, self.env, self.rclone_env, self.rclone_flags = name, env, rclone_env, rclone_flags
        self.make, self.drop, self.ours, self.theirs = make, drop, ours, theirs
        #: ``list_url(bucket)``: the listing of the synced prefix as one plain GET (no SDK)
        self.server, self.list_url = server, list_url
        #: the server runs on one core (moto: Python's GIL; Azurite: node's event loop), so
        #: its CPU time is a floor under any client's wall time
        self.one_core = one_core

    def server_cpu(self) -> float:
        """CPU seconds the server's processes have used so far (from /proc)."""
        total = 0.0
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            fields = stat[stat.rfind(")") + 2:].split()
            if int(fields[2]) == self.server.proc.pid:       # its process group
                total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        return total

    def list_alone(self, bucket: str) -> float:
        """Seconds the server takes to answer the destination's listing: one GET, no SDK
        (a no-op cannot cost less above its floor than this)."""
        start = time.perf_counter()
        with urllib.request.urlopen(self.list_url(bucket), timeout=60) as resp:
            resp.read()
        return time.perf_counter() - start


def s3_backend(server: servers.Server) -> Backend:
    env = {"AWS_ENDPOINT_URL": server.url, "AWS_ACCESS_KEY_ID": "testing",
           "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}
    os.environ.update(env)
    import boto3

    client = boto3.client("s3")

    def drop(bucket: str) -> None:
        servers.moto_reset(server.url)         # frees the memory of 200 MiB objects

    rclone_env = {"RCLONE_CONFIG_BENCHS3_TYPE": "s3", "RCLONE_CONFIG_BENCHS3_PROVIDER": "Other",
                  "RCLONE_CONFIG_BENCHS3_ACCESS_KEY_ID": "testing",
                  "RCLONE_CONFIG_BENCHS3_SECRET_ACCESS_KEY": "testing",
                  "RCLONE_CONFIG_BENCHS3_ENDPOINT": server.url,
                  "RCLONE_CONFIG_BENCHS3_REGION": "us-east-1",
                  "RCLONE_CONFIG_BENCHS3_FORCE_PATH_STYLE": "true"}
    return Backend("moto S3", env, rclone_env, ["--s3-no-head"],
                   lambda b: client.create_bucket(Bucket=b), drop,
                   lambda b: f"s3://{b}/data", lambda b: f"benchs3:{b}/data", server,
                   lambda b: f"{server.url}/{b}?list-type=2&prefix=data/", one_core=True)


def gcs_backend(server: servers.Server) -> Backend:
    env = {"STORAGE_EMULATOR_HOST": server.url, "GOOGLE_CLOUD_PROJECT": "bench"}
    os.environ.update(env)
    from google.cloud import storage

    client = storage.Client()

    def drop(bucket: str) -> None:
        b = client.bucket(bucket)
        for blob in client.list_blobs(bucket):
            blob.delete()
        b.delete()

    rclone_env = {"RCLONE_CONFIG_BENCHGS_TYPE": "google cloud storage",
                  "RCLONE_CONFIG_BENCHGS_ANONYMOUS": "true",
                  "RCLONE_CONFIG_BENCHGS_ENDPOINT": f"{server.url}/storage/v1/",
                  "RCLONE_CONFIG_BENCHGS_PROJECT_NUMBER": "bench",
                  "RCLONE_CONFIG_BENCHGS_BUCKET_POLICY_ONLY": "true"}
    return Backend("fake-gcs-server", env, rclone_env, [],
                   lambda b: client.create_bucket(b), drop,
                   lambda b: f"gs://{b}/data", lambda b: f"benchgs:{b}/data", server,
                   lambda b: f"{server.url}/storage/v1/b/{b}/o?prefix=data/", one_core=False)


def azure_backend(server: servers.Server) -> Backend:
    conn = server.extra["connection_string"]
    env = {"AZURE_STORAGE_CONNECTION_STRING": conn}
    os.environ.update(env)
    from azure.storage.blob import (
        AccountSasPermissions,
        BlobServiceClient,
        ResourceTypes,
        generate_account_sas,
    )

    service = BlobServiceClient.from_connection_string(conn)
    sas = generate_account_sas(
        servers.AZURITE_ACCOUNT, servers.AZURITE_KEY,
        resource_types=ResourceTypes(service=True, container=True, object=True),
        permission=AccountSasPermissions(read=True, write=True, delete=True, list=True,
                                         add=True, create=True),
        expiry=dt.datetime.now(dt.UTC) + dt.timedelta(hours=6))
    sas_url = f"{server.url}/{servers.AZURITE_ACCOUNT}?{sas}"
    rclone_env = {"RCLONE_CONFIG_BENCHAZ_TYPE": "azureblob",
                  "RCLONE_CONFIG_BENCHAZ_SAS_URL": sas_url}
    return Backend("Azurite", env, rclone_env, [],
                   lambda b: service.create_container(b),
                   lambda b: service.delete_container(b),
                   lambda b: f"az://{b}/data", lambda b: f"benchaz:{b}/data", server,
                   lambda b: (f"{server.url}/{servers.AZURITE_ACCOUNT}/{b}?restype=container"
                              f"&comp=list&prefix=data/&include=metadata&{sas}"),
                   one_core=True)


def timed(argv: list[str], env: dict[str, str]) -> tuple[float, str]:
    start = time.perf_counter()
    proc = subprocess.run(argv, env=env, capture_output=True, text=True, cwd=ROOT)
    took = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(argv[:4])} ... failed ({proc.returncode}): "
                           f"{proc.stderr[-800:]}")
    return took, proc.stdout


def run_ours(tree: Path, uri: str, files: int, fresh: bool) -> float:
    env = dict(os.environ)
    took, out = timed([sys.executable, "-m", "providers.sync_cli", str(tree), uri, "--json",
                       "--transfers", "4"], env)
    result = json.loads(out)
    expected = files if fresh else 0
    if result["copied"] != expected or not result["ok"]:
        raise RuntimeError(f"ours copied {result['copied']} (expected {expected}): "
                           f"{result['errors'][:3]}")
    return took


# as the CLI runs (providers.oneshot: its collector policy, also at exit), doing only this
FLOOR = ("import sys; from providers.oneshot import run_once; "
         "from providers.storage import open_store; "
         "sys.exit(run_once(lambda: open_store(sys.argv[1]) and 0))")


def run_floor(uri: str) -> float:
    """Interpreter + the store's SDK import + its client, and nothing else."""
    took, _ = timed([sys.executable, "-c", FLOOR, uri], dict(os.environ))
    return took


def run_in_process(tree: Path, uri: str) -> float:
    """The same no-op sync called in a warm process (SDK loaded), as the TUI would call it."""
    from providers.sync import sync

    sync(str(tree), uri, transfers=4)           # warm: SDK imported, client built
    start = time.perf_counter()
    result = sync(str(tree), uri, transfers=4)
    took = time.perf_counter() - start
    if result.copied or not result.ok:
        raise RuntimeError(f"in-process no-op copied {result.copied}: {result.errors[:3]}")
    return took


def run_rclone(backend: Backend, tree: Path, remote: str) -> float:
    env = {k: v for k, v in os.environ.items() if k != "AWS_CA_BUNDLE"}
    env.update(backend.rclone_env)
    took, _ = timed(["rclone", "sync", str(tree), remote, "--transfers", "4",
                     "--config", "/dev/null", *backend.rclone_flags], env)
    return took


def spread(ratios: list[float]) -> str:
    """The median of paired ratios and their range: "0.93 (0.71-1.20)"."""
    return f"{statistics.median(ratios):.2f} ({min(ratios):.2f}-{max(ratios):.2f})"


class Steal:
    """The share of this machine's CPU time that its host gave to other guests since this was
    made (``steal`` in /proc/stat): a noisy neighbour shows here, not in our timings' names."""

    def __init__(self) -> None:
        self.start = self._read()

    @staticmethod
    def _read() -> list[int]:
        with open("/proc/stat") as stat:
            return [int(x) for x in stat.readline().split()[1:]]

    def share(self) -> float:
        now = self._read()
        delta = [b - a for a, b in zip(self.start, now, strict=True)]
        return delta[7] / max(1, sum(delta[:8]))        # steal over user..steal


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--noop-pairs", type=int, default=3,
                        help="CLI no-op / floor pairs per repetition (they take a second)")
    parser.add_argument("--only", default="s3,gcs,azure")
    parser.add_argument("--cases", default="small,big,both", help="which trees to sync")
    parser.add_argument("--small", action="store_true", help="20 MiB and 100 files (a check)")
    args = parser.parse_args()
    if not shutil.which("rclone"):
        print("rclone not found: run `make system-deps` (apt-get install rclone)",
              file=sys.stderr)
        return 2
    # Bytecode as a wheel install leaves it (pip compiles it). Without it, a machine with
    # PYTHONDONTWRITEBYTECODE set compiles our modules again in every process: 10-20 ms of
    # each CLI run and floor that no installed dqlctl pays.
    for package in ("providers", "dqlctl"):
        compileall.compile_dir(ROOT / package, quiet=1)
    work = Path(tempfile.mkdtemp(prefix="dqlctl-bench-"))
    started: list[servers.Server] = []
    try:
        trees = make_trees(work / "trees", 20 if args.small else 200, 100 if args.small else 500)
        wanted = args.cases.split(",")
        trees = {name: tree for (kind, (name, tree)) in zip(("small", "big", "both"),
                                                            trees.items(), strict=True)
                 if kind in wanted}
        counts = {name: sum(1 for p in tree.rglob("*") if p.is_file())
                  for name, tree in trees.items()}
        backends = []
        for kind in args.only.split(","):
            if kind == "s3":
                started.append(servers.start_moto(work / "moto"))
                backends.append(s3_backend(started[-1]))
            elif kind == "gcs":
                started.append(servers.start_fake_gcs(work / "gcs"))
                backends.append(gcs_backend(started[-1]))
            elif kind == "azure":
                started.append(servers.start_azurite(work / "azurite"))
                backends.append(azure_backend(started[-1]))
        rows = []
        for case, tree in trees.items():
            for backend in backends:
                samples: dict[str, list[float]] = {
                    "ours fresh": [], "ours noop": [], "rclone fresh": [], "rclone noop": [],
                    "ours noop in-process": [], "floor": [], "server cpu ours": [],
                    "server cpu rclone": [], "list alone": [], "above": []}
                stolen = Steal()
                for rep in range(args.reps):
                    # each tool goes first in every other repetition: a drift of the host's
                    # speed within a repetition then favours neither
                    for tool in ("rclone", "ours") if rep % 2 == 0 else ("ours", "rclone"):
                        bucket = f"bench-{uuid.uuid4().hex[:10]}"
                        backend.make(bucket)
                        try:
                            cpu = backend.server_cpu()
                            if tool == "ours":
                                samples["ours fresh"].append(
                                    run_ours(tree, backend.ours(bucket), counts[case], True))
                                samples["server cpu ours"].append(backend.server_cpu() - cpu)
                                samples["ours noop in-process"].append(
                                    run_in_process(tree, backend.ours(bucket)))
                                for _ in range(args.noop_pairs):     # each no-op, its floor
                                    noop = run_ours(tree, backend.ours(bucket), counts[case],
                                                    False)
                                    floor = run_floor(backend.ours(bucket))
                                    samples["ours noop"].append(noop)
                                    samples["floor"].append(floor)
                                    samples["above"].append(noop - floor)
                                samples["list alone"].append(backend.list_alone(bucket))
                            else:
                                remote = backend.theirs(bucket)
                                samples["rclone fresh"].append(run_rclone(backend, tree, remote))
                                samples["server cpu rclone"].append(backend.server_cpu() - cpu)
                                samples["rclone noop"].append(run_rclone(backend, tree, remote))
                        finally:
                            backend.drop(bucket)
                med = {k: statistics.median(v) for k, v in samples.items()}
                # ratios of the runs paired in one repetition, then their median and range
                pairs = args.noop_pairs
                ratios = {
                    "fresh": [o / r for o, r in zip(samples["ours fresh"],
                                                    samples["rclone fresh"], strict=True)],
                    "noop": [statistics.median(samples["ours noop"][i * pairs:(i + 1) * pairs])
                             / r for i, r in enumerate(samples["rclone noop"])],
                    "in-process": [o / r for o, r in zip(samples["ours noop in-process"],
                                                         samples["rclone noop"], strict=True)]}
                rows.append((case, backend, med, ratios, stolen.share()))
                print(f"  {case:28} {backend.name:16} fresh {med['ours fresh']:6.2f} / "
                      f"{med['rclone fresh']:6.2f} ({spread(ratios['fresh'])})   no-op "
                      f"{med['ours noop']:5.2f} / {med['rclone noop']:5.2f}  floor "
                      f"{med['floor']:.2f} above {med['above']:+.3f}  (in-process "
                      f"{med['ours noop in-process']:.3f})  server CPU "
                      f"{med['server cpu ours']:.2f} / {med['server cpu rclone']:.2f}  listing "
                      f"alone {med['list alone']:.3f}  stolen {stolen.share():.0%}",
                      file=sys.stderr, flush=True)
        print(f"\n{args.reps} repetitions, seconds, 4 transfers; each tool first in every "
              "other one. Times are medians; ratio = ours / rclone (below 1.0: ours is faster), "
              "the median of the ratios of the runs paired in one repetition, with their range "
              "(the noise of this machine). floor = a fresh process importing the store's SDK "
              "and building its client; above = CLI no-op - floor, the median of "
              f"{args.noop_pairs} no-op / floor pairs per repetition (target <= 0.05). "
              "in-process = the no-op in a warm process (clients built, as in the TUI). "
              "stolen = the share of this machine's CPU time its host gave to others while "
              "the row ran.\n")
        print("| data | store | ours fresh | rclone fresh | ratio (range) | ours no-op | "
              "rclone no-op | ratio | floor | above floor | in-process no-op | ratio | stolen |")
        print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
        for case, backend, med, ratios, stolen_share in rows:
            print(f"| {case} | {backend.name} | {med['ours fresh']:.2f} | "
                  f"{med['rclone fresh']:.2f} | {spread(ratios['fresh'])} | "
                  f"{med['ours noop']:.2f} | {med['rclone noop']:.2f} | "
                  f"{statistics.median(ratios['noop']):.2f} | {med['floor']:.2f} | "
                  f"{med['above']:+.3f} | {med['ours noop in-process']:.3f} | "
                  f"{statistics.median(ratios['in-process']):.2f} | {stolen_share:.0%} |")
        print("\nWhat the stand-ins allow. server CPU = CPU seconds the server spent on the "
              "fresh sync (ours / rclone's). A server on one core (moto, Azurite) cannot "
              "answer faster than that, so no client whose start costs the floor can finish "
              "a fresh sync before floor + server CPU: the best ratio open to it is that over "
              "rclone's. listing alone = the server's answer to the destination's listing as "
              "one plain GET: the least a no-op can cost above its floor; beyond it = above "
              "floor - listing alone, what our client adds to the floor and the server's "
              "answer.\n")
        print("| data | store | server CPU ours | server CPU rclone | best fresh ratio possible "
              "| listing alone | above floor | beyond it |")
        print("|---|---|---|---|---|---|---|---|")
        for case, backend, med, _, _ in rows:
            best = (f"{(med['floor'] + med['server cpu ours']) / med['rclone fresh']:.2f}"
                    if backend.one_core else "- (server on many cores)")
            print(f"| {case} | {backend.name} | {med['server cpu ours']:.2f} | "
                  f"{med['server cpu rclone']:.2f} | {best} | {med['list alone']:.3f} | "
                  f"{med['above']:+.3f} | {med['above'] - med['list alone']:+.3f} |")
    finally:
        for server in started:
            server.stop()
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
