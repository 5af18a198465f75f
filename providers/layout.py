"""The contract the engine, the providers and dqlctl share: where data is, where results go.

DESIGN.md: "anything both need, like the results layout, lives in a small contract module that
neither side owns alone". The engine writes by these rules, the providers (``remote_job``)
and dqlctl find its files by them; so each rule is written once, here. Standard library only;
the engine may import it (and the storage leaf) and nothing else from ``providers``.

Results layout: a run writes ``<results_dir>/<experiment>/`` (``EVENTS_FILE`` in it is the
event stream dqlctl follows). When ``results_dir`` is an object-storage URI the engine writes
into a local staging folder first, ``<$DQL_STAGING_DIR>/<staging_key(uri)>/<experiment>/``
(``staged_experiment_dir``), and uploads from there.

Data location: a path that exists is used as it is. A bare file name is looked up, in order, under ``./data/``,
under ``$DQL_DATA_DIR``, and in the project's bundled ``data/`` folder (the predecessor's users
type ``--data_file test_small.csv``). Storage URIs (``s3://``, ``gs://``, ``az://``) pass through
unchanged; ``file://`` is stripped to a path.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

URI_SCHEMES = ("s3://", "gs://", "az://")
#: the engine's event stream, one JSON object per line, in the experiment's folder
EVENTS_FILE = "events.jsonl"
#: where the engine stages results bound for object storage (default: its cache folder)
STAGING_ENV = "DQL_STAGING_DIR"
BUNDLED_DATA_DIR = Path(__file__).resolve().parents[1] / "data"


class DataFileNotFound(FileNotFoundError):
    """The named data file is in none of the places searched (the message lists them)."""


def is_uri(name: str) -> bool:
    return name.startswith(URI_SCHEMES)


def data_search_dirs() -> list[Path]:
    dirs = [Path.cwd() / "data"]
    env = os.environ.get("DQL_DATA_DIR")
    if env:
        dirs.append(Path(env))
    dirs.append(BUNDLED_DATA_DIR)
    return dirs


def resolve_data_path(name: str) -> str:
    """The absolute path (or URI) of the data file ``name``; DataFileNotFound if none."""
    if is_uri(name):
        return name
    if name.startswith("file://"):
        name = name[len("file://"):]
    path = Path(name).expanduser()
    if path.is_file():
        return str(path.resolve())
    searched = [str(path)]
    if len(path.parts) == 1:
        for folder in data_search_dirs():
            candidate = folder / name
            if candidate.is_file():
                return str(candidate.resolve())
            searched.append(str(candidate))
    raise DataFileNotFound(
        f"data file {name!r} not found (looked in: {', '.join(dict.fromkeys(searched))}); "
        "give a path to a CSV or Parquet file")


def staging_key(uri: str) -> str:
    """The folder under the staging root where a run whose results go to ``uri`` (the
    experiment's own URI) keeps its files: ``<root>/<key>/<experiment>``. dqlctl finds a remote
    engine's events there."""
    return hashlib.sha1(uri.encode()).hexdigest()[:12]


def experiment_uri(results_dir: str, experiment: str) -> str:
    """The experiment's own place under ``results_dir`` (a URI or a path)."""
    return f"{results_dir.rstrip('/')}/{experiment}"


def staged_experiment_dir(staging_root: str, results_dir: str, experiment: str) -> str:
    """The local folder where a run whose results go to the URI ``results_dir`` stages the
    experiment ``experiment``: ``<staging_root>/<staging_key>/<experiment>``."""
    key = staging_key(experiment_uri(results_dir, experiment))
    return f"{staging_root.rstrip('/')}/{key}/{experiment}"


def read_env_file(path: str, remove: bool) -> dict[str, str]:
    """The run's settings file on its machine (``secrets.env``): KEY=VALUE lines (the value may
    hold anything but a newline); deleted once read if asked."""
    values: dict[str, str] = {}
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            key, sep, value = line.rstrip("\n").partition("=")
            if sep and key:
                values[key] = value
    if remove:
        os.unlink(path)
    return values
