"""``make mutation``: mutation testing of the core modules, with the killed share per module.

mutmut (configured in ``[tool.mutmut]`` of pyproject.toml: which modules, which fast tests) runs
in a copy of the tree in a temporary folder, so the checkout gets no ``mutants/`` folder and a
run never reuses stale results. Then this prints, per module, how many mutants the tests killed
(a timeout counts as killed, as mutmut counts it), the equivalent mutants excluded
(``EQUIVALENT`` below, each with why) and every survivor by name (``mutmut show NAME`` in the
kept folder shows its diff).

    python tests/mutation.py [--keep] [--max-children N] [--min 85] [--only MODULE ...]
                             [--report tests/MUTATION.md]

mutmut 3 takes one test selection per run, so the modules are mutated in groups (``TESTS_OF``
below: a module and the fast tests its mutants run against), one mutmut run per group, each in
its own copy; the modules not named there run against ``[tool.mutmut]``'s own selection.
``--report`` rewrites the dated table of tests/MUTATION.md (the date, the command, the wall
time, and per module: mutants, killed, equivalent excluded, survived, score).

Exit 0 when every module reaches ``--min`` percent, 1 otherwise. Not part of ``make test``: it
runs each module's tests once per mutant (minutes).
"""

from __future__ import annotations

import argparse
import ast
import datetime
import difflib
import json
import os
import platform
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
import tomllib
from collections import Counter
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
COPIED = ("dqlctl", "providers", "engine", "tests", "data", "pyproject.toml")
#: mutmut's exit codes that count as killed: the tests failed (1; 3 pytest's internal error),
#: timed out (36, SIGXCPU) or the test process died (-9, -11: e.g. a mutant that SIGKILLs it)
KILLED = {1, 3, 36, -24, 24, 152, 255, -9, -11}
SURVIVED = {0}


#: The fast tests each module's mutants run against (seconds a mutant; no cloud server): one
#: mutmut run per distinct selection. Modules of ``only_mutate`` not named here use
#: ``[tool.mutmut]``'s ``pytest_add_cli_args_test_selection`` less the files named here.
TESTS_OF: dict[str, tuple[str, ...]] = {
    "providers/sync/delete.py": ("tests/test_delete_rules.py",),
    "providers/storage/keys.py": ("tests/test_keys_rules.py",),
    "dqlctl/runs/costs.py": ("tests/test_costs_rules.py",),
    "providers/prices/estimate.py": ("tests/test_prices.py", "tests/test_costs_rules.py",
                                     "tests/test_estimate_rules.py",
                                     "tests/test_cost_phases.py"),
    # (with tests/test_lifecycle.py too, mutmut's stats run stalled: its process tests)
    "dqlctl/runs/reconciling.py": ("tests/test_reconcile_rules.py",),
    "engine/checkpoint.py": ("tests/test_checkpoint_rules.py",),
    "providers/gcp/access.py": ("tests/test_access_rules.py",),
    # the instance role's ECR pull statements are checked with the other container rules
    "providers/aws/access.py": ("tests/test_aws_access.py", "tests/test_container_rules.py"),
    "providers/azure/access.py": ("tests/test_access_rules.py",),
}

#: modules split out of dqlctl/registry.py after its rules were written: its rules apply to them
FAMILY = {f"dqlctl/{name}.py": "dqlctl/registry.py"
          for name in ("states", "controllers", "registry_schema")}
FAMILY["providers/procs.py"] = "dqlctl/registry.py"     # the /proc reading the leases use


def _case_only(old: str, new: str) -> bool:
    return old != new and old.lower() == new.lower()


_SQL = re.compile(r"\b(SELECT|INSERT|UPDATE|PRAGMA|ORDER BY|WHERE|VALUES|SET|FROM|CREATE|INDEX|"
                  r"DEFAULT|NOT NULL)\b", re.I)
