"""The ONNX tier of the decision engine: an anomaly score per device window.

Three parts, used by the daemon, the training tool and the tests alike:

- ``window_features(readings, limit_w)``: the one feature function. Training
  (tools/ml/anomaly_train.py) and inference call it on the same kind of input, a
  sequence of ``(ts_ms, sensor, value)`` readings, so there is no train/serve
  skew. ``FEATURES`` names the columns in order.
- ``AnomalyModel``: an ``.onnx`` file and its manifest. Loading checks the
  file's size and sha256 against the manifest before onnxruntime sees a byte,
  then runs a smoke inference and compares it with the score recorded at
  training time. ``score(features)`` and ``score_batch(matrix)`` return scores
  in 0..1, higher is more anomalous; ``score >= model.threshold`` flags.
- ``DeviceWindows``: per-device rolling windows fed one reading at a time; a
  window completes every ``WINDOW_READINGS`` power readings and yields its
  score.

docs/anomaly.md describes the features, the training data, the anomaly kinds
and the measured precision and recall.

Errors (the hierarchy, all defined here)::

    AnomalyError              the anomaly tier cannot do what was asked
    ├── FeatureError(reason)  a window whose features cannot be computed
    │                         (too few readings, no time span, a non-finite
    │                         value, a bad limit)
    └── ModelError(reason)    a model that cannot be used: a missing or
                              invalid manifest, a size or sha256 mismatch,
                              onnxruntime refusing the file, a failed smoke
                              inference

Threads: ``AnomalyModel`` is safe to call from several threads (onnxruntime
sessions are). ``DeviceWindows`` is not: one owner feeds it.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Protocol

import numpy as np
import numpy.typing as npt

from hub.core.paths import SHIPPED_MODELS
from hub.state.records import StoredReading
from protocol.errors import ReasonError

# Sensor ids of the energy scenario (edge/sensors.py POWER_W, ENERGY_WH).
POWER_W: Final = 0
ENERGY_WH: Final = 1

# A window is this many power readings (one minute at the plugs' default
# sample_ms of 1000) with every other reading whose timestamp falls inside it.
WINDOW_READINGS: Final = 60
MIN_POWER_READINGS: Final = 5
# A device without a configured limit is compared against this one.
DEFAULT_LIMIT_W: Final = 2000.0
# A power reading at or below this is "off" (relay open, nothing plugged in):
# an unchanging 0 W is a plug switched off, not a stuck sensor.
LIVE_W: Final = 1.0

FEATURE_VERSION: Final = 2
FEATURES: Final[tuple[str, ...]] = (
    "power_mean_kw",  # mean of the power readings
    "power_std_kw",  # their standard deviation
    "power_min_kw",
    "power_max_kw",
    "slope_kw_per_min",  # least-squares slope of power over time
    "linear_r2",  # how well a straight line fits (0 when power is constant)
    "step_r2",  # how well the best single step fits (0 when power is constant)
    "over_limit_frac",  # fraction of power readings above the device's limit
    "flat_run_frac",  # longest run of identical live (> LIVE_W) readings / n
    "spike_kw",  # largest rise of a reading above its 5-point median
    "log2_gap_ratio",  # log2(longest interval / median interval)
    "energy_gap_kw",  # mean power from the energy counter minus from the power readings
)
N_FEATURES: Final = len(FEATURES)

INPUT_NAME: Final = "features"
OUTPUT_NAME: Final = "score"
MANIFEST_KIND: Final = "onnx"


# -- errors -------------------------------------------------------------------------


class AnomalyError(ReasonError):
    """The anomaly tier cannot do what was asked."""


class FeatureError(AnomalyError, ValueError):
    """A window whose features cannot be computed."""


class ModelError(AnomalyError):
    """A model file that cannot be used. The caller keeps its previous model."""


# -- features -----------------------------------------------------------------------


# (ts_ms, sensor, value), or a reading from the store
Reading = tuple[int, int, float] | StoredReading
FloatArray = npt.NDArray[np.float64]
F32Array = npt.NDArray[np.float32]


def _split(readings: Iterable[Reading]) -> tuple[list[tuple[int, float]], list[tuple[int, float]]]:
    power: list[tuple[int, float]] = []
    energy: list[tuple[int, float]] = []
    for r in readings:
        if isinstance(r, tuple):
            ts, sensor, value = r
        else:
            ts, sensor, value = r.ts_ms, r.sensor, r.value
        if sensor != POWER_W and sensor != ENERGY_WH:
            continue
        v = float(value)
        if not math.isfinite(v):
            raise FeatureError("non_finite", f"sensor {sensor} at ts_ms {ts}: {v}")
        (power if sensor == POWER_W else energy).append((int(ts), v))
    # Stable sort: readings of one timestamp keep their arrival order.
    power.sort(key=lambda p: p[0])
    energy.sort(key=lambda p: p[0])
    return power, energy


def _longest_flat_run(p: FloatArray) -> int:
    """Readings in the longest run of identical consecutive live readings (0 if none)."""
    same = (p[1:] == p[:-1]) & (p[1:] > LIVE_W)
    if not same.any():
        return 0
    edges = np.flatnonzero(np.diff(np.concatenate(([0], same.view(np.int8), [0]))))
    return int((edges[1::2] - edges[::2]).max()) + 1


def window_features(readings: Iterable[Reading], limit_w: float | None = None) -> F32Array:
    """The feature vector (float32, ``FEATURES`` order) of one device window.

    ``readings`` are ``(ts_ms, sensor, value)`` tuples or objects with those
    fields, in any order; sensors other than power and energy are ignored. At
    least ``MIN_POWER_READINGS`` power readings spanning some time are needed.
    Without energy readings ``energy_gap_kw`` is 0. A non-finite value is
    refused (``FeatureError("non_finite")``) rather than guessed around: a
    meter that reports NaN is a fault the caller should see.
    """
    limit = DEFAULT_LIMIT_W if limit_w is None else float(limit_w)
    if not math.isfinite(limit) or limit <= 0:
        raise FeatureError("bad_limit", f"limit_w={limit_w}")
    power, energy = _split(readings)
    if len(power) < MIN_POWER_READINGS:
        raise FeatureError(
            "too_few_readings", f"{len(power)} power readings, at least {MIN_POWER_READINGS}"
        )
    t_ms = np.fromiter((p[0] for p in power), dtype=np.float64, count=len(power))
    p = np.fromiter((p[1] for p in power), dtype=np.float64, count=len(power))
    n = p.size
    t_min = (t_ms - t_ms[0]) / 60000.0
    span_ms = t_ms[-1] - t_ms[0]
    if span_ms <= 0:
        raise FeatureError("no_time_span", f"{n} power readings all at ts_ms {int(t_ms[0])}")

    mean = float(p.mean())
    dp = p - mean
    ss_tot = float(dp @ dp)
    dt = t_min - t_min.mean()
    slope = float(dt @ dp) / float(dt @ dt)  # W per minute
    r2 = step_r2 = 0.0
    if ss_tot > 0.0:
        resid = dp - slope * dt
        r2 = max(0.0, 1.0 - float(resid @ resid) / ss_tot)
        # Best split into two levels: the variance its two means explain.
        k = np.arange(1, n, dtype=np.float64)
        left = np.cumsum(dp)[:-1]  # sum of deviations left of each split
        between = left * left * n / (k * (n - k))
        step_r2 = min(1.0, float(between.max()) / ss_tot)

    # Upward only: a reading or two at the baseline between two appliances
    # that follow each other is an ordinary dip. Edge padding: a step at the
    # window's first or last reading is not a spike.
    padded = np.pad(p, 2, mode="edge")
    med5 = np.median(np.lib.stride_tricks.sliding_window_view(padded, 5), axis=1)
    spike = max(0.0, float(np.max(p - med5)))

    steps = np.diff(t_ms)
    positive = steps[steps > 0]
    gap_ratio = float(steps.max() / np.median(positive))

    energy_gap = 0.0
    if len(energy) >= 2 and energy[-1][0] > energy[0][0]:
        e0_ts, e0 = energy[0]
        e1_ts, e1 = energy[-1]
        from_energy = (e1 - e0) * 3_600_000.0 / (e1_ts - e0_ts)
        # Each power reading stands for the interval that ends at it.
        inside = (t_ms > e0_ts) & (t_ms <= e1_ts)
        prev = np.concatenate(([float(e0_ts)], t_ms[:-1]))
        covered = np.clip(t_ms, e0_ts, e1_ts) - np.clip(prev, e0_ts, e1_ts)
        covered_ms = float(covered[inside].sum())
        if covered_ms > 0:
            from_power = float((p * covered)[inside].sum()) / covered_ms
            energy_gap = from_energy - from_power

    out = np.array(
        [
            mean / 1000.0,
            float(p.std()) / 1000.0,
            float(p.min()) / 1000.0,
            float(p.max()) / 1000.0,
            slope / 1000.0,
            r2,
            step_r2,
            float(np.count_nonzero(p > limit)) / n,
            _longest_flat_run(p) / n,
            spike / 1000.0,
            math.log2(gap_ratio),
            energy_gap / 1000.0,
        ],
        dtype=np.float32,
    )
    if not np.all(np.isfinite(out)):  # pragma: no cover - finite inputs give finite features
        raise FeatureError("non_finite", f"features {out.tolist()}")
    return out


def as_feature_matrix(features: npt.ArrayLike) -> F32Array:
    """``features`` as a C-contiguous float32 (n, N_FEATURES) matrix; refuses bad shapes and NaN."""
    x = np.ascontiguousarray(features, dtype=np.float32)
    if x.ndim == 1:
        x = x.reshape(1, -1)
    if x.ndim != 2 or x.shape[1] != N_FEATURES:
        raise FeatureError("bad_shape", f"{x.shape}, expected (n, {N_FEATURES})")
    if not np.all(np.isfinite(x)):
        raise FeatureError("non_finite", "feature matrix holds NaN or infinity")
    return x


# -- the model and its manifest -----------------------------------------------------


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@dataclass(frozen=True, slots=True)
class Manifest:
    """What the hub needs from a model's manifest JSON (docs/anomaly.md lists every key)."""

    name: str
    kind: str
    version: str
    file: str
    sha256: str
    size: int
    threshold: float
    features: tuple[str, ...]
    feature_version: int
    smoke_features: tuple[tuple[float, ...], ...]
    smoke_scores: tuple[float, ...]
    raw: Mapping[str, Any] = field(repr=False, compare=False)
    # The range of each feature over normal training windows (model.envelope
    # in the manifest), and how many range widths outside it is unusual.
    envelope_low: tuple[float, ...] = ()
    envelope_high: tuple[float, ...] = ()
    envelope_floor: float = 0.0
    envelope_margin: float = 0.0

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Manifest:
        """Validate a parsed manifest; ``ModelError("bad_manifest")`` names the key at fault."""

        def need(key: str, kind: type | tuple[type, ...]) -> Any:
            if key not in d:
                raise ModelError("bad_manifest", f"missing key {key!r}")
            value = d[key]
            if not isinstance(value, kind) or isinstance(value, bool):
                raise ModelError("bad_manifest", f"{key!r} has the wrong type")
            return value

        if not isinstance(d, Mapping):
            raise ModelError("bad_manifest", "not a JSON object")
        kind = need("kind", str)
        if kind != MANIFEST_KIND:
            raise ModelError("bad_manifest", f"kind {kind!r}, expected {MANIFEST_KIND!r}")
        sha = need("sha256", str).lower()
        if len(sha) != 64 or any(c not in "0123456789abcdef" for c in sha):
            raise ModelError("bad_manifest", "'sha256' is not 64 hex digits")
        size = need("size", int)
        threshold = float(need("threshold", (int, float)))
        if not 0.0 <= threshold <= 1.0:
            raise ModelError("bad_manifest", f"threshold {threshold} outside 0..1")
        features = tuple(need("features", list))
        feature_version = need("feature_version", int)
        smoke = need("smoke", dict)
        try:
            smoke_x = tuple(tuple(float(v) for v in row) for row in smoke["features"])
            smoke_y = tuple(float(v) for v in smoke["scores"])
        except (KeyError, TypeError, ValueError) as exc:
            raise ModelError("bad_manifest", f"'smoke' is malformed: {exc}") from None
        if not smoke_x or len(smoke_x) != len(smoke_y):
            raise ModelError("bad_manifest", "'smoke' needs as many scores as feature rows")
        file = need("file", str)
        if Path(file).name != file or file in ("", ".", ".."):
            raise ModelError("bad_manifest", f"'file' must be a bare file name, not {file!r}")
        envelope = d.get("model", {}).get("envelope") if isinstance(d.get("model"), dict) else None
        env: dict[str, Any] = {}
        if envelope is not None:
            try:
                env = {
                    "envelope_low": tuple(float(v) for v in envelope["low"]),
                    "envelope_high": tuple(float(v) for v in envelope["high"]),
                    "envelope_floor": float(envelope["floor"]),
                    "envelope_margin": float(envelope["margin"]),
                }
            except (KeyError, TypeError, ValueError) as exc:
                raise ModelError("bad_manifest", f"'model.envelope' is malformed: {exc}") from None
            if not len(env["envelope_low"]) == len(env["envelope_high"]) == len(features):
                raise ModelError("bad_manifest", "'model.envelope' needs one bound per feature")
        return cls(
            name=need("name", str),
            kind=kind,
            version=str(need("version", (str, int))),
            file=file,
            sha256=sha,
            size=size,
            threshold=threshold,
            features=tuple(str(f) for f in features),
            feature_version=feature_version,
            smoke_features=smoke_x,
            smoke_scores=smoke_y,
            raw=dict(d),
            **env,
        )

    @classmethod
    def read(cls, path: Path) -> Manifest:
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ModelError("no_manifest", str(path)) from None
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ModelError("bad_manifest", f"{path}: {exc}") from None
        return cls.from_dict(data)


