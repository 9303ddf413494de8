"""`aiot models`: the model registry (hub/decide/registry.py): signing keys,
signed uploads, hot activation on every node, training the anomaly model
(tools/cli/anomaly.py), and the LLM tier's policy-following data
(`aiot models policy-data`, tools/ml/policy)."""

from __future__ import annotations

import base64
import hashlib
import json
import time
from pathlib import Path
from typing import Annotated, Any

import typer

from hub.core import keys
from hub.decide import registry as reg
from tools.base.hubclient import HubClient, HubError
from tools.cli import anomaly, finetune
from tools.cli.output import fail, group, nothing, print_json, say
from tools.cli.remote import JsonOpt, on_hub
from tools.ml.policy import dataset

models_app = group("models", "The model registry: signed versions, hot activation.")


@models_app.command("keygen")
def models_keygen(
    out: Annotated[Path, typer.Option(help="Write the private key here (mode 600).")],
) -> None:
    """An Ed25519 signing key; prints the public key for models.trusted_keys."""
    try:
        pub = keys.write_keygen(out)
    except FileExistsError:
        raise fail(f"{out} exists; refusing to overwrite a key") from None
    typer.echo(pub)
    say(f"private key in {out}; add the public key above to [models] trusted_keys")


def _inner_manifest(file: Path, manifest: Path | None) -> dict[str, Any]:
    """The model's own manifest: --manifest, else FILE with .json if there is one."""
    man_path = manifest or file.with_suffix(".json")
    if man_path.exists():
        try:
            inner: dict[str, Any] = json.loads(man_path.read_text())
        except ValueError as exc:
            raise fail(f"{man_path}: not JSON: {exc}") from None
        return inner
    if manifest is not None:
        raise fail(f"{manifest} does not exist")
    return {}


KINDS = ("onnx", "gguf", reg.RULES, reg.LORA)


def _kind(file: Path, inner: dict[str, Any], kind: str | None) -> str:
    """--kind, else a fine-tuned adapter's manifest says lora, else the suffix."""
    if kind is not None:
        if kind not in KINDS:
            raise fail(f"--kind {kind}: one of {', '.join(KINDS)}")
        return kind
    if inner.get("kind") == "lora-adapter":  # adapter.json of aiot models finetune
        return reg.LORA
    return {".gguf": "gguf", ".toml": reg.RULES}.get(file.suffix, "onnx")


def _with_eval(inner: dict[str, Any], report: Path | None) -> dict[str, Any]:
    if report is None:
        return inner
    try:
        doc = json.loads(report.read_text())
    except (OSError, ValueError) as exc:
        raise fail(f"{report}: {exc}") from None
    if not isinstance(doc, dict) or "accuracy" not in doc:
        raise fail(f"{report}: not an eval report (aiot eval decisions --json)")
    return {**inner, "eval": doc}


@models_app.command("push")
@on_hub
def models_push(
    client: HubClient,
    file: Annotated[
        Path, typer.Argument(help="The model file (.onnx, .gguf, or .toml rules).", exists=True)
    ],
    sign_key: Annotated[Path, typer.Option(help="Ed25519 private key (aiot models keygen).")],
    name: Annotated[
        str | None,
        typer.Option(help="The model's name, e.g. anomaly, or rules-<set> (lora: llm-adapter)."),
    ] = None,
    version: Annotated[
        str | None, typer.Option(help="Default: from the manifest, or a timestamp.")
    ] = None,
    manifest: Annotated[
        Path | None, typer.Option(help="The model's own manifest (default: FILE with .json).")
    ] = None,
    kind: Annotated[
        str | None,
        typer.Option(
            help="onnx, gguf, rules or lora (a LoRA adapter); default: lora when the "
            "manifest is a fine-tuned adapter's, else from the suffix."
        ),
    ] = None,
    base_sha256: Annotated[
        str | None, typer.Option(help="lora: the base GGUF's sha256 (default: the manifest's).")
    ] = None,
    eval_report: Annotated[
        Path | None,
        typer.Option(
            "--eval",
            help="An eval report (aiot eval decisions --json) to sign in as the manifest's "
            "eval: the trust gate reads it.",
        ),
    ] = None,
) -> None:
    """Sign a model version (a rules file named rules or rules-<set>, a LoRA
    adapter named llm-adapter) and upload it to one hub; the others fetch it
    by sha256."""
    inner = _with_eval(_inner_manifest(file, manifest), eval_report)
    kind = _kind(file, inner, kind)
    if kind == reg.LORA:
        name = name or reg.LLM_ADAPTER
        if base_sha256:
            inner = {**inner, "base_sha256": base_sha256}
    if not name:
        raise fail("--name is needed (e.g. anomaly, rules-<set>)")
    data = file.read_bytes()
    version = version or str(inner.get("version") or time.strftime("%Y%m%d%H%M%S"))
    try:
        key = keys.private_key(sign_key)
    except ValueError as exc:
        raise fail(str(exc)) from None
    signed = reg.signed_manifest(name, version, kind, data, inner)
    signature, kid = keys.sign(signed, key)
    sha = hashlib.sha256(data).hexdigest()
    say(f"uploading {file.name} ({len(data)} bytes, sha256 {sha[:12]}...)")
    client.request("PUT", f"/v1/models/blobs/{sha}", content=data)
    out = client.post(
        "/v1/models",
        {
            "manifest": signed.decode(),
            "signature": base64.b64encode(signature).decode(),
            "key_id": kid,
        },
    )
    typer.echo(f"registered {out['name']}@{out['version']} ({out['sha256'][:12]}...)")