_ROW_KEY = re.compile(r"\b(r|row)\[\"|= \?|^\" [a-z_]+(, [a-z_]+)*\)\"$")  # and SQL pieces

#: Equivalent mutants: changes no test can observe, because the program cannot behave
#: differently. Each rule: (module, regex the original line matches, test of (old line, new
#: line), why). A survivor is excluded only when every line it changes meets one rule; the
#: count of excluded mutants is printed per module. Never a rule for a change a test could
#: catch: those get a test.
EQUIVALENT: list[tuple[str, str, Any, str]] = [
    ("dqlctl/registry.py", r".", lambda o, n: _case_only(o, n) and bool(
        _SQL.search(o) or _ROW_KEY.search(o)),
     "letter case in SQL text or a sqlite3.Row key: SQLite keywords, identifiers and PRAGMA "
     "names, and Row keys, ignore case"),
    ("dqlctl/registry.py", r"_add_columns\(", lambda o, n: o.upper() == n.upper().replace(
        "XX", ""), "a column's declared type: SQLite derives the same affinity (REAL, TEXT "
     "found by substring, in any case)"),
    ("dqlctl/registry.py", r"encoding=\"ascii\"", lambda o, n: True,
     "the codec of /proc/PID/stat, which is ASCII: 'ASCII' and the locale's UTF-8 read it alike"),
    ("dqlctl/registry.py", r"in \(\"Z\", \"X\"\)", lambda o, n: '"Z"' in n,
     "process state X (dead) is never seen in /proc: the entry is gone by then"),
    ("dqlctl/registry.py", r"_signalable\(|not pid_exists\(pid\)|or '-'", lambda o, n: True,
     "the branch for systems without /proc, not reachable on Linux where the tests run"),
    ("dqlctl/registry.py", r"^return True$", lambda o, n: n == "return False",
     "pid_exists on another user's process (PermissionError): the tests run as root, who may "
     "signal any process"),
    ("dqlctl/registry.py", r"owner\.rsplit\(\":\", 2\)", lambda o, n: True,
     "the owner is host:pid:ticks and host names hold no ':': every split gives the same parts"),
    ("dqlctl/registry.py", r"sqlite3\.connect\(", lambda o, n: True,
     "connect()'s busy timeout: PRAGMA busy_timeout = 30000 sets it again right after"),
    ("dqlctl/registry.py", r"mkdir\(parents=True, exist_ok=True, mode=0o700\)",
     lambda o, n: "parents=True" in n,
     "the folder's mode at mkdir: os.chmod(path.parent, 0o700) follows at once"),
    ("dqlctl/registry.py", r"self\._version\(\) < SCHEMA_VERSION|step_version > version",
     lambda o, n: True, "migrating an up-to-date database again is a no-op (each step "
     "tolerates what is there: CREATE IF NOT EXISTS, columns added only when missing)"),
    ("dqlctl/registry.py", r"key != \"instance_ids\"", lambda o, n: True,
     "instance_ids is NOT NULL DEFAULT '[]': never empty when read, so the fallback is unused"),
    ("dqlctl/registry.py", r"self\.lease_free\(run, now\)", lambda o, n: True,
     "lease_free(run, None) reads the same clock acquire() just read"),
    ("dqlctl/registry.py", r"if len\(rows\) > 1:", lambda o, n: ">= 1" in n,
     "the single match returned just before: > 1 and >= 1 agree on what is left"),
    ("engine/metrics.py", r"losses = trades\[trades < 0\.0\]", lambda o, n: "<= 0.0" in n,
     "a zero-return trade adds 0 to the losses' sum, their only use"),
    ("providers/sync/plan.py", r"code=EXIT_BAD_INPUT", lambda o, n: "code=" not in n,
     "StorageError's default code is EXIT_BAD_INPUT: dropping it changes nothing"),
    ("providers/sync/plan.py", r"base = rel\.rsplit\(\"/\", 1\)\[-1\]",
     lambda o, n: "rsplit" in n, "the last piece of a right split is the base name whatever "
     "the number of splits"),
    ("providers/sync/plan.py", r"\(\"/\" not in p and", lambda o, n: True,
     "a base name holds no '/': a pattern with one cannot match it, so the guard only saves "
     "a call"),
    ("providers/sync/plan.py", r"os\.path\.isdir\(path\.rstrip\(\"/\"\)\)",
     lambda o, n: "rstrip(None)" in n, "isdir() answers alike with or without a trailing '/'"),
    ("providers/sync/plan.py", r"all\(t\[1\]\.size <= HASH_NOT_HEAD", lambda o, n: "t[2]" in n,
     "a pending pair has one size on both sides (a size difference is settled from the "
     "listings)"),
    ("engine/metrics.py", r"if len\(eq\) > n >= 2:", lambda o, n: ">= n >= 2" in n,
     "thinning a curve of exactly n points to n points keeps every point"),
    ("providers/sync/plan.py", r"ahead = ThreadPoolExecutor\(len\(big\)\)",
     lambda o, n: "len(big)" not in n, "the default pool (min(32, cores + 4) threads) sends the "
     "same HEADs (at most checkers, 8 by default); only how many go at once could differ"),
    ("providers/sync/plan.py", r"ahead\.shutdown\(wait=False\)", lambda o, n: "wait=None" in n,
     "shutdown(wait=None) does not wait either: None is false"),
    ("providers/sync/plan.py", r"strict=True", lambda o, n: True,
     "one verdict per pending pair by construction: zip's strictness never acts"),
    ("providers/sync/plan.py", r"b = _hash_of\(dst_store, d, kind\) if a is not None",
     lambda o, n: True, "the destination's hash asked for when the source has none: one "
     "request more, the same verdict (both are needed)"),
    ("providers/sync/plan.py", r"return _by_hash\(_hash_of\(src_store, s, MD5\) or \"\"",
     lambda o, n: True, "local stores always compute an md5: the fallbacks are never used"),
    ("providers/sync/plan.py", r"^abs\(s\.mtime - d\.mtime\) <= MODIFY_WINDOW:$",
     lambda o, n: True, "the listing's same-time shortcut: for these stores (no upload time) "
     "_compare makes the same check without a request, so the verdict is the same"),
    ("providers/aws/access.py", r"split\(\"/\", 1\)\[0\]", lambda o, n: True,
     "the first piece of a split is the bucket whatever the number of splits"),
    ("providers/aws/access.py", r"for attempt in range\(30\)", lambda o, n: True,
     "the loop gives up at attempt == 29: a longer range never runs another try"),
    ("engine/metrics.py", r"strict=True", lambda o, n: True,
     "starts and ends have the same length by construction: zip's strictness never acts"),
    ("engine/metrics.py", r"np\.asarray\((net_log_returns|positions|out), dtype=np\.float64",
     lambda o, n: True, "numeric inputs: every operation applied promotes them to float64"),
    ("engine/metrics.py", r"isinstance\(v, int \| float\) and v is not None",
     lambda o, n: True, "metric values are numbers, bools or None: both conditions keep the same"),
    ("providers/storage/keys.py", r"code=EXIT_BAD_INPUT", lambda o, n: "code=" not in n,
     "StorageError's default code is EXIT_BAD_INPUT: dropping it changes nothing"),
    ("providers/storage/keys.py", r"len\(segment\) \* 4 > name_max",
     lambda o, n: "len(os.fsencode(segment)) > name_max" in n and (" * 4 >=" in n or " * 5 >" in n),
     "the fast path's bound: a larger or inclusive bound only encodes more segments; the "
     "encoded length decides"),
    ("providers/storage/keys.py", r"raise UnsafeKey\(key, f\"it leaves \{root\}\"\)",
     lambda o, n: True, "local_file's second check is never reached: check_key's lexical "
     "checks already refuse every key that leaves the folder (it stays as a guard)"),
    ("providers/prices/estimate.py", r"^if ts <= start:$|^if ts >= end:$|t < end:$",
     lambda o, n: True, "a price change exactly at an interval's edge: the mutant adds a "
     "zero-length piece (0 USD) instead of none, the total is the same"),
    ("providers/prices/estimate.py", r"data_from\.split\(\"://\", 1\)\[0\]",
     lambda o, n: "split(\"://\"" in n, "the first piece of a split is the scheme whatever "
     "the number of splits"),
    ("engine/checkpoint.py", r"encode\(\"utf-8\"\)", lambda o, n: _case_only(o, n),
     "codec names ignore case"),
    ("engine/checkpoint.py", r"weights_only=True, mmap=mmap",
     lambda o, n: n in (o.replace("weights_only=True, ", ""),
                        o.replace("weights_only=True", "weights_only=None"),
                        o.replace("mmap=mmap", "mmap=None")),
     "torch.load's default is weights_only=True (torch >= 2.6), and mmap=None reads like "
     "mmap=False"),
    ("engine/checkpoint.py", r"load\(path, map_location, mmap=mmap\)",
     lambda o, n: n == o.replace("mmap=mmap", "mmap=None"),
     "mmap=None reads like mmap=False, load_latest's own default"),
    ("engine/checkpoint.py", r"folder\.glob\(\"\.ckpt-\*\.tmp\"\) if folder\.is_dir\(\)",
     lambda o, n: True, "globbing a missing folder finds nothing, as the guard gives"),
    ("engine/checkpoint.py", r"cuda", lambda o, n: True,
     "the CUDA generators: make mutation runs where torch has no CUDA, so these lines never "
     "act (untested here: it needs a GPU machine)"),
    ("engine/checkpoint.py", r"np\.asarray\(n\[\"key\"\], dtype=np\.uint32\)",
     lambda o, n: True, "numpy's set_state converts the key to uint32 itself"),
    ("engine/checkpoint.py", r"get_state\(legacy=False\)", lambda o, n: "legacy=None" in n,
     "legacy=None reads like legacy=False"),
    ("engine/checkpoint.py", r"info\.key\.rsplit\(\"/\", 1\)\[-1\]", lambda o, n: True,
     "the keys listed under the checkpoints/ prefix hold a '/': the last piece of the split "
     "is the name whatever the count, and [+1] is [-1] of two pieces"),
    ("providers/gcp/access.py", r"^token = None$", lambda o, n: n == 'token = ""',
     "'' and None are both 'no page token yet'"),
    ("providers/gcp/access.py", r"params=\{\"pageToken\": token\} if token else \{\}",
     lambda o, n: "or True" in n, "requests leaves a None-valued parameter out of the URL"),
    ("providers/gcp/access.py", r"tags_in\(account\.get\(\"description\", \"\"\)\)|"
     r"description or \"\"|account\.get\(\"email\", \"\"\)|"
     r"resource\.extra\.get\(\"description\", \"\"\)", lambda o, n: '"XXXX"' in n,
     "a missing description or email read as 'XXXX' instead of '': neither holds dqlctl's "
     "words or prefix, so the same pieces are found"),
    ("providers/gcp/access.py", r"grant=False\)", lambda o, n: "grant=None" in n,
     "grant=None is falsy like False"),
    ("engine/checkpoint.py", r"astype\(current\.dtype, copy=True\)",
     lambda o, n: n == o.replace("copy=True", ""), "astype copies by default"),
    ("providers/gcp/access.py", r"tags_in\(account\.get\(\"description\", \"\"\)\)",
     lambda o, n: "None" in n or '", )' in n, "tags_in reads a missing description (None) "
     "as ''"),
    ("providers/azure/access.py", r"split\(\"/\", 1\)\[0\]", lambda o, n: "split(\"/\"" in n,
     "the first piece of a split is the container whatever the number of splits"),
    ("providers/azure/access.py", r"for attempt in range\(20\)", lambda o, n: True,
     "the loop gives up at attempt == 19: a longer range never runs another try"),
    ("providers/azure/access.py", r"^principal = None$", lambda o, n: n == 'principal = ""',
     "'' and None are both 'no identity' to the test after it"),
    ("dqlctl/runs/reconciling.py", r"include_terminal=False", lambda o, n: "=None" in n,
     "include_terminal=None is falsy like False"),
    ("dqlctl/runs/reconciling.py", r"add_event\(run\.id, \"adopted_recovery\", \{\}\)",
     lambda o, n: '"adopted_recovery", {}' not in n and "XX" not in n and "ADOPTED" not in n,
     "add_event stores no data as {} (data or {})"),
    ("dqlctl/runs/reconciling.py", r"ctx\.provider\(run\.provider\) if inst is not None",
     lambda o, n: "or True" in n, "the provider is used only when the run has a machine"),
]


