"""Serving under load: ``crossframe serve`` driven over loopback by N concurrent clients.

The load generator (httpx, asyncio) runs N clients for a bounded time and at most a bounded
number of requests, then waits for the requests in flight and stops by itself. It reports
requests/s, tokens/s, p50/p99 latency and errors. Servers run as ``python -m crossframe serve``
subprocesses on free loopback ports, one at a time, with the same threads.

- **GPT**, the quickstart's size (4 layers, d_model 128, context 128, byte tokens; a few training
  steps, since throughput does not depend on the weights): continuous batching over the torch KV
  cache (``--max-batch 32``) against the same server with batching off (``--max-batch 1``: one
  sequence at a time), at 32 clients. Goal: at least 4x the tokens/s, with zero errors.
- **digits MLP** exported to ONNX: the server's coalescing batcher against a minimal
  one-request-at-a-time ONNX Runtime handler (a bare Starlette app whose handler runs the session
  for each request in turn), one example per request, at 8 and 32 clients. The model takes
  microseconds, so both sides measure HTTP handling; on a 2-core machine the load generator
  shares the cores and bounds both at 32 clients.

Run it alone with ``python -m benchmarks --only serve_load [--quick]``; ``--smoke`` shrinks it
to a toy model, a few clients and a second or two per case.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from benchmarks.common import markdown_table, pick, smoke

TITLE = "Serving: crossframe serve under concurrent load (loopback, batching on vs off)"
CLIENTS = 32


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class _Process:
    """A server subprocess on a free loopback port, ready when ``/readyz`` (or ``/``) answers 200."""

    def __init__(self, args: list[str], threads: int, ready_path: str = "/readyz") -> None:
        import httpx

        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = dict(os.environ)
        if threads:
            env["OMP_NUM_THREADS"] = str(threads)
        self.proc = subprocess.Popen([sys.executable, *args, "--port", str(self.port)], env=env,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited: {self.proc.stderr.read()[-500:] if self.proc.stderr else ''}")
            try:
                if httpx.get(self.url + ready_path, timeout=1).status_code == 200:
                    return
            except httpx.TransportError:
                time.sleep(0.1)
        self.stop()
        raise RuntimeError("server did not get ready in 120 s")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def percentile(values: list[float], q: float) -> float:
    """The ``q``-th percentile (nearest rank) of ``values``."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * len(ordered) + 0.5) - 1))]


async def _drive(url: str, make_body: Callable[[int], dict[str, Any]], clients: int, seconds: float,
                 max_requests: int, tokens_of: Callable[[dict[str, Any]], int]) -> dict[str, Any]:
    import httpx

    latencies: list[float] = []
    errors, tokens, issued = 0, 0, 0
    stop_at = time.perf_counter() + seconds
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(timeout=300, limits=limits) as http:

        async def client() -> None:
            nonlocal errors, tokens, issued
            while time.perf_counter() < stop_at and issued < max_requests:
                body = make_body(issued)
                issued += 1
                t0 = time.perf_counter()
                try:
                    r = await http.post(url, json=body)
                    ok = r.status_code == 200
                except httpx.HTTPError:
                    ok = False
                if ok:
                    latencies.append(time.perf_counter() - t0)
                    tokens += tokens_of(r.json())
                else:
                    errors += 1

        start = time.perf_counter()
        await asyncio.gather(*(client() for _ in range(clients)))
        wall = time.perf_counter() - start
    done = len(latencies)
    return {"requests": done, "errors": errors, "wall_s": wall, "requests_per_s": done / wall,
            "tokens_per_s": tokens / wall, "latency_p50_ms": 1000 * percentile(latencies, 50) if done else 0.0,
            "latency_p99_ms": 1000 * percentile(latencies, 99) if done else 0.0}


def load(url: str, make_body: Callable[[int], dict[str, Any]], clients: int, seconds: float, max_requests: int,
         tokens_of: Callable[[dict[str, Any]], int] = lambda r: 0) -> dict[str, Any]:
    """Drive ``url`` with ``clients`` concurrent clients for ``seconds`` (at most ``max_requests``)."""
    return asyncio.run(_drive(url, make_body, clients, seconds, max_requests, tokens_of))


def _gpt_run(tmp: Path, quick: bool) -> Path:
    import crossframe

    width = {"n_layer": 1, "n_head": 2, "d_model": 32} if quick and smoke() else {"n_layer": 4, "n_head": 4,
                                                                                   "d_model": 128}
    cfg = {"name": "serve-gpt", "backend": "torch", "device": "cpu", "seed": 0, "output_dir": str(tmp),
           "data": {"name": "python-stdlib", "max_files": 16, "val_fraction": 0.25},
           "text": {"tokenizer": {"name": "bytes"}, "seq_len": 128, "max_eval_tokens": 1024},
           "model": {"name": "gpt", **width, "max_seq_len": 128, "dropout": 0.0},
           "train": {"steps": 5, "batch_size": 8, "log_every": 5, "eval_every": 0,
                     "optimizer": {"name": "adamw", "lr": 0.002}}}
    return crossframe.run(cfg, quiet=True).run_dir


def _digits_export(tmp: Path) -> Path:
    import crossframe
    from crossframe.compress.pipeline import export_run

    cfg = {"name": "serve-mlp", "backend": "torch", "device": "cpu", "seed": 0, "output_dir": str(tmp),
           "data": {"name": "digits"}, "model": {"name": "mlp", "hidden": [128, 64]},
           "train": {"steps": 30, "batch_size": 64, "log_every": 10, "eval_every": 0,
                     "optimizer": {"name": "adamw", "lr": 0.003}}}
    run_dir = crossframe.run(cfg, quiet=True).run_dir
    export_run(run_dir, ["onnx"])
    return run_dir / "exports" / "onnx-torch"


