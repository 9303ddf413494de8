"""The LLM tier: one decision per call from a small local model, or a fallback marker.

    async with LlmWorker(resolve_model("smollm2-135m-instruct-q4_0")) as worker:
        result = await worker.decide(caps, facts, policy, deadline_ms=1500)
        if result.fallback:       # deadline missed, invalid output or worker error
            ...                   # the engine uses the tier below (ONNX, rules)
        else:
            result.decision       # hub.grammar.Decision: action, params, reason
        result.provenance         # model, sha256s, raw output, latency, tokens, outcome

The model runs in a child interpreter (``python -c``, talking over a socket
pair with ``multiprocessing.connection``) that loads the GGUF once and
answers one request at a time; the hub's event loop only sends a request
and waits on a future, so the ingest path never runs the model. Each call
carries an absolute deadline:

- the child stops at the deadline and answers at once: llama.cpp's abort
  callback cuts a prompt evaluation short, a stopping criterion checked
  after every token ends a generation, and a request that reaches the child
  after its deadline is not started;
- ``decide`` returns at the deadline whatever happens, with outcome
  ``deadline``; a late answer is discarded;
- a child that has not answered ``KILL_GRACE_S`` after a deadline (stuck)
  is killed and a new one is started, so the next call finds a working
  model;
- a call waiting behind another one still counts its own deadline.

Every output is generated under a grammar built from the device's
capabilities (``hub.grammar.gbnf``) and then validated again
(``hub.grammar.parse``: schema and bounds). Outcomes:

| outcome | decision | meaning |
| --- | --- | --- |
| ``ok`` | a ``Decision`` | valid, within the device's capabilities and bounds |
| ``invalid`` | ``None`` | output failed validation (``provenance.detail`` says why) |
| ``deadline`` | ``None`` | no complete answer before the deadline |
| ``error`` | ``None`` | the worker failed (crashed, prompt too long); it restarts |

``decide`` never raises for any of these. The trust gate (``TrustGate``)
decides separately whether an ``ok`` decision may actuate or only advises.

A worker with an adapter does not ask the model for decisions. The model
reads each policy once (``hub.decide.facts.reading_messages``, under
``grammar.reading_gbnf``) and the worker keeps the reading (``READINGS_KEPT``
of them, the most recently used); a decision checks the facts against it in
code (``hub.decide.reading``), in microseconds, and carries it in its
provenance. A reading that names an action or parameters the device does not
accept for these facts gives ``invalid``. The reading runs in the background
with its own time limit (``READ_TIMEOUT_S``): a decision that arrives before
it is done waits for it within its own deadline, and falls back on a miss
while the reading goes on for the next one. ``prime`` reads the policy.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import importlib
import importlib.util
import itertools
import json
import logging
import math
import multiprocessing.connection
import os
import socket
import subprocess
import sys
import threading
import time
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any, Final

import numpy as np
import numpy.typing as npt

from hub.core.fsutil import sha256_file
from hub.core.paths import SHIPPED_MODELS, SOURCE_ROOT
from hub.decide import facts as f
from hub.decide import grammar
from hub.decide import reading as rd
from hub.decide.guard import OPERATOR_ONLY
from protocol import messages as m

log = logging.getLogger("hub.llm")

MODELS_DIR: Final = SHIPPED_MODELS
DEFAULT_MODEL: Final = "smollm2-135m-instruct-q4_0"
INSTALL_HINT: Final = "python -m tools.ml.install_llm (make test runs it)"
KILL_GRACE_S: Final = 5.0
DEFAULT_DEADLINE_MS: Final = 3000.0
READ_TIMEOUT_S: Final = 120.0  # one reading of a policy by an adapter
READ_RETRY_S: Final = 60.0  # a reading that failed is tried again after this
READINGS_KEPT: Final = 256


class Outcome(StrEnum):
    OK = "ok"
    INVALID = "invalid"
    DEADLINE = "deadline"
    ERROR = "error"


class ModelError(RuntimeError):
    """The model can't be found, read, verified or loaded; the message says which."""


class _Unreadable(ModelError):
    """An adapter wrote a reading of a policy that ``hub.decide.reading`` cannot parse."""


@dataclass(frozen=True, slots=True)
class Provenance:
    """What one LLM call saw and said, recorded with the decision."""

    model_name: str
    model_sha256: str
    prompt_version: str
    prompt_sha256: str
    raw_output: str
    latency_ms: float
    prompt_tokens: int
    completion_tokens: int
    outcome: Outcome
    detail: str = ""  # why invalid / error
    adapter_sha256: str = ""  # the LoRA adapter applied to the model ("": none)
    reading: str = ""  # an adapter's reading of the policy the decision used ("": none)

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["outcome"] = str(self.outcome)
        return d


@dataclass(frozen=True, slots=True)
class LlmResult:
    decision: grammar.Decision | None
    provenance: Provenance

    @property
    def fallback(self) -> bool:
        """True when the engine must use the tier below: no valid decision in time."""
        return self.decision is None

    @property
    def outcome(self) -> Outcome:
        return self.provenance.outcome


