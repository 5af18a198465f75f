"""Object keys are data, never paths (providers/storage/keys.py): which keys a destination
folder accepts, the one-line refusal a user sees for the others, and where an accepted key
lands. Pure functions on a temporary folder: ``make mutation`` runs these once per mutant."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from providers.storage import keys
from providers.storage.base import EXIT_BAD_INPUT, StorageError
from providers.storage.keys import NAME_MAX, PATH_MAX, UnsafeKey, check_key, local_path


def long_key(length: int, char: str = "k", segment: int = 100) -> str:
    """A valid key of ``length`` bytes: segments of ``segment`` ``char``, never ending in '/'."""
    key = "/".join([char * segment] * (length // (segment + 1) + 1))[:length]
    return key[:-1] + char if key.endswith("/") else key


def refusal(key: str, root: Path | None = None) -> str:
    with pytest.raises(UnsafeKey) as info:
        check_key(key, root)
    return str(info.value)


@pytest.mark.parametrize(("key", "why"), [
    ("", "empty key"),
    ("a\x00b", "it contains NUL"),
    ("a\nb", "it contains a control character"),
    ("\x01", "it contains a control character"),
    ("a\x1fb", "it contains a control character"),
    ("a\x7fb", "it contains a control character"),
    ("a\\b", "it contains a backslash"),
    ("..\\x", "it contains a backslash"),
    ("/etc/passwd", "it is absolute"),
    ("a//b", "it has an empty path segment"),
    ("a/", "it has an empty path segment"),
    ("./a", "it has a '.' segment"),
    ("a/../../b", "it has a '..' segment"),
    ("..", "it has a '..' segment"),
])
def test_unsafe_keys_are_refused_in_one_line_naming_the_key(key: str, why: str) -> None:
    assert refusal(key) == f"refusing object key {key!r}: {why}; nothing was written"


def test_the_refusal_is_a_storage_error_with_exit_code_2_and_its_parts() -> None:
    with pytest.raises(StorageError) as info:
        check_key("a/../b")
    exc = info.value
    assert isinstance(exc, UnsafeKey)
    assert exc.code == EXIT_BAD_INPUT == 2
    assert exc.key == "a/../b"
    assert exc.why == "it has a '..' segment"


@pytest.mark.parametrize("key", [
    "a", "a/b/c.txt", "dir with space/x", "~tilde", "a..b/c.", ".hidden/..x",
    "é/ü", "\x80weird", "x" * NAME_MAX, "a/" + "y" * NAME_MAX,
])
def test_ordinary_keys_are_accepted_unchanged(key: str) -> None:
    assert check_key(key) == key


def test_a_segment_may_be_as_long_as_the_filesystem_allows_and_no_longer() -> None:
    assert check_key("x" * NAME_MAX) == "x" * NAME_MAX
    assert refusal("a/" + "x" * (NAME_MAX + 1)) == (
        f"refusing object key {'a/' + 'x' * (NAME_MAX + 1)!r}: a segment is longer than "
        f"{NAME_MAX} bytes; nothing was written")


def test_the_segment_limit_counts_bytes_not_characters() -> None:
    two_bytes = "é" * (NAME_MAX // 2)           # 254 bytes
    assert check_key(two_bytes) == two_bytes
    with pytest.raises(UnsafeKey, match="longer than 255 bytes"):
        check_key("é" * (NAME_MAX // 2 + 1))     # 256 bytes, 128 characters


def test_a_whole_key_must_stay_under_the_path_limit() -> None:
    fits = long_key(PATH_MAX - 1, "x")                 # 4095 bytes
    assert check_key(fits) == fits
    too_long = fits + "x"
    assert refusal(too_long) == (f"refusing object key {too_long!r}: the path would be longer "
                                 f"than {PATH_MAX} bytes; nothing was written")


def test_the_destination_folder_counts_towards_the_path_limit(tmp_path: Path) -> None:
    base = len(os.fsencode(str(tmp_path))) + 1          # the folder and its '/'
    _name_max, path_max = keys._limits(str(tmp_path))
    room = path_max - base - 1                           # the longest key that still fits
    fits = long_key(room)
    assert check_key(fits, tmp_path) == fits
    with pytest.raises(UnsafeKey, match=f"longer than {path_max} bytes"):
        check_key(fits + "k", tmp_path)
    assert check_key(fits + "k") == fits + "k"          # without a folder it fits


def test_limits_come_from_the_nearest_existing_folder(tmp_path: Path) -> None:
    expected = (os.pathconf(tmp_path, "PC_NAME_MAX"), os.pathconf(tmp_path, "PC_PATH_MAX"))
    assert keys._limits(str(tmp_path)) == expected
    assert keys._limits(str(tmp_path / "not" / "made" / "yet")) == expected


def test_limits_fall_back_to_linux_defaults_where_the_filesystem_cannot_say() -> None:
    assert keys._limits("") == (NAME_MAX, PATH_MAX)
    assert keys._limits("relative/nowhere/at/all") == (
        os.pathconf(".", "PC_NAME_MAX"), os.pathconf(".", "PC_PATH_MAX"))


def test_a_filesystem_with_shorter_names_refuses_a_segment_past_its_limit(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    asked: list[str] = []

    def limits(root: str) -> tuple[int, int]:
        asked.append(root)
        return (14, 1024) if root == str(tmp_path) else (NAME_MAX, PATH_MAX)

    monkeypatch.setattr(keys, "_limits", limits)
    assert check_key("a" * 14, tmp_path) == "a" * 14
    assert refusal("a" * 15, tmp_path).endswith(": a segment is longer than 14 bytes; "
                                                "nothing was written")
    key = long_key(1024 - len(os.fsencode(str(tmp_path))) - 2, "b", 10)
    assert check_key(key, tmp_path) == key
    assert "longer than 1024 bytes" in refusal(key + "b", tmp_path)
    assert set(asked) == {str(tmp_path)}
    assert check_key("a" * 15) == "a" * 15          # no folder: Linux's limits, none asked
    assert set(asked) == {str(tmp_path)}


def test_local_path_is_the_key_under_the_folder(tmp_path: Path) -> None:
    assert local_path(tmp_path, "a/b.txt") == tmp_path / "a" / "b.txt"
    assert local_path(str(tmp_path), "x") == tmp_path / "x"
    assert isinstance(local_path(str(tmp_path), "x"), Path)


@pytest.mark.parametrize("key", ["../outside", "a/../../outside", "/abs", "a\\..\\b", ""])
def test_local_path_refuses_a_key_that_would_leave_the_folder(tmp_path: Path, key: str) -> None:
    with pytest.raises(UnsafeKey):
        local_path(tmp_path, key)
    assert list(tmp_path.iterdir()) == []


def test_local_path_checks_the_length_against_its_folder(tmp_path: Path) -> None:
    _name_max, path_max = keys._limits(str(tmp_path))
    room = path_max - len(os.fsencode(str(tmp_path))) - 2
    key = long_key(room, "z")
    assert local_path(tmp_path, key) == tmp_path / key
    with pytest.raises(UnsafeKey, match="path would be longer"):
        local_path(tmp_path, key + "z")


@pytest.mark.parametrize("root", ["/", "/srv/dataX", "/srv/data/"])
def test_local_path_under_any_folder_name(root: str) -> None:
    """The root folder itself, a name ending in a letter, a trailing slash: the key lands under
    it (the containment guard compares whole path segments, not characters)."""
    assert local_path(root, "a/b.txt") == Path(root) / "a" / "b.txt"
