"""Training and evaluation data for the anomaly model, the training itself and its export.

Data: simulated smart plugs (edge/sensors.py ``SimulatedPlug`` on CPython)
with varied seeds, appliance event rates, sample rates, limits and relay-off
stretches. Their streams are cut into windows of ``WINDOW_READINGS`` power
readings; a share of the windows gets one injected anomaly (``KINDS``). Every
window goes through ``hub.anomaly.window_features``, the function the hub
calls, so the model is trained on exactly what it will be served.

Model, two parts whose larger output is the score in 0..1:

- a standard scaler and a small neural network (scikit-learn
  ``MLPClassifier``, one hidden layer of 16) giving the probability that a
  window is anomalous, learnt from normal and injected windows;
- an envelope of normal windows: how far the most extreme feature lies
  outside the range seen in normal training windows. It needs no labels and
  flags what the classifier never saw (docs/anomaly.md measures this by
  leaving each kind out of training).

``export_onnx`` writes the same arithmetic as one ONNX graph with the
``onnx`` helpers. The threshold is the one with the best F1 on a validation set (its own seed,
training seed + 1); the held-out figures come from another seed again
(``EVAL_SEED``).

Everything is a function of the seed: the same seed gives the same windows,
the same weights and the same ONNX bytes (on one machine; another CPU's
floating point may differ in the last bits).

docs/anomaly.md describes the data, the anomaly kinds and the measured figures.
"""

from __future__ import annotations

import json
import math
import os
import platform
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any, Final

import numpy as np
import numpy.typing as npt

from edge.sensors import SimulatedPlug
from hub.core.fsutil import write_atomic
from hub.decide import anomaly as an
from tools.base.errors import ToolError

KINDS: Final = ("stuck", "spike", "drift", "dropout")
KIND_DESCRIPTIONS: Final = {
    "stuck": "the power reading freezes at one live value for 20..60 readings; half of the "
    "time energy and voltage freeze too, otherwise the energy counter keeps counting",
    "spike": "1..3 spikes of 1..2 readings, 1..6 kW above the real load, unseen by the "
    "energy counter",
    "drift": "sustained overconsumption: from an onset in the window's first third the "
    "load climbs steadily by 0.5..3 kW and stays up; energy and voltage follow it",
    "dropout": "5..40 consecutive samples never reach the hub, so the window spans a gap",
}
MODEL_NAME: Final = "anomaly"
MODEL_FILE: Final = "anomaly.onnx"
MANIFEST_FILE: Final = "anomaly.json"
DEFAULT_SEED: Final = 7
DEFAULT_HOURS: Final = 48.0
# Validation (threshold choice) and held-out evaluation use other seeds than
# training: validation is seed + 1; evaluation defaults to EVAL_SEED.
EVAL_SEED: Final = 9001
EVAL_HOURS: Final = 24.0
ANOMALY_SHARE: Final = 0.2
START_MS: Final = 1_767_225_600_000  # 2026-01-01T00:00:00Z

TRAIN_ANOMALY_SHARE: Final = 0.4

# The network: 12 inputs, one hidden layer of 16, one output; a few KB of
# ONNX that scores in microseconds on one thread.
HIDDEN: Final = (16,)
MAX_ITER: Final = 2000
# The envelope of normal windows: per feature, the range between these
# quantiles (at least ENVELOPE_FLOOR wide). A window whose most extreme
# feature lies ENVELOPE_MARGIN widths outside it scores 0.5 from the envelope
# alone, whatever the classifier says: the part of the model that sees
# anomalies of kinds it was not trained on.
ENVELOPE_QUANTILE: Final = 0.001
ENVELOPE_FLOOR: Final = 0.05
ENVELOPE_MARGIN: Final = 1.0
ENVELOPE_SLOPE: Final = 4.0
OPSET: Final = 17
IR_VERSION: Final = 8

F32Array = npt.NDArray[np.float32]
F64Array = npt.NDArray[np.float64]
Rng = np.random.Generator

# One sample of a plug: ts_ms, power W, energy Wh, voltage V (a row).
_TS, _P, _E, _V = 0, 1, 2, 3


class TrainError(ToolError):
    """Training or evaluation cannot go on (a missing training dependency, bad options)."""


