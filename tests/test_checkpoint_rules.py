"""Checkpoints (engine/checkpoint.py) as a user relies on them: names ordered by env steps, the
newest ``keep`` kept, a write that fails leaves the last good file, an unreadable one is skipped
with a warning, every generator and the environment continue exactly, and the copies on object
storage come back for ``--resume``. Small tensors, one torch thread, no server: ``make
mutation`` runs these once per mutant."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from engine import checkpoint as ckpt
from providers.storage import ObjectInfo, UnsafeKey

torch.set_num_threads(1)


def names(folder: Path) -> list[str]:
    return [p.name for p in ckpt.list_checkpoints(folder)]


# -- names, save, prune ---------------------------------------------------------------------------

def test_a_checkpoint_is_named_by_its_env_steps_in_twelve_digits() -> None:
    assert ckpt.checkpoint_name(7) == "ckpt-000000000007.pt"
    assert ckpt.checkpoint_name(123456789012) == "ckpt-123456789012.pt"


def test_save_writes_a_loadable_checkpoint_of_this_format(tmp_path: Path) -> None:
    folder = tmp_path / "exp" / "checkpoints"              # made on the way
    state = {"w": torch.arange(3), "episode": 4}
    path = ckpt.save(state, folder, 30)
    assert path == folder / "ckpt-000000000030.pt"
    assert state == {"w": state["w"], "episode": 4}        # the caller's dict is left alone
    loaded = ckpt.load(path)
    assert loaded["format"] == ckpt.FORMAT == "dqlctl-checkpoint/1"
    assert loaded["episode"] == 4 and torch.equal(loaded["w"], torch.arange(3))
    assert [p.name for p in folder.iterdir()] == [path.name]   # no temporary file left


def test_only_the_newest_two_are_kept_by_default(tmp_path: Path) -> None:
    for steps in (5, 100, 20):
        ckpt.save({"s": steps}, tmp_path, steps)
    assert names(tmp_path) == ["ckpt-000000000100.pt", "ckpt-000000000020.pt"]


@pytest.mark.parametrize("keep", [1, 3])
def test_save_keeps_as_many_as_asked(tmp_path: Path, keep: int) -> None:
    for steps in (1, 2, 3, 4):
        ckpt.save({"s": steps}, tmp_path, steps, keep=keep)
    assert names(tmp_path) == [ckpt.checkpoint_name(s) for s in (4, 3, 2, 1)][:keep]


def test_checkpoints_are_listed_newest_first_by_steps(tmp_path: Path) -> None:
    for steps in (9, 1000, 10):
        (tmp_path / ckpt.checkpoint_name(steps)).write_bytes(b"x")
    (tmp_path / "ckpt-12.pt").write_bytes(b"x")             # not twelve digits
    (tmp_path / "ckpt-000000000011.pt.bak").write_bytes(b"x")
    (tmp_path / "xckpt-000000000012.pt").write_bytes(b"x")
    (tmp_path / ckpt.checkpoint_name(5000)).mkdir()         # a folder is no checkpoint
    assert names(tmp_path) == ["ckpt-000000001000.pt", "ckpt-000000000010.pt",
                               "ckpt-000000000009.pt"]
    assert ckpt.list_checkpoints(tmp_path / "missing") == []
    assert ckpt.list_checkpoints(tmp_path / "ckpt-12.pt") == []   # a file, not a folder


def test_prune_removes_the_older_and_stale_temporaries_only(tmp_path: Path) -> None:
    for steps in (1, 2, 3):
        (tmp_path / ckpt.checkpoint_name(steps)).write_bytes(b"x")
    (tmp_path / ".ckpt-000000000004.pt.abc.tmp").write_bytes(b"half")   # a crash mid-write
    (tmp_path / "notes.txt").write_text("mine")
    (tmp_path / ".other.tmp").write_text("not ours")
    removed = ckpt.prune(tmp_path, keep=1)
    assert sorted(p.name for p in removed) == ["ckpt-000000000001.pt", "ckpt-000000000002.pt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        ".other.tmp", "ckpt-000000000003.pt", "notes.txt"]
    assert ckpt.prune(tmp_path / "missing") == []


# -- atomic writes --------------------------------------------------------------------------------

def test_a_failed_write_leaves_the_previous_file_and_no_temporary(tmp_path: Path) -> None:
    target = tmp_path / "config.json"
    ckpt.atomic_write_text(target, "old")

    def fail(fh: Any) -> None:
        fh.write(b"half of the new")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        ckpt.atomic_write(target, fail)
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["config.json"]


def test_an_interrupted_write_is_cleaned_up_too(tmp_path: Path) -> None:
    def interrupted(fh: Any) -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        ckpt.atomic_write(tmp_path / "a" / "x.bin", interrupted)
    assert list((tmp_path / "a").iterdir()) == []


def test_atomic_writes_make_the_folder_and_return_the_path(tmp_path: Path) -> None:
    path = ckpt.atomic_write_text(tmp_path / "a" / "b" / "note.txt", "gain: 5 €\n")
    assert path == tmp_path / "a" / "b" / "note.txt"
    assert path.read_bytes() == "gain: 5 €\n".encode()
    saved = ckpt.atomic_torch_save({"t": torch.ones(2)}, tmp_path / "t.pt")
    assert torch.equal(torch.load(saved, weights_only=True)["t"], torch.ones(2))


def test_a_write_in_progress_is_a_hidden_temporary_that_prune_would_clear(
        tmp_path: Path) -> None:
    seen: list[list[str]] = []

    def write(fh: Any) -> None:
        fh.write(b"x")
        seen.append([p.name for p in tmp_path.iterdir()])
        # what prune clears after a crash mid-write
        assert [p.name for p in tmp_path.glob(".ckpt-*.tmp")] == seen[0]

    ckpt.atomic_write(tmp_path / "ckpt-000000000001.pt", write)
    ((name,),) = seen
    assert name.startswith(".ckpt-000000000001.pt.") and name.endswith(".tmp")
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt-000000000001.pt"]


def test_a_checkpoint_another_process_pruned_meanwhile_is_no_error(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for steps in (1, 2, 3):
        ckpt.save({"s": steps}, tmp_path, steps, keep=3)
    listed = ckpt.list_checkpoints(tmp_path)
    listed[-1].unlink()                                      # gone between listing and prune
    monkeypatch.setattr(ckpt, "list_checkpoints", lambda folder: listed)
    assert [p.name for p in ckpt.prune(tmp_path, keep=1)] == [
        "ckpt-000000000002.pt", "ckpt-000000000001.pt"]


def test_fsync_of_a_missing_folder_is_no_error(tmp_path: Path) -> None:
    ckpt.fsync_dir(tmp_path / "missing")
    ckpt.fsync_dir(tmp_path)


# -- load -------------------------------------------------------------------------------------------

def test_a_file_that_is_not_a_checkpoint_is_refused_naming_it(tmp_path: Path) -> None:
    garbage = tmp_path / "ckpt-000000000001.pt"
    garbage.write_bytes(b"not a zip")
    with pytest.raises(ValueError, match=r"^ckpt-000000000001\.pt: unreadable \(.+\)$"):
        ckpt.load(garbage)
    other = ckpt.atomic_torch_save({"format": "other/2"}, tmp_path / "b.pt")
    with pytest.raises(ValueError, match=r"^b\.pt: not a dqlctl-checkpoint/1 checkpoint$"):
        ckpt.load(other)
    a_list = ckpt.atomic_torch_save([1, 2], tmp_path / "c.pt")
    with pytest.raises(ValueError, match="not a dqlctl-checkpoint/1 checkpoint"):
        ckpt.load(a_list)


def test_an_unreadable_files_reason_is_its_first_line_cut_short(tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch
                                                               ) -> None:
    def boom(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("x" * 300 + "\nsecond line")

    monkeypatch.setattr(torch, "load", boom)
    with pytest.raises(ValueError) as info:
        ckpt.load(tmp_path / "a.pt")
    assert str(info.value) == f"a.pt: unreadable ({'x' * 160})"

    def silent(*args: Any, **kwargs: Any) -> Any:
        raise EOFError

    monkeypatch.setattr(torch, "load", silent)
    with pytest.raises(ValueError, match=r"^a\.pt: unreadable \(EOFError\)$"):
        ckpt.load(tmp_path / "a.pt")


def mapped(state: dict[str, Any], path: Path) -> bool:
    """Whether the checkpoint's file is mapped into this process (its tensors not read)."""
    assert state["w"] is not None
    return str(path) in Path("/proc/self/maps").read_text()