class Scorer(Protocol):
    """What DeviceWindows and the decision engine need from a model."""

    @property
    def name(self) -> str: ...
    @property
    def version(self) -> str: ...
    @property
    def sha256(self) -> str: ...
    @property
    def threshold(self) -> float: ...
    def score(self, features: npt.ArrayLike) -> float: ...


# How far the smoke inference may stray from the score recorded at training
# (float32 arithmetic on another CPU or onnxruntime build).
SMOKE_TOLERANCE: Final = 1e-4


def _session(data: bytes, threads: int) -> Any:
    import onnxruntime as ort  # type: ignore[import-untyped]  # lazy: only to score

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.log_severity_level = 3
    return ort.InferenceSession(data, sess_options=opts, providers=["CPUExecutionProvider"])


class AnomalyModel:
    """An ONNX anomaly model, verified against its manifest, ready to score.

    Build it with ``load`` (a path) or ``from_bytes`` (bytes already in
    memory, as a registry receives them). Either way the bytes' size and
    sha256 are checked against the manifest before onnxruntime parses them,
    and a smoke inference must reproduce the manifest's recorded scores.
    """

    def __init__(self, session: Any, manifest: Manifest) -> None:
        self._session = session
        self.manifest = manifest

    # -- construction

    @classmethod
    def load(
        cls, path: Path | str, manifest: Path | str | None = None, *, threads: int = 1
    ) -> AnomalyModel:
        """Load from a manifest JSON, or from an .onnx with its manifest beside it.

        ``path`` may be the manifest (``anomaly.json``; the model is the
        ``file`` it names, in the same folder) or the model (``anomaly.onnx``;
        the manifest defaults to the same name with ``.json``).
        """
        p = Path(path)
        if manifest is not None:
            man_path, model_path = Path(manifest), p
            man = Manifest.read(man_path)
        elif p.suffix == ".json":
            man_path = p
            man = Manifest.read(man_path)
            model_path = p.parent / man.file
        else:
            man_path, model_path = p.with_suffix(".json"), p
            man = Manifest.read(man_path)
        try:
            data = model_path.read_bytes()
        except OSError as exc:
            raise ModelError("no_model", f"{model_path}: {exc.strerror or exc}") from None
        return cls.from_bytes(data, man, threads=threads)

    @classmethod
    def from_bytes(cls, data: bytes, manifest: Manifest, *, threads: int = 1) -> AnomalyModel:
        if threads < 1:
            raise ValueError(f"threads must be at least 1, not {threads}")
        if len(data) != manifest.size:
            raise ModelError(
                "size_mismatch", f"{len(data)} bytes, the manifest says {manifest.size}"
            )
        digest = sha256_hex(data)
        if digest != manifest.sha256:
            raise ModelError(
                "sha256_mismatch", f"file sha256 {digest}, the manifest says {manifest.sha256}"
            )
        if manifest.features != FEATURES or manifest.feature_version != FEATURE_VERSION:
            raise ModelError(
                "feature_mismatch",
                f"model features {list(manifest.features)} version {manifest.feature_version}, "
                f"this hub computes {list(FEATURES)} version {FEATURE_VERSION}",
            )
        try:
            session = _session(data, threads)
        except Exception as exc:  # onnxruntime raises its own exception types
            raise ModelError("onnx_refused", str(exc).strip().splitlines()[0][:300]) from None
        inputs = [(i.name, list(i.shape)) for i in session.get_inputs()]
        outputs = [o.name for o in session.get_outputs()]
        if len(inputs) != 1 or inputs[0][0] != INPUT_NAME or inputs[0][1][-1] != N_FEATURES:
            raise ModelError(
                "bad_signature", f"inputs {inputs}, expected {INPUT_NAME}[n, {N_FEATURES}]"
            )
        if OUTPUT_NAME not in outputs:
            raise ModelError("bad_signature", f"outputs {outputs}, expected {OUTPUT_NAME!r}")
        model = cls(session, manifest)
        model._smoke()
        return model

    def _smoke(self) -> None:
        m = self.manifest
        try:
            got = self.score_batch(np.array(m.smoke_features, dtype=np.float32))
        except Exception as exc:
            raise ModelError("smoke_failed", f"inference raised {exc!r}") from None
        want = np.array(m.smoke_scores, dtype=np.float64)
        if got.shape != want.shape or not np.allclose(got, want, rtol=0.0, atol=SMOKE_TOLERANCE):
            raise ModelError(
                "smoke_failed", f"scores {got.tolist()}, the manifest recorded {want.tolist()}"
            )

    # -- identity

    @property
    def name(self) -> str:
        return self.manifest.name

    @property
    def version(self) -> str:
        return self.manifest.version

    @property
    def sha256(self) -> str:
        return self.manifest.sha256

    @property
    def threshold(self) -> float:
        return self.manifest.threshold

    def __repr__(self) -> str:
        return f"AnomalyModel({self.name}@{self.version}, sha256={self.sha256[:12]})"

    # -- scoring

    def score_batch(self, features: npt.ArrayLike) -> F32Array:
        """Scores (float32, 0..1) of an (n, N_FEATURES) matrix; an empty batch gives ()."""
        x = as_feature_matrix(features)
        if x.shape[0] == 0:
            return np.empty(0, dtype=np.float32)
        (out,) = self._session.run([OUTPUT_NAME], {INPUT_NAME: x})
        scores = np.asarray(out, dtype=np.float32).reshape(-1)
        if scores.shape[0] != x.shape[0]:
            raise ModelError("bad_output", f"{scores.shape[0]} scores for {x.shape[0]} rows")
        return scores

    def score(self, features: npt.ArrayLike) -> float:
        """The score (0..1, higher is more anomalous) of one feature vector."""
        x = as_feature_matrix(features)
        if x.shape[0] != 1:
            raise FeatureError("bad_shape", f"{x.shape}: one feature vector expected")
        return float(self.score_batch(x)[0])

    def score_window(self, readings: Iterable[Reading], limit_w: float | None = None) -> float:
        """Features and score of one window of readings."""
        return self.score(window_features(readings, limit_w))

    def flags(self, score: float) -> bool:
        """Whether a score counts as an anomaly (at or above the manifest's threshold)."""
        return score >= self.threshold

    def unusual_features(self, features: npt.ArrayLike) -> list[str]:
        """Names of the features that lie outside the range of normal training windows.

        Outside by more than the manifest's margin (in range widths), most
        extreme first: facts for an explanation ("flat_run_frac is unusual").
        Empty when the manifest carries no envelope.
        """
        m = self.manifest
        if not m.envelope_low:
            return []
        x = as_feature_matrix(features)[0].astype(np.float64)
        low, high = np.array(m.envelope_low), np.array(m.envelope_high)
        width = np.maximum(high - low, m.envelope_floor)
        excess = np.maximum((x - high) / width, (low - x) / width)
        order = np.argsort(-excess, kind="stable")
        return [FEATURES[i] for i in order if excess[i] > m.envelope_margin]