# -- the model file ---------------------------------------------------------------------


def resolve_model(name_or_path: str | Path, models_dir: Path = MODELS_DIR) -> Path:
    """A GGUF path from a path, a file name in ``models_dir``, or a model name there.

    ``smollm2-135m-instruct-q4_0`` finds ``models/smollm2-135m-instruct-q4_0.gguf``
    (or the file its manifest ``models/NAME.json`` names). Any GGUF dropped
    into ``models_dir`` is found by its name with or without ``.gguf``.
    """
    raw = Path(name_or_path)
    candidates = [raw]
    if raw.parent == Path(".") and not raw.is_absolute():
        candidates += [models_dir / raw.name, models_dir / f"{raw.name}.gguf"]
        manifest = models_dir / f"{raw.name}.json"
        with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
            candidates.append(models_dir / json.loads(manifest.read_text())["file"])
    for c in candidates:
        if c.is_file():
            return c.resolve()
    raise ModelError(
        f"model {str(name_or_path)!r} not found (looked in {models_dir}); "
        f"the default model is installed by {INSTALL_HINT}"
    )


def model_name(path: Path) -> str:
    return path.name.removesuffix(".gguf")


def llama_cpp_available() -> bool:
    return importlib.util.find_spec("llama_cpp") is not None


def model_capabilities(caps: Iterable[m.Capability]) -> tuple[m.Capability, ...]:
    """The capabilities a model may choose from: all but the operator-only ones."""
    return tuple(c for c in caps if c.action not in OPERATOR_ONLY)


# -- the child process ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Request:
    req_id: int
    messages: list[dict[str, str]]
    grammar: str
    max_tokens: int
    deadline: float  # time.monotonic(), system-wide on Linux


@dataclass(frozen=True, slots=True)
class _Reply:
    req_id: int
    text: str
    prompt_tokens: int
    completion_tokens: int
    stopped_at_deadline: bool
    error: str


_LOG_SINK: Any = None  # the ctypes callback, kept alive while llama.cpp holds it


def quiet_llama_cpp(llama_cpp: Any) -> None:
    """Drop llama.cpp's own log lines in this process. They are not the
    hub's, and they would break its one-JSON-object-a-line log: one warning
    per projection at each adapter load (210 lines: a LoRA on repacked
    weights "falls back to CPU", as expected), a line at each aborted decode.
    ``verbose=False`` does not stop them: llama-cpp-python reads ggml's log
    levels from an older table, in which a warning is an error. Failures
    still reach the caller as exceptions (a model that does not load, a
    decode that fails)."""
    global _LOG_SINK
    if _LOG_SINK is None:
        _LOG_SINK = llama_cpp.llama_log_callback(lambda _level, _text, _data: None)
        llama_cpp.llama_log_set(_LOG_SINK, ctypes.c_void_p(0))


def _serve(
    conn: multiprocessing.connection.Connection,
    path: str,
    threads: int,
    n_ctx: int,
    seed: int,
    expected_sha256: str,
    lora: str = "",
    lora_sha256: str = "",
) -> None:
    """The child: load the model (and its adapter), then answer requests until "stop" or EOF."""
    try:
        digest = sha256_file(Path(path))
        if expected_sha256 and digest != expected_sha256:
            conn.send(("failed", f"sha256 {digest} differs from the expected {expected_sha256}"))
            return
        if lora and lora_sha256 and (got := sha256_file(Path(lora))) != lora_sha256:
            conn.send(("failed", f"adapter sha256 {got} differs from the expected {lora_sha256}"))
            return
        # Imported by name: llama_cpp is only partly typed, and the hub must
        # import without it (the model tier is optional).
        llama_cpp: Any = importlib.import_module("llama_cpp")
        quiet_llama_cpp(llama_cpp)
        llm = llama_cpp.Llama(
            model_path=path,
            lora_path=lora or None,
            n_ctx=n_ctx,
            n_threads=threads,
            n_threads_batch=threads,
            seed=seed,
            verbose=False,
        )
    except Exception as exc:  # reported to the parent, which raises ModelError
        conn.send(("failed", f"{type(exc).__name__}: {exc}"))
        return
    conn.send(("ready", digest))
    render = _renderer(llm)
    grammars: dict[str, Any] = {}
    # llama.cpp asks this between graph nodes: the deadline also cuts a long
    # prompt evaluation short, not only the generation (llama_decode then
    # returns 2 and llama-cpp-python raises; the context stays usable).
    deadline = math.inf

    @llama_cpp.ggml_abort_callback  # type: ignore[untyped-decorator]
    def abort(_data: Any) -> bool:
        return time.monotonic() >= deadline

    llama_cpp.llama_set_abort_callback(llm._ctx.ctx, abort, None)
    while True:
        try:
            msg = conn.recv()
        except (EOFError, OSError):
            return
        if not isinstance(msg, _Request):
            return
        deadline = msg.deadline
        reply = _answer(llama_cpp, llm, render, grammars, msg)
        deadline = math.inf
        try:
            conn.send(reply)
        except (OSError, ValueError):
            return