def test_load_maps_onto_the_device_asked_and_may_map_the_file(tmp_path: Path) -> None:
    path = ckpt.save({"w": torch.ones(4)}, tmp_path, 1)
    state = ckpt.load(path, "meta")
    assert state["w"].device.type == "meta"
    assert not mapped(ckpt.load(path), path)                # read, by default
    state = ckpt.load(path, mmap=True)
    assert torch.equal(state["w"], torch.ones(4)) and mapped(state, path)
    del state
    found = ckpt.load_latest(tmp_path, print, "meta", mmap=True)
    assert found is not None and found[0]["w"].device.type == "meta"
    del found
    found = ckpt.load_latest(tmp_path, print)
    assert found is not None and not mapped(found[0], path)
    assert found[0]["w"].device.type == "cpu"
    found = ckpt.load_latest(tmp_path, print, mmap=True)
    assert found is not None and mapped(found[0], path)


class Payload:
    """Not a tensor, not a plain container: what weights_only loading refuses to rebuild."""


def test_a_checkpoint_holding_arbitrary_objects_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "ckpt-000000000001.pt"
    torch.save({"format": ckpt.FORMAT, "x": Payload()}, path)
    with pytest.raises(ValueError, match=r"^ckpt-000000000001\.pt: unreadable \("):
        ckpt.load(path)


