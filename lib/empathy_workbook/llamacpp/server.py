"""llama.cpp's own server (``llama-server --jinja``) on localhost: the chat engine a phone app runs.

llama.rn renders chats with llama.cpp's Jinja engine, not with Python's jinja2 and not with transformers, and
stops where llama.cpp's sampler loop stops. ``llama-server`` is the same C++ code behind an HTTP API, so the
export checks ask it what the phone will see: ``/apply-template`` renders a conversation from the GGUF's own
template (``chat_template_kwargs`` reach the template as llama.rn's ``enable_thinking`` does), ``/tokenize``
shows the ids the model gets (a BOS added by the vocabulary included), and ``/v1/chat/completions`` answers
with llama.rn's knobs (stop words, temperature, top-p, top-k, min-p, n_predict) and says why it stopped.

The binary is built by scripts/build_llama_cpp.sh in the same CMake build as the installed llama-cpp-python
(one compile, the same llama.cpp commit) and copied to <venv>/llama.cpp/bin with build.json beside it.
``LlamaServer`` starts it on a free localhost port, waits until it reports healthy, and always stops it,
also when a check fails halfway (context manager).
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

# Where scripts/build_llama_cpp.sh puts the tools; EWB_LLAMA_TOOLS points elsewhere (a folder with the same
# layout: bin/ and build.json).
TOOLS_DIR = Path(os.environ.get("EWB_LLAMA_TOOLS", Path(sys.prefix) / "llama.cpp"))


class ServerUnavailable(RuntimeError):
    """llama.cpp's tools are not built for the installed llama-cpp-python: say how to build them."""


class ServerError(RuntimeError):
    """The server refused a request or died; the message carries its answer or the end of its log."""


def tools_build(tools_dir: Path | None = None) -> dict:
    """build.json of the llama.cpp tools, checked against the installed llama-cpp-python version."""
    tools_dir = Path(tools_dir or TOOLS_DIR)
    marker = tools_dir / "build.json"
    if not marker.exists():
        raise ServerUnavailable(f"llama.cpp's server is not built ({marker} is missing): run `make setup` "
                                "(scripts/build_llama_cpp.sh builds it together with llama-cpp-python)")
    build = json.loads(marker.read_text(encoding="utf-8"))
    installed = importlib.metadata.version("llama_cpp_python")
    if build.get("llama_cpp_python") != installed:
        raise ServerUnavailable(f"{tools_dir} holds llama.cpp tools of llama-cpp-python {build.get('llama_cpp_python')}, "
                                f"but {installed} is installed: run `make setup` to rebuild them from the same sources")
    return build


def tool_path(name: str, tools_dir: Path | None = None) -> Path:
    """Path of one built tool (llama-server, llama-imatrix, llama-quantize), after the version check."""
    tools_dir = Path(tools_dir or TOOLS_DIR)
    tools_build(tools_dir)
    path = tools_dir / "bin" / name
    if not os.access(path, os.X_OK):
        raise ServerUnavailable(f"{path} is missing or not executable: run `make setup`")
    return path


def server_available() -> bool:
    """True when llama-server is built for the installed llama-cpp-python (tests skip otherwise)."""
    try:
        tool_path("llama-server")
        return True
    except (ServerUnavailable, importlib.metadata.PackageNotFoundError):
        return False


