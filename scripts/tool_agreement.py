"""Do third-party benchmark tools count tokens as the server does, request by request?

`python scripts/tool_agreement.py --tools aiperf,guidellm,vllm --out DIR`: starts
`tierkv serve --pace none` (tiny-llama), exports its tokenizer from
`/v1/tokenizer.json` into `DIR/tok`, and puts a recording pass-through proxy in front of
it that keeps each completion's `id`, its `usage` and its text. Then it runs each tool
(the command lines of load/README.md, "Third-party load tools") against the proxy, reads
the tool's own per-request records, finds each one's response by id and compares:

* the tool's input token count with `usage.prompt_tokens`,
* the tool's output token count with `usage.completion_tokens`,
* and, as a check on the exported tokenizer itself, its count of the streamed text
  (without special tokens) with `usage.completion_tokens`.

Prints one line per tool and writes `DIR/agreement.json`. The tools are separate
installs (aiperf and guidellm in one venv, vLLM in another: see load/README.md); give
their executables with `--aiperf`, `--guidellm`, `--vllm`. Exit status 1 if any request
of any tool disagrees or fails.
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route
from tokenizers import Tokenizer as HFTokenizer

from load.bench._servers import free_port, tierkv_server

MODEL = "tiny-llama"


@dataclass(slots=True)
class ServerRecord:
    """One completion as the server answered it (seen by the proxy)."""

    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    text: str = ""
    prompt: str | None = None  # a text prompt as sent, with its add_special_tokens
    add_special_tokens: bool = True


@dataclass(slots=True)
class ToolRecord:
    """One request as the tool reported it."""

    response_id: str
    input_tokens: int
    output_tokens: int


@dataclass(slots=True)
class Agreement:
    tool: str
    command: str
    returncode: int
    num_requests: int = 0
    num_unmatched: int = 0
    num_input_agree: int = 0
    num_output_agree: int = 0
    # The exported tokenizer's own counts: of the prompt (with the request's
    # add_special_tokens) against usage.prompt_tokens, of the output text (without
    # special tokens) against usage.completion_tokens.
    num_prompt_text_agree: int = 0
    num_text_agree: int = 0
    disagreements: list[dict[str, Any]] = field(default_factory=list)

    @property
    def is_ok(self) -> bool:
        n = self.num_requests
        return (
            self.returncode == 0
            and n > 0
            and self.num_unmatched == 0
            and self.num_input_agree == self.num_output_agree == n
            and self.num_prompt_text_agree == self.num_text_agree == n
        )

    def line(self) -> str:
        n = self.num_requests
        return (
            f"{self.tool}: {n} requests, input tokens agree {self.num_input_agree}/{n}, "
            f"output tokens agree {self.num_output_agree}/{n}; exported tokenizer on the "
            f"prompt {self.num_prompt_text_agree}/{n}, on the output text "
            f"{self.num_text_agree}/{n}; unmatched {self.num_unmatched}, "
            f"exit {self.returncode}"
        )


# -- the recording proxy -------------------------------------------------------------------


class RecordingProxy:
    """Pass-through to `upstream`; completions' answers are recorded by response id."""

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream
        self.records: dict[str, ServerRecord] = {}
        self._client = httpx.AsyncClient(base_url=upstream, timeout=600.0)
        self.app = Starlette(routes=[Route("/{path:path}", self._forward, methods=["GET", "POST"])])

    async def _forward(self, request: Request) -> Response:
        headers = {
            k: v
            for k, v in request.headers.items()
            if k.lower() not in ("host", "content-length", "accept-encoding")
        }
        upstream = self._client.build_request(
            request.method,
            request.url.path,
            params=request.query_params,
            headers=headers,
            content=await request.body(),
        )
        resp = await self._client.send(upstream, stream=True)
        sent = None
        if request.url.path.endswith("completions") and resp.status_code == 200:
            sent = json.loads(await request.body())
        out_headers = {
            k: v
            for k, v in resp.headers.items()
            if k.lower() not in ("content-length", "transfer-encoding", "content-encoding")
        }
        if "text/event-stream" not in resp.headers.get("content-type", ""):
            body = await resp.aread()
            await resp.aclose()
            if sent is not None:
                self._record_json(json.loads(body), sent)
            return Response(body, resp.status_code, out_headers)
        return StreamingResponse(self._relay(resp, sent), resp.status_code, out_headers)

    async def _relay(
        self, resp: httpx.Response, sent: dict[str, Any] | None
    ) -> AsyncIterator[bytes]:
        buffer = b""
        try:
            async for chunk in resp.aiter_raw():
                yield chunk
                if sent is not None:
                    buffer += chunk
                    *events, buffer = buffer.split(b"\n\n")
                    for event in events:
                        data = event.strip().removeprefix(b"data:").strip()
                        if data and data != b"[DONE]":
                            self._record_json(json.loads(data), sent)
        finally:
            await resp.aclose()

    def _record_json(self, payload: dict[str, Any], sent: dict[str, Any]) -> None:
        if "id" not in payload:
            return
        rec = self.records.get(payload["id"])
        if rec is None:
            rec = self.records[payload["id"]] = ServerRecord()
            prompt = sent.get("prompt")
            if isinstance(prompt, list) and len(prompt) == 1:
                prompt = prompt[0]
            rec.prompt = prompt if isinstance(prompt, str) else None
            rec.add_special_tokens = sent.get("add_special_tokens") not in (False, "false")
        for choice in payload.get("choices") or []:
            rec.text += choice.get("text") or (choice.get("delta") or {}).get("content") or ""
            rec.text += (choice.get("message") or {}).get("content") or ""
        usage = payload.get("usage")
        if usage:
            rec.prompt_tokens = usage["prompt_tokens"]
            rec.completion_tokens = usage["completion_tokens"]

    def serve(self, port: int) -> Callable[[], None]:
        """Serve on 127.0.0.1:`port` in a thread; returns the function that stops it."""
        server = uvicorn.Server(
            uvicorn.Config(self.app, host="127.0.0.1", port=port, log_level="warning")
        )
        thread = threading.Thread(target=server.run, name="agreement-proxy", daemon=True)
        thread.start()
        deadline = time.monotonic() + 30
        while not server.started:
            if time.monotonic() > deadline or not thread.is_alive():
                raise RuntimeError("the recording proxy did not start")
            time.sleep(0.05)  # poll interval

        def stop() -> None:
            server.should_exit = True
            thread.join(timeout=10)

        return stop