def test_the_newest_readable_checkpoint_is_used_the_broken_ones_named(tmp_path: Path) -> None:
    ckpt.save({"s": 1, "w": torch.ones(1)}, tmp_path, 100, keep=3)
    ckpt.save({"s": 2, "w": torch.ones(1)}, tmp_path, 200, keep=3)
    newest = ckpt.save({"s": 3, "w": torch.ones(1)}, tmp_path, 300, keep=3)
    newest.write_bytes(newest.read_bytes()[:40])             # truncated by a crash
    warnings: list[str] = []
    found = ckpt.load_latest(tmp_path, warnings.append)
    assert found is not None
    state, path = found
    assert state["s"] == 2 and path == tmp_path / "ckpt-000000000200.pt"
    assert state["w"].device.type == "cpu"
    assert len(warnings) == 1
    assert warnings[0].startswith("skipping checkpoint ckpt-000000000300.pt: unreadable (")
    assert ckpt.load_latest(tmp_path / "none", warnings.append) is None


# -- generators and the environment -----------------------------------------------------------------

def draws() -> list[Any]:
    return [random.random(), random.gauss(0, 1), np.random.rand(2).tolist(),
            np.random.standard_normal(), torch.rand(2).tolist()]


def test_every_generator_continues_exactly_after_a_round_trip(tmp_path: Path) -> None:
    random.seed(3)
    np.random.seed(3)
    torch.manual_seed(3)
    random.gauss(0, 1)                                      # python keeps a spare gauss
    np.random.standard_normal()                             # and so does numpy's legacy one
    path = ckpt.atomic_torch_save({"rng": ckpt.rng_state()}, tmp_path / "rng.pt")
    expected = draws()
    random.seed(99)
    np.random.seed(99)
    torch.manual_seed(99)
    ckpt.set_rng_state(torch.load(path, weights_only=True)["rng"])
    assert draws() == expected


class Env:
    """A vectorised environment without a state_dict of its own (VecTradingEnv's fields)."""

    def __init__(self, n: int = 3) -> None:
        self._t = np.arange(n, dtype=np.int64)
        self._end = np.full(n, 50, dtype=np.int64)
        self._pos = np.zeros(n, dtype=np.int8)
        self._a = np.ones(n, dtype=np.float32)
        self._b = np.ones(n, dtype=np.float64)
        self._ep_ret = np.zeros(n, dtype=np.float64)
        self._ep_len = np.zeros(n, dtype=np.int32)
        self._ready = False
        self._rng = np.random.default_rng(5)

    def step(self) -> list[Any]:
        self._t += 1
        self._pos = self._rng.integers(-1, 2, self._pos.shape).astype(np.int8)
        self._ep_ret += self._rng.random(self._ep_ret.shape)
        return [self._t.copy(), self._pos.copy(), self._ep_ret.copy()]