def _answer(
    llama_cpp: Any, llm: Any, render: Any, grammars: dict[str, Any], msg: _Request
) -> _Reply:
    def past_deadline() -> bool:
        return time.monotonic() >= msg.deadline

    if past_deadline():  # waited in the pipe for too long: don't start
        return _Reply(msg.req_id, "", 0, 0, True, "")
    try:
        sampler = grammars.get(msg.grammar)
        if sampler is None:
            sampler = _GrammarSampler(llama_cpp, llm, msg.grammar)
            if len(grammars) > 64:
                for old in grammars.values():
                    old.close()
                grammars.clear()
            grammars[msg.grammar] = sampler
        prompt = render(msg.messages)
        text, n_out = _greedy(llm, sampler, prompt, msg.max_tokens, past_deadline)
        return _Reply(msg.req_id, text, len(prompt), n_out, past_deadline(), "")
    except Exception as exc:  # one bad request never ends the worker
        if past_deadline():  # aborted at the deadline
            return _Reply(msg.req_id, "", 0, 0, True, "")
        return _Reply(msg.req_id, "", 0, 0, False, f"{type(exc).__name__}: {exc}")


_VOCAB_BUFFER: list[Any] = []  # [llama_token_data array, token ids] for _GrammarSampler


class _GrammarSampler:
    """A llama.cpp grammar sampler that checks the greedy token first.

    Applying a grammar to the whole vocabulary costs more than the model's
    own step for a model this small. The greedy choice under a grammar is the
    highest logit among the tokens the grammar allows, so the highest logit
    overall is checked alone and taken when it is allowed; only when it is
    not is the grammar applied to every token. The result is the token that
    greedy sampling over the grammar-masked logits would give.
    """

    def __init__(self, llama_cpp: Any, llm: Any, gbnf: str) -> None:
        self._lib = llama_cpp
        self._vocab = llama_cpp.llama_model_get_vocab(llm._model.model)
        self._n_vocab = int(llm.n_vocab())
        self._ptr = llama_cpp.llama_sampler_init_grammar(self._vocab, gbnf.encode("utf-8"), b"root")
        if not self._ptr:
            raise ValueError("the grammar does not parse")
        self._one = (llama_cpp.llama_token_data * 1)()
        # One buffer for the whole vocabulary, shared by every grammar's sampler.
        if not _VOCAB_BUFFER or len(_VOCAB_BUFFER[1]) != self._n_vocab:
            ids = np.arange(self._n_vocab, dtype=np.intc)
            _VOCAB_BUFFER[:] = [(llama_cpp.llama_token_data * self._n_vocab)(), ids]
        self._all, self._all_ids = _VOCAB_BUFFER
        self.checked = 0  # tokens chosen, and of those,
        self.masked = 0  # how many needed the grammar over the whole vocabulary

    def reset(self) -> None:
        self._lib.llama_sampler_reset(self._ptr)

    def close(self) -> None:
        if self._ptr:
            self._lib.llama_sampler_free(self._ptr)
            self._ptr = None

    def _apply(self, data: Any, size: int) -> None:
        arr = self._lib.llama_token_data_array(data, size, -1, False)
        self._lib.llama_sampler_apply(self._ptr, ctypes.byref(arr))

    def choose(self, logits: npt.NDArray[np.float32]) -> int:
        """The greedy token the grammar allows next, accepted into its state."""
        best = int(np.argmax(logits))
        self.checked += 1
        self._one[0].id, self._one[0].logit, self._one[0].p = best, float(logits[best]), 0.0
        self._apply(self._one, 1)
        if not math.isinf(self._one[0].logit):
            token = best
        else:
            self.masked += 1
            rec = np.ctypeslib.as_array(self._all)
            rec["id"] = self._all_ids
            rec["logit"] = logits
            rec["p"] = 0.0
            self._apply(self._all, self._n_vocab)
            token = int(np.argmax(rec["logit"]))
            if math.isinf(float(rec["logit"][token])):
                raise ValueError("the grammar allows no token")
        self._lib.llama_sampler_accept(self._ptr, token)
        return token


