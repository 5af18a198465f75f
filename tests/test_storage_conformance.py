"""One conformance suite, every store (rclone's ``fstests``): local disk, S3 on moto server,
GCS on fake-gcs-server, Azure Blob on Azurite, each through its official SDK.

Every case runs on a fresh bucket/container. Servers start on first use (tests/conftest.py).
"""

from __future__ import annotations

import hashlib
import io
import os
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from providers.storage import CRC32C, MD5, StorageError, Store, open_store

BACKENDS = ["local", "s3", "gcs", "azure"]
CLOUDS = ["s3", "gcs", "azure"]
SCHEME = {"local": "file", "s3": "s3", "gcs": "gs", "azure": "az"}
MIB = 1024 * 1024
SMALL_PARTS = {
    "s3": {"multipart_threshold": 8 * MIB, "buffer_limit": 8 * MIB, "part_size": 5 * MIB},
    "gcs": {"multipart_threshold": 8 * MIB, "buffer_limit": 8 * MIB, "part_size": 8 * MIB},
    "azure": {"multipart_threshold": 8 * MIB, "buffer_limit": 8 * MIB, "part_size": 4 * MIB},
}

NAMES = [
    "plain.txt",
    "with space/and more spaces.csv",
    "unicodé/日本語/файл ü.bin",
    "deep/" + "/".join(f"level{i}" for i in range(12)) + "/leaf.dat",
    "symbols/a+b=c&d;e,f@g!h'(i)~.txt",
    "empty.bin",
]


def new_bucket(kind: str, tmp_path: Path, request: pytest.FixtureRequest) -> str:
    """A fresh, empty bucket/container (or folder) on ``kind``; returns its URI."""
    name = f"dql-{uuid.uuid4().hex[:12]}"
    if kind == "local":
        folder = tmp_path / name
        folder.mkdir()
        return str(folder)
    if kind == "s3":
        request.getfixturevalue("aws_env")
        import boto3

        boto3.client("s3").create_bucket(Bucket=name)
        return f"s3://{name}"
    if kind == "gcs":
        request.getfixturevalue("gcs_env")
        from google.cloud import storage

        storage.Client().create_bucket(name)
        return f"gs://{name}"
    request.getfixturevalue("azure_env")
    from azure.storage.blob import BlobServiceClient

    BlobServiceClient.from_connection_string(
        os.environ["AZURE_STORAGE_CONNECTION_STRING"]).create_container(name)
    return f"az://{name}"


@pytest.fixture(params=BACKENDS)
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    """A store on a fresh bucket of each backend in turn."""
    uri = new_bucket(request.param, tmp_path, request)
    if request.param == "local":
        from providers.storage.local import LocalStore

        st: Store = LocalStore(uri)
    else:
        # parts smaller than the defaults, so that 30 MB takes several (S3's minimum is 5 MiB)
        st, key = open_store(uri, **SMALL_PARTS[request.param])
        assert key == ""
    assert st.scheme == SCHEME[request.param]
    yield st
    st.close()


def content(name: str) -> bytes:
    return b"" if name == "empty.bin" else (name.encode() * 37)[:1000 + len(name)]


def md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


def check_hashes(st: Store, info_hashes: dict[str, str], data: bytes) -> None:
    """Every reported hash is declared by the store and is right."""
    assert set(info_hashes) <= st.hash_types
    if MD5 in info_hashes:
        assert info_hashes[MD5] == md5(data)
    if CRC32C in info_hashes:
        import google_crc32c

        assert info_hashes[CRC32C] == f"{google_crc32c.value(data):08x}"


def test_names_empty_files_list_stat_read(store: Store) -> None:
    for name in NAMES:
        info = store.put_bytes(name, content(name), mtime=1_700_000_000.5)
        assert info.size == len(content(name))
    listed = {o.key: o for o in store.list()}
    assert sorted(listed) == sorted(NAMES)
    for name in NAMES:
        data = content(name)
        assert listed[name].size == len(data)
        check_hashes(store, listed[name].hashes, data)
        stat = store.stat(name)
        assert stat.size == len(data)
        check_hashes(store, stat.hashes, data)
        if store.hash_types:           # a cloud: it declares md5 and its stat has it
            assert stat.hashes[MD5] == md5(data)
        assert store.get_bytes(name) == data
    # a prefix lists only what is under it, recursively
    assert [o.key for o in store.list("deep/")] == [NAMES[3]]
    assert [o.key for o in store.list("unicodé/")] == [NAMES[2]]
    assert list(store.list("nothing-here/")) == []
    # a prefix with spaces, symbols and non-ASCII lists (the query is encoded, and signed, right)
    for name in NAMES[1:3] + NAMES[4:5]:
        assert [o.key for o in store.list(name[:-3])] == [name], name
    with pytest.raises(StorageError) as err:
        store.stat("no/such/key")
    assert err.value.code == 2