def test_the_environment_continues_exactly_with_its_dtypes(tmp_path: Path) -> None:
    env = Env()
    env.step()
    env._ready = True
    path = ckpt.atomic_torch_save(ckpt.env_state(env), tmp_path / "env.pt")
    expected = [env.step() for _ in range(5)]
    other = Env()
    ckpt.load_env_state(other, torch.load(path, weights_only=True))
    assert other._ready is True
    again = [other.step() for _ in range(5)]
    for a, b in zip(expected, again, strict=True):
        for x, y in zip(a, b, strict=True):
            assert np.array_equal(x, y)
    assert other._pos.dtype == np.int8 and other._ep_len.dtype == np.int32


def test_one_saved_state_restores_two_environments_alike(tmp_path: Path) -> None:
    env = Env()
    env.step()
    state = torch.load(ckpt.atomic_torch_save(ckpt.env_state(env), tmp_path / "env.pt"),
                       weights_only=True)
    first, second = Env(), Env()
    ckpt.load_env_state(first, state)
    first.step()                                  # stepping one must not move the saved state
    ckpt.load_env_state(second, state)
    assert np.array_equal(second._t, env._t) and np.array_equal(second._ep_ret, env._ep_ret)


def test_an_environment_of_another_size_is_refused(tmp_path: Path) -> None:
    state = torch.load(ckpt.atomic_torch_save(ckpt.env_state(Env(3)), tmp_path / "e.pt"),
                       weights_only=True)
    with pytest.raises(ValueError, match=r"environment state _t: shape \(3,\), expected \(4,\) "
                                         r"\(was n_envs changed\?\)"):
        ckpt.load_env_state(Env(4), state)


def test_an_environment_with_its_own_state_dict_keeps_its_own_state() -> None:
    class Own:
        def __init__(self) -> None:
            self.loaded: Any = None

        def state_dict(self) -> dict[str, Any]:
            return {"t": 7}

        def load_state_dict(self, state: dict[str, Any]) -> None:
            self.loaded = state

    state = ckpt.env_state(Own())
    assert state == {"own": {"t": 7}}
    target = Own()
    ckpt.load_env_state(target, state)
    assert target.loaded == {"t": 7}


def test_generator_states_survive_weights_only_loading(tmp_path: Path) -> None:
    value = {"flag": True, "n": np.uint64(2**64 - 1), "big": 2**70, "name": "pcg",
             "inner": {"arr": np.array([1, 2**63], dtype=np.uint64), "x": 1.5}}
    packed = ckpt._stringify(value)
    loaded = torch.load(ckpt.atomic_torch_save(packed, tmp_path / "g.pt"), weights_only=True)
    back = ckpt._bitgen_unpack(loaded)
    assert back["flag"] is True and back["n"] == 2**64 - 1 and back["big"] == 2**70
    assert back["name"] == "pcg" and back["inner"]["x"] == 1.5
    assert back["inner"]["arr"].dtype == np.uint64
    assert back["inner"]["arr"].tolist() == [1, 2**63]


# -- results on object storage ---------------------------------------------------------------------

class MemoryStore:
    def __init__(self) -> None:
        self.objects: dict[str, bytes] = {}

    def put(self, key: str, local: Path) -> None:
        self.objects[key] = local.read_bytes()

    def delete(self, key: str) -> None:
        self.objects.pop(key, None)

    def list(self, prefix: str) -> list[ObjectInfo]:
        return [ObjectInfo(k, len(v), 0.0) for k, v in sorted(self.objects.items())
                if k.startswith(prefix)]

    def get_bytes(self, key: str) -> bytes:
        return self.objects[key]


@pytest.fixture()
def store(monkeypatch: pytest.MonkeyPatch) -> MemoryStore:
    import providers.storage

    memory = MemoryStore()
    opened: list[str] = []

    def open_store(uri: str) -> tuple[MemoryStore, str]:
        opened.append(uri)
        return memory, uri.partition("://")[2].partition("/")[2]

    monkeypatch.setattr(providers.storage, "open_store", open_store)
    memory.opened = opened  # type: ignore[attr-defined]
    return memory


def test_a_mirrors_location_is_normalised(store: MemoryStore, tmp_path: Path) -> None:
    mirror = ckpt.RemoteMirror("s3://b//runs/expX//")
    assert mirror.uri == "s3://b//runs/expX"
    (tmp_path / "f").write_bytes(b"1")
    mirror.put(tmp_path / "f", "a")
    assert list(store.objects) == ["runs/expX/a"]


