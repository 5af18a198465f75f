"""Checkpoints that continue a run bit-exactly, written so that a crash never leaves a bad one.

A checkpoint (``<experiment>/checkpoints/ckpt-<env steps, 12 digits>.pt``, a ``torch.save`` dict
loadable with ``weights_only=True``) holds the networks, the optimiser, the replay buffer, the
n-step accumulator, the environments' state and generators, every RNG (python, numpy, torch CPU
and CUDA, the trainer's own generator), the loop counters (episode, step within it, env steps,
samples owed to the replay ratio; the epsilon schedule is a pure function of env steps), the
best weights so far with their validation score, the early-stopping counter, and the history.

Writing is atomic: the bytes go to a temporary file in the same folder, are flushed and fsynced,
then ``os.replace``-d over the final name and the folder is fsynced; only the newest ``KEEP``
complete checkpoints are kept. A checkpoint that cannot be read back (a file truncated by a
crash mid-copy, a disk error) is skipped with a warning and the next older one is used.

With results on object storage (``--results_dir s3://...``) the local experiment folder is a
staging copy and each checkpoint is also uploaded as one object put (readers see all of it or
nothing); ``--resume`` then looks there too.
"""

from __future__ import annotations

import os
import random
import re
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

KEEP = 2
FORMAT = "dqlctl-checkpoint/1"
CKPT_DIR = "checkpoints"
_NAME = re.compile(r"^ckpt-(\d{12})\.pt$")


def checkpoint_name(env_steps: int) -> str:
    return f"ckpt-{env_steps:012d}.pt"


def fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write(path: Path, write: Callable[[Any], None]) -> Path:
    """Call ``write(fh)`` on a temporary file next to ``path``, fsync, then rename it to ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    fsync_dir(path.parent)
    return path


def atomic_torch_save(obj: Any, path: Path) -> Path:
    return atomic_write(path, lambda fh: torch.save(obj, fh))


def atomic_write_text(path: Path, text: str) -> Path:
    return atomic_write(path, lambda fh: fh.write(text.encode("utf-8")))


def list_checkpoints(folder: Path) -> list[Path]:
    """Complete-looking checkpoint files in ``folder``, newest (most env steps) first."""
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in folder.iterdir()
             if (m := _NAME.match(p.name)) and p.is_file()]
    return [p for _, p in sorted(found, reverse=True)]


def prune(folder: Path, keep: int = KEEP) -> list[Path]:
    """Delete all but the newest ``keep`` checkpoints (and stale temporary files)."""
    removed = []
    for p in list_checkpoints(folder)[keep:]:
        p.unlink(missing_ok=True)
        removed.append(p)
    for p in folder.glob(".ckpt-*.tmp") if folder.is_dir() else []:
        p.unlink(missing_ok=True)
    return removed


def save(state: dict[str, Any], folder: Path, env_steps: int, keep: int = KEEP) -> Path:
    """Write ``state`` as the checkpoint at ``env_steps`` atomically; keep the newest ``keep``."""
    state = dict(state, format=FORMAT)
    path = atomic_torch_save(state, folder / checkpoint_name(env_steps))
    prune(folder, keep)
    return path


def load(path: Path, map_location: str | torch.device = "cpu", *,
         mmap: bool = False) -> dict[str, Any]:
    """One checkpoint; ValueError if it is not a readable checkpoint of this format.
    ``mmap``: map the tensors instead of reading them (cheap, to look at the config)."""
    try:
        state = torch.load(path, map_location=map_location, weights_only=True, mmap=mmap)
    except Exception as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ValueError(f"{path.name}: unreadable ({first[:160]})") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise ValueError(f"{path.name}: not a {FORMAT} checkpoint")
    return state


def load_latest(folder: Path, warn: Callable[[str], None],
                map_location: str | torch.device = "cpu", *, mmap: bool = False
                ) -> tuple[dict[str, Any], Path] | None:
    """The newest checkpoint in ``folder`` that loads; unreadable newer ones are skipped with a
    warning. None when there is none."""
    for path in list_checkpoints(folder):
        try:
            return load(path, map_location, mmap=mmap), path
        except ValueError as exc:
            warn(f"skipping checkpoint {exc}")
    return None


# -- RNG state ------------------------------------------------------------------------------

def rng_state() -> dict[str, Any]:
    """Python, numpy (global) and torch (CPU, CUDA) generator states, weights_only-safe."""
    version, internal, gauss = random.getstate()
    np_state = np.random.get_state(legacy=False)
    state: dict[str, Any] = {
        "python": [version, list(internal), gauss],
        "numpy": {"bit_generator": np_state["bit_generator"],
                  "key": [int(k) for k in np_state["state"]["key"]],
                  "pos": int(np_state["state"]["pos"]), "has_gauss": int(np_state["has_gauss"]),
                  "gauss": float(np_state["gauss"])},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    version, internal, gauss = state["python"]
    random.setstate((int(version), tuple(int(v) for v in internal), gauss))
    n = state["numpy"]
    np.random.set_state({"bit_generator": n["bit_generator"],
                         "state": {"key": np.asarray(n["key"], dtype=np.uint32),
                                   "pos": int(n["pos"])},
                         "has_gauss": int(n["has_gauss"]), "gauss": float(n["gauss"])})
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# -- environment state ------------------------------------------------------------------------

# VecTradingEnv's episode state (used when the environment has no state_dict of its own).
_ENV_ARRAYS = ("_t", "_end", "_pos", "_a", "_b", "_ep_ret", "_ep_len")


def env_state(env: Any) -> dict[str, Any]:
    """Everything that makes a vectorised environment's next steps what they will be."""
    own = getattr(env, "state_dict", None)
    if callable(own):
        return {"own": own()}
    out: dict[str, Any] = {name: torch.from_numpy(np.array(getattr(env, name)))
                           for name in _ENV_ARRAYS}
    out["_ready"] = bool(env._ready)
    out["rng"] = _bitgen_state(env._rng)
    return out