def gpt_rows(tmp: Path, quick: bool, log: Callable[[str], None], threads: int) -> list[dict[str, Any]]:
    """Batching on vs off for the GPT at 32 (smoke: 4) clients."""
    run_dir = _gpt_run(tmp, quick)
    clients = 4 if quick and smoke() else CLIENTS
    seconds = pick(20, 8, 1, quick)
    max_tokens = pick(64, 32, 8, quick)
    rows = []
    for label, batch in (("batching on", CLIENTS), ("batching off", 1)):
        log(f"gpt: {label}, {clients} clients, {seconds} s")
        server = _Process(["-m", "crossframe", "serve", str(run_dir), "--max-batch", str(batch),
                           "--log-level", "warning"], threads)
        try:
            result = load(f"{server.url}/v1/completions",
                          lambda i: {"prompt": "def ", "max_tokens": max_tokens, "temperature": 0.8, "seed": i},
                          clients, seconds, pick(100_000, 5_000, 64, quick),
                          lambda r: r["usage"]["completion_tokens"])
        finally:
            server.stop()
        rows.append({"case": "gpt (quickstart size)" if not (quick and smoke()) else "gpt (toy)", "mode": label,
                     "clients": clients, "max_tokens": max_tokens, **result})
    on, off = rows
    on["speedup_ratio"] = on["tokens_per_s"] / off["tokens_per_s"] if off["tokens_per_s"] else float("nan")
    return rows


_BASELINE = '''
import json, sys
import numpy as np, onnxruntime as ort, uvicorn
from starlette.applications import Starlette
from starlette.responses import JSONResponse
from starlette.routing import Route

options = ort.SessionOptions(); options.intra_op_num_threads = {threads}
session = ort.InferenceSession(sys.argv[1], options, providers=["CPUExecutionProvider"])
name = session.get_inputs()[0].name

async def predict(request):  # one request at a time: the session runs on the event loop itself
    x = np.asarray(json.loads(await request.body())["inputs"], dtype=np.float32)
    logits = session.run(None, {{name: x.reshape(len(x), 8, 8, 1)}})[0]
    return JSONResponse({{"labels": logits.argmax(axis=1).tolist()}})

async def ready(request):
    return JSONResponse({{"status": "ok"}})

app = Starlette(routes=[Route("/predict", predict, methods=["POST"]), Route("/readyz", ready)])
uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[-1]), log_level="warning")
'''


def classifier_rows(tmp: Path, quick: bool, log: Callable[[str], None], threads: int) -> list[dict[str, Any]]:
    """The batching server against the minimal ONNX Runtime handler, one example per request, at 8 and
    32 clients (smoke: 4). Each server is started once and driven at each client count."""
    import numpy as np
    from sklearn.datasets import load_digits

    export_dir = _digits_export(tmp)
    images = (load_digits().images / 16.0).astype(np.float32)[..., None]
    counts = [4] if quick and smoke() else [8, CLIENTS]
    seconds = pick(15, 6, 1, quick)
    script = tmp / "baseline_server.py"
    script.write_text(_BASELINE.format(threads=threads or 0))
    rows = []
    for label, args, path in (
            ("crossframe serve (batching)", ["-m", "crossframe", "serve", str(export_dir), "--max-batch", "64",
                                             "--log-level", "warning"], "/v1/predict"),
            ("minimal ORT handler (one at a time)", [str(script), str(export_dir / "model.onnx")], "/predict")):
        server = _Process(args, threads)
        try:
            for clients in counts:
                log(f"mlp: {label}, {clients} clients, {seconds} s")
                result = load(f"{server.url}{path}", lambda i: {"inputs": images[i % len(images)][None].tolist()},
                              clients, seconds, pick(1_000_000, 50_000, 200, quick))
                result.pop("tokens_per_s")
                rows.append({"case": "digits mlp (onnx)", "mode": label, "clients": clients, "max_tokens": "-",
                             **result})
        finally:
            server.stop()
    for ours, base in zip(rows[:len(counts)], rows[len(counts):], strict=True):
        ours["speedup_ratio"] = ours["requests_per_s"] / base["requests_per_s"]
    return rows


def run(quick: bool = False, log: Callable[[str], None] = print, threads: int = 1) -> list[dict[str, Any]]:
    """Both load tests; one row per (model, mode)."""
    tmp = Path(tempfile.mkdtemp(prefix="crossframe-serve-"))
    try:
        return gpt_rows(tmp, quick, log, threads) + classifier_rows(tmp, quick, log, threads)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def table(rows: list[dict[str, Any]]) -> str:
    """The Markdown table of :func:`run`'s rows."""
    headers = ["model", "mode", "clients", "requests/s", "tokens/s", "p50 ms", "p99 ms", "errors", "speedup"]
    body = [[r["case"], r["mode"], r["clients"], f"{r['requests_per_s']:.1f}",
             f"{r['tokens_per_s']:.0f}" if "tokens_per_s" in r else "-", f"{r['latency_p50_ms']:.1f}",
             f"{r['latency_p99_ms']:.1f}", r["errors"],
             f"{r['speedup_ratio']:.2f}x" if "speedup_ratio" in r else "-"] for r in rows]
    return markdown_table(headers, body)