def _greedy(
    llm: Any, sampler: _GrammarSampler, prompt: list[int], max_tokens: int, stop: Any
) -> tuple[str, int]:
    """Greedy decoding of ``prompt`` under ``sampler``'s grammar, reusing the
    KV cache for the prefix it shares with the last call (the static part of
    the prompt). Ends at an end-of-generation token, ``max_tokens`` or when
    ``stop()`` says so. The text and the number of tokens generated."""
    # llama.cpp may round the context up; llama-cpp-python's token buffer
    # keeps the size asked for.
    n_ctx = min(llm.n_ctx(), len(llm.input_ids))
    if len(prompt) + 1 > n_ctx:
        raise ValueError(f"a prompt of {len(prompt)} tokens does not fit the context of {n_ctx}")
    cached = llm.input_ids[: llm.n_tokens]
    same = 0
    for a, b in zip(cached, prompt, strict=False):
        if a != b:
            break
        same += 1
    llm.n_tokens = min(same, len(prompt) - 1)  # the last prompt token runs again for its logits
    llm.eval(prompt[llm.n_tokens :])
    sampler.reset()
    lib, ctx, vocab, n_vocab = sampler._lib, llm._ctx.ctx, sampler._vocab, sampler._n_vocab
    out: list[int] = []
    while len(out) < max_tokens and llm.n_tokens < n_ctx and not stop():
        logits = np.ctypeslib.as_array(lib.llama_get_logits_ith(ctx, -1), shape=(n_vocab,))
        token = sampler.choose(logits)
        if lib.llama_vocab_is_eog(vocab, token):
            break
        out.append(token)
        llm.eval([token])
    text = llm.detokenize(out, prev_tokens=prompt).decode("utf-8", errors="ignore")
    return text, len(out)


_FALLBACK_TEMPLATE: Final = (
    "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}"
    "<|im_start|>assistant\n"
)


def _renderer(llm: Any) -> Any:
    """messages -> prompt tokens, with the GGUF's own chat template.

    llama-cpp-python's chat API takes no stopping criterion, which the
    deadline needs, so the prompt is rendered here the way its chat handler
    does, and decoded by ``_greedy``. No stop strings: the grammar ends the
    output, and a stop string inside a reason would cut it.
    """
    llama_chat_format: Any = importlib.import_module("llama_cpp.llama_chat_format")
    template = llm.metadata.get("tokenizer.chat_template") or _FALLBACK_TEMPLATE
    eos_id, bos_id = llm.token_eos(), llm.token_bos()
    model = llm._model  # the tokenizer's view of special tokens, as llama-cpp does it
    formatter = llama_chat_format.Jinja2ChatFormatter(
        template=template,
        eos_token=model.token_get_text(eos_id) if eos_id != -1 else "",
        bos_token=model.token_get_text(bos_id) if bos_id != -1 else "",
    )

    def render(messages: list[dict[str, str]]) -> list[int]:
        r = formatter(messages=messages)
        tokens: list[int] = llm.tokenize(
            r.prompt.encode("utf-8"), add_bos=not r.added_special, special=True
        )
        return tokens

    return render


def _child_main(fd: int, args_json: str) -> None:
    """Entry point of the child interpreter (see ``LlmWorker._spawn``)."""
    a = json.loads(args_json)
    conn = multiprocessing.connection.Connection(fd)
    try:
        _serve(
            conn,
            a["path"],
            a["threads"],
            a["n_ctx"],
            a["seed"],
            a["expected_sha256"],
            a.get("lora", ""),
            a.get("lora_sha256", ""),
        )
    finally:
        conn.close()


class _Child:
    """One model process, its socket and the thread that reads its replies."""

    def __init__(self, proc: subprocess.Popen[bytes], conn: Any) -> None:
        self.proc = proc
        self.conn: multiprocessing.connection.Connection = conn
        self.pending: dict[int, asyncio.Future[_Reply]] = {}
        self.lock = threading.Lock()
        self.dead = False
        self.reader = threading.Thread(target=self._read, name="llm-reader", daemon=True)

    def _read(self) -> None:
        # The one place replies cross into asyncio: each future on its own loop.
        while True:
            try:
                reply = self.conn.recv()
            except (EOFError, OSError):
                break
            with self.lock:
                fut = self.pending.pop(getattr(reply, "req_id", -1), None)
            if fut is not None:
                _hand_over(fut, reply)
        with self.lock:
            self.dead = True
            waiting, self.pending = list(self.pending.values()), {}
        for fut in waiting:
            _hand_over(fut, None)

    def alive(self) -> bool:
        return not self.dead and self.proc.poll() is None

    def kill(self) -> None:
        with contextlib.suppress(OSError):
            self.proc.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(5)
        with contextlib.suppress(OSError):
            self.conn.close()


def _hand_over(fut: asyncio.Future[_Reply], reply: _Reply | None) -> None:
    # From the reader thread to the future's loop; a closed loop has no one waiting.
    with contextlib.suppress(RuntimeError):
        fut.get_loop().call_soon_threadsafe(_resolve, fut, reply)


def _resolve(fut: asyncio.Future[_Reply], reply: _Reply | None) -> None:
    if fut.done():
        return
    if reply is None:
        fut.set_exception(EOFError("model process exited"))
    else:
        fut.set_result(reply)


# -- the worker -------------------------------------------------------------------------


