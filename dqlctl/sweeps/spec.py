"""What a sweep asks for: ``SweepSpec`` (from a TOML file, flags, or both: flags win), its
validation, and its expansion into members (one ``LaunchRequest`` each).

A spec file (every key optional but ``data``)::

    name = "fx-grid"
    provider = "local"
    data = ["data/a.csv", "markets/"]      # files, folders (their *.csv / *.parquet), globs
    seeds = [1, 2, 3]                      # a list, or a count: 3 -> seeds 1, 2, 3
    agent_type = ["dql", "custom"]         # one or a list
    episodes = 20
    command = "full-workflow"
    engine_args = ["--n_envs", "16"]       # given to every member
    concurrency = 4                        # local default: the cores of this machine
    max_cost = 5.0                         # USD: no member starts once the sweep cost this
    [grid]                                 # engine settings: the cross product of the lists
    lr = [0.001, 0.0003]
    double_dqn = [true, false]

Members are the cross product data x agent types x grid x seeds. Every error is one line naming
the file (or the flag) and the field, exit 2. Relative paths in a file are taken from the file's
folder first. Standard library only (the engine's settings are read from ``engine.config``, which
is standard library too).
"""

from __future__ import annotations

import glob
import itertools
import os
import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from dqlctl.errors import UsageError

MARKET_SUFFIXES = (".csv", ".parquet")
#: engine settings a sweep sets itself, per member: not grid keys (the spec key to use instead)
OWN_SETTINGS = {"seed": "seeds", "agent_type": "agent_type", "episodes": "episodes",
                "data_file": "data", "experiment_name": "name", "results_dir": "(none)"}
_KEYS = ("name", "provider", "data", "seeds", "agent_type", "agent_types", "episodes", "command",
         "engine_args", "concurrency", "max_cost", "grid")
_SWEEP_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,39}$")
_NAME_BAD = re.compile(r"[^A-Za-z0-9._-]+")


@dataclass
class SweepSpec:
    """A sweep before expansion (see the module docstring); ``source`` names where it came
    from in errors (the file, or "flags")."""

    data: list[str] = field(default_factory=list)
    seeds: list[int] = field(default_factory=lambda: [1])
    agent_types: list[str] = field(default_factory=lambda: ["custom"])
    episodes: int = 20
    command: str = "full-workflow"
    engine_args: list[str] = field(default_factory=list)
    grid: dict[str, list[Any]] = field(default_factory=dict)
    concurrency: int | None = None
    max_cost: float | None = None
    name: str | None = None
    provider: str = "local"
    source: str = "flags"
    base_dir: str = "."               # where relative data paths of a file are looked up first

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k not in ("source", "base_dir")}


def _bad(source: str, key: str, message: str) -> UsageError:
    return UsageError(f"{source}: {key}: {message}", field=key)


def _str_list(source: str, key: str, value: Any) -> list[str]:
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list) or not items or not all(isinstance(x, str) and x
                                                           for x in items):
        raise _bad(source, key, "give a string or a non-empty list of strings")
    return list(items)


def parse_seeds(source: str, value: Any) -> list[int]:
    """A list of seeds, or a count N (seeds 1..N); "1,2,3" and "3" from a flag."""
    if isinstance(value, str):
        try:
            parts = [int(x) for x in value.split(",") if x.strip()]
        except ValueError:
            raise _bad(source, "seeds", f"{value!r} is not a count or a list of "
                       "integers") from None
        value = parts[0] if len(parts) == 1 and "," not in value else parts
    if isinstance(value, bool):
        raise _bad(source, "seeds", "give a count or a list of integers")
    if isinstance(value, int):
        if value < 1:
            raise _bad(source, "seeds", f"the count must be 1 or more, got {value}")
        return list(range(1, value + 1))
    if not isinstance(value, list) or not value or not all(
            isinstance(s, int) and not isinstance(s, bool) for s in value):
        raise _bad(source, "seeds", "give a count or a non-empty list of integers")
    if len(set(value)) != len(value):
        raise _bad(source, "seeds", f"{value} repeats a seed")
    from engine.config import seed_problem  # the engine's own rule (stdlib only)

    for seed in value:
        if problem := seed_problem(seed):
            raise _bad(source, "seeds", f"seed {seed}: give {problem}")
    return list(value)