def load_env_state(env: Any, state: dict[str, Any]) -> None:
    if "own" in state:
        env.load_state_dict(state["own"])
        return
    for name in _ENV_ARRAYS:
        current = getattr(env, name)
        value = state[name].numpy().astype(current.dtype, copy=True)
        if value.shape != current.shape:
            raise ValueError(f"environment state {name}: shape {value.shape}, expected "
                             f"{current.shape} (was n_envs changed?)")
        setattr(env, name, value)
    env._ready = bool(state["_ready"])
    env._rng.bit_generator.state = _bitgen_unpack(state["rng"])


def _bitgen_state(gen: np.random.Generator) -> dict[str, Any]:
    """A numpy Generator's state with its big integers as strings (weights_only-safe)."""
    return _stringify(gen.bit_generator.state)


def _stringify(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _stringify(v) for k, v in value.items()}
    if isinstance(value, bool):
        return value
    if isinstance(value, int | np.integer):
        return {"__int__": str(int(value))}
    if isinstance(value, np.ndarray):
        return {"__array__": [str(int(v)) for v in value.ravel()], "dtype": str(value.dtype)}
    return value


def _bitgen_unpack(value: Any) -> Any:
    if isinstance(value, dict):
        if "__int__" in value:
            return int(value["__int__"])
        if "__array__" in value:
            return np.array([int(v) for v in value["__array__"]], dtype=value["dtype"])
        return {k: _bitgen_unpack(v) for k, v in value.items()}
    return value


# -- results on object storage ------------------------------------------------------------------

class RemoteMirror:
    """Copies of an experiment folder's files on object storage (``s3://``, ``gs://``, ``az://``).

    ``put`` uploads one local file as one object (atomic for readers); ``fetch_checkpoints``
    brings the remote checkpoints into the local staging folder for ``--resume``.
    """

    def __init__(self, uri: str) -> None:
        from providers.storage import open_store

        self.uri = uri.rstrip("/")
        self.store, self.prefix = open_store(self.uri)
        self.prefix = self.prefix.strip("/")

    def _key(self, rel: str) -> str:
        return f"{self.prefix}/{rel}" if self.prefix else rel

    def put(self, local: Path, rel: str) -> None:
        self.store.put(self._key(rel), local)

    def delete(self, rel: str) -> None:
        self.store.delete(self._key(rel))

    def fetch_all(self, local_folder: Path) -> int:
        """Download every remote file of the experiment missing locally (``--resume`` on a new
        machine: earlier events, config and checkpoints); how many were fetched."""
        from providers.storage import local_path

        fetched = 0
        base = self._key("")
        listed = [info for info in self.store.list(base) if info.key != base]
        # keys are data: every one is checked before anything is written (UnsafeKey: exit 2)
        targets = [(info, local_path(local_folder, info.key[len(base):])) for info in listed]
        for info, target in targets:
            if target.exists():
                continue
            data = self.store.get_bytes(info.key)
            atomic_write(target, lambda fh, d=data: fh.write(d))
            fetched += 1
        return fetched

    def fetch_checkpoints(self, local_folder: Path) -> int:
        """Download remote checkpoints missing locally; how many were fetched."""
        local_folder.mkdir(parents=True, exist_ok=True)
        prefix = self._key(CKPT_DIR + "/")
        fetched = 0
        for info in self.store.list(prefix):
            name = info.key.rsplit("/", 1)[-1]
            if not _NAME.match(name) or (local_folder / name).exists():
                continue
            data = self.store.get_bytes(info.key)
            atomic_write(local_folder / name, lambda fh, d=data: fh.write(d))
            fetched += 1
        return fetched