@dataclass(frozen=True, slots=True)
class PlugSpec:
    """One simulated plug: its simulator seed and the knobs varied across the fleet."""

    seed: int
    event_every_s: int
    sample_ms: int
    limit_w: float
    relay_off_share: float


@dataclass(frozen=True, slots=True)
class Dataset:
    """Feature rows, labels (1 = injected anomaly) and each row's kind ("normal" or KINDS)."""

    x: F32Array
    y: npt.NDArray[np.int8]
    kinds: tuple[str, ...]
    description: dict[str, Any]


# -- simulated streams ------------------------------------------------------------


def fleet(seed: int, hours: float) -> list[tuple[PlugSpec, float]]:
    """Plugs (one simulated hour each, the last one shorter) for ``hours`` of data."""
    rng = np.random.default_rng([seed, 1])
    out: list[tuple[PlugSpec, float]] = []
    left = hours
    i = 0
    while left > 1e-9:
        spec = PlugSpec(
            seed=seed * 1000 + i,
            event_every_s=int(rng.choice([30, 60, 120, 300, 600])),
            sample_ms=int(rng.choice([1000, 1000, 1000, 500, 2000])),
            limit_w=float(rng.choice([1500.0, 2000.0, 2500.0, 3000.0])),
            relay_off_share=float(rng.choice([0.0, 0.0, 0.1, 0.3])),
        )
        out.append((spec, min(1.0, left)))
        left -= 1.0
        i += 1
    return out