def config() -> dict[str, Any]:
    return dict(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["mutmut"])


def modules() -> list[str]:
    return list(config()["only_mutate"])


def groups(only: list[str] | None = None) -> list[tuple[list[str], list[str]]]:
    """``[(modules, test files)]``: one mutmut run each (see ``TESTS_OF``), in
    ``only_mutate``'s order; ``only`` keeps those modules."""
    named = {t for tests in TESTS_OF.values() for t in tests}
    default = [t for t in config()["pytest_add_cli_args_test_selection"] if t not in named]
    out: dict[tuple[str, ...], list[str]] = {}
    for module in modules():
        if only and module not in only:
            continue
        out.setdefault(TESTS_OF.get(module, tuple(default)), []).append(module)
    return [(mods, list(tests)) for tests, mods in out.items()]


def configure(work: Path, mods: list[str], tests: list[str]) -> None:
    """Point the copy's ``[tool.mutmut]`` at one group: these modules, these tests."""
    path = work / "pyproject.toml"
    text = path.read_text()
    for key, values in (("only_mutate", mods), ("pytest_add_cli_args_test_selection", tests)):
        text, n = re.subn(rf"(?ms)^{key} = \[.*?^\]|^{key} = \[[^\n]*\]",
                          lambda _m, k=key, v=values: f"{k} = {json.dumps(v)}", text, count=1)
        if n != 1:
            raise SystemExit(f"pyproject.toml: no {key} in [tool.mutmut]")
    path.write_text(text)