def default_manifest_path() -> Path:
    """The anomaly model shipped in the repository (models/anomaly/anomaly.json)."""
    return SHIPPED_MODELS / "anomaly" / "anomaly.json"


# -- per-device rolling windows -----------------------------------------------------


@dataclass(frozen=True, slots=True)
class WindowScore:
    """A completed window of one device and its score (with the model that gave it)."""

    device_id: str
    start_ms: int  # timestamp of the window's first power reading
    end_ms: int  # timestamp of its last power reading
    score: float
    anomalous: bool
    features: tuple[float, ...]
    model: str  # name@version
    model_sha256: str

    def feature_map(self) -> dict[str, float]:
        return dict(zip(FEATURES, self.features, strict=True))


@dataclass(slots=True)
class _Device:
    buf: deque[tuple[int, int, float]] = field(default_factory=deque)
    power: int = 0  # power readings in buf
    last_power_ms: int = 0
    closed_until_ms: int = -(2**63)  # readings at or before this belong to scored windows


class DeviceWindows:
    """Per-device windows fed one reading at a time; a score when a window completes.

    A window holds ``window`` power readings and every other reading whose
    timestamp falls inside it. It completes when, after its last power
    reading, a reading with a later timestamp arrives (so the energy reading
    stamped with the last power reading is still in it); the next window
    starts ``hop`` power readings later (``hop == window``: back to back).
    ``model`` is read when a window completes, so assigning a new model swaps
    it between two windows without losing one.

    Readings older than the last completed window are ignored (they were
    already judged). A non-finite value raises ``FeatureError`` and is not
    kept. Each device buffers at most ``8 * window`` readings.
    """

    def __init__(
        self, model: Scorer, *, window: int = WINDOW_READINGS, hop: int | None = None
    ) -> None:
        hop = window if hop is None else hop
        if window < MIN_POWER_READINGS:
            raise ValueError(f"window must be at least {MIN_POWER_READINGS} readings")
        if not 1 <= hop <= window:
            raise ValueError(f"hop must be in 1..{window}, not {hop}")
        self.model = model
        self.window = window
        self.hop = hop
        self.max_buffer = 8 * window
        self._devices: dict[str, _Device] = {}
        self.stale = 0  # readings ignored because their window was already scored

    def add(
        self, device_id: str, ts_ms: int, sensor: int, value: float, limit_w: float | None = None
    ) -> WindowScore | None:
        """Take one reading; the window's score if this reading completed one."""
        v = float(value)
        if not math.isfinite(v):
            raise FeatureError("non_finite", f"{device_id} sensor {sensor} at ts_ms {ts_ms}: {v}")
        dev = self._devices.get(device_id)
        if dev is None:
            dev = self._devices[device_id] = _Device()
        if ts_ms <= dev.closed_until_ms:
            self.stale += 1
            return None
        result: WindowScore | None = None
        error: AnomalyError | None = None
        if dev.power >= self.window and ts_ms > dev.last_power_ms:
            try:
                result = self._close(device_id, dev, limit_w)
            except AnomalyError as exc:  # the window is dropped; the reading is kept
                error = exc
        dev.buf.append((int(ts_ms), int(sensor), v))
        if sensor == POWER_W:
            dev.power += 1
            dev.last_power_ms = max(dev.last_power_ms, int(ts_ms))
        while len(dev.buf) > self.max_buffer:
            _, s, _ = dev.buf.popleft()
            dev.power -= s == POWER_W
        if error is not None:
            raise error
        return result

    def add_many(
        self, device_id: str, readings: Iterable[Reading], limit_w: float | None = None
    ) -> list[WindowScore]:
        """``add`` for each reading in order; the scores of the windows they completed."""
        out: list[WindowScore] = []
        for r in readings:
            ts, sensor, value = r if isinstance(r, tuple) else (r.ts_ms, r.sensor, r.value)
            got = self.add(device_id, ts, sensor, value, limit_w)
            if got is not None:
                out.append(got)
        return out

    def forget(self, device_id: str) -> None:
        """Drop a device's buffered readings (a removed device, a relay reset)."""
        self._devices.pop(device_id, None)

    def pending(self, device_id: str) -> int:
        """Power readings buffered for the device's next window."""
        dev = self._devices.get(device_id)
        return dev.power if dev else 0

    def _close(self, device_id: str, dev: _Device, limit_w: float | None) -> WindowScore:
        readings = sorted(dev.buf, key=lambda r: r[0])
        # The window: readings up to its window-th power reading's timestamp.
        powers = [r[0] for r in readings if r[1] == POWER_W]
        end_ms = powers[self.window - 1]
        start_ms = powers[0]
        inside = [r for r in readings if r[0] <= end_ms]
        # Slide first: a window that cannot be scored is dropped, not retried.
        keep_from = end_ms + 1 if self.hop >= self.window else powers[self.hop]
        dev.closed_until_ms = keep_from - 1
        dev.buf = deque(r for r in readings if r[0] >= keep_from)
        dev.power = sum(1 for r in dev.buf if r[1] == POWER_W)
        features = window_features(inside, limit_w)
        model = self.model
        score = model.score(features)
        return WindowScore(
            device_id=device_id,
            start_ms=start_ms,
            end_ms=end_ms,
            score=score,
            anomalous=score >= model.threshold,
            features=tuple(float(f) for f in features),
            model=f"{model.name}@{model.version}",
            model_sha256=model.sha256,
        )