# -- the tools -------------------------------------------------------------------------------


def aiperf_command(exe: str, url: str, tok: Path, out: Path, a: argparse.Namespace) -> list[str]:
    # aiperf counts prompts with add_special_tokens=False: ask the server for no BOS.
    return [
        exe, "profile", "--model", MODEL, "--url", url, "--endpoint-type", "completions",
        "--streaming", "--tokenizer", str(tok),
        "--synthetic-input-tokens-mean", str(a.input_len), "--output-tokens-mean",
        str(a.output_len), "--extra-inputs", "ignore_eos:true",
        *([] if a.keep_bos else ["--extra-inputs", "add_special_tokens:false"]),
        "--request-count", str(a.num_requests), "--concurrency", str(a.concurrency),
        "--ui-type", "none", "--artifact-dir", str(out),
    ]  # fmt: skip


def aiperf_records(out: Path) -> list[ToolRecord]:
    records = []
    for line in (out / "profile_export.jsonl").read_text().splitlines():
        row = json.loads(line)
        metrics = row["metrics"]
        records.append(
            ToolRecord(
                f"cmpl-{row['metadata']['x_request_id']}",
                int(metrics["input_sequence_length"]["value"]),
                int(metrics["output_sequence_length"]["value"]),
            )
        )
    return records


def guidellm_command(exe: str, url: str, tok: Path, out: Path, a: argparse.Namespace) -> list[str]:
    # guidellm counts with the tokenizer's special tokens, as the server adds them.
    return [
        exe, "run", "--backend",
        f"kind=openai_http,target={url},model={MODEL},request_format=/v1/completions",
        "--profile", f"kind=concurrent,streams={a.concurrency}",
        "--constraint", f"kind=max_requests,count={a.num_requests}",
        "--tokenizer", f"kind=hf_auto,model={tok}",
        "--data", f"kind=synthetic_text,prompt_tokens={a.input_len},output_tokens={a.output_len}",
        "--output", f"kind=json,path={out / 'guidellm.json'}", "--disable-console-interactive",
    ]  # fmt: skip


def guidellm_records(out: Path) -> list[ToolRecord]:
    requests = json.loads((out / "guidellm.json").read_text())["benchmarks"][0]["requests"]
    bad = len(requests.get("errored") or []) + len(requests.get("incomplete") or [])
    records = [
        ToolRecord(r["response_id"], int(r["prompt_tokens"]), int(r["output_tokens"]))
        for r in requests["successful"]
    ]
    return records + [ToolRecord("(errored)", -1, -1)] * bad


VLLM_PREFIX = "agree-"


def vllm_command(exe: str, url: str, tok: Path, out: Path, a: argparse.Namespace) -> list[str]:
    # vllm bench serve 0.33 reports usage.prompt_tokens / completion_tokens from the
    # stream (its own re-encoded count is the fallback): the server's BOS stays, and a
    # prompt is --random-input-len tokens on the server, special token included.
    return [
        exe, "bench", "serve", "--backend", "openai", "--base-url", url,
        "--endpoint", "/v1/completions", "--model", MODEL, "--tokenizer", str(tok),
        "--dataset-name", "random", "--random-input-len", str(a.input_len),
        "--random-output-len", str(a.output_len), "--num-prompts", str(a.num_requests),
        "--max-concurrency", str(a.concurrency), "--ignore-eos",
        "--request-id-prefix", VLLM_PREFIX, "--save-result", "--save-detailed",
        "--result-dir", str(out), "--result-filename", "vllm.json",
    ]  # fmt: skip