@models_app.command("activate")
@on_hub
def models_activate(
    client: HubClient, target: Annotated[str, typer.Argument(help="NAME@VERSION")]
) -> None:
    """Hot-swap every hub to this version (rollback: activate the previous one)."""
    name, sep, version = target.partition("@")
    if not sep or not name or not version:
        raise fail("expected NAME@VERSION")
    client.post(f"/v1/models/{name}/activate", {"version": version})
    typer.echo(f"activating {name}@{version} on every hub; see aiot models list")


@models_app.command("deactivate")
@on_hub
def models_deactivate(
    client: HubClient, name: Annotated[str, typer.Argument(help="NAME, e.g. llm-adapter")]
) -> None:
    """Switch a model off on every hub (llm-adapter: back to the plain base model)."""
    client.post(f"/v1/models/{name}/deactivate", {})
    typer.echo(f"switching {name} off on every hub; aiot models activate NAME@VERSION undoes it")


def _versions(client: HubClient, nodes: list[dict[str, Any]]) -> dict[tuple[str, str], Any]:
    """Every node's model list merged: (name, version) -> the model, with
    ``active_on`` and ``error_on`` gathered from all nodes. A node that does
    not answer is named on stderr; when none does, the command fails."""
    rows: dict[tuple[str, str], dict[str, Any]] = {}
    answered = 0
    for n in nodes:
        try:
            with client.at(n["http"], timeout=5.0) as nc:
                listed = nc.get("/v1/models")
        except HubError as exc:
            say(f"aiot: {n['node_id']}: {exc}")
            continue
        answered += 1
        for m in listed:
            row = rows.setdefault(
                (m["name"], str(m["version"])), {**m, "active_on": {}, "error_on": {}}
            )
            row["active_on"].update(m.get("active_on", {}))
            row["error_on"].update({k: v for k, v in m.get("error_on", {}).items() if v})
    if nodes and not answered:
        raise HubError("no hub node answered for its models")
    return rows


@models_app.command("list")
@on_hub
def models_list(client: HubClient, json_out: JsonOpt = False) -> None:
    """Versions, and which version each node runs."""
    rows = _versions(client, client.get("/v1/cluster")["nodes"])
    if json_out:
        print_json(list(rows.values()))
        return
    if not rows:
        nothing("models")
    for (name, version), m in sorted(rows.items()):
        running = sorted(k for k, v in m["active_on"].items() if v == version)
        errors = "; ".join(f"{k}: {v}" for k, v in m["error_on"].items())
        mark = "*" if m.get("activated") else " "
        sha = str(m.get("sha256") or "")[:12]
        typer.echo(
            f"{mark} {name}@{version:<16} {m.get('kind', '?'):<5} {sha}  "
            f"running on: {', '.join(running) or '-'}" + (f"  errors: {errors}" if errors else "")
        )


@models_app.command("policy-data")
def models_policy_data(
    out: Annotated[
        Path, typer.Option(help="Directory for train.jsonl, test.jsonl, manifest.json.")
    ] = Path("policy-data"),
    seed: Annotated[int, typer.Option(help="The same seed gives the same files.")] = 0,
    train: Annotated[int, typer.Option(min=0, help="Examples in the training split.")] = 20000,
    test: Annotated[int, typer.Option(min=0, help="Examples in the test split.")] = 2000,
    group: Annotated[
        int,
        typer.Option(
            min=1,
            help="Training examples per policy, each with a world of its own (a fine-tune "
            "evaluates their shared prompt once); the test split has one per policy.",
        ),
    ] = 1,
    scenarios: Annotated[
        Path | None,
        typer.Option(
            help="Write only the test split, as an eval scenario file (no training keys): "
            "models/eval/heldout.jsonl is --seed 0 --test 300."
        ),
    ] = None,
) -> None:
    """Policy-following examples for the LLM tier: train/test splits with disjoint
    layouts, wordings and policy shapes (docs/llm.md, "The data")."""
    if scenarios is not None:
        digest = dataset.write_scenarios(scenarios, seed=seed, n=test)
        say(f"{test} held-out scenarios (seed {seed}) in {scenarios}, sha256 {digest}")
        typer.echo(str(scenarios))
        return
    if out.exists() and not out.is_dir():
        raise fail(f"{out} exists and is not a directory")
    say(f"writing {train} training and {test} test examples ({dataset.GENERATOR}) to {out}")
    man = dataset.write(
        out, seed=seed, counts={"train": train, "test": test}, group=group, progress=say
    )
    for split, s in man["splits"].items():
        say(
            f"{split}: {s['n']} examples, majority rate {s['majority_rate']}, "
            f"layouts {', '.join(s['layouts'])}"
        )
    typer.echo(str(out / "manifest.json"))


anomaly.register_models(models_app)
finetune.register_models(models_app)
