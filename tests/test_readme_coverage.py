"""Every verb and flag the README's command reference shows is accepted by the real parser
(``dqlctl.cli.build_parser``) and is run through the real command line by at least one test.

What the README shows: from "Quick start" to "Tests and benchmarks" (the engine's own section
and the TUI's keys left out), every ``dqlctl VERB ...`` in a code span, a table cell or a code
block (also ``launch --follow`` written without ``dqlctl``), and every bare ``--flag`` span,
which belongs to the verb named last in its paragraph, else to its section's verb (``sync``,
``cost``, ``launch`` for "Cloud runs"). Global flags (``--debug``, ``--version``) belong to
``dqlctl`` itself. Words after a lone ``--`` are the engine's (or ssh's COMMAND).

What "run through the command line" means, read statically from tests/test_*.py (so this test
needs no other test to have run, and runs alone): a call of ``dqlctl.cli.main`` (imported as
``main``, or ``cli.main``), or a ``[sys.executable, "-m", "dqlctl", ...]`` subprocess, or a
call of a test-file helper that makes one of those with its own arguments (``dqlctl(home,
*args)``, ``launch_args(...)``); the strings of the call's argument list are its argv (names
are followed to what they were assigned; a parametrized argument counts each of its values on
its own). A verb's flag is exercised when one such argv holds the verb and the flag (any
spelling of the same option: ``-f`` / ``--follow``). ``providers.sync_cli.main``
(``python -m providers.sync``) is not ``dqlctl sync`` and does not count.
"""

from __future__ import annotations

import argparse
import ast
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from dqlctl.cli import build_parser

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
TESTS = Path(__file__).resolve().parent

#: README sections whose bare ``--flag`` spans belong to one verb.
SECTION_VERB = {"Moving data and models": "sync", "What it costs": "cost",
                "Cloud runs": "launch"}
#: Sections that are not dqlctl's command line.
SKIPPED_SECTIONS = ("dql-trading (the engine)", "dqlctl TUI")
#: Bare flag spans that name another program's flag in a verb's section: (verb, flag) -> why.
NOT_THE_VERBS = {
    ("sync", "--resume"): "the engine's --resume, named as using the same key rule",
    ("launch", "--resume"): "the engine's --resume a recovery starts it with (after `--`)",
}

#: verbs whose next word is a verb of their own (``image build``, ``sweep launch``)
NESTED_VERBS = ("image", "sweep")

FLAG_RE = re.compile(r"^\[?(-{1,2}[A-Za-z][\w-]*)")


# -- the README ----------------------------------------------------------------------------------

def _sections(text: str) -> Iterator[tuple[str, list[str]]]:
    """``(heading, lines)`` of the part of the README that is the command reference."""
    start = text.index("## Quick start")
    end = text.index("## Tests and benchmarks")
    heading, lines = "Quick start", []
    fenced = False
    for line in text[start:end].splitlines()[1:]:
        fenced ^= line.startswith("```")
        if line.startswith("#") and not fenced:
            yield heading, lines
            heading, lines = line.lstrip("# ").strip(), []
        else:
            lines.append(line)
    yield heading, lines


def _paragraphs(lines: list[str]) -> Iterator[tuple[bool, list[str]]]:
    """``(is_code, spans)`` per paragraph: a code block's lines, or a paragraph's code spans."""
    block: list[str] = []
    code = False
    for line in [*lines, ""]:
        if line.startswith("```"):
            if code:
                yield True, [m.group(0) for x in block
                             if (m := re.search(r"(?:\S*/)?dqlctl\s[^#]*", x))]
                block = []
            elif block:
                yield False, re.findall(r"`([^`]+)`", " ".join(block).replace("\\|", "|"))
                block = []
            code = not code
        elif code:
            block.append(line)
        elif not line.strip() or line.lstrip().startswith(("- ", "| ")):
            if block:
                yield False, re.findall(r"`([^`]+)`", " ".join(block).replace("\\|", "|"))
            block = [line] if line.strip() else []
        else:
            block.append(line)


def _verbs() -> set[str]:
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return set(sub.choices)


def _flags(tokens: list[str]) -> list[str]:
    out = []
    for tok in tokens:
        if tok in ("--", "[--"):
            break                                   # the engine's arguments, ssh's COMMAND
        for part in tok.split("/"):                 # --include/--exclude
            if m := FLAG_RE.match(part):
                out.append(m.group(1))
    return out