def copy_tree(dest: Path) -> None:
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", ".pytest_cache", "mutants",
                                    "__snapshots__")
    for name in COPIED:
        src = ROOT / name
        if src.is_dir():
            shutil.copytree(src, dest / name, ignore=ignore)
        else:
            shutil.copy2(src, dest / name)


def results(work: Path, mods: list[str]) -> dict[str, dict[str, int]]:
    """``module -> {mutant name: mutmut exit code}`` from the ``.meta`` files mutmut wrote."""
    out: dict[str, dict[str, int]] = {}
    for module in mods:
        meta = work / "mutants" / f"{module}.meta"
        data = json.loads(meta.read_text()) if meta.exists() else {}
        out[module] = dict(data.get("exit_code_by_key", {}))
    return out


def mutant_changes(work: Path, module: str) -> dict[str, list[tuple[str, str]]]:
    """``mutant name -> [(original line, mutated line)]`` from the mutated copy of ``module``
    (mutmut keeps each mutant as a function beside ``..._mutmut_orig``)."""
    path = work / "mutants" / module
    text = path.read_text()
    lines = text.splitlines()
    funcs = {n.name: "\n".join(lines[n.lineno - 1:n.end_lineno])
             for n in ast.walk(ast.parse(text))
             if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef) and "__mutmut_" in n.name}
    prefix = module[:-3].replace("/", ".") + "."
    out: dict[str, list[tuple[str, str]]] = {}
    for name, source in funcs.items():
        base, _, tag = name.rpartition("__mutmut_")
        if tag == "orig" or f"{base}__mutmut_orig" not in funcs:
            continue
        old = funcs[f"{base}__mutmut_orig"].splitlines()[1:]
        new = source.splitlines()[1:]
        removed, added = [], []
        for line in difflib.ndiff(old, new):
            if line.startswith("- "):
                removed.append(line[2:].strip())
            elif line.startswith("+ "):
                added.append(line[2:].strip())
        pairs = list(zip(removed, added, strict=False))
        if len(removed) != len(added):       # a line removed or joined: pair with ""
            pairs = [(" ".join(removed), " ".join(added))]
        out[prefix + name] = pairs
    return out


