"""The training examples: the policy-data JSONL (``aiot models policy-data``) as token ids.

Each line is checked the way ``aiot eval decisions --scenarios`` checks it
(``messages`` must be the very request to read the policy that the hub
sends an adapter, then a reading; ``answer`` a valid decision that agrees
with ``expect_action``), then tokenized the way the hub tokenizes at run
time: the chat messages rendered by the GGUF's own chat template and
tokenized by llama.cpp's own vocabulary (``hub.decide.llm``'s renderer), so
training sees exactly the token ids the hub feeds the model. The reading
(the last message) and the end-of-turn token carry the loss; the request
before it is masked.
"""

from __future__ import annotations

import hashlib
import importlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from hub.decide import facts as hf
from hub.decide.llm import _renderer
from tools.ml.eval_decisions import ScenarioError, load_scenarios

DATA_SCHEMA: Final = "policy-data/1"
IGNORE: Final = -100  # the label of a token that carries no loss


class DataError(ValueError):
    """The data directory can't be trained on; the message names the file and line."""


@dataclass(frozen=True, slots=True)
class Example:
    id: str
    messages: list[dict[str, str]]
    answer: str  # the decision as the grammar spells it
    group: str = ""  # the device's actions, which the head of the prompt is rendered from

    @property
    def action(self) -> str:
        return str(json.loads(self.answer)["action"])


@dataclass(frozen=True, slots=True)
class Encoded:
    ids: tuple[int, ...]
    n_prompt: int  # the first n_prompt ids carry no loss

    @property
    def n_answer(self) -> int:
        return len(self.ids) - self.n_prompt


@dataclass(frozen=True, slots=True)
class Dataset:
    path: Path
    sha256: str  # of the JSONL file
    manifest: dict[str, Any]  # the generator's manifest.json
    examples: tuple[Example, ...]


def answer_text(answer: dict[str, Any]) -> str:
    """The decision in the exact spelling the hub's grammar admits:
    ``{"reason": ..., "action": ..., "params": {...}}`` with ``", "`` and ``": "``."""
    ordered = {"reason": answer["reason"], "action": answer["action"], "params": answer["params"]}
    return json.dumps(ordered, ensure_ascii=False)


def _read_manifest(directory: Path) -> dict[str, Any]:
    path = directory / "manifest.json"
    try:
        manifest: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DataError(
            f"{path} is missing: write the data with aiot models policy-data --out {directory}"
        ) from None
    except (OSError, ValueError) as exc:
        raise DataError(f"{path}: {exc}") from None
    if manifest.get("schema") != DATA_SCHEMA:
        raise DataError(f"{path}: schema {manifest.get('schema')!r}, expected {DATA_SCHEMA!r}")
    if manifest.get("prompt_version") != hf.ADAPTER_PROMPT_VERSION:
        raise DataError(
            f"{path}: written for prompt {manifest.get('prompt_version')!r}, the hub sends "
            f"{hf.ADAPTER_PROMPT_VERSION!r}: regenerate the data"
        )
    return manifest


def load(directory: Path, split: str = "train", limit: int | None = None) -> Dataset:
    """The split's examples (the first ``limit`` of them); DataError when unusable."""
    manifest = _read_manifest(directory)
    path = directory / f"{split}.jsonl"
    try:
        load_scenarios(path)  # the same checks as aiot eval decisions --scenarios
        raw = path.read_bytes()
    except ScenarioError as exc:
        raise DataError(str(exc)) from None
    except OSError as exc:
        raise DataError(f"{path}: {exc.strerror or exc}") from None
    out: list[Example] = []
    for no, line in enumerate(raw.decode("utf-8").splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        d = json.loads(line)
        if "messages" not in d or "answer" not in d:
            raise DataError(f"{path}:{no}: no messages/answer: not a training line")
        group = json.dumps(d.get("capabilities"), sort_keys=True)
        out.append(Example(str(d["id"]), d["messages"], answer_text(d["answer"]), group))
        if limit is not None and len(out) >= limit:
            break
    if not out:
        raise DataError(f"{path}: no examples")
    return Dataset(path, hashlib.sha256(raw).hexdigest(), manifest, tuple(out))


class Tokenizer:
    """The hub's prompt tokens, from the GGUF's vocabulary and chat template (llama.cpp)."""

    def __init__(self, gguf: Path) -> None:
        llama_cpp: Any = importlib.import_module("llama_cpp")
        self._llm = llama_cpp.Llama(model_path=str(gguf), vocab_only=True, verbose=False)
        self._render = _renderer(self._llm)
        self.eos: int = int(self._llm.token_eos())

    def prompt(self, messages: list[dict[str, str]]) -> list[int]:
        ids: list[int] = self._render(messages)
        return ids

    def text(self, text: str) -> list[int]:
        ids: list[int] = self._llm.tokenize(text.encode("utf-8"), add_bos=False, special=False)
        return ids

    def encode(self, ex: Example) -> Encoded:
        """The request to read the policy, then the reading and its end of turn."""
        head = self.prompt(ex.messages[:-1])  # ends with the assistant's header
        said = [*self.text(ex.messages[-1]["content"]), self.eos]
        return Encoded(tuple(head + said), len(head))

    def decode(self, ids: list[int]) -> str:
        out: bytes = self._llm.detokenize(ids, special=True)
        return out.decode("utf-8", errors="replace")

    def close(self) -> None:
        self._llm.close()