def readme_claims() -> set[tuple[str, str | None]]:
    """``(verb, flag)`` for every flag the README shows, ``(verb, None)`` for every verb;
    ``verb`` is ``""`` for dqlctl's global flags, and two words for ``NESTED_VERBS``
    (``image build``, ``sweep launch``)."""
    verbs = _verbs()
    globals_ = {"--debug", "--version"}
    claims: set[tuple[str, str | None]] = set()
    for heading, lines in _sections(README.read_text()):
        if heading.startswith(SKIPPED_SECTIONS):
            continue
        section_verb = next((v for k, v in SECTION_VERB.items() if heading.startswith(k)), None)
        for _code, spans in _paragraphs(lines):
            current = section_verb
            for span in spans:
                tokens = span.split()
                if tokens and tokens[0].endswith("dqlctl"):
                    tokens = tokens[1:]
                elif not (len(tokens) > 1 and tokens[0] in verbs and tokens[1].startswith("-")):
                    tokens = [] if tokens and tokens[0] in verbs else tokens
                    for flag in _flags(tokens if tokens and tokens[0].startswith("-") else []):
                        if flag in globals_:
                            claims.add(("", flag))
                        elif current and (current, flag) not in NOT_THE_VERBS:
                            claims.add((current, flag))
                    continue
                if not tokens or tokens[0] not in verbs:
                    continue
                verb = tokens[0]
                if verb in NESTED_VERBS and len(tokens) > 1 and not tokens[1].startswith("-"):
                    verb = f"{verb} {tokens[1]}"
                current = verb
                claims.add((verb, None))
                for flag in _flags(tokens[1:]):
                    claims.add(("" if flag in globals_ else verb, flag))
    return claims


def _parser_of(verb: str) -> argparse.ArgumentParser:
    parser = build_parser()
    for word in verb.split():
        sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        parser = sub.choices[word]
    return parser


def _spellings(verb: str, flag: str) -> set[str]:
    """Every option string of the option ``flag`` names (``-f`` and ``--follow``)."""
    action = _parser_of(verb)._option_string_actions.get(flag)
    return set(action.option_strings) if action else {flag}


# -- the tests' command lines ---------------------------------------------------------------------