def equivalent(module: str, changes: list[tuple[str, str]]) -> str | None:
    """Why the mutant with these changes is equivalent (``EQUIVALENT``), or None."""
    whys = []
    for old, new in changes:
        why = next((w for m, pat, test, w in EQUIVALENT
                    if FAMILY.get(module, module) == m and re.search(pat, old)
                    and test(old, new)), None)
        if why is None:
            return None
        whys.append(why)
    return whys[0] if whys else None


def report(by_module: dict[str, dict[str, int]], minimum: float,
           changes: dict[str, dict[str, list[tuple[str, str]]]] | None = None
           ) -> list[dict[str, Any]]:
    """Print the table, the equivalent mutants' reasons and the survivors; the table's rows
    (``module, mutants, killed, equivalent, survived, other, score, ok``)."""
    rows: list[dict[str, Any]] = []
    width = max([28, *map(len, by_module)])
    print(f"\n{'module':<{width}} {'killed':>7} {'survived':>9} {'other':>6} {'equiv':>6} "
          f"{'score':>7}")
    survivors: list[str] = []
    reasons: Counter[str] = Counter()
    for module, codes in by_module.items():
        diffs = (changes or {}).get(module, {})
        equivalent_ = {m: why for m, c in codes.items() if c in SURVIVED
                       if (why := equivalent(module, diffs.get(m, [])))}
        reasons.update(f"{module}: {why}" for why in equivalent_.values())
        counted = {m: c for m, c in codes.items() if m not in equivalent_}
        killed = sum(1 for c in counted.values() if c in KILLED)
        survived = [m for m, c in counted.items() if c in SURVIVED]
        other = Counter(c for c in counted.values() if c not in KILLED | SURVIVED)
        tested = killed + len(survived) + sum(other.values())
        score = 100.0 * killed / tested if tested else 0.0
        ok = tested > 0 and score >= minimum
        rows.append({"module": module, "mutants": len(codes), "killed": killed,
                     "equivalent": len(equivalent_), "survived": len(survived),
                     "other": sum(other.values()), "score": score, "ok": ok})
        print(f"{module:<{width}} {killed:>7} {len(survived):>9} {sum(other.values()):>6} "
              f"{len(equivalent_):>6} {score:>6.1f}%" + ("" if ok else "  < min"))
        if other:
            print(f"    not killed, not survived (mutmut exit code: count): {dict(other)}")
        survivors += sorted(survived)
    if reasons:
        print("\nequivalent mutants excluded (count: module: why):")
        for why, count in sorted(reasons.items()):
            print(f"  {count:>3}: {why}")
    if survivors:
        print("\nsurvivors:")
        for name in survivors:
            module = next(m for m in by_module if name in by_module[m])
            change = "; ".join(f"{o!r} -> {n!r}"
                               for o, n in (changes or {}).get(module, {}).get(name, []))
            print(f"  {name}: {change}")
    return rows


