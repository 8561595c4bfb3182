"""``crossframe serve`` end to end: the real server on a loopback port, called with httpx and the openai client.

A tiny GPT (a few steps on the stdlib corpus) and a tiny digits MLP (exported to ONNX) are
trained once per module. The server runs as ``python -m crossframe serve`` in a subprocess, so
SIGTERM is real.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import crossframe
from crossframe.serve.keys import KeyStore, RateLimiter, add_key, read_key_file, revoke_key
from crossframe.serve.text import TextStream
from crossframe.text.tokenizers import load_tokenizer
from crossframe.train.generate import generate

TEMPLATE = "{% for m in messages %}{{ m.role }}: {{ m.content }}\n{% endfor %}assistant:"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Served:
    """A ``crossframe serve`` subprocess on a free loopback port."""

    def __init__(self, path: Path, *args: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = path.parent / f"serve-{self.port}.log"
        self.proc = subprocess.Popen([sys.executable, "-m", "crossframe", "serve", str(path), "--port", str(self.port),
                                      "--log-level", "warning", *args],
                                     stdout=self.log.open("w"), stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, self.log.read_text()
            try:
                if httpx.get(f"{self.url}/readyz", timeout=1).status_code == 200:
                    return
            except httpx.TransportError:
                time.sleep(0.1)
        raise AssertionError(f"server did not get ready: {self.log.read_text()}")

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("serve")


@pytest.fixture(scope="module")
def lm_run(home: Path) -> Path:
    cfg = {"name": "lm", "device": "cpu", "seed": 1, "output_dir": str(home / "runs"),
           "data": {"name": "python-stdlib", "max_files": 20, "val_fraction": 0.1},
           "text": {"tokenizer": {"name": "bytes"}, "seq_len": 32, "max_eval_tokens": 2000},
           "model": {"name": "gpt", "n_layer": 2, "n_head": 2, "d_model": 32, "max_seq_len": 32},
           "train": {"steps": 10, "batch_size": 8, "log_every": 5, "eval_every": 0,
                     "optimizer": {"name": "adamw", "lr": 1e-2}}}
    return crossframe.run(cfg, quiet=True).run_dir


@pytest.fixture(scope="module")
def keys(home: Path) -> dict[str, str]:
    path = home / "keys.json"
    made = {name: add_key(path, name) for name in ("good", "gone")}
    made["limited"] = add_key(path, "limited", rate_per_minute=2)
    revoke_key(path, "gone")
    return made


@pytest.fixture(scope="module")
def lm_server(home: Path, lm_run: Path, keys: dict[str, str]) -> Iterator[Served]:
    (home / "chat.jinja").write_text(TEMPLATE)
    served = Served(lm_run, "--api-keys", str(home / "keys.json"), "--chat-template", str(home / "chat.jinja"),
                    "--max-batch", "8", "--max-tokens-limit", "200", "--max-body-kb", "16")
    yield served
    assert served.stop() == 0


def auth(keys: dict[str, str], name: str = "good") -> dict[str, str]:
    return {"Authorization": f"Bearer {keys[name]}"}


def sse_texts(response: httpx.Response) -> tuple[list[str], list[dict[str, Any]]]:
    lines = [line[len("data: "):] for line in response.iter_lines() if line.startswith("data: ")]
    assert lines[-1] == "[DONE]"
    chunks = [json.loads(x) for x in lines[:-1]]
    return [c["choices"][0]["text"] for c in chunks if c["choices"]], chunks


@pytest.mark.slow  # a trained run, or a server subprocess
def test_completions_equal_crossframe_generate(lm_server: Served, lm_run: Path, keys: dict[str, str]) -> None:
    sampling = {"temperature": 0.9, "top_p": 0.95, "seed": 5}
    expected = generate(lm_run, "def ", 24, **sampling)
    body = {"model": "lm", "prompt": "def ", "max_tokens": 24, **sampling}
    r = httpx.post(f"{lm_server.url}/v1/completions", json=body, headers=auth(keys), timeout=30)
    assert r.status_code == 200, r.text
    out = r.json()
    assert "def " + out["choices"][0]["text"] == expected
    assert out["usage"] == {"prompt_tokens": 4, "completion_tokens": 24, "total_tokens": 28}
    assert out["choices"][0]["finish_reason"] == "length"
    with httpx.stream("POST", f"{lm_server.url}/v1/completions", json={**body, "stream": True}, headers=auth(keys),
                      timeout=30) as r:
        assert r.headers["content-type"].startswith("text/event-stream")
        texts, chunks = sse_texts(r)
    assert "def " + "".join(texts) == expected
    assert chunks[-1]["choices"][0]["finish_reason"] == "length"


@pytest.mark.slow  # a trained run, or a server subprocess
def test_openai_client_completions_chat_and_streaming(lm_server: Served, lm_run: Path, keys: dict[str, str]) -> None:
    from openai import OpenAI

    client = OpenAI(base_url=f"{lm_server.url}/v1", api_key=keys["good"], max_retries=0)
    assert [m.id for m in client.models.list()] == ["lm"]
    greedy = generate(lm_run, "import ", 30, temperature=0)
    done = client.completions.create(model="lm", prompt="import ", max_tokens=30, temperature=0)
    assert "import " + done.choices[0].text == greedy
    stream = client.completions.create(model="lm", prompt="import ", max_tokens=30, temperature=0, stream=True,
                                       stream_options={"include_usage": True})
    chunks = list(stream)
    assert "import " + "".join(c.choices[0].text for c in chunks if c.choices) == greedy
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 30
    # chat: the template renders the messages into the prompt that generate() continues
    prompt = "user: hi\nassistant:"
    expected = generate(lm_run, prompt, 12, temperature=0.7, seed=3)[len(prompt):]
    messages = [{"role": "user", "content": "hi"}]
    chat = client.chat.completions.create(model="lm", messages=messages, max_tokens=12, temperature=0.7, seed=3)
    assert chat.choices[0].message.content == expected and chat.choices[0].message.role == "assistant"
    parts = client.chat.completions.create(model="lm", messages=messages, max_tokens=12, temperature=0.7, seed=3,
                                           stream=True)
    assert "".join(p.choices[0].delta.content or "" for p in parts) == expected


@pytest.mark.slow  # a trained run, or a server subprocess
def test_concurrent_requests_share_decode_steps_and_keep_their_tokens(lm_server: Served, lm_run: Path,
                                                                      keys: dict[str, str]) -> None:
    prompts = ["def ", "class A", "import os\n", "", "return x", "for i in", "#", "while True:", "x = 1"]

    def ask(i: int) -> str:
        body = {"prompt": prompts[i], "max_tokens": 20 + i, "temperature": 0.8, "seed": i}
        r = httpx.post(f"{lm_server.url}/v1/completions", json=body, headers=auth(keys), timeout=60)
        assert r.status_code == 200, r.text
        return r.json()["choices"][0]["text"]

    with ThreadPoolExecutor(len(prompts)) as pool:
        texts = list(pool.map(ask, range(len(prompts))))
    for i, text in enumerate(texts):
        assert prompts[i] + text == generate(lm_run, prompts[i], 20 + i, temperature=0.8, seed=i), i
    metrics = httpx.get(f"{lm_server.url}/metrics").text
    rows = [line for line in metrics.splitlines() if line.startswith('crossframe_batch_size_sum{kind="decode"}')]
    assert rows and float(rows[0].split()[-1]) >= sum(20 + i for i in range(len(prompts)))
    assert 'crossframe_requests_total{method="POST",route="/v1/completions",status="200"}' in metrics


@pytest.mark.slow  # a trained run, or a server subprocess
def test_stop_strings_end_the_completion(lm_server: Served, lm_run: Path, keys: dict[str, str]) -> None:
    full = generate(lm_run, "def ", 40, temperature=0)[len("def "):]
    stop = full[5:7]
    expected = full[:full.index(stop)]
    body = {"prompt": "def ", "max_tokens": 40, "temperature": 0, "stop": [stop]}
    r = httpx.post(f"{lm_server.url}/v1/completions", json=body, headers=auth(keys), timeout=30)
    assert r.json()["choices"][0] == {"index": 0, "text": expected, "logprobs": None, "finish_reason": "stop"}
    with httpx.stream("POST", f"{lm_server.url}/v1/completions", json={**body, "stream": True}, headers=auth(keys),
                      timeout=30) as r:
        texts, chunks = sse_texts(r)
    assert "".join(texts) == expected and chunks[-1]["choices"][0]["finish_reason"] == "stop"


@pytest.mark.slow  # a trained run, or a server subprocess
def test_keys_no_wrong_and_revoked_get_401_and_the_rate_limit_429(lm_server: Served, keys: dict[str, str]) -> None:
    url = f"{lm_server.url}/v1/models"
    assert httpx.get(url).status_code == 401
    assert httpx.get(url, headers={"Authorization": "Bearer cf-not-a-key"}).status_code == 401
    assert httpx.get(url, headers={"Authorization": keys["good"]}).status_code == 401  # no Bearer scheme
    revoked = httpx.get(url, headers=auth(keys, "gone"))
    assert revoked.status_code == 401 and revoked.json()["error"]["code"] == "invalid_api_key"
    assert httpx.get(url, headers=auth(keys)).status_code == 200
    codes = [httpx.get(url, headers=auth(keys, "limited")).status_code for _ in range(3)]
    assert codes == [200, 200, 429]
    assert httpx.get(f"{lm_server.url}/healthz").status_code == 200  # probes need no key


MALFORMED: list[tuple[str, Any]] = [
    ("/v1/completions", b"{not json"),
    ("/v1/completions", b""),
    ("/v1/completions", b"[1, 2]"),
    ("/v1/completions", {"prompt": 5}),
    ("/v1/completions", {"prompt": "x", "max_tokens": -1}),
    ("/v1/completions", {"prompt": "x", "max_tokens": "many"}),
    ("/v1/completions", {"prompt": "x", "max_tokens": 10**6}),
    ("/v1/completions", {"prompt": "x", "temperature": -1}),
    ("/v1/completions", b'{"prompt": "x", "temperature": Infinity}'),
    ("/v1/completions", b'{"prompt": "x", "max_tokens": NaN}'),
    ("/v1/completions", {"prompt": "x", "top_p": 0}),
    ("/v1/completions", {"prompt": "x", "n": 3}),
    ("/v1/completions", {"prompt": "x", "unknown_field": 1}),
    ("/v1/completions", {"prompt": "x", "model": "someone-else"}),
    ("/v1/completions", {"prompt": "x" * 20_000}),
    ("/v1/chat/completions", {"messages": []}),
    ("/v1/chat/completions", {"messages": [{"role": "wizard", "content": "x"}]}),
    ("/v1/chat/completions", {"messages": "hello"}),
    ("/v1/predict", {"inputs": [[1, 2]]}),
    ("/v1/nothing", {}),
]


@pytest.mark.slow  # a trained run, or a server subprocess
def test_malformed_requests_get_one_line_4xx_and_the_server_keeps_answering(lm_server: Served, lm_run: Path,
                                                                             keys: dict[str, str]) -> None:
    for path, body in MALFORMED:
        content = body if isinstance(body, bytes) else json.dumps(body).encode()
        r = httpx.post(f"{lm_server.url}{path}", content=content, headers=auth(keys), timeout=30)
        assert 400 <= r.status_code < 500, (path, body, r.status_code, r.text)
        assert "\n" not in r.text.strip() and r.json()["error"]["message"], (path, body, r.text)
    lone_surrogate = b'{"prompt": "\\ud800", "echo": true, "max_tokens": 2}'  # valid JSON, not encodable UTF-8
    assert httpx.post(f"{lm_server.url}/v1/completions", content=lone_surrogate, headers=auth(keys)).status_code == 200
    assert httpx.get(f"{lm_server.url}/healthz").status_code == 200
    r = httpx.post(f"{lm_server.url}/v1/completions", json={"prompt": "def ", "max_tokens": 5, "temperature": 0},
                   headers=auth(keys), timeout=30)
    assert "def " + r.json()["choices"][0]["text"] == generate(lm_run, "def ", 5, temperature=0)


JSON_SCALARS = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) \
    | st.text(max_size=20)
JSON_VALUES = st.recursive(JSON_SCALARS, lambda inner: st.lists(inner, max_size=4)
                           | st.dictionaries(st.text(max_size=12), inner, max_size=4), max_leaves=12)


@pytest.mark.slow  # a trained run, or a server subprocess
@given(JSON_VALUES)
def test_arbitrary_json_never_gets_a_5xx(lm_server: Served, keys: dict[str, str], body: Any) -> None:
    r = httpx.post(f"{lm_server.url}/v1/completions", json=body, headers=auth(keys), timeout=60)
    assert r.status_code < 500, (body, r.text)
    if r.status_code >= 400:
        assert set(r.json()) == {"error"}


@pytest.mark.slow  # a trained run, or a server subprocess
def test_sigterm_lets_a_stream_in_flight_finish(home: Path, lm_run: Path) -> None:
    served = Served(lm_run, "--max-tokens-limit", "1000")
    try:
        body = {"prompt": "def ", "max_tokens": 600, "temperature": 0, "stream": True}
        with httpx.stream("POST", f"{served.url}/v1/completions", json=body, timeout=60) as r:
            lines = r.iter_lines()
            first = next(line for line in lines if line.startswith("data: "))
            served.proc.send_signal(signal.SIGTERM)
            rest = [line[len("data: "):] for line in lines if line.startswith("data: ")]
        texts = [json.loads(first[len("data: "):])["choices"][0]["text"]]
        texts += [json.loads(x)["choices"][0]["text"] for x in rest[:-1]]
        assert rest[-1] == "[DONE]" and json.loads(rest[-2])["choices"][0]["finish_reason"] == "length"
        tokenizer = load_tokenizer(lm_run / "tokenizer")
        assert len(tokenizer.encode("".join(texts))) == 600
        assert served.proc.wait(30) == 0
        with pytest.raises(httpx.TransportError):
            httpx.get(f"{served.url}/healthz", timeout=2)
    finally:
        served.stop()


# ---------------------------------------------------------------------- classifier through ONNX Runtime


@pytest.fixture(scope="module")
def digits_run(home: Path) -> Path:
    from crossframe.compress.pipeline import export_run

    cfg = {"name": "digits", "backend": "torch", "device": "cpu", "seed": 0, "output_dir": str(home / "runs"),
           "data": {"name": "digits", "val_fraction": 0.2}, "model": {"name": "mlp", "hidden": [32]},
           "train": {"steps": 30, "batch_size": 64, "log_every": 10, "optimizer": {"name": "adamw", "lr": 0.01}}}
    run_dir = crossframe.run(cfg, quiet=True).run_dir
    export_run(run_dir, ["onnx"])
    return run_dir


@pytest.mark.slow  # a trained run, or a server subprocess
def test_predictions_equal_onnx_runtime_and_crossframe_eval(digits_run: Path) -> None:
    from crossframe.config.loading import load_config
    from crossframe.export.onnx_runtime import OnnxRunner
    from crossframe.train.data import load_training_data
    from crossframe.train.evaluate import evaluate

    cfg = load_config(digits_run / "config.yaml")
    val = load_training_data(cfg).val
    x, y = val.x, val.y
    served = Served(digits_run / "exports" / "onnx-torch", "--max-batch", "64", "--max-wait-ms", "20")
    try:
        chunks = np.array_split(np.arange(len(x)), 24)

        def ask(rows: np.ndarray) -> list[dict[str, Any]]:
            flat = rows[0] % 2 == 0  # half the requests send flat examples
            inputs = x[rows].reshape(len(rows), -1) if flat else x[rows]
            r = httpx.post(f"{served.url}/v1/predict", json={"inputs": inputs.tolist()}, timeout=30)
            assert r.status_code == 200, r.text
            return r.json()["data"]

        with ThreadPoolExecutor(8) as pool:
            data = [d for part in pool.map(ask, chunks) for d in part]
        labels = np.asarray([d["class_index"] for d in data])
        runner = OnnxRunner(digits_run / "exports" / "onnx-torch" / "model.onnx")
        assert (labels == runner(x).argmax(axis=1)).all()
        assert [d["label"] for d in data] == [str(k) for k in labels]
        assert all(abs(sum(d["scores"]) - 1.0) < 1e-9 and d["score"] == max(d["scores"]) for d in data)
        assert float((labels == y).mean()) == evaluate(digits_run)["val/accuracy"]
        metrics = httpx.get(f"{served.url}/metrics").text
        total = [line for line in metrics.splitlines() if line.startswith('crossframe_batch_size_sum{kind="predict"}')]
        assert float(total[0].split()[-1]) == len(x)  # every row went through a batch exactly once
        r = httpx.post(f"{served.url}/v1/predict", json={"inputs": [[0.0] * 63]})
        assert r.status_code == 400 and r.json()["error"]["param"] == "inputs"
        assert httpx.post(f"{served.url}/v1/completions", json={"prompt": "x"}).status_code == 400
    finally:
        assert served.stop() == 0


# ---------------------------------------------------------------------- units


def test_key_file_stores_only_salted_hashes_and_revocation_is_seen(tmp_path: Path) -> None:
    path = tmp_path / "keys.json"
    key = add_key(path, "alice")
    assert key not in path.read_text() and read_key_file(path)[0]["name"] == "alice"
    store = KeyStore(path)
    assert store.check(key).name == "alice"
    assert store.check(key + "x") is None and store.check(None) is None
    revoke_key(path, "alice")
    os.utime(path, ns=(time.time_ns(), time.time_ns() + 10**9))  # a coarse-mtime filesystem still sees the change
    assert store.check(key) is None


def test_rate_limiter_refills_at_the_rate() -> None:
    from crossframe.serve.keys import Caller

    caller, limiter = Caller("a", 60), RateLimiter()
    assert all(limiter.allow(caller, now=0.0) == 0 for _ in range(60))
    assert limiter.allow(caller, now=0.0) > 0
    assert limiter.allow(caller, now=1.0) == 0  # one per second comes back
    assert limiter.allow(Caller("b", None), now=0.0) == 0


@given(st.lists(st.integers(0, 255), max_size=40), st.lists(st.text("ab\n", min_size=1, max_size=3), max_size=2))
def test_text_stream_pieces_concatenate_to_the_text_up_to_the_first_stop(ids: list[int], stops: list[str]) -> None:
    from crossframe.text.tokenizers import BytesTokenizer

    tokenizer = BytesTokenizer()
    stream = TextStream(tokenizer, stops)
    pieces = []
    for token in ids:
        pieces.append(stream.push(token))
        if stream.stopped:
            break
    pieces.append(stream.finish())
    expected = tokenizer.decode(ids)
    for n in range(1, len(ids) + 1):  # the first prefix holding a stop string ends the text there
        text = tokenizer.decode(ids[:n])
        cuts = [text.find(s) for s in stops if s in text]
        if cuts:
            expected = text[:min(cuts)]
            break
    assert "".join(pieces) == expected


@pytest.mark.slow  # a trained run, or a server subprocess
def test_sequences_joining_between_steps_see_the_logits_of_a_full_forward(lm_run: Path) -> None:
    """The scheduler with the torch KV cache: sequences join while others are mid-way, slots are
    reused, two run past the context window. At every step each sequence's logits equal a full
    forward pass over its own context (float32 over two layers of width 32: rounding near 1e-6,
    so 1e-4 separates rounding from a wrong position, mask or cache row), and its greedy tokens
    equal the backend's own ``generate``."""
    from crossframe.checkpoint import load_checkpoint
    from crossframe.config.loading import load_config
    from crossframe.models import spec_from_json
    from crossframe.serve.decoding import Generation, LMEngine
    from crossframe.train.runner import prepare_backend

    ckpt = load_checkpoint(lm_run)
    impl, device = prepare_backend(load_config(lm_run / "config.yaml"), training=False)
    state = impl.inference_state(spec_from_json(ckpt.state["model"]), ckpt.weights, device, "fp32")
    prompts = [[100, 101, 32], [35], [105, 109, 112, 111, 114, 116, 32] * 2, [10, 32, 32], [61, 61]]
    lengths = [12, 30, 25, 8, 40]  # 14 + 25 and 2 + 40 tokens run past the 32-token context
    seen: list[list[np.ndarray]] = [[] for _ in prompts]
    finished: set[int] = set()

    def greedy(i: int) -> Any:
        def sample(logits: np.ndarray) -> np.ndarray:
            seen[i].append(logits[0].copy())
            return logits.argmax(axis=-1)
        return sample

    engine = LMEngine(impl.batch_decoder(state, 2), 2)  # 2 slots for 5 sequences
    entries = [Generation(p, n, greedy(i), lambda t, i=i: t is None and finished.add(i))
               for i, (p, n) in enumerate(zip(prompts, lengths, strict=True))]
    for entry in entries:  # queued before the start: each waiting one joins when a slot frees, mid-way
        engine.submit(entry)  # through its neighbour's decoding (the lengths differ)
    engine.start()
    try:
        deadline = time.monotonic() + 60
        while len(finished) < len(entries) and time.monotonic() < deadline:
            time.sleep(0.01)
    finally:
        engine.stop()
    for i, (entry, prompt, n) in enumerate(zip(entries, prompts, lengths, strict=True)):
        assert entry.error is None and len(seen[i]) == n
        for step, logits in enumerate(seen[i]):
            context = (prompt + entry.tokens[:step])[-32:]
            np.testing.assert_allclose(logits, impl.predict(state, np.asarray([context]))[0, -1], atol=1e-4)
        alone = impl.generate(state, np.asarray([prompt]), n, lambda x: x.argmax(axis=-1))[0, len(prompt):]
        assert entry.tokens == alone.tolist()


