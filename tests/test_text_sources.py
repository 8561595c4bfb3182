"""Text sources: files, JSON Lines, the standard library; document ids and the split by id."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from crossframe.errors import ConfigError, CrossframeError, DataError
from crossframe.text.corpus import Document, TextCorpus, split_of
from crossframe.text.sources import (
    JsonlParams,
    StdlibParams,
    TextFilesParams,
    load_jsonl,
    load_stdlib,
    load_text_files,
    stdlib_files,
    stdlib_root,
)


def one_line(exc: pytest.ExceptionInfo) -> str:
    message = str(exc.value)
    assert isinstance(exc.value, CrossframeError) and "\n" not in message
    return message


# --------------------------------------------------------------------------- files


def test_text_files_by_glob_sorted_with_relative_ids(tmp_path: Path) -> None:
    (tmp_path / "pkg" / "sub").mkdir(parents=True)
    (tmp_path / ".git").mkdir()
    (tmp_path / "pkg" / "b.py").write_bytes(b"b = 2\r\n")
    (tmp_path / "pkg" / "sub" / "a.py").write_text("a = 1\n")
    (tmp_path / "pkg" / "notes.txt").write_text("not python")
    (tmp_path / ".git" / "hook.py").write_text("hidden")
    (tmp_path / "bad.py").write_bytes(b"x = '\xff'\n")
    corpus = load_text_files(TextFilesParams(paths=[tmp_path], glob="**/*.py"))
    docs = list(corpus)
    assert [d.id for d in docs] == ["bad.py", "pkg/b.py", "pkg/sub/a.py"]
    assert docs[1].text == "b = 2\r\n"  # line endings kept as they are
    assert docs[0].text == "x = '\ufffd'\n"  # undecodable bytes replaced
    assert list(corpus) == docs  # re-iterable
    single = load_text_files(TextFilesParams(paths=[tmp_path / "pkg" / "b.py"], glob="**/*.py"))
    assert [d.id for d in single] == ["b.py"]
    assert len(list(load_text_files(TextFilesParams(paths=[tmp_path], glob="**/*.py", max_files=2)))) == 2


def test_text_files_missing_path_names_it(tmp_path: Path) -> None:
    with pytest.raises(DataError) as exc:
        load_text_files(TextFilesParams(paths=[tmp_path / "nope"]))
    assert "nope" in one_line(exc)


def test_text_files_no_match_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(DataError) as exc:
        load_text_files(TextFilesParams(paths=[tmp_path], glob="**/*.rs"))
    assert "**/*.rs" in one_line(exc)


# --------------------------------------------------------------------------- JSON Lines


def write_jsonl(path: Path, records: list) -> Path:
    path.write_text("".join((json.dumps(r) if not isinstance(r, str) else r) + "\n" for r in records))
    return path


def test_jsonl_documents_with_file_line_ids(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "data.jsonl", [{"text": "one"}, "", {"text": "two", "id": "x"}, {"text": "\ud800!"}])
    docs = list(load_jsonl(JsonlParams(paths=[path])))
    assert docs == [Document("data.jsonl:1", "one"), Document("data.jsonl:3", "two"),
                    Document("data.jsonl:4", "\ufffd!")]  # lone surrogate made valid
    assert len(list(load_jsonl(JsonlParams(paths=[path], max_docs=2)))) == 2
    with_ids = write_jsonl(tmp_path / "ids.jsonl", [{"body": "a", "key": 7}, {"body": "b", "key": "k"}])
    assert list(load_jsonl(JsonlParams(paths=[with_ids], field="body", id_field="key"))) == [
        Document("7", "a"), Document("k", "b")]
    with pytest.raises(DataError) as exc:
        list(load_jsonl(JsonlParams(paths=[path], id_field="id")))
    assert "data.jsonl:1" in one_line(exc) and "'id'" in str(exc.value)


def test_jsonl_unknown_field_names_file_line_and_keys(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "d.jsonl", [{"text": "a"}, {"body": "b", "meta": 1}])
    with pytest.raises(DataError) as exc:
        list(load_jsonl(JsonlParams(paths=[path])))
    message = one_line(exc)
    assert "d.jsonl:2" in message and "'text'" in message and "body, meta" in message


@pytest.mark.parametrize(("line", "expected"), [("{not json", "not valid JSON"), ("[1, 2]", "not an object"),
                                                ('{"text": 3}', "not a string")])
def test_jsonl_bad_records(tmp_path: Path, line: str, expected: str) -> None:
    path = write_jsonl(tmp_path / "d.jsonl", [line])
    with pytest.raises(DataError) as exc:
        list(load_jsonl(JsonlParams(paths=[path])))
    assert expected in one_line(exc) and "d.jsonl:1" in str(exc.value)


def test_jsonl_missing_file(tmp_path: Path) -> None:
    with pytest.raises(DataError) as exc:
        load_jsonl(JsonlParams(paths=[tmp_path / "gone.jsonl"]))
    assert "gone.jsonl" in one_line(exc)


# --------------------------------------------------------------------------- python-stdlib


def test_stdlib_files_exclude_site_packages_and_tests(tmp_path: Path) -> None:
    for rel in ["os.py", "json/__init__.py", "test/test_os.py", "unittest/test/test_case.py",
                "lib2to3/tests/data/x.py", "idlelib/idle_test/t.py", "site-packages/numpy/x.py",
                "_sysconfigdata__linux.py", "json/data.txt", "__pycache__/os.py"]:
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(f"# {rel}\n")
    assert stdlib_files(tmp_path) == ["json/__init__.py", "os.py"]
    assert stdlib_files(tmp_path, exclude_tests=False) == [
        "idlelib/idle_test/t.py", "json/__init__.py", "lib2to3/tests/data/x.py", "os.py",
        "test/test_os.py", "unittest/test/test_case.py"]
    docs = list(load_stdlib(StdlibParams(root=tmp_path)))
    assert [d.id for d in docs] == ["json/__init__.py", "os.py"] and docs[1].text == "# os.py\n"


def test_real_stdlib_is_sorted_and_clean() -> None:
    files = stdlib_files(stdlib_root())
    assert files == sorted(files) and len(files) > 300
    assert "os.py" in files and "json/decoder.py" in files
    assert not [f for f in files if "site-packages" in f or f.startswith("test/") or "/test/" in f
                or "idle_test" in f or "/tests/" in f]
    assert len(stdlib_files(stdlib_root(), exclude_tests=False)) > len(files)
    corpus = load_stdlib(StdlibParams(max_files=5))
    assert [d.id for d in corpus] == files[:5]
    assert corpus.describe()["params"]["root"] == str(stdlib_root())


def test_stdlib_list_is_the_same_in_another_process() -> None:
    code = "import json; from crossframe.text.sources import stdlib_files, stdlib_root; " \
           "print(json.dumps(stdlib_files(stdlib_root())))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert json.loads(out.stdout) == stdlib_files(stdlib_root())


def test_stdlib_missing_root(tmp_path: Path) -> None:
    with pytest.raises(DataError) as exc:
        load_stdlib(StdlibParams(root=tmp_path / "nowhere"))
    assert "nowhere" in one_line(exc)


# --------------------------------------------------------------------------- split by document


@given(st.lists(st.text(min_size=1, max_size=30), min_size=1, max_size=60, unique=True),
       st.lists(st.text(min_size=1, max_size=30), max_size=60),
       st.sampled_from([0.05, 0.1, 0.5]))
def test_split_is_stable_when_documents_are_added(old: list[str], new: list[str], fraction: float) -> None:
    before = {doc_id: split_of(doc_id, fraction) for doc_id in old}
    grown = new[: len(new) // 2] + old + new[len(new) // 2:]  # added before and after, order changed
    after = {doc_id: split_of(doc_id, fraction) for doc_id in grown}
    assert all(after[doc_id] == part for doc_id, part in before.items())


def test_split_fraction_and_corpus_split() -> None:
    ids = [f"pkg/module_{i}.py" for i in range(20_000)]
    share = sum(split_of(i, 0.1) == "val" for i in ids) / len(ids)
    assert 0.09 < share < 0.11
    assert all(split_of(i, 0.0) == "train" for i in ids[:100])
    corpus = TextCorpus("mem", {}, lambda: iter([Document(i, i) for i in ids[:500]]))
    train, val = corpus.split(0.2)
    train_ids, val_ids = {d.id for d in train}, {d.id for d in val}
    assert not train_ids & val_ids and len(train_ids | val_ids) == 500
    assert val_ids == {i for i in ids[:500] if split_of(i, 0.2) == "val"}
    assert val.describe()["part"] == "val"
    with pytest.raises(ConfigError) as exc:
        corpus.split(1.0)
    assert "val_fraction" in one_line(exc)