def test_a_mirror_puts_and_deletes_under_its_prefix(tmp_path: Path, store: MemoryStore) -> None:
    mirror = ckpt.RemoteMirror("s3://bucket/runs/exp/")
    assert mirror.uri == "s3://bucket/runs/exp"
    assert store.opened == ["s3://bucket/runs/exp"]  # type: ignore[attr-defined]
    (tmp_path / "f").write_bytes(b"1")
    mirror.put(tmp_path / "f", "events.jsonl")
    assert store.objects == {"runs/exp/events.jsonl": b"1"}
    mirror.delete("events.jsonl")
    assert store.objects == {}


def test_a_mirror_at_the_buckets_root_uses_the_bare_names(tmp_path: Path,
                                                         store: MemoryStore) -> None:
    mirror = ckpt.RemoteMirror("s3://bucket")
    (tmp_path / "f").write_bytes(b"1")
    mirror.put(tmp_path / "f", "a/b")
    assert list(store.objects) == ["a/b"]
    assert mirror.fetch_all(tmp_path / "local") == 1
    assert (tmp_path / "local" / "a" / "b").read_bytes() == b"1"


def test_resume_fetches_the_missing_files_and_keeps_the_local_ones(
        tmp_path: Path, store: MemoryStore) -> None:
    store.objects = {"p/exp/": b"", "p/exp/config.json": b"{}", "p/exp/a.json": b"remote",
                     "p/exp/checkpoints/ckpt-000000000010.pt": b"c", "p/other/x": b"no"}
    local = tmp_path / "exp"
    local.mkdir()
    (local / "a.json").write_bytes(b"local")                 # listed first, kept
    assert ckpt.RemoteMirror("s3://b/p/exp").fetch_all(local) == 2
    assert sorted(str(p.relative_to(local)) for p in local.rglob("*") if p.is_file()) == [
        "a.json", "checkpoints/ckpt-000000000010.pt", "config.json"]
    assert (local / "a.json").read_bytes() == b"local"
    assert (local / "checkpoints" / "ckpt-000000000010.pt").read_bytes() == b"c"


def test_resume_refuses_an_unsafe_key_before_writing_anything(tmp_path: Path,
                                                              store: MemoryStore) -> None:
    store.objects = {"p/exp/a.json": b"1", "p/exp/../../escape": b"2"}
    with pytest.raises(UnsafeKey):
        ckpt.RemoteMirror("s3://b/p/exp").fetch_all(tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_resume_fetches_only_missing_checkpoints(tmp_path: Path, store: MemoryStore) -> None:
    store.objects = {"p/checkpoints/a-notes.txt": b"no",
                     "p/checkpoints/ckpt-000000000010.pt": b"ten",
                     "p/checkpoints/ckpt-000000000020.pt": b"twenty",
                     "p/checkpoints/notes.txt": b"no", "p/checkpoints/old/x.pt": b"no",
                     "p/config.json": b"no"}
    local = tmp_path / "new" / "checkpoints"                 # made on the way
    (local.parent).mkdir()
    local.mkdir()
    (local / "ckpt-000000000020.pt").write_bytes(b"mine")
    store.objects["p/checkpoints/ckpt-000000000030.pt"] = b"thirty"   # after one kept
    assert ckpt.RemoteMirror("s3://b/p").fetch_checkpoints(local) == 2
    assert sorted(p.name for p in local.iterdir()) == [
        "ckpt-000000000010.pt", "ckpt-000000000020.pt", "ckpt-000000000030.pt"]
    assert (local / "ckpt-000000000010.pt").read_bytes() == b"ten"
    assert (local / "ckpt-000000000020.pt").read_bytes() == b"mine"
    assert ckpt.RemoteMirror("s3://b/p").fetch_checkpoints(tmp_path / "x" / "y") == 3


def test_a_mirror_on_a_local_folder_round_trips(tmp_path: Path) -> None:
    remote = tmp_path / "remote"
    mirror = ckpt.RemoteMirror(f"file://{remote}/")
    path = ckpt.save({"s": 1}, tmp_path / "stage", 10)
    mirror.put(path, "checkpoints/" + path.name)
    assert (remote / "checkpoints" / path.name).read_bytes() == path.read_bytes()
    assert mirror.fetch_checkpoints(tmp_path / "resume") == 1
    assert ckpt.load_latest(tmp_path / "resume", print) is not None