def parse_grid_flag(text: str) -> tuple[str, list[Any]]:
    """``KEY=V1,V2`` (``--grid``) as a grid entry; values read as TOML scalars when they are
    (numbers, true/false), else strings."""
    import tomllib

    key, sep, values = text.partition("=")
    if not sep or not key.strip() or not values.strip():
        raise _bad("--grid", text, "give KEY=VALUE[,VALUE...], e.g. lr=0.001,0.0003")
    out: list[Any] = []
    for raw in values.split(","):
        try:
            out.append(tomllib.loads(f"v = {raw.strip()}")["v"])
        except tomllib.TOMLDecodeError:
            out.append(raw.strip())
    return key.strip(), out


def load_spec(path: str) -> SweepSpec:
    """A spec file (TOML)."""
    import tomllib

    source = str(path)
    try:
        with open(path, "rb") as fh:
            doc = tomllib.load(fh)
    except FileNotFoundError:
        raise UsageError(f"{source}: no such sweep spec file") from None
    except tomllib.TOMLDecodeError as exc:
        raise UsageError(f"{source}: not valid TOML ({exc})") from None
    except OSError as exc:
        raise UsageError(f"{source}: cannot read it ({exc.strerror})") from None
    return spec_from_dict(doc, source=source, base_dir=str(Path(path).resolve().parent))


def spec_from_dict(doc: dict[str, Any], *, source: str = "flags",
                   base_dir: str = ".") -> SweepSpec:
    """A spec from a parsed document (a file's, or flags gathered the same way)."""
    unknown = sorted(set(doc) - set(_KEYS))
    if unknown:
        raise _bad(source, unknown[0], f"unknown key (known: {', '.join(_KEYS)})")
    spec = SweepSpec(source=source, base_dir=base_dir)
    return merge(spec, doc)


def merge(spec: SweepSpec, doc: dict[str, Any], source: str | None = None) -> SweepSpec:
    """``spec`` with the keys of ``doc`` (a file's, or the flags given) replacing its own;
    errors name ``source`` (default: the spec's)."""
    source = source or spec.source
    out = replace(spec)
    if "name" in doc:
        if not isinstance(doc["name"], str) or not _SWEEP_NAME.match(doc["name"]):
            raise _bad(source, "name", f"{doc['name']!r} is not valid: letters, digits, '.', "
                       "'_' and '-', at most 40 characters")
        out.name = doc["name"]
    if "provider" in doc:
        out.provider = _str_list(source, "provider", doc["provider"])[0]
    if "data" in doc:
        out.data = _str_list(source, "data", doc["data"])
    if "seeds" in doc:
        out.seeds = parse_seeds(source, doc["seeds"])
    for key in ("agent_type", "agent_types"):
        if key in doc:
            out.agent_types = _str_list(source, key, doc[key])
    for key, kind in (("episodes", int), ("concurrency", int)):
        if key in doc:
            value = doc[key]
            if not isinstance(value, kind) or isinstance(value, bool) or value < 1:
                raise _bad(source, key, f"give a whole number of 1 or more, got {value!r}")
            setattr(out, key, value)
    if "max_cost" in doc:
        value = doc["max_cost"]
        if not isinstance(value, int | float) or isinstance(value, bool) or value <= 0:
            raise _bad(source, "max_cost", f"give a positive amount of USD, got {value!r}")
        out.max_cost = float(value)
    if "command" in doc:
        out.command = _str_list(source, "command", doc["command"])[0]
    if "engine_args" in doc:
        args = doc["engine_args"]
        if not isinstance(args, list) or not all(isinstance(a, str) for a in args):
            raise _bad(source, "engine_args", "give a list of strings, e.g. [\"--n_envs\", "
                       "\"16\"]")
        out.engine_args = list(args)
    if "grid" in doc:
        out.grid = {**out.grid, **_grid(source, doc["grid"])}
    return out


def _grid(source: str, grid: Any) -> dict[str, list[Any]]:
    from engine.config import Config

    if not isinstance(grid, dict):
        raise _bad(source, "grid", "give a table of lists, e.g. [grid] lr = [0.001, 0.0003]")
    known = set(Config.__dataclass_fields__)
    out: dict[str, list[Any]] = {}
    for key, values in grid.items():
        where = f"grid.{key}"
        if key in OWN_SETTINGS:
            raise _bad(source, where, f"the sweep sets it per member: use `{OWN_SETTINGS[key]}`")
        if key not in known:
            raise _bad(source, where, "not an engine setting (see `dql-trading train --help`)")
        values = values if isinstance(values, list) else [values]
        if not values:
            raise _bad(source, where, "give at least one value")
        out[key] = values
    return out