class _File:
    """The dqlctl command lines one test file runs (see the module docstring)."""

    def __init__(self, path: Path) -> None:
        self.tree = ast.parse(path.read_text())
        self._assignments: dict[int, dict[str, list[ast.AST]]] = {}
        self.functions = {n.name: n for n in ast.walk(self.tree)
                          if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef)}
        self.main_names = {"main"} if any(
            isinstance(n, ast.ImportFrom) and n.module == "dqlctl.cli"
            and any(a.name == "main" and a.asname is None for a in n.names)
            for n in ast.walk(self.tree)) else set()
        self.main_names |= {a.asname for n in ast.walk(self.tree) if isinstance(n, ast.ImportFrom)
                            and n.module == "dqlctl.cli" for a in n.names
                            if a.name == "main" and a.asname}
        self.cli_modules = {a.asname or a.name for n in ast.walk(self.tree)
                            if isinstance(n, ast.ImportFrom) and n.module == "dqlctl"
                            for a in n.names if a.name == "cli"}
        self.cli_modules |= {a.asname for n in ast.walk(self.tree) if isinstance(n, ast.Import)
                             for a in n.names if a.name == "dqlctl.cli" and a.asname}
        self.helpers: set[str] = set()
        grown = True
        while grown:                       # a helper calling a helper is one too
            before = len(self.helpers)
            self.helpers |= {name for name, fn in self.functions.items()
                             if not name.startswith("test_") and self._runs_cli(fn)}
            grown = len(self.helpers) > before
        #: what each helper adds to the argv it is given (``"sync"``, ``"--json"``)
        self.helper_words = {name: {w for call in self._cli_calls(self.functions[name])
                                    for arg in call[1] for w in self._strings(arg, None)}
                             for name in self.helpers}

    def _is_main(self, call: ast.Call) -> bool:
        f = call.func
        if isinstance(f, ast.Name):
            return f.id in self.main_names
        return (isinstance(f, ast.Attribute) and f.attr == "main"
                and isinstance(f.value, ast.Name) and f.value.id in self.cli_modules)

    @staticmethod
    def _is_module_run(node: ast.AST) -> bool:
        if not isinstance(node, ast.List):
            return False
        consts = [e.value if isinstance(e, ast.Constant) else None for e in node.elts]
        return any(a == "-m" and b == "dqlctl" for a, b in zip(consts, consts[1:], strict=False))

    def _runs_cli(self, fn: ast.AST) -> bool:
        return any((isinstance(n, ast.Call) and self._is_main(n)) or self._is_module_run(n)
                   or (isinstance(n, ast.Call) and isinstance(n.func, ast.Name)
                       and n.func.id in self.helpers) for n in ast.walk(fn))

    def _cli_calls(self, fn: ast.AST) -> Iterator[tuple[str | None, list[ast.AST]]]:
        """``(helper name or None, the argument nodes that make its argv)`` of each dqlctl
        command line ``fn`` runs."""
        for call in (n for n in ast.walk(fn) if isinstance(n, ast.Call)):
            if self._is_main(call):
                yield None, call.args[:1]
            elif isinstance(call.func, ast.Name) and call.func.id in self.helpers:
                yield call.func.id, [*call.args, *(k.value for k in call.keywords)]
            elif call.args and self._is_module_run(call.args[0]):
                yield None, [call.args[0]]

    def _strings(self, node: ast.AST, scope: ast.AST | None, depth: int = 0) -> set[str]:
        """The string constants ``node`` is built from, names and helper returns followed."""
        out: set[str] = set()
        if depth > 4:
            return out
        for n in ast.walk(node):
            if isinstance(n, ast.Constant) and isinstance(n.value, str):
                out.add(n.value)
            elif isinstance(n, ast.Name) and isinstance(n.ctx, ast.Load):
                for where in (scope, self.tree):
                    for value in self._assigned(where, n.id):
                        out |= self._strings(value, scope, depth + 1)
            elif isinstance(n, ast.Call) and isinstance(n.func, ast.Name) and \
                    n.func.id in self.functions and n.func.id not in self.helpers:
                for ret in ast.walk(self.functions[n.func.id]):
                    if isinstance(ret, ast.Return) and ret.value is not None:
                        out |= self._strings(ret.value, self.functions[n.func.id], depth + 1)
        return out

    def _assigned(self, where: ast.AST | None, name: str) -> list[ast.AST]:
        """What ``name`` is assigned in ``where`` (a function, or the module)."""
        if where is None:
            return []
        if id(where) not in self._assignments:
            table: dict[str, list[ast.AST]] = {}
            for n in ast.walk(where):
                if isinstance(n, ast.Assign):
                    for t in n.targets:
                        if isinstance(t, ast.Name):
                            table.setdefault(t.id, []).append(n.value)
            self._assignments[id(where)] = table
        return self._assignments[id(where)].get(name, [])

    def _parametrized(self, fn: ast.AST, name: str) -> list[ast.AST] | None:
        for deco in getattr(fn, "decorator_list", []):
            if not (isinstance(deco, ast.Call) and isinstance(deco.func, ast.Attribute)
                    and deco.func.attr == "parametrize" and len(deco.args) >= 2):
                continue
            names_node, values = deco.args[0], deco.args[1]
            if not isinstance(names_node, ast.Constant) or not isinstance(values, ast.List):
                continue
            names = [x.strip() for x in str(names_node.value).split(",")]
            if name not in names:
                continue
            i = names.index(name)
            return [v.elts[i] if isinstance(v, ast.Tuple) and len(names) > 1 else v
                    for v in values.elts]
        return None

    def argvs(self) -> Iterator[set[str]]:
        """The string set of each dqlctl command line a test of this file runs."""
        for name, fn in self.functions.items():
            if name in self.helpers:
                continue
            for helper, args in self._cli_calls(fn):
                words = self.helper_words[helper] if helper else set()
                for argv in self._expand(args, fn):
                    yield argv | words

    def _expand(self, args: list[ast.AST], fn: ast.AST) -> Iterator[set[str]]:
        base: set[str] = set()
        alternatives: list[list[ast.AST]] = []
        for arg in args:
            for n in ast.walk(arg):
                if isinstance(n, ast.Name) and (vals := self._parametrized(fn, n.id)):
                    alternatives.append(vals)
            base |= self._strings(arg, fn)
        if not alternatives:
            yield base
            return
        for vals in alternatives:
            for v in vals:
                yield base | self._strings(v, fn)