def test_unsafe_keys_are_data_not_paths(store: Store, tmp_path: Path) -> None:
    """Every backend: a key that would leave a local folder is refused when it becomes a
    local path (``providers.storage.keys``); clouds keep such keys as plain data."""
    from providers.storage import UnsafeKey, local_path

    hostile = "results/../../escaped.txt"
    if store.scheme == "file":
        with pytest.raises(UnsafeKey):
            store.put_bytes(hostile, b"x")
    elif store.scheme != "az":          # Azure's SDK normalises dot segments out of URLs
        store.put_bytes(hostile, b"x")
        assert [o.key for o in store.list("results/")] == [hostile]
    with pytest.raises(UnsafeKey):
        local_path(tmp_path / "out", hostile[len("results/"):])
    assert list(tmp_path.rglob("escaped.txt")) == []


def test_a_30mb_object_goes_up_in_parts(store: Store, tmp_path: Path) -> None:
    data = os.urandom(30 * MIB)
    path = tmp_path / "big.bin"
    path.write_bytes(data)
    info = store.put("big/big file.bin", path, mtime=path.stat().st_mtime)
    assert info.size == len(data) and info.hashes[MD5] == md5(data)
    if store.scheme != "file":
        assert store.calls["put_part"] >= 2, store.calls     # multipart / blocks / chunks
    stat = store.stat("big/big file.bin")
    assert stat.size == len(data)
    check_hashes(store, stat.hashes, data)
    if store.hash_types:
        assert stat.hashes[MD5] == md5(data)   # S3 from our metadata, Azure set on commit
    digest = hashlib.md5()
    with store.open_read("big/big file.bin") as reader:
        while chunk := reader.read(4 * MIB):
            digest.update(chunk)
    assert digest.hexdigest() == md5(data)
    # the same from a stream of unknown size that cannot seek (cloud -> cloud copies)
    class Stream(io.RawIOBase):
        def __init__(self) -> None:
            self.inner = io.BytesIO(data)

        def readable(self) -> bool:
            return True

        def read(self, n: int = -1) -> bytes:
            return self.inner.read(min(n, 1 * MIB) if n and n > 0 else -1)

    info = store.put("big/streamed.bin", Stream())
    assert info.size == len(data) and info.hashes[MD5] == md5(data)
    if store.hash_types:
        assert store.stat("big/streamed.bin").hashes[MD5] == md5(data)
    assert store.read_range("big/streamed.bin", 17 * MIB - 3, 10) == data[17 * MIB - 3:17 * MIB + 7]


def test_pagination_over_1000_objects(store: Store) -> None:
    keys = [f"many/{i // 100:02d}/obj-{i:05d}.txt" for i in range(1050)]
    with ThreadPoolExecutor(16) as pool:
        list(pool.map(lambda k: store.put_bytes(k, k.encode()), keys))
    before = store.calls["list_page"]
    listed = list(store.list("many/"))
    assert [o.key for o in listed] == sorted(keys)
    assert all(o.size == len(o.key) for o in listed)
    if store.scheme != "file":
        assert store.calls["list_page"] - before >= 2     # more than one page


def test_overwrite_replaces_content_size_and_hash(store: Store) -> None:
    store.put_bytes("x/obj", b"first version, longer")
    store.put_bytes("x/obj", b"second")
    assert store.get_bytes("x/obj") == b"second"
    (info,) = list(store.list("x/"))
    assert info.size == 6
    check_hashes(store, info.hashes, b"second")
    check_hashes(store, store.stat("x/obj").hashes, b"second")


def test_delete(store: Store) -> None:
    store.put_bytes("d/keep", b"1")
    store.put_bytes("d/gone", b"2")
    store.delete("d/gone")
    store.delete("d/never-was")                  # not an error
    assert [o.key for o in store.list("d/")] == ["d/keep"]
    assert not store.exists("d/gone") and store.exists("d/keep")