def vllm_records(out: Path) -> list[ToolRecord]:
    result = json.loads((out / "vllm.json").read_text())
    # Outputs are in request order; request i was sent with X-Request-Id PREFIX + i.
    return [
        ToolRecord(f"cmpl-{VLLM_PREFIX}{i}", int(n_in), int(n_out))
        if not err
        else ToolRecord("(errored)", -1, -1)
        for i, (n_in, n_out, err) in enumerate(
            zip(result["input_lens"], result["output_lens"], result["errors"], strict=True)
        )
    ]


TOOLS: dict[str, tuple[Callable[..., list[str]], Callable[[Path], list[ToolRecord]]]] = {
    "aiperf": (aiperf_command, aiperf_records),
    "guidellm": (guidellm_command, guidellm_records),
    "vllm": (vllm_command, vllm_records),
}


def compare(
    tool: str, command: list[str], returncode: int, records: list[ToolRecord],
    seen: dict[str, ServerRecord], hf: HFTokenizer,
) -> Agreement:  # fmt: skip
    result = Agreement(tool, shlex.join(command), returncode, num_requests=len(records))
    for rec in records:
        server = seen.get(rec.response_id)
        if server is None or server.prompt_tokens is None:
            result.num_unmatched += 1
            continue
        text_tokens = len(hf.encode(server.text, add_special_tokens=False).ids)
        prompt_tokens = (
            None
            if server.prompt is None
            else len(hf.encode(server.prompt, add_special_tokens=server.add_special_tokens).ids)
        )
        result.num_prompt_text_agree += prompt_tokens == server.prompt_tokens
        result.num_input_agree += rec.input_tokens == server.prompt_tokens
        result.num_output_agree += rec.output_tokens == server.completion_tokens
        result.num_text_agree += text_tokens == server.completion_tokens
        if (rec.input_tokens, prompt_tokens, rec.output_tokens, text_tokens) != (
            server.prompt_tokens,
            server.prompt_tokens,
            server.completion_tokens,
            server.completion_tokens,
        ):
            result.disagreements.append(
                {
                    "tool": asdict(rec),
                    "server": asdict(server),
                    "tokenizer": {"prompt": prompt_tokens, "output_text": text_tokens},
                }
            )
    return result


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tools", default="aiperf,guidellm,vllm", help="comma-separated")
    p.add_argument("--aiperf", default="aiperf", help="aiperf executable")
    p.add_argument("--guidellm", default="guidellm", help="guidellm executable")
    p.add_argument("--vllm", default="vllm", help="vllm executable")
    p.add_argument("--num-requests", type=int, default=100)
    p.add_argument("--concurrency", type=int, default=4)
    p.add_argument("--input-len", type=int, default=128)
    p.add_argument("--output-len", type=int, default=64)
    p.add_argument("--server-args", default="--pace none", help="extra `tierkv serve` flags")
    p.add_argument(
        "--keep-bos",
        action="store_true",
        help="do not ask aiperf's requests for add_special_tokens=false "
        "(shows the one-token gap it then has)",
    )
    p.add_argument("--out", type=Path, required=True)
    a = p.parse_args(argv)
    tools = [t for t in a.tools.split(",") if t]
    unknown = sorted(set(tools) - set(TOOLS))
    if unknown:
        p.error(f"unknown tools {unknown}; choose from {sorted(TOOLS)}")
    a.out.mkdir(parents=True, exist_ok=True)
    results: list[Agreement] = []
    with tierkv_server(a.out / "data", *shlex.split(a.server_args)) as server:
        tok = a.out / "tok"
        tok.mkdir(exist_ok=True)
        for name in ("tokenizer.json", "tokenizer_config.json"):
            r = httpx.get(f"{server.base_url}/v1/{name}", timeout=60)
            r.raise_for_status()
            (tok / name).write_bytes(r.content)
        hf = HFTokenizer.from_file(str(tok / "tokenizer.json"))
        proxy = RecordingProxy(server.base_url)
        port = free_port()
        stop = proxy.serve(port)
        try:
            for tool in tools:
                make_command, read_records = TOOLS[tool]
                out = a.out / tool
                out.mkdir(exist_ok=True)
                exe = getattr(a, tool)
                command = make_command(exe, f"http://127.0.0.1:{port}", tok, out, a)
                proxy.records.clear()
                with open(out / "tool.log", "wb") as log:
                    rc = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT).returncode
                try:
                    records = read_records(out)
                except (OSError, KeyError, ValueError) as exc:
                    print(f"{tool}: no per-request records ({exc!r}); see {out / 'tool.log'}")
                    records = []
                result = compare(tool, command, rc, records, dict(proxy.records), hf)
                results.append(result)
                print(result.line(), flush=True)
        finally:
            stop()
    (a.out / "agreement.json").write_text(
        json.dumps([{**asdict(r), "ok": r.is_ok} for r in results], indent=2) + "\n"
    )
    return 0 if results and all(r.is_ok for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