def exercised() -> list[set[str]]:
    out: list[set[str]] = []
    for path in sorted(TESTS.glob("test_*.py")):
        out.extend(_File(path).argvs())
    return [{t.split("=", 1)[0] for t in argv} for argv in out]


# -- the tests ------------------------------------------------------------------------------------

def test_the_readme_shows_a_command_reference() -> None:
    """The parser of this file finds what it should (so a change of the README's layout cannot
    silently make the checks below vacuous)."""
    claims = readme_claims()
    verbs = {v for v, _ in claims if v}
    assert {"launch", "ps", "show", "logs", "stop", "down", "tui", "ssh", "check", "gc",
            "image build", "image push", "sync", "cost"} <= verbs
    for expected in [("launch", "--max-recoveries"), ("launch", "--max-price"),
                     ("launch", "--dry-run"), ("sync", "--include"), ("sync", "--exclude"),
                     ("sync", "--max-delete"), ("logs", "-f"), ("logs", "--tail"),
                     ("stop", "--wait"), ("ps", "--orphans"), ("down", "--orphans"),
                     ("cost", "--refresh"), ("", "--debug"), ("image build", "--engine")]:
        assert expected in claims, expected
    assert ("sync", "--resume") not in claims and ("launch", "--n_envs") not in claims
    assert ("launch", "--resume") not in claims
    assert len(claims) > 60


def test_every_readme_verb_and_flag_is_accepted_by_the_parser() -> None:
    refused = []
    for verb, flag in sorted(readme_claims(), key=str):
        if flag is None:
            try:
                _parser_of(verb)
            except KeyError:
                refused.append(f"dqlctl {verb}")
            continue
        parser = _parser_of(verb) if verb else build_parser()
        if flag not in parser._option_string_actions:
            refused.append(f"dqlctl {verb} {flag}".replace("  ", " "))
    assert refused == [], "the README shows what the parser refuses"


def test_every_readme_verb_and_flag_is_run_through_the_command_line_by_a_test() -> None:
    argvs = exercised()
    assert argvs, "no dqlctl command line found in the tests"
    missing = []
    for verb, flag in sorted(readme_claims(), key=str):
        words = verb.split()
        spellings = _spellings(verb, flag) if flag and verb else {flag}
        if not any(all(w in argv for w in words) and (flag is None or spellings & argv)
                   for argv in argvs):
            missing.append(f"dqlctl {verb} {flag or ''}".replace("  ", " ").strip())
    assert missing == [], f"README verbs/flags no test runs through dqlctl: {missing}"


@pytest.mark.parametrize("source,expected", [
    ("from dqlctl.cli import main\n"
     "def test_a():\n    main(['logs', 'x', '-n', '3'])\n", [{"logs", "x", "-n", "3"}]),
    ("from providers.sync_cli import main\ndef test_a():\n    main(['a', 'b', '--delete'])\n",
     []),
    ("from dqlctl.cli import main\ndef run(*argv):\n    return main(list(argv))\n"
     "def run_json(*argv):\n    return run('sync', *argv, '--json')\n"
     "def test_a():\n    run_json('a', 'b', '--update')\n",
     [{"a", "b", "--update", "sync", "--json"}]),
    ("import dqlctl.cli as c\ndef run(*argv):\n    return c.main(list(argv))\n"
     "def test_a():\n    run('cost', '--runs')\n", [{"cost", "--runs"}]),
    ("import sys, subprocess\n"
     "def dq(*args):\n    return subprocess.run([sys.executable, '-m', 'dqlctl', *args])\n"
     "def test_a():\n    dq('stop', 'r', '--wait', '5')\n",
     [{"-m", "dqlctl", "stop", "r", "--wait", "5"}]),
    ("import pytest\nfrom dqlctl.cli import main\n"
     "@pytest.mark.parametrize('argv', [['ps'], ['show', 'x', '--json']])\n"
     "def test_a(argv):\n    main(argv)\n", [{"ps"}, {"show", "x", "--json"}]),
    ("from dqlctl.cli import main\nBASE = ['launch', '--tune']\n"
     "def args(*more):\n    return [*BASE, *more]\n"
     "def test_a():\n    main(args('--keep'))\n", [{"launch", "--tune", "--keep"}]),
])
def test_the_static_reading_of_the_tests(tmp_path: Path, source: str,
                                         expected: list[set[str]]) -> None:
    path = tmp_path / "test_x.py"
    path.write_text(source)
    assert list(_File(path).argvs()) == expected