def test_read_range(store: Store) -> None:
    data = bytes(range(256)) * 40
    store.put_bytes("r/data", data)
    assert store.read_range("r/data", 0, 10) == data[:10]
    assert store.read_range("r/data", 1000, 333) == data[1000:1333]
    assert store.read_range("r/data", len(data) - 5, 100) == data[-5:]
    assert store.read_range("r/data", 5, 0) == b""


def test_hashes_agree_with_content_and_local_md5_is_computable(store: Store) -> None:
    data = b"hash me " * 1000
    put = store.put_bytes("h/obj", data)
    assert put.hashes[MD5] == md5(data)
    (listed,) = list(store.list("h/"))
    check_hashes(store, listed.hashes, data)
    if store.scheme == "file":
        assert store.hash_types == frozenset() and MD5 in store.computable_hashes
        assert store.compute_hash("h/obj", MD5) == md5(data)
    elif store.scheme == "gs":
        assert listed.hashes.keys() == {MD5, CRC32C}
    else:
        assert listed.hashes == {MD5: md5(data)}     # single put: S3 ETag, Azure Content-MD5


def test_a_failed_upload_leaves_the_old_object_whole(store: Store) -> None:
    store.put_bytes("a/obj", b"old")

    class Broken(io.RawIOBase):
        """Gives 20 MiB, then the connection 'drops'."""

        def __init__(self) -> None:
            self.sent = 0

        def readable(self) -> bool:
            return True

        def read(self, n: int = -1) -> bytes:
            if self.sent >= 20 * MIB:
                raise ConnectionResetError("source went away")
            n = min(n if n and n > 0 else MIB, MIB)
            self.sent += n
            return b"x" * n

    with pytest.raises((ConnectionResetError, StorageError)):
        store.put("a/obj", Broken(), size=40 * MIB)
    with pytest.raises((ConnectionResetError, StorageError)):
        store.put("a/new", Broken(), size=40 * MIB)
    assert store.get_bytes("a/obj") == b"old"
    assert [o.key for o in store.list("a/")] == ["a/obj"]


def test_a_file_whose_size_changed_since_it_was_listed_is_refused(store: Store,
                                                                    tmp_path: Path) -> None:
    """A sync puts a file with the size its listing saw: a file that grew or shrank since then
    is refused (and may be retried), never cut to the old size or sent short."""
    path = tmp_path / "model.bin"
    path.write_bytes(b"w" * 5000)
    for listed in (4096, 6000):         # it grew since it was listed; it shrank
        with pytest.raises(StorageError, match="changed"):
            store.put(f"m/{listed}", str(path), size=listed)
    assert [o.key for o in store.list("m/")] == []
    info = store.put("m/ok", str(path), size=5000)
    assert info.size == 5000 and store.get_bytes("m/ok") == b"w" * 5000


@pytest.mark.parametrize("kind", CLOUDS)
def test_a_missing_bucket_is_bad_input(kind: str, request: pytest.FixtureRequest) -> None:
    request.getfixturevalue({"s3": "aws_env", "gcs": "gcs_env", "azure": "azure_env"}[kind])
    st, _ = open_store(f"{SCHEME[kind]}://no-such-bucket-{uuid.uuid4().hex[:8]}/p")
    with pytest.raises(StorageError) as err:
        list(st.list("p/"))
    assert err.value.code == 2 and "does not exist" in str(err.value)


def test_registry_is_lazy_and_schemes_are_checked() -> None:
    import subprocess
    import sys

    probe = ("import sys, providers.storage, providers.sync; "
             "print(sorted(m for m in sys.modules if m.split('.')[0] in "
             "('boto3', 'botocore', 'google', 'azure')))")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                         check=True, cwd=Path(__file__).resolve().parents[1]).stdout
    assert out.strip() == "[]"
    with pytest.raises(StorageError) as err:
        open_store("ftp://host/x")
    assert err.value.code == 2 and "unknown storage scheme" in str(err.value)


def test_s3_files_up_to_the_cutoff_go_in_one_streamed_put(
        tmp_path: Path, request: pytest.FixtureRequest) -> None:
    """Below 200 MiB a file is one PUT (ETag = md5, listable); a stream that cannot seek is
    never held in memory beyond ``buffer_limit``: it goes up in parts."""
    st, _ = open_store(new_bucket("s3", tmp_path, request))
    data = os.urandom(20 * MIB)
    path = tmp_path / "f.bin"
    path.write_bytes(data)
    st.put("f.bin", path)
    assert st.calls["put_part"] == 0
    (listed,) = list(st.list())
    assert listed.hashes == {MD5: md5(data)}