class LlmWorker:
    """Decisions from one GGUF in a child process, with deadlines. See the module doc.

    ``threads``: llama.cpp threads (1 by default, so a hub's other work keeps
    a core). ``n_ctx``: context window in tokens. ``max_tokens``: generation
    limit; None (the default) takes the longest output the grammar allows,
    so a decision is never cut short. ``seed``: sampling is greedy, the seed
    only matters for models that need one. ``expected_sha256``: refuse any
    other file (the model registry passes its manifest's hash).
    ``lora_path``: a GGUF LoRA adapter llama.cpp applies to the model, checked
    against ``lora_sha256`` when given (a registered adapter's hash).
    ``restarts`` counts model processes replaced after a crash or a missed
    kill deadline.
    """

    def __init__(
        self,
        model_path: Path,
        *,
        threads: int = 1,
        n_ctx: int = 2048,
        max_tokens: int | None = None,
        seed: int = 0,
        expected_sha256: str = "",
        load_timeout_s: float = 120.0,
        lora_path: Path | None = None,
        lora_sha256: str = "",
    ) -> None:
        if threads < 1:
            raise ValueError("threads must be at least 1")
        self.model_path = Path(model_path)
        self.model_name = model_name(self.model_path)
        self.model_sha256 = expected_sha256
        self.threads = threads
        self.n_ctx = n_ctx
        self.max_tokens = max_tokens
        self.seed = seed
        self.expected_sha256 = expected_sha256
        self.load_timeout_s = load_timeout_s
        self.lora_path = None if lora_path is None else Path(lora_path)
        self.adapter_sha256 = lora_sha256 if lora_path is not None else ""
        self._child: _Child | None = None
        self._lock: asyncio.Lock | None = None
        self._ids = itertools.count(1)
        self._background: set[asyncio.Task[Any]] = set()
        self._closed = False
        self.restarts = 0
        # An adapter's readings of policies (module doc), by capabilities and policy.
        self._readings: OrderedDict[_ReadingKey, str] = OrderedDict()
        self._reading: dict[_ReadingKey, asyncio.Task[str]] = {}
        self._unread: dict[_ReadingKey, tuple[float, Outcome, str]] = {}  # failed: when, how, why

    # -- lifecycle

    async def start(self) -> None:
        """Load the model in a new child process; ModelError if it can't.

        Call it before the first ``decide``: a worker that is not started
        loads the model on the first call, inside that call's deadline.
        """
        if self._closed:
            raise ModelError("worker is closed")
        if self._child is None:
            self._child = await asyncio.to_thread(self._spawn)

    def _spawn(self) -> _Child:
        # A fresh interpreter rather than multiprocessing's spawn: spawn
        # re-imports the caller's __main__, which scripts and test runners
        # don't always allow.
        if not self.model_path.is_file():
            raise ModelError(f"{self.model_path}: no such model file; {INSTALL_HINT}")
        if self.lora_path is not None and not self.lora_path.is_file():
            raise ModelError(f"{self.lora_path}: no such adapter file")
        ours, theirs = socket.socketpair()
        args = {
            "path": str(self.model_path),
            "threads": self.threads,
            "n_ctx": self.n_ctx,
            "seed": self.seed,
            "expected_sha256": self.expected_sha256,
            "lora": str(self.lora_path or ""),
            "lora_sha256": self.adapter_sha256,
        }
        code = (
            "import sys; from hub.decide.llm import _child_main as m; "
            "m(int(sys.argv[1]), sys.argv[2])"
        )
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(
            x for x in (str(SOURCE_ROOT), env.get("PYTHONPATH", "")) if x
        )
        try:
            proc = subprocess.Popen(
                [sys.executable, "-c", code, str(theirs.fileno()), json.dumps(args)],
                pass_fds=(theirs.fileno(),),
                stdin=subprocess.DEVNULL,
                env=env,
            )
        finally:
            theirs.close()
        conn = multiprocessing.connection.Connection(ours.detach())
        c = _Child(proc, conn)
        try:
            if not conn.poll(self.load_timeout_s):
                raise ModelError(f"{self.model_path.name}: not loaded in {self.load_timeout_s} s")
            status, detail = conn.recv()
        except (EOFError, OSError):
            c.kill()
            raise ModelError(
                f"{self.model_path.name}: the model process exited while loading "
                f"(exit code {proc.poll()}); is llama-cpp-python installed? {INSTALL_HINT}"
            ) from None
        except ModelError:
            c.kill()
            raise
        if status != "ready":
            c.kill()
            raise ModelError(f"{self.model_path.name}: {detail}")
        self.model_sha256 = detail
        if self.lora_path is not None and not self.adapter_sha256:
            self.adapter_sha256 = sha256_file(self.lora_path)
        c.reader.start()
        return c

    def close(self) -> None:
        """Stop the child process. The worker can't be used afterwards."""
        self._closed = True
        child, self._child = self._child, None
        if child is None:
            return
        with contextlib.suppress(OSError, ValueError):
            child.conn.send("stop")
        with contextlib.suppress(subprocess.TimeoutExpired):
            child.proc.wait(2)
        child.kill()

    async def aclose(self) -> None:
        """``close`` off the event loop, then let calls still in flight finish."""
        await asyncio.to_thread(self.close)
        if self._background:
            await asyncio.wait(set(self._background), timeout=KILL_GRACE_S)

    async def __aenter__(self) -> LlmWorker:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    @property
    def pid(self) -> int | None:
        return self._child.proc.pid if self._child is not None else None

    # -- decisions

    async def decide(
        self,
        caps: tuple[m.Capability, ...],
        facts: Iterable[str],
        policy: str,
        *,
        deadline_ms: float = DEFAULT_DEADLINE_MS,
    ) -> LlmResult:
        """One decision for a device with ``caps``; never raises for model trouble.

        Operator-only actions (``hub.guard.OPERATOR_ONLY``, firmware updates)
        are removed first: the model is never offered them.
        """
        t0 = time.monotonic()
        caps = model_capabilities(caps)
        facts = tuple(facts)
        deadline = t0 + max(0.0, deadline_ms) / 1000.0
        # An adapter reads the policy (module doc); code checks the facts
        # against its reading (hub/decide/reading.py).
        reads = self.lora_path is not None
        reading, missed, why = "", None, ""
        if reads:
            reading, missed, why = await self._reading_by(caps, policy, deadline)
            messages = f.reading_messages(caps, policy)
        else:
            messages = f.build_messages(caps, facts, policy)
        prompt_hash = f.prompt_sha256(messages)

        def result(
            outcome: Outcome,
            detail: str = "",
            reply: _Reply | None = None,
            decision: grammar.Decision | None = None,
        ) -> LlmResult:
            if outcome is not Outcome.OK:
                log.info("llm fallback: %s (%s)", outcome, detail)
            return LlmResult(
                decision,
                Provenance(
                    model_name=self.model_name,
                    model_sha256=self.model_sha256,
                    prompt_version=f.prompt_version(reads),
                    prompt_sha256=prompt_hash,
                    raw_output=reply.text if reply else "",
                    latency_ms=round((time.monotonic() - t0) * 1000.0, 3),
                    prompt_tokens=reply.prompt_tokens if reply else 0,
                    completion_tokens=reply.completion_tokens if reply else 0,
                    outcome=outcome,
                    detail=detail,
                    adapter_sha256=self.adapter_sha256,
                    reading=reading,
                ),
            )

        if missed is not None:
            return result(missed, why)
        if reads:
            try:
                match = rd.decide(rd.parse(reading), facts, caps)
            except rd.InvalidReading as exc:
                return result(Outcome.INVALID, f"the reading: {exc}")
            except ValueError as exc:  # capabilities no decision can be built from
                return result(Outcome.ERROR, f"capabilities: {exc}")
            return result(Outcome.OK, "", None, match.decision)
        try:
            gbnf = grammar.gbnf(caps)
        except ValueError as exc:
            return result(Outcome.ERROR, f"capabilities: {exc}")
        max_tokens = self.max_tokens or grammar.max_chars(caps) + 1
        req = _Request(next(self._ids), messages, gbnf, max_tokens, deadline)
        task = asyncio.ensure_future(self._run(req))
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        done, _ = await asyncio.wait({task}, timeout=max(0.0, deadline - time.monotonic()))
        if task not in done:
            # The task goes on in the background: it waits for the late reply
            # or kills the child, so the next call finds a working model.
            return result(Outcome.DEADLINE, "no answer before the deadline")
        reply, outcome, detail = task.result()
        if reply is None:
            return result(outcome, detail)
        if reply.error:
            return result(Outcome.ERROR, reply.error, reply)
        if reply.stopped_at_deadline:
            return result(Outcome.DEADLINE, "generation stopped at the deadline", reply)
        try:
            decision = grammar.parse(reply.text, caps)
        except grammar.InvalidOutput as exc:
            return result(Outcome.INVALID, exc.reason, reply)
        return result(Outcome.OK, "", reply, decision)

    async def prime(
        self, caps: tuple[m.Capability, ...], policy: str, *, timeout_s: float = 120.0
    ) -> float:
        """Evaluate the static part (actions, policy) of a base model's prompt,
        or have an adapter read the policy, so the next decision for it is
        quick. The seconds it took. Raises ModelError when the model cannot
        run (a reading the hub cannot parse primes too: decisions say so)."""
        t0 = time.monotonic()
        caps = model_capabilities(caps)
        if self.lora_path is not None:  # the reading is all a decision needs
            _, missed, why = await self._reading_by(caps, policy, t0 + timeout_s)
            if missed is not None and missed is not Outcome.INVALID:
                raise ModelError(f"priming failed: {why}")
            return time.monotonic() - t0
        messages = f.build_messages(caps, (), policy)
        req = _Request(next(self._ids), messages, grammar.gbnf(caps), 1, t0 + timeout_s)
        reply, outcome, detail = await self._run(req)
        if reply is None or reply.error:
            raise ModelError(f"priming failed: {detail or (reply.error if reply else outcome)}")
        return time.monotonic() - t0

    def reading(self, caps: tuple[m.Capability, ...], policy: str) -> str | None:
        """The adapter's kept reading of ``policy`` for a device with ``caps``, if any."""
        return self._readings.get(_reading_key(model_capabilities(caps), policy))

    async def _reading_by(
        self, caps: tuple[m.Capability, ...], policy: str, deadline: float
    ) -> tuple[str, Outcome | None, str]:
        """(the reading of ``policy``, None, "") when it is ready by ``deadline``;
        ("", DEADLINE, why) when it is not yet (it goes on); ("", INVALID, why)
        when the model wrote no reading the hub can check facts against, and
        ("", ERROR, why) when it failed to write one."""
        key = _reading_key(caps, policy)
        kept = self._readings.get(key)
        if kept is not None:
            self._readings.move_to_end(key)
            return kept, None, ""
        failed = self._unread.get(key)
        if failed is not None and time.monotonic() - failed[0] < READ_RETRY_S:
            return "", failed[1], failed[2]  # the same model would fail the same way
        task = self._reading.get(key)
        if task is None:
            task = asyncio.ensure_future(self._read(key, caps, policy))
            self._reading[key] = task
            self._background.add(task)
            task.add_done_callback(self._background.discard)
            task.add_done_callback(lambda _t: self._reading.pop(key, None))
            task.add_done_callback(lambda t: t.cancelled() or t.exception())  # retrieved
        done, _ = await asyncio.wait({task}, timeout=max(0.0, deadline - time.monotonic()))
        if task not in done:
            return "", Outcome.DEADLINE, "the policy is still being read"
        if task.cancelled():
            return "", Outcome.ERROR, "reading the policy was cancelled"
        exc = task.exception()
        if exc is not None:
            why = str(exc) or type(exc).__name__
            return "", Outcome.INVALID if isinstance(exc, _Unreadable) else Outcome.ERROR, why
        return task.result(), None, ""

    async def _read(self, key: _ReadingKey, caps: tuple[m.Capability, ...], policy: str) -> str:
        try:
            return await self._read_once(key, caps, policy)
        except (ModelError, ValueError) as exc:
            outcome = Outcome.INVALID if isinstance(exc, _Unreadable) else Outcome.ERROR
            self._unread[key] = (time.monotonic(), outcome, str(exc) or type(exc).__name__)
            while len(self._unread) > READINGS_KEPT:
                self._unread.pop(next(iter(self._unread)))
            raise

    async def _read_once(
        self, key: _ReadingKey, caps: tuple[m.Capability, ...], policy: str
    ) -> str:
        gbnf = grammar.reading_gbnf(caps)
        messages = f.reading_messages(caps, policy)
        req = _Request(
            next(self._ids),
            messages,
            gbnf,
            grammar.READING_MAX_TOKENS,
            time.monotonic() + READ_TIMEOUT_S,
        )
        reply, outcome, detail = await self._run(req)
        if reply is None:
            raise ModelError(f"reading the policy: {detail or outcome}")
        if reply.error or reply.stopped_at_deadline or not reply.text.strip():
            why = reply.error or f"no reading within {READ_TIMEOUT_S:g} s"
            raise ModelError(f"reading the policy: {why}")
        try:
            rd.parse(reply.text)
        except rd.InvalidReading as exc:  # cut at READING_MAX_TOKENS, say: tried again later
            cut = reply.completion_tokens >= grammar.READING_MAX_TOKENS
            raise _Unreadable(
                f"reading the policy: {exc}"
                + (f" (cut at {reply.completion_tokens} tokens)" if cut else "")
            ) from None
        self._readings[key] = reply.text
        self._unread.pop(key, None)
        while len(self._readings) > READINGS_KEPT:
            self._readings.popitem(last=False)
        log.info("llm: read a policy in %d tokens", reply.completion_tokens)
        return reply.text

    async def _run(self, req: _Request) -> tuple[_Reply | None, Outcome, str]:
        if self._lock is None:
            self._lock = asyncio.Lock()
        async with self._lock:
            if self._closed:
                return None, Outcome.ERROR, "worker is closed"
            if time.monotonic() >= req.deadline:
                return None, Outcome.DEADLINE, "deadline passed while waiting for the model"
            try:
                if self._child is None or not self._child.alive():
                    await self._restart()
            except ModelError as exc:
                return None, Outcome.ERROR, str(exc)
            child = self._child
            assert child is not None
            fut: asyncio.Future[_Reply] = asyncio.get_running_loop().create_future()
            with child.lock:
                child.pending[req.req_id] = fut
            try:
                child.conn.send(req)
            except (OSError, ValueError) as exc:
                with child.lock:
                    child.pending.pop(req.req_id, None)
                await self._restart()
                return None, Outcome.ERROR, f"model process unreachable: {exc}"
            budget = max(0.0, req.deadline - time.monotonic()) + KILL_GRACE_S
            try:
                return await asyncio.wait_for(fut, budget), Outcome.OK, ""
            except TimeoutError:
                log.warning("llm: model process did not stop at the deadline; restarting it")
                await self._restart()
                return (
                    None,
                    Outcome.DEADLINE,
                    "model process did not stop at the deadline; restarted",
                )
            except EOFError:
                await self._restart()
                return None, Outcome.ERROR, "model process exited; restarted"

    async def _restart(self) -> None:
        old, self._child = self._child, None
        if old is not None:
            await asyncio.to_thread(old.kill)
        if self._closed:
            return
        if old is not None:
            self.restarts += 1
        self._child = await asyncio.to_thread(self._spawn)