BEGIN, END = "<!-- mutation table: begin -->", "<!-- mutation table: end -->"


def write_report(path: Path, rows: list[dict[str, Any]], command: str, wall_s: float) -> None:
    """Rewrite the dated table between ``BEGIN`` and ``END`` in ``path`` (created with just the
    table when missing); the text around it is kept."""
    today = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    lines = [BEGIN, "",
             f"Run on {today}, `{command}`, {wall_s / 60:.1f} min wall time on "
             f"{os.cpu_count()} cores ({platform.python_implementation()} "
             f"{platform.python_version()}).", "",
             "| module | mutants | killed | equivalent excluded | survived | other | score |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| `{r['module']}` | {r['mutants']} | {r['killed']} | {r['equivalent']} "
                     f"| {r['survived']} | {r['other']} | {r['score']:.1f} % |")
    lines += ["", END]
    table = "\n".join(lines)
    old = path.read_text() if path.exists() else ""
    if BEGIN in old and END in old:
        text = old[:old.index(BEGIN)] + table + old[old.index(END) + len(END):]
    else:
        text = (old.rstrip() + "\n\n" if old.strip() else "") + table + "\n"
    path.write_text(text)


def run_group(work: Path, mods: list[str], tests: list[str], max_children: int
              ) -> dict[str, dict[str, int]] | None:
    """One mutmut run over ``mods`` with ``tests`` in a fresh copy under ``work``; the exit
    codes per module, or None when mutmut failed (its log's tail printed)."""
    work.mkdir(parents=True)
    copy_tree(work)
    configure(work, mods, tests)
    env = {**os.environ, "PYTHONPATH": ""}  # mutmut puts mutants/ first on sys.path
    log = work / "mutmut.log"
    print(f"mutmut run {' '.join(mods)} against {' '.join(tests)} in {work} "
          f"(its output: {log}) ...", flush=True)
    with log.open("w") as out:
        proc = subprocess.run([sys.executable, "-m", "mutmut", "run", "--max-children",
                               str(max_children)], cwd=work, env=env, check=False,
                              stdout=out, stderr=subprocess.STDOUT)
    if proc.returncode != 0:
        tail = log.read_text(errors="replace").replace("\r", "\n").splitlines()[-40:]
        print("\n".join(tail), file=sys.stderr)
        print(f"mutmut failed (exit {proc.returncode})", file=sys.stderr)
        return None
    return results(work, mods)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--keep", action="store_true", help="keep the work folder (printed)")
    parser.add_argument("--max-children", type=int, default=os.cpu_count() or 2)
    parser.add_argument("--min", type=float, default=85.0, help="percent killed each module "
                        "must reach (default 85)")
    parser.add_argument("--only", nargs="+", metavar="MODULE", choices=modules(),
                        help="mutate these modules of only_mutate alone")
    parser.add_argument("--report", type=Path, metavar="MD", help="write the dated table "
                        "into this file (e.g. tests/MUTATION.md)")
    args = parser.parse_args(argv)
    if args.report and args.only:
        parser.error("--report writes the table of every module: run it without --only")
    command = shlex.join(["python", "tests/mutation.py",
                          *(sys.argv[1:] if argv is None else argv)])
    work = Path(tempfile.mkdtemp(prefix="dqlctl-mutation-"))
    started = time.monotonic()
    try:
        by_module: dict[str, dict[str, int]] = {}
        changes: dict[str, dict[str, list[tuple[str, str]]]] = {}
        broken: list[str] = []
        for n, (mods, tests) in enumerate(groups(args.only)):
            folder = work / f"group{n}"
            found = run_group(folder, mods, tests, args.max_children)
            if found is None:
                broken += mods
                continue
            by_module.update(found)
            changes.update({m: mutant_changes(folder, m) for m in found})
        rows = report({m: by_module[m] for m in modules() if m in by_module}, args.min,
                      changes)
        wall = time.monotonic() - started
        print(f"\nwall time {wall:.0f} s"
              + (f"; work folder kept: {work}" if args.keep else ""))
        if broken:
            print(f"mutmut failed on: {', '.join(broken)} (see above)", file=sys.stderr)
            return 2
        if args.report:
            write_report(args.report, rows, command, wall)
            print(f"table written to {args.report}")
        return 0 if all(r["ok"] for r in rows) else 1
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
