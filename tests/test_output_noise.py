"""What crossframe prints: no converter advice on the screen, headers that name what measured a
figure, sizes that are the stored ones, every exporter listed, tables that do not fold when piped,
readable lines instead of Python reprs."""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from crossframe.cli.main import main
from crossframe.tables import plain_table, show_table

ANSI = re.compile(r"\x1b\[")

QUANTISE = textwrap.dedent("""
    import logging, sys
    from pathlib import Path
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper
    from crossframe.compress.ort_quant import quantize_dynamic, quantize_static

    out = Path(sys.argv[1])
    w = numpy_helper.from_array(np.random.default_rng(0).standard_normal((8, 4)).astype(np.float32), "w")
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"], name="mm")], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 4])], [w])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(out / "f.onnx"))
    quantize_dynamic(out / "f.onnx", out / "d.onnx")
    batches = [np.random.default_rng(i).standard_normal((4, 8)).astype(np.float32) for i in range(3)]
    quantize_static(out / "f.onnx", out / "s.onnx", batches)
    assert (out / "d.onnx").is_file() and (out / "s.onnx").is_file()
    print("root handlers", len(logging.getLogger().handlers))
""")


def test_the_int8_quantisers_print_no_advice(tmp_path: Path) -> None:
    pytest.importorskip("onnxruntime")
    done = subprocess.run([sys.executable, "-c", QUANTISE, str(tmp_path)], capture_output=True, text=True,
                          timeout=120, env={**os.environ, "PYTHONWARNINGS": "default"})
    assert done.returncode == 0, done.stderr[-2000:]
    output = done.stdout + done.stderr
    assert "pre-processing" not in output and "WARNING:root" not in output, output
    assert "root handlers 0" in done.stdout  # logging was not configured behind the caller's back


def test_quiet_converters_restores_the_root_logger() -> None:
    import logging

    from crossframe.export.quiet import quiet_converters

    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    with quiet_converters(""):
        logging.warning("advice nobody asked for")
    assert root.handlers == handlers and root.level == level


def _tflite_entry() -> dict:
    timing = {"p50_ms": 0.25, "p99_ms": 0.5, "throughput": 4000.0, "batch": 1}
    return {"index": 1, "kind": "export", "name": "tflite-int8", "backend": "tensorflow", "format": "tflite",
            "size_bytes": 4096, "verify": {"max_abs_diff": 0.01, "max_rel_diff": 0.02},
            "latency": {"runtime": {"batch_1": timing}, "native": {"batch_1": {**timing, "p50_ms": 0.5}}}}


def test_latency_columns_name_the_runtime_that_measured_them(tmp_path: Path) -> None:
    from crossframe.compress.report import COLUMNS, Report

    report = Report.open(tmp_path, fresh=True)
    report.add(_tflite_entry())
    assert not any("ORT" in c for c in COLUMNS)
    (row,) = report.rows()
    assert row[COLUMNS.index("runtime")] == "tflite" and row[COLUMNS.index("p50 ms (b=1)")] == "0.2500"
    md = (tmp_path / "report.md").read_text()
    assert "ORT" not in md and "| 1-tflite-int8 | tflite | 1 | 0.2500 |" in md


def test_compare_export_table_names_the_runtime() -> None:
    from crossframe.compare.report import export_rows

    results = {"results": [{"backend": "tensorflow", "export": [
        {"format": "tflite", "name": "tflite-int8", "metric": "accuracy", "metric_after": 0.9, "size_bytes": 2048,
         "latency_p50_ms": 0.2, "latency_p99_ms": 0.3, "status": None, "error": None}]}]}
    headers, (row,) = export_rows(results)
    assert row[headers.index("runtime")] == "tflite" and not any("ORT" in h for h in headers)