_ReadingKey = tuple[tuple[m.Capability, ...], str]


def _reading_key(caps: tuple[m.Capability, ...], policy: str) -> _ReadingKey:
    return (caps, policy.strip())


# -- the trust gate ---------------------------------------------------------------------

DEFAULT_TRUST_THRESHOLD: Final = 0.9
MIN_EVAL_SCENARIOS: Final = 60


class Mode(StrEnum):
    ACTUATE = "actuate"  # decisions go to the guard and may become commands
    ADVISORY = "advisory"  # decisions are recorded as recommendations only


@dataclass(frozen=True, slots=True)
class Trust:
    mode: Mode
    reason: str
    accuracy: float | None = None

    @property
    def may_actuate(self) -> bool:
        return self.mode is Mode.ACTUATE


def trust(
    report: dict[str, Any] | None,
    *,
    model_sha256: str,
    adapter_sha256: str = "",
    threshold: float = DEFAULT_TRUST_THRESHOLD,
    min_scenarios: int = MIN_EVAL_SCENARIOS,
) -> Trust:
    """May this model actuate? Only with an eval report for this very model and prompt.

    ``report`` is what ``aiot eval decisions --json`` printed (or the
    ``eval`` of a fine-tuned adapter's manifest). It counts only when it was
    measured on the same GGUF (sha256) with the same LoRA adapter applied
    (``adapter_sha256``; "" for the base alone: a report for the base keeps
    an adapter advisory, and one for an adapter keeps the base advisory) and
    the running prompt version, over at least ``min_scenarios`` scenarios,
    and its accuracy (with invalid outputs and missed deadlines counted as
    wrong) reaches ``threshold``. Anything else keeps the model advisory.
    """
    if report is None:
        return Trust(Mode.ADVISORY, "no evaluation report")
    acc = report.get("accuracy")
    if not isinstance(acc, int | float) or isinstance(acc, bool):
        return Trust(Mode.ADVISORY, "evaluation report has no accuracy")
    accuracy = float(acc)
    if report.get("model_sha256") != model_sha256:
        return Trust(Mode.ADVISORY, "evaluation report is for another model", accuracy)
    measured = report.get("adapter_sha256") or ""
    if measured != adapter_sha256:
        why = (
            "for the base model alone, an adapter runs"
            if not measured
            else "for another adapter"
            if adapter_sha256
            else "for an adapter, the base model runs alone"
        )
        return Trust(Mode.ADVISORY, f"evaluation report is {why}", accuracy)
    # A base model runs the prompt with worked examples, an adapter reads the policy.
    if report.get("prompt_version") != f.prompt_version(bool(adapter_sha256)):
        return Trust(Mode.ADVISORY, "evaluation report is for another prompt version", accuracy)
    n = report.get("n")
    if not isinstance(n, int) or n < min_scenarios:
        return Trust(Mode.ADVISORY, f"evaluation covers fewer than {min_scenarios} scenarios")
    if not accuracy >= threshold:
        return Trust(
            Mode.ADVISORY, f"accuracy {accuracy:.3f} below the threshold {threshold:g}", accuracy
        )
    return Trust(Mode.ACTUATE, f"accuracy {accuracy:.3f} reaches {threshold:g}", accuracy)


def eval_report_path(model: str, models_dir: Path = MODELS_DIR) -> Path:
    """Where ``aiot eval decisions`` reports for a model are kept (``models/eval/results/``)."""
    return models_dir / "eval" / "results" / f"{model}.json"


def load_report(path: Path) -> dict[str, Any] | None:
    """An eval report saved with ``aiot eval decisions --json > PATH``, or None."""
    try:
        obj = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return obj if isinstance(obj, dict) else None


__all__ = [
    "DEFAULT_MODEL",
    "DEFAULT_TRUST_THRESHOLD",
    "LlmResult",
    "LlmWorker",
    "Mode",
    "ModelError",
    "Outcome",
    "Provenance",
    "Trust",
    "eval_report_path",
    "load_report",
    "model_capabilities",
    "resolve_model",
    "trust",
]