def market_files(spec: SweepSpec) -> list[str]:
    """Every market file the spec's ``data`` names (files, folders, globs), absolute, in the
    order given, each once."""
    from providers.layout import DataFileNotFound, resolve_data_path

    if not spec.data:
        raise _bad(spec.source, "data", "no market data given (files, a folder or a glob)")
    found: list[str] = []
    for entry in spec.data:
        here = Path(spec.base_dir) / os.path.expanduser(entry)
        where = here if not Path(entry).is_absolute() and here.exists() else \
            Path(os.path.expanduser(entry))
        if any(c in entry for c in "*?["):
            pattern = str(Path(spec.base_dir) / entry) if not Path(entry).is_absolute() \
                else entry
            files = sorted(f for f in glob.glob(pattern) or glob.glob(entry)
                           if f.endswith(MARKET_SUFFIXES) and os.path.isfile(f))
            if not files:
                raise _bad(spec.source, "data", f"no market file matches {entry!r}")
        elif where.is_dir():
            files = sorted(str(p) for p in where.iterdir() if p.suffix in MARKET_SUFFIXES)
            if not files:
                raise _bad(spec.source, "data", f"folder {entry!r} holds no *.csv or *.parquet")
        else:
            try:
                files = [resolve_data_path(str(where) if where.exists() else entry)]
            except DataFileNotFound as exc:
                raise _bad(spec.source, "data", str(exc)) from None
        for f in files:
            path = f if "://" in f else str(Path(f).resolve())
            if path not in found:
                found.append(path)
    return found


def _flag_args(key: str, value: Any) -> list[str]:
    if isinstance(value, bool):
        return [f"--{key}" if value else f"--no-{key}"]
    if isinstance(value, list):
        return [f"--{key}", *(str(v) for v in value)]
    return [f"--{key}", str(value)]


def _label(value: Any) -> str:
    text = "-".join(str(v) for v in value) if isinstance(value, list) else str(value)
    return _NAME_BAD.sub("", text.replace("/", "_"))


@dataclass
class MemberPlan:
    """One member as it will be launched: its name, the settings that make it differ from
    the others, and its ``LaunchRequest`` fields."""

    name: str
    market: str
    agent_type: str
    seed: int
    settings: dict[str, Any]
    request: dict[str, Any]


def expand(spec: SweepSpec, sweep_name: str) -> list[MemberPlan]:
    """The members: data x agent types x grid x seeds (validated as launches are:
    ``dqlctl.runs.validate_request`` runs on each when it starts, and on the first here)."""
    from dqlctl.runs.request import AGENT_TYPES, ENGINE_COMMANDS

    for agent in spec.agent_types:
        if agent not in AGENT_TYPES:
            raise _bad(spec.source, "agent_type", f"unknown agent type {agent!r} (choose from: "
                       f"{', '.join(AGENT_TYPES)})")
    if spec.command not in ENGINE_COMMANDS:
        raise _bad(spec.source, "command", f"unknown engine command {spec.command!r} (choose "
                   f"from: {', '.join(ENGINE_COMMANDS)})")
    files = market_files(spec)
    keys = sorted(spec.grid)
    combos = list(itertools.product(*(spec.grid[k] for k in keys))) if keys else [()]
    members = []
    for data, agent, combo, seed in itertools.product(files, spec.agent_types, combos,
                                                      spec.seeds):
        settings = dict(zip(keys, combo, strict=True))
        market = Path(data.rstrip("/")).name.split(".")[0]
        parts = [sweep_name, market, agent, *(f"{k}{_label(v)}" for k, v in settings.items()),
                 f"s{seed}"]
        name = _NAME_BAD.sub("-", "-".join(parts)).strip("-.")
        if len(name) > 63:
            name = f"{sweep_name[:50]}-{len(members):04d}"
        extra = [a for k, v in settings.items() for a in _flag_args(k, v)]
        request = {"provider": spec.provider, "data": data, "agent_type": agent,
                   "episodes": spec.episodes, "name": name, "command": spec.command,
                   "seed": seed, "engine_args": [*spec.engine_args, *extra]}
        members.append(MemberPlan(name=name, market=market, agent_type=agent, seed=seed,
                                  settings=settings, request=request))
    return members


def default_name(spec: SweepSpec) -> str:
    """The sweep's name when none is given: from its first market and the member count."""
    first = Path(spec.data[0].rstrip("/")).name.split(".")[0] if spec.data else "sweep"
    base = _NAME_BAD.sub("-", first.lower().replace("_", "-")).strip("-.") or "sweep"
    return f"sweep-{base}"[:40]