@pytest.mark.slow
def test_the_quantize_step_reports_its_stored_size(workdir: Path, tiny, capsys: pytest.CaptureFixture) -> None:
    import crossframe
    from crossframe.compress.report import COLUMNS, _size

    result = crossframe.run({**tiny(), "name": "q"}, quiet=True)
    capsys.readouterr()
    assert main(["compress", str(result.run_dir), "--set", "compress=[{name: quantize, bits: 8}]",
                 "--no-export"]) == 0
    printed = capsys.readouterr().out
    (step,) = json.loads((result.run_dir / "report.json").read_text())["steps"]
    stored = (result.run_dir / "compressed" / "1-quantize" / "quantized.safetensors").stat().st_size
    assert step["stored_bytes"] == stored < step["size_bytes"]
    row = next(line for line in (result.run_dir / "report.md").read_text().splitlines() if "1-quantize" in line)
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[COLUMNS.index("size")] == f"{_size(stored)} stored" != f"{_size(step['size_bytes'])} stored"
    assert f"{_size(stored)} stored" in printed


def test_plugins_lists_the_int8_exporters(capsys: pytest.CaptureFixture) -> None:
    from crossframe.compress.deploy import DEPLOY

    assert main(["plugins", "--json"]) == 0
    rows = {r["name"]: r for r in json.loads(capsys.readouterr().out)}
    listed = rows["crossframe"]["components"]["exporter (int8)"]
    assert listed == sorted(DEPLOY) and {"onnx-int8-dynamic", "onnx-int8-static", "tflite-int8",
                                         "torch-int8"} <= set(listed)
    assert main(["plugins"]) == 0
    assert "onnx-int8-dynamic, onnx-int8-static, tflite-int8, torch-int8" in capsys.readouterr().out


def test_piped_tables_do_not_fold_or_colour(capsys: pytest.CaptureFixture) -> None:
    assert main(["plugins"]) == 0  # capsys is not a terminal, as in a pipe
    out = capsys.readouterr().out
    assert not ANSI.search(out)
    assert max(len(line) for line in out.splitlines()) > 80  # one line per row, not folded at 80 columns
    names = [line.split()[0] for line in out.splitlines()[3:] if line and not line.startswith(" ")]
    assert {"crossframe", "jax", "tensorflow", "torch"} <= set(names)


def test_plain_table_keeps_every_cell_whole() -> None:
    long = "tensorflow-" + "x" * 120
    text = plain_table("t", ["backend", "status"], [[long, ("ok", "green")], ["jax", "line one\nline two"]])
    lines = text.splitlines()
    assert lines[0] == "t" and any(line.startswith(long + "  ok") for line in lines)
    assert any(line.endswith("line one") for line in lines) and any(line.endswith("line two") for line in lines)
    stream = io.StringIO()
    show_table("t", ["backend", "status"], [[long, ("ok", "green")]], stream=stream)
    assert long in stream.getvalue() and not ANSI.search(stream.getvalue())


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_terminal_tables_use_the_terminal_width(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "200")
    monkeypatch.delenv("NO_COLOR", raising=False)
    stream = _Terminal()
    show_table("t", ["backend", "components"], [["tensorflow", "y" * 150]], stream=stream)
    text = ANSI.sub("", re.sub(r"\x1b\[[0-9;]*m", "", stream.getvalue()))
    assert "tensorflow" in text and "y" * 150 in text  # not folded at 80 columns


def test_data_prepare_prints_a_readable_line(workdir: Path, capsys: pytest.CaptureFixture) -> None:
    from tests.test_language_model import lm_config

    config = lm_config(steps=1)
    (workdir / "lm.json").write_text(json.dumps(config))
    assert main(["data", "prepare", "lm.json"]) == 0
    (line,) = capsys.readouterr().out.strip().splitlines()
    assert "<" not in line and "TokenStore" not in line
    assert re.fullmatch(r"token store: \S+ \(vocabulary [\d,]+, \w+; train [\d,]+ documents, [\d,]+ tokens; "
                        r"val [\d,]+ documents, [\d,]+ tokens\)", line), line