def simulate(spec: PlugSpec, hours: float) -> F64Array:
    """The plug's samples as rows (ts_ms, power, energy, voltage)."""
    rng = np.random.default_rng([spec.seed, 2])
    plug = SimulatedPlug(seed=spec.seed, event_every_s=spec.event_every_s)
    n = int(hours * 3_600_000 // spec.sample_ms)
    rows = np.empty((n, 4), dtype=np.float64)
    off_until = -1
    min_on = 60_000 // spec.sample_ms  # a relay closed stays closed a minute at least
    for i in range(n):
        now = START_MS + spec.seed % 97 * 60_000 + i * spec.sample_ms
        if (
            spec.relay_off_share > 0
            and i > off_until + min_on
            and rng.random() < spec.relay_off_share / 120
        ):
            off_until = i + int(rng.integers(60, 600) * 1000 // spec.sample_ms)
        plug.relay_on = i > off_until
        (_, w), (_, wh), (_, v) = plug.sample(now)
        rows[i] = (now, w, wh, v)
    return rows


def readings(rows: F64Array) -> list[tuple[int, int, float]]:
    """The (ts_ms, sensor, value) readings of sample rows, as the hub stores them."""
    out: list[tuple[int, int, float]] = []
    for ts, w, wh, v in rows.tolist():
        t = int(ts)
        out.append((t, an.POWER_W, w))
        out.append((t, an.ENERGY_WH, wh))
        out.append((t, 2, v))
    return out


# -- injected anomalies -----------------------------------------------------------


def _stuck(rows: F64Array, rng: Rng) -> F64Array | None:
    # The power reading freezes at one live value for 20..60 readings. Half of
    # the time the whole sample freezes (energy and voltage too), otherwise
    # the energy counter keeps counting the real load.
    n = len(rows)
    length = int(rng.integers(20, n + 1))
    starts = [s for s in range(n - length + 1) if rows[s, _P] > an.LIVE_W]
    if not starts:
        return None
    s = int(rng.choice(starts))
    cols = [_P, _E, _V] if rng.random() < 0.5 else [_P]
    rows[s : s + length, cols] = rows[s, cols]
    return rows


def _spike(rows: F64Array, rng: Rng) -> F64Array:
    # 1..3 spikes of 1..2 readings each, 1..6 kW above the real load; the
    # energy counter does not see them.
    n = len(rows)
    for _ in range(int(rng.integers(1, 4))):
        width = int(rng.integers(1, 3))
        s = int(rng.integers(0, n - width + 1))
        rows[s : s + width, _P] += round(float(rng.uniform(1000.0, 6000.0)), 1)
    return rows


def _drift(rows: F64Array, rng: Rng) -> F64Array:
    # Sustained overconsumption: from an onset in the first third of the
    # window the load climbs steadily by 0.5..3 kW at the window's end and
    # stays there. The energy counter and the voltage follow the real load.
    n = len(rows)
    s = int(rng.integers(0, n // 3))
    rise = float(rng.uniform(500.0, 3000.0))
    t = rows[:, _TS]
    extra = np.zeros(n)
    extra[s:] = rise * (t[s:] - t[s]) / (t[-1] - t[s])
    rows[:, _P] = np.round(rows[:, _P] + extra, 1)
    dt_h = np.diff(t, prepend=t[0]) / 3_600_000.0
    rows[:, _E] = np.round(rows[:, _E] + np.cumsum(extra * dt_h), 2)
    rows[:, _V] = np.round(rows[:, _V] - extra / 2000.0, 1)
    return rows


def _dropout(rows: F64Array, rng: Rng, extra: int) -> F64Array:
    # ``extra`` consecutive samples never reach the hub (a sensor read that
    # fails, a device that hangs): the window of n readings spans more time.
    n = len(rows) - extra
    s = int(rng.integers(2, n - 1))
    return np.concatenate((rows[:s], rows[s + extra :]))


_INJECT: Final[dict[str, Callable[[F64Array, Rng], F64Array | None]]] = {
    "stuck": _stuck,
    "spike": _spike,
    "drift": _drift,
}


def windows(
    rows: F64Array, rng: Rng, anomaly_share: float, kinds: Sequence[str] = KINDS
) -> Iterator[tuple[str, F64Array]]:
    """Consecutive windows of the stream, each normal or with one injected anomaly."""
    w = an.WINDOW_READINGS
    c = 0
    while True:
        kind = "normal"
        if kinds and rng.random() < anomaly_share:
            kind = str(kinds[int(rng.integers(0, len(kinds)))])
        extra = int(rng.integers(5, 41)) if kind == "dropout" else 0
        if c + w + extra > len(rows):
            return
        seg = rows[c : c + w + extra].copy()
        c += w + extra
        if kind == "dropout":
            yield kind, _dropout(seg, rng, extra)
            continue
        if kind != "normal":
            injected = _INJECT[kind](seg, rng)
            if injected is None:  # nothing to freeze in a switched-off window
                kind = "normal"
            else:
                seg = injected
        yield kind, seg


def dataset(seed: int, hours: float, anomaly_share: float, kinds: Sequence[str] = KINDS) -> Dataset:
    """Feature rows of ``hours`` of simulated plugs, with ``anomaly_share`` of windows injected."""
    xs: list[F32Array] = []
    labels: list[str] = []
    plugs = fleet(seed, hours)
    for spec, plug_hours in plugs:
        rng = np.random.default_rng([spec.seed, 3])
        for kind, seg in windows(simulate(spec, plug_hours), rng, anomaly_share, kinds):
            xs.append(an.window_features(readings(seg), spec.limit_w))
            labels.append(kind)
    x = np.stack(xs) if xs else np.empty((0, an.N_FEATURES), dtype=np.float32)
    y = np.array([k != "normal" for k in labels], dtype=np.int8)
    counts = {k: labels.count(k) for k in ("normal", *KINDS)}
    description = {
        "simulator": "edge/sensors.py SimulatedPlug on CPython",
        "seed": seed,
        "hours": hours,
        "plugs": len(plugs),
        "anomaly_share": anomaly_share,
        "windows": counts,
    }
    return Dataset(x, y, tuple(labels), description)


# -- model ------------------------------------------------------------------------


def _sklearn() -> tuple[Any, Any, Any]:
    try:
        # lazy: scikit-learn (the train extra) loads only to train
        from sklearn.exceptions import ConvergenceWarning  # type: ignore[import-untyped]  # lazy
        from sklearn.neural_network import MLPClassifier  # type: ignore[import-untyped]  # lazy
        from sklearn.preprocessing import StandardScaler  # type: ignore[import-untyped]  # lazy
    except ImportError as exc:  # pragma: no cover - the dev and train extras install it
        raise TrainError("training needs scikit-learn and onnx: pip install -e '.[train]'") from exc
    return MLPClassifier, StandardScaler, ConvergenceWarning


@dataclass(frozen=True, slots=True)
class Fitted:
    """The scikit-learn objects, the normal envelope and the facts about the fit."""

    scaler: Any
    mlp: Any
    low: F64Array  # per feature: the ENVELOPE_QUANTILE of normal windows
    high: F64Array  # and the 1 - ENVELOPE_QUANTILE
    width: F64Array  # high - low, at least ENVELOPE_FLOOR
    n_iter: int
    converged: bool


def fit(x: F32Array, y: npt.NDArray[np.int8], seed: int) -> Fitted:
    """Standardise the features, fit the classifier, measure the normal envelope."""
    mlp_cls, scaler_cls, convergence_warning = _sklearn()
    normal = x[y == 0].astype(np.float64)
    if len(normal) == 0 or not np.any(y == 1):
        raise TrainError("training needs both normal and anomalous windows")
    low = np.quantile(normal, ENVELOPE_QUANTILE, axis=0)
    high = np.quantile(normal, 1.0 - ENVELOPE_QUANTILE, axis=0)
    width = np.maximum(high - low, ENVELOPE_FLOOR)
    scaler = scaler_cls().fit(x)
    mlp = mlp_cls(
        hidden_layer_sizes=HIDDEN,
        activation="relu",
        alpha=1e-3,
        max_iter=MAX_ITER,
        random_state=seed,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", convergence_warning)
        mlp.fit(scaler.transform(x), y)
    n_iter = int(mlp.n_iter_)
    return Fitted(scaler, mlp, low, high, width, n_iter, n_iter < MAX_ITER)


def python_scores(fitted: Fitted, x: F32Array) -> F64Array:
    """The model's score computed in Python (scikit-learn and numpy, float64).

    The larger of the classifier's anomaly probability and the envelope
    score: ``sigmoid(ENVELOPE_SLOPE * (excess - ENVELOPE_MARGIN))``, where
    ``excess`` is how far, in envelope widths, the most extreme feature lies
    outside the range of normal windows.
    """
    proba = np.asarray(fitted.mlp.predict_proba(fitted.scaler.transform(x))[:, 1])
    xd = np.asarray(x, dtype=np.float64)
    excess = np.maximum((xd - fitted.high) / fitted.width, (fitted.low - xd) / fitted.width)
    envelope = 1.0 / (1.0 + np.exp(-ENVELOPE_SLOPE * (excess.max(axis=1) - ENVELOPE_MARGIN)))
    return np.asarray(np.maximum(proba, envelope), dtype=np.float64)


def export_onnx(fitted: Fitted) -> bytes:
    """The fitted model as one ONNX graph: features[n, F] -> score[n].

    Written node by node with the onnx helpers (no converter). Classifier:
    Sub and Mul standardise, then MatMul, Add and Relu per hidden layer and a
    Sigmoid on the output logit. Envelope: Sub and Mul against the normal
    range, Max, ReduceMax over the features, a scaled Sigmoid. The score is
    the Max of the two. No timestamps: the same weights give the same bytes.
    """
    try:
        import onnx  # lazy: onnx (the train extra) loads only to export a model
        from onnx import TensorProto, helper, numpy_helper  # lazy: as above
    except ImportError as exc:  # pragma: no cover - the dev and train extras install it
        raise TrainError("export needs onnx: pip install -e '.[train]'") from exc

    def const(name: str, value: npt.ArrayLike) -> Any:
        return numpy_helper.from_array(np.asarray(value, dtype=np.float32), name)

    scaler, mlp = fitted.scaler, fitted.mlp
    if mlp.activation != "relu" or mlp.out_activation_ != "logistic":
        raise TrainError(f"unsupported network: {mlp.activation} / {mlp.out_activation_}")
    x = an.INPUT_NAME
    init = [
        const("mean", scaler.mean_),
        const("inv_scale", 1.0 / scaler.scale_),
        const("env_high", fitted.high),
        const("env_low", fitted.low),
        const("env_inv_width", 1.0 / fitted.width),
        const("env_margin", ENVELOPE_MARGIN),
        const("env_slope", ENVELOPE_SLOPE),
        numpy_helper.from_array(np.array([-1], dtype=np.int64), "flat"),
    ]
    nodes = [
        helper.make_node("Sub", [x, "env_high"], ["above_raw"]),
        helper.make_node("Mul", ["above_raw", "env_inv_width"], ["above"]),
        helper.make_node("Sub", ["env_low", x], ["below_raw"]),
        helper.make_node("Mul", ["below_raw", "env_inv_width"], ["below"]),
        helper.make_node("Max", ["above", "below"], ["outside"]),
        helper.make_node("ReduceMax", ["outside"], ["excess"], axes=[1], keepdims=0),
        helper.make_node("Sub", ["excess", "env_margin"], ["excess_m"]),
        helper.make_node("Mul", ["excess_m", "env_slope"], ["env_logit"]),
        helper.make_node("Sigmoid", ["env_logit"], ["envelope"]),
        helper.make_node("Sub", [x, "mean"], ["centred"]),
        helper.make_node("Mul", ["centred", "inv_scale"], ["h0"]),
    ]
    last = len(mlp.coefs_) - 1
    for i, (w, b) in enumerate(zip(mlp.coefs_, mlp.intercepts_, strict=True)):
        init += [const(f"w{i}", w), const(f"b{i}", b)]
        nodes += [
            helper.make_node("MatMul", [f"h{i}", f"w{i}"], [f"mm{i}"]),
            helper.make_node("Add", [f"mm{i}", f"b{i}"], [f"z{i}"]),
        ]
        if i < last:
            nodes.append(helper.make_node("Relu", [f"z{i}"], [f"h{i + 1}"]))
    nodes += [
        helper.make_node("Sigmoid", [f"z{last}"], ["proba"]),
        helper.make_node("Reshape", ["proba", "flat"], ["classifier"]),
        helper.make_node("Max", ["classifier", "envelope"], [an.OUTPUT_NAME]),
    ]
    graph = helper.make_graph(
        nodes,
        MODEL_NAME,
        [helper.make_tensor_value_info(x, TensorProto.FLOAT, ["n", an.N_FEATURES])],
        [helper.make_tensor_value_info(an.OUTPUT_NAME, TensorProto.FLOAT, ["n"])],
        initializer=init,
    )
    model = helper.make_model(
        graph,
        producer_name="aiot models train-anomaly",
        opset_imports=[helper.make_opsetid("", OPSET)],
        doc_string="Anomaly score 0..1 of a device window; features: " + ",".join(an.FEATURES),
    )
    model.ir_version = IR_VERSION
    helper.set_model_props(
        model, {"features": ",".join(an.FEATURES), "feature_version": str(an.FEATURE_VERSION)}
    )
    onnx.checker.check_model(model)
    return bytes(model.SerializeToString())


# -- metrics ----------------------------------------------------------------------


def metrics(
    scores: npt.ArrayLike, y: npt.ArrayLike, threshold: float, kinds: Sequence[str] = ()
) -> dict[str, Any]:
    """Precision, recall, F1 and counts of flagging ``score >= threshold``."""
    s = np.asarray(scores, dtype=np.float64)
    truth = np.asarray(y).astype(bool)
    flagged = s >= threshold
    tp = int(np.count_nonzero(flagged & truth))
    fp = int(np.count_nonzero(flagged & ~truth))
    fn = int(np.count_nonzero(~flagged & truth))
    tn = int(np.count_nonzero(~flagged & ~truth))
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    out: dict[str, Any] = {
        "precision": round(precision, 4),
        "recall": round(recall, 4),
        "f1": round(f1, 4),
        "threshold": round(float(threshold), 6),
        "n": int(s.size),
        "anomalies": tp + fn,
        "tp": tp,
        "fp": fp,
        "fn": fn,
        "tn": tn,
        "false_positive_rate": round(fp / (fp + tn), 4) if fp + tn else 0.0,
    }
    if len(kinds):
        k = np.asarray(kinds)
        out["recall_by_kind"] = {
            kind: round(float(flagged[k == kind].mean()), 4) for kind in KINDS if np.any(k == kind)
        }
    return out


def best_threshold(scores: npt.ArrayLike, y: npt.ArrayLike) -> float:
    """The threshold with the highest F1 (the highest such threshold on a tie)."""
    s = np.asarray(scores, dtype=np.float64)
    truth = np.asarray(y).astype(bool)
    if not truth.any() or truth.all():
        raise TrainError("threshold choice needs both normal and anomalous windows")
    order = np.argsort(-s, kind="stable")
    s_sorted, t_sorted = s[order], truth[order]
    tp = np.cumsum(t_sorted)
    fp = np.cumsum(~t_sorted)
    # Only the last index of each run of equal scores is a real cut.
    cut = np.append(s_sorted[1:] != s_sorted[:-1], True)
    f1 = 2 * tp / (tp + fp + truth.sum())
    f1 = np.where(cut, f1, -1.0)
    return float(s_sorted[int(np.argmax(f1))])


# -- training and evaluation --------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Trained:
    model_path: Path
    manifest_path: Path
    manifest: dict[str, Any]


def _created() -> str:
    # SOURCE_DATE_EPOCH makes the manifest byte-for-byte reproducible too.
    epoch = os.environ.get("SOURCE_DATE_EPOCH")
    when = datetime.fromtimestamp(int(epoch), UTC) if epoch else datetime.now(UTC)
    return when.replace(microsecond=0).isoformat().replace("+00:00", "Z")


def _versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for dist in ("numpy", "scikit-learn", "onnx", "onnxruntime"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:  # pragma: no cover
            out[dist] = "absent"
    return out


def train(
    out: Path,
    seed: int = DEFAULT_SEED,
    hours: float = DEFAULT_HOURS,
    *,
    version: str = "1",
    val_hours: float | None = None,
    eval_hours: float = EVAL_HOURS,
    eval_seed: int = EVAL_SEED,
    log: Callable[[str], None] = lambda _msg: None,
) -> Trained:
    """Generate data, fit, export, choose the threshold, measure, write model and manifest."""
    if hours <= 0 or eval_hours <= 0:
        raise TrainError("hours must be positive")
    if eval_seed in (seed, seed + 1):
        raise TrainError(f"the evaluation seed {eval_seed} is a training or validation seed")
    val_hours = max(hours / 2, 2.0) if val_hours is None else val_hours
    log(f"simulating {hours:g} h of training data (seed {seed})")
    tr = dataset(seed, hours, TRAIN_ANOMALY_SHARE)
    log(f"simulating {val_hours:g} h of validation data (seed {seed + 1})")
    va = dataset(seed + 1, val_hours, ANOMALY_SHARE)
    log(f"fitting on {len(tr.y)} windows")
    fitted = fit(tr.x, tr.y, seed)
    data = export_onnx(fitted)
    digest = an.sha256_hex(data)
    session = an._session(data, 1)

    def onnx_scores(x: F32Array) -> F64Array:
        (s,) = session.run([an.OUTPUT_NAME], {an.INPUT_NAME: an.as_feature_matrix(x)})
        return np.asarray(s, dtype=np.float64).reshape(-1)

    val_scores = onnx_scores(va.x)
    # Floored to the 6 decimals the manifest keeps, so the written threshold
    # flags exactly the windows measured here.
    threshold = math.floor(best_threshold(val_scores, va.y) * 1e6) / 1e6
    log(f"simulating {eval_hours:g} h of held-out data (seed {eval_seed})")
    ev = dataset(eval_seed, eval_hours, ANOMALY_SHARE)
    heldout = metrics(onnx_scores(ev.x), ev.y, threshold, ev.kinds)
    normal_i = int(np.flatnonzero(va.y == 0)[0])
    smoke_rows = [normal_i] + [va.kinds.index(k) for k in KINDS if k in va.kinds]
    smoke_x = va.x[smoke_rows]
    manifest: dict[str, Any] = {
        "name": MODEL_NAME,
        "kind": an.MANIFEST_KIND,
        "version": version,
        "file": MODEL_FILE,
        "sha256": digest,
        "size": len(data),
        "created": _created(),
        "input": an.INPUT_NAME,
        "output": an.OUTPUT_NAME,
        "features": list(an.FEATURES),
        "feature_version": an.FEATURE_VERSION,
        "window_readings": an.WINDOW_READINGS,
        "threshold": threshold,
        "model": {
            "type": "max(MLPClassifier probability, normal-envelope score)",
            "hidden_layers": list(HIDDEN),
            "activation": "relu, logistic output",
            "envelope": {
                "quantile": ENVELOPE_QUANTILE,
                "floor": ENVELOPE_FLOOR,
                "margin": ENVELOPE_MARGIN,
                "slope": ENVELOPE_SLOPE,
                "low": [round(float(v), 6) for v in fitted.low],
                "high": [round(float(v), 6) for v in fitted.high],
            },
            "seed": seed,
            "iterations": fitted.n_iter,
            "converged": fitted.converged,
            "onnx_opset": OPSET,
            "onnx_ir_version": IR_VERSION,
            "versions": _versions(),
        },
        "training_data": {
            "description": (
                "Simulated smart plugs (edge/sensors.py SimulatedPlug) with varied seeds, "
                "appliance event rates, sample rates, limits and relay-off stretches, cut into "
                f"windows of {an.WINDOW_READINGS} power readings; a share of the windows "
                "carries one injected anomaly."
            ),
            "anomaly_kinds": dict(KIND_DESCRIPTIONS),
            "train": tr.description,
            "validation": va.description,
        },
        "metrics": {
            "validation": metrics(val_scores, va.y, threshold, va.kinds),
            "heldout": {**heldout, "data": ev.description},
        },
        "smoke": {
            "features": [[float(v) for v in row] for row in smoke_x.tolist()],
            "scores": [round(float(s), 7) for s in onnx_scores(smoke_x)],
        },
    }
    out.mkdir(parents=True, exist_ok=True)
    model_path = out / MODEL_FILE
    manifest_path = out / MANIFEST_FILE
    write_atomic(model_path, data, mode=0o644)
    write_atomic(manifest_path, (json.dumps(manifest, indent=2) + "\n").encode(), mode=0o644)
    return Trained(model_path, manifest_path, manifest)


def evaluate(
    model: Path, seed: int = EVAL_SEED, hours: float = EVAL_HOURS, *, threads: int = 1
) -> dict[str, Any]:
    """Precision and recall of a model (manifest or .onnx path) on simulated held-out data."""
    if hours <= 0:
        raise TrainError("hours must be positive")
    m = an.AnomalyModel.load(model, threads=threads)
    trained_on = m.manifest.raw.get("model", {}).get("seed")
    if isinstance(trained_on, int) and seed in (trained_on, trained_on + 1):
        raise TrainError(f"seed {seed} is the model's training or validation seed")
    ev = dataset(seed, hours, ANOMALY_SHARE)
    scores = m.score_batch(ev.x)
    result = metrics(scores, ev.y, m.threshold, ev.kinds)
    return {
        "model": f"{m.name}@{m.version}",
        "sha256": m.sha256,
        "seed": seed,
        "hours": hours,
        **result,
        "windows": ev.description["windows"],
    }


def leave_one_kind_out(
    seed: int = DEFAULT_SEED,
    hours: float = DEFAULT_HOURS,
    eval_seed: int = EVAL_SEED,
    eval_hours: float = EVAL_HOURS,
) -> dict[str, dict[str, float]]:
    """Recall on each kind by a model trained and tuned without that kind.

    How well the model flags anomalies of a kind it never saw; the figures in
    docs/anomaly.md. Scores are computed in Python (``python_scores``).
    """
    ev = dataset(eval_seed, eval_hours, ANOMALY_SHARE)
    kinds = np.asarray(ev.kinds)
    out: dict[str, dict[str, float]] = {}
    for held in KINDS:
        seen = [k for k in KINDS if k != held]
        tr = dataset(seed, hours, TRAIN_ANOMALY_SHARE, seen)
        va = dataset(seed + 1, max(hours / 2, 2.0), ANOMALY_SHARE, seen)
        fitted = fit(tr.x, tr.y, seed)
        threshold = best_threshold(python_scores(fitted, va.x), va.y)
        scores = python_scores(fitted, ev.x)
        flagged = scores >= threshold
        out[held] = {
            "recall_unseen_kind": round(float(flagged[kinds == held].mean()), 4),
            "false_positive_rate": round(float(flagged[kinds == "normal"].mean()), 4),
        }
    return out
