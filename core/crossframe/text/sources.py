"""Text sources: files by glob, JSON Lines, and the running interpreter's standard library.

Each source is a pydantic params schema plus a loader ``loader(params) -> TextCorpus``. A loader
checks its paths at once (a missing path is a :class:`DataError` naming it) but reads nothing:
the corpus reads its files each time it is iterated, one document at a time.
"""

from __future__ import annotations

import json
import os
import re
import sysconfig
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, PositiveInt

from crossframe.errors import DataError
from crossframe.text.corpus import Document, TextCorpus


class Params(BaseModel):
    """Base of source params: unknown keys are errors."""

    model_config = ConfigDict(extra="forbid")


def _is_hidden(rel: Path) -> bool:
    return any(part.startswith(".") for part in rel.parts)


def _files(paths: list[Path], glob: str, skip_hidden: bool, field_name: str) -> list[tuple[str, Path]]:
    """``(document id, file)`` for every file: a file given directly is its own name, a directory's
    files are ``glob`` matches named by their path relative to the directory (POSIX separators),
    sorted. A path that does not exist is a :class:`DataError` naming it."""
    found: list[tuple[str, Path]] = []
    for root in paths:
        if root.is_file():
            found.append((root.name, root))
        elif root.is_dir():
            matches = sorted((p.relative_to(root).as_posix(), p) for p in root.glob(glob) if p.is_file())
            found.extend((rel, p) for rel, p in matches if not (skip_hidden and _is_hidden(Path(rel))))
        else:
            raise DataError(f"{field_name}: '{root}' not found")
    return found


def _read_text(path: Path, encoding: str) -> str:
    """The whole file, decoded with ``errors="replace"`` and line endings kept as they are."""
    try:
        return path.read_bytes().decode(encoding, errors="replace")
    except OSError as exc:
        raise DataError(f"data: cannot read '{path}' ({exc.strerror or exc})") from None


# --------------------------------------------------------------------------- text files


class TextFilesParams(Params):
    """``{name: text-files, paths: [...], glob: "**/*.txt"}``: one document per file."""

    paths: list[Path] = Field(min_length=1, description="files, or directories searched with `glob`")
    glob: str = Field("**/*.txt", description="pattern for files inside the directories")
    encoding: str = "utf-8"
    skip_hidden: bool = Field(True, description="skip files under directories whose name starts with '.'")
    max_files: PositiveInt | None = Field(None, description="the first N files of the sorted list (None: all)")


def load_text_files(params: TextFilesParams) -> TextCorpus:
    """A corpus of whole files; ids are paths relative to their directory (or the file name)."""
    files = _files(params.paths, params.glob, params.skip_hidden, "data.paths")
    if not files:
        raise DataError(f"data.glob: no file matches '{params.glob}' under {', '.join(map(str, params.paths))}")
    files = files[: params.max_files]

    def iterate() -> Iterator[Document]:
        for doc_id, path in files:
            yield Document(doc_id, _read_text(path, params.encoding))

    return TextCorpus("text-files", params.model_dump(mode="json"), iterate)


# --------------------------------------------------------------------------- JSON Lines


class JsonlParams(Params):
    """``{name: jsonl, paths: [...], field: text}``: one document per non-blank line."""

    paths: list[Path] = Field(min_length=1, description="JSONL files, or directories searched with `glob`")
    glob: str = "**/*.jsonl"
    field: str = Field("text", description="the key holding each record's text")
    id_field: str | None = Field(None, description="a key holding a stable id (default: 'file:line')")
    max_docs: PositiveInt | None = None


_SURROGATE = re.compile("[\ud800-\udfff]")