def free_port() -> int:
    """A TCP port nobody listens on right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class LlamaServer:
    """``llama-server --jinja`` over one GGUF on 127.0.0.1; use it as a context manager.

    One slot (``--parallel 1``): requests run one after another with the whole context, as in an app.
    n_threads 0 = every core. The server's log goes to log_path (a temporary file when None).
    """

    def __init__(self, model_path: Path, n_ctx: int = 2048, n_threads: int = 0, log_path: Path | None = None,
                 startup_timeout: float = 120.0, extra_args: tuple[str, ...] = ()):
        self.model_path = Path(model_path)
        self.n_ctx, self.startup_timeout, self.extra_args = n_ctx, startup_timeout, tuple(extra_args)
        self.n_threads = n_threads if n_threads > 0 else (os.cpu_count() or 1)
        self.log_path = Path(log_path) if log_path else None
        self.process: subprocess.Popen | None = None
        self.port: int | None = None
        self._log_handle = None

    # --- life cycle ---------------------------------------------------------------------------

    def __enter__(self) -> "LlamaServer":
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def command(self, port: int) -> list[str]:
        return [str(tool_path("llama-server")), "--model", str(self.model_path), "--jinja",
                "--host", "127.0.0.1", "--port", str(port), "--ctx-size", str(self.n_ctx),
                "--threads", str(self.n_threads), "--threads-batch", str(self.n_threads), "--parallel", "1",
                *self.extra_args]

    def start(self) -> None:
        """Start the server and wait until /health answers ok; on any failure nothing is left running."""
        if not self.model_path.exists():
            raise FileNotFoundError(f"{self.model_path}: no such GGUF file")
        if self.log_path is None:
            handle, name = tempfile.mkstemp(prefix="llama-server-", suffix=".log")
            os.close(handle)
            self.log_path = Path(name)
        for attempt in range(3):  # another program may take the free port before the server binds it
            self.port = free_port()
            self._log_handle = open(self.log_path, "ab")
            self.process = subprocess.Popen(self.command(self.port), stdout=self._log_handle,
                                            stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
            try:
                self._wait_healthy()
                return
            except ServerError as err:
                self.stop()
                if "bind" not in str(err).lower() or attempt == 2:
                    raise
            except BaseException:  # KeyboardInterrupt included: never leave a server behind
                self.stop()
                raise

    def _wait_healthy(self) -> None:
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise ServerError(f"llama-server exited with code {self.process.returncode} while starting on "
                                  f"{self.model_path.name}:\n{self.log_tail()}")
            try:
                with urllib.request.urlopen(f"{self.url}/health", timeout=2) as response:
                    if response.status == 200 and json.loads(response.read()).get("status") == "ok":
                        return
            except (urllib.error.URLError, ConnectionError, TimeoutError, json.JSONDecodeError):
                pass  # not listening yet, or still loading the model (503)
            time.sleep(0.1)
        raise ServerError(f"llama-server did not become healthy within {self.startup_timeout:.0f} s:\n{self.log_tail()}")

    def stop(self) -> None:
        """Stop the server (SIGTERM, then SIGKILL after 10 s); safe to call twice."""
        if self.process is not None:
            if self.process.poll() is None:
                self.process.terminate()
                try:
                    self.process.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    self.process.kill()
                    self.process.wait()
            self.process = None
        if self._log_handle is not None:
            self._log_handle.close()
            self._log_handle = None

    def log_tail(self, lines: int = 15) -> str:
        if self.log_path is None or not self.log_path.exists():
            return "(no log)"
        return "\n".join(self.log_path.read_text(encoding="utf-8", errors="replace").splitlines()[-lines:])

    # --- requests ------------------------------------------------------------------------------

    def post(self, path: str, body: dict, timeout: float = 600.0) -> dict:
        """POST JSON to the server; a refused request raises ServerError with the server's own message."""
        if self.process is None:
            raise ServerError("the server is not running: use `with LlamaServer(...) as server:`")
        request = urllib.request.Request(f"{self.url}{path}", data=json.dumps(body).encode("utf-8"),
                                         headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                return json.loads(response.read())
        except urllib.error.HTTPError as err:
            detail = err.read().decode("utf-8", "replace")
            raise ServerError(f"llama-server {path} answered {err.code}: {detail[:500]}") from None
        except (urllib.error.URLError, ConnectionError) as err:
            raise ServerError(f"llama-server {path} failed ({err}):\n{self.log_tail()}") from None

    def get(self, path: str) -> dict:
        with urllib.request.urlopen(f"{self.url}{path}", timeout=30) as response:
            return json.loads(response.read())

    def props(self) -> dict:
        """/props: bos/eos token text, the template, build info."""
        return self.get("/props")

    def apply_template(self, messages: list[dict], chat_template_kwargs: dict | None = None) -> str:
        """The prompt llama.cpp's Jinja engine renders from the file's template (generation prompt on).

        llama.cpp leaves out a leading BOS text when its tokenizer adds BOS by itself (Gemma): see
        ``prompt_ids`` for what the model really receives.
        """
        body = {"messages": messages}
        if chat_template_kwargs is not None:
            body["chat_template_kwargs"] = chat_template_kwargs
        return self.post("/apply-template", body)["prompt"]

    def tokenize(self, text: str, add_special: bool = True) -> list[int]:
        """Ids of text as the server tokenizes a prompt: control tokens parsed, BOS added when the vocab asks."""
        return self.post("/tokenize", {"content": text, "add_special": add_special, "parse_special": True})["tokens"]

    def chat(self, messages: list[dict], settings: dict, seed: int) -> dict:
        """One /v1/chat/completions answer with llama.rn-style settings (see phone_request).

        Returns text (content), reasoning (reasoning_content, where the server moved a think block), finish_reason,
        stop_type ("eos": an end-of-generation token, "word": a stop word, "limit": n_predict ran out),
        stopping_word, tokens (generated ids) and new_tokens.
        """
        body = dict(phone_request(settings), messages=messages, seed=seed, verbose=True, return_tokens=True)
        out = self.post("/v1/chat/completions", body)
        choice = out["choices"][0]
        verbose = out.get("__verbose") or {}
        message = choice.get("message") or {}
        return {"text": message.get("content") or "", "reasoning": message.get("reasoning_content") or "",
                "finish_reason": choice.get("finish_reason"), "stop_type": verbose.get("stop_type"),
                "stopping_word": verbose.get("stopping_word"), "tokens": verbose.get("tokens"),
                "new_tokens": out["usage"]["completion_tokens"]}


def phone_request(settings: dict) -> dict:
    """The llama.cpp request fields for phone settings (phone_settings.json's keys, llama.rn's names).

    llama.rn's completion() and llama-server take the same names for these (n_predict, temperature, top_p,
    top_k, min_p, stop, chat_template_kwargs); min_p is always sent because llama.cpp's default is 0.05.
    """
    request = {key: settings[key] for key in ("n_predict", "temperature", "top_p", "top_k", "min_p", "stop")}
    request["chat_template_kwargs"] = {"enable_thinking": bool(settings["enable_thinking"])}
    return request