def test_keys_commands_and_one_line_cli_errors(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from crossframe.cli.main import main

    keys_file = tmp_path / "k.json"
    assert main(["serve", "keys", "add", str(keys_file), "ci", "--rate", "5"]) == 0
    key = capsys.readouterr().out.strip()
    assert key.startswith("cf-") and KeyStore(keys_file).check(key).rate_per_minute == 5
    assert main(["serve", "keys", "add", str(keys_file), "ci"]) == 2  # one active key per name
    assert "already has a key" in capsys.readouterr().err
    assert main(["serve", "keys", "revoke", str(keys_file), "ci"]) == 0
    assert main(["serve", "keys", "list", str(keys_file)]) == 0
    assert "revoked" in capsys.readouterr().out
    assert main(["serve", str(tmp_path)]) == 2  # neither a run nor an export
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "checkpoints/" in err[0]


@pytest.mark.slow  # a trained run, or a server subprocess
def test_recompute_decoder_pads_contexts_without_changing_their_logits(lm_run: Path) -> None:
    """The no-cache decoder (ONNX Runtime, or a backend without a batched cache) right-pads the
    contexts of one step into a batch; a causal model's logits at each row's last real token match
    that row alone (float32 rounding, as above) and contexts keep their last ``window`` tokens."""
    from crossframe.checkpoint import load_checkpoint
    from crossframe.config.loading import load_config
    from crossframe.models import spec_from_json
    from crossframe.serve.decoding import RecomputeDecoder
    from crossframe.train.runner import prepare_backend

    ckpt = load_checkpoint(lm_run)
    impl, device = prepare_backend(load_config(lm_run / "config.yaml"), training=False)
    state = impl.inference_state(spec_from_json(ckpt.state["model"]), ckpt.weights, device, "fp32")
    decoder = RecomputeDecoder(lambda x: impl.predict(state, x), window=32, pad_id=256)
    rng = np.random.default_rng(0)
    seqs = [rng.integers(0, 256, n).tolist() for n in (1, 5, 31, 32, 50)]
    logits = decoder.step(list(enumerate(seqs)))
    for row, seq in zip(logits, seqs, strict=True):
        np.testing.assert_allclose(row, impl.predict(state, np.asarray([seq[-32:]]))[0, -1], atol=1e-4)