def _valid_unicode(text: str) -> str:
    """``text`` with each lone surrogate (legal in JSON, not in UTF-8) replaced by U+FFFD."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return _SURROGATE.sub("\ufffd", text)
    return text


def jsonl_records(path: Path) -> Iterator[tuple[int, Any]]:
    """``(line number, parsed value)`` of each non-blank line of the JSON Lines file ``path``, streamed;
    an unreadable file or a line that is not JSON is one :class:`DataError` naming the file and line."""
    try:
        handle = path.open("rb")
    except OSError as exc:
        raise DataError(f"data.paths: cannot read '{path}' ({exc.strerror or exc})") from None
    with handle:
        for number, raw in enumerate(handle, start=1):
            if not raw.strip():
                continue
            try:
                yield number, json.loads(raw)
            except ValueError as exc:
                raise DataError(f"data: {path}:{number} is not valid JSON ({exc})") from None


def _jsonl_documents(params: JsonlParams, files: list[tuple[str, Path]]) -> Iterator[Document]:
    count = 0
    for file_id, path in files:
        for number, record in jsonl_records(path):
            if not isinstance(record, dict):
                raise DataError(f"data: {path}:{number} is a JSON {type(record).__name__}, not an object")
            if params.field not in record:
                keys = ", ".join(sorted(map(str, record))) or "none"
                raise DataError(f"data.field: {path}:{number} has no key '{params.field}' (keys: {keys})")
            text = record[params.field]
            if not isinstance(text, str):
                raise DataError(f"data.field: {path}:{number} '{params.field}' is a JSON "
                                f"{type(text).__name__}, not a string")
            doc_id = f"{file_id}:{number}"
            if params.id_field is not None:
                if params.id_field not in record:
                    raise DataError(f"data.id_field: {path}:{number} has no key '{params.id_field}'")
                doc_id = str(record[params.id_field])
            yield Document(doc_id, _valid_unicode(text))
            count += 1
            if params.max_docs is not None and count >= params.max_docs:
                return


def load_jsonl(params: JsonlParams) -> TextCorpus:
    """A corpus of JSON Lines records; errors name the file and line."""
    files = _files(params.paths, params.glob, True, "data.paths")
    if not files:
        raise DataError(f"data.glob: no file matches '{params.glob}' under {', '.join(map(str, params.paths))}")
    return TextCorpus("jsonl", params.model_dump(mode="json"), lambda: _jsonl_documents(params, files))


# --------------------------------------------------------------------------- python-stdlib

#: directory names that hold test suites (``test/``, ``unittest/test``, ``lib2to3/tests``, ``idlelib/idle_test``...)
TEST_DIRS = frozenset({"test", "tests", "idle_test"})
#: directories that are not the standard library's own source
NOT_STDLIB_DIRS = frozenset({"site-packages", "dist-packages", "__pycache__"})


class StdlibParams(Params):
    """``{name: python-stdlib}``: the ``.py`` files of the running interpreter's standard library."""

    exclude_tests: bool = Field(True, description="leave out test suites (test/, tests/, idle_test/)")
    max_files: PositiveInt | None = Field(None, description="the first N files of the sorted list (None: all)")
    root: Path | None = Field(None, description="another standard library directory (default: this interpreter's)")


def stdlib_root() -> Path:
    """This interpreter's standard library directory (``sysconfig.get_paths()["stdlib"]``)."""
    return Path(sysconfig.get_paths()["stdlib"])


def stdlib_files(root: Path, exclude_tests: bool = True) -> list[str]:
    """Sorted POSIX paths, relative to ``root``, of its ``.py`` files.

    Leaves out site-packages / dist-packages, hidden directories, the build-specific
    ``_sysconfigdata_*.py`` and, with ``exclude_tests``, every file under a ``test``, ``tests``
    or ``idle_test`` directory.
    """
    skip = NOT_STDLIB_DIRS | (TEST_DIRS if exclude_tests else frozenset())
    found: list[str] = []
    for current, dirs, names in os.walk(root):
        dirs[:] = [d for d in dirs if d not in skip and not d.startswith(".")]
        rel_dir = Path(current).relative_to(root)
        for name in names:
            if name.endswith(".py") and not name.startswith("_sysconfigdata_"):
                found.append((rel_dir / name).as_posix())
    return sorted(found)


def load_stdlib(params: StdlibParams) -> TextCorpus:
    """The standard library's source files as documents, ids their relative paths."""
    root = params.root or stdlib_root()
    if not root.is_dir():
        raise DataError(f"data.root: standard library directory '{root}' not found")
    files = stdlib_files(root, params.exclude_tests)[: params.max_files]
    if not files:
        raise DataError(f"data.root: no .py files under '{root}'")

    def iterate() -> Iterator[Document]:
        for rel in files:
            yield Document(rel, _read_text(root / rel, "utf-8"))

    described = params.model_dump(mode="json")
    described["root"] = str(root)
    return TextCorpus("python-stdlib", described, iterate)


#: name -> (params schema, loader, description): what :mod:`crossframe.text.registry` registers
SOURCES = {
    "text-files": (TextFilesParams, load_text_files, "text files by glob, one document per file"),
    "jsonl": (JsonlParams, load_jsonl, "JSON Lines, one document per record's text field"),
    "python-stdlib": (StdlibParams, load_stdlib, "the running Python's standard library source (.py)"),
}
