"""The anomaly model: training, ONNX export, verified loading, scoring and the CLI."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import typer
from typer.testing import CliRunner

from hub.decide import anomaly as an
from tools.cli.anomaly import register_eval, register_models
from tools.ml import anomaly_train as at

pytestmark = pytest.mark.unit

SHIPPED = an.default_manifest_path()


@pytest.fixture(scope="module")
def model() -> an.AnomalyModel:
    return an.AnomalyModel.load(SHIPPED)


@pytest.fixture(scope="module")
def small_training(tmp_path_factory: pytest.TempPathFactory) -> at.Trained:
    out = tmp_path_factory.mktemp("trained")
    return at.train(out, seed=3, hours=4, val_hours=3, eval_hours=2, eval_seed=77)


def copy_model(dst: Path) -> Path:
    for name in (at.MODEL_FILE, at.MANIFEST_FILE):
        shutil.copy(SHIPPED.parent / name, dst / name)
    return dst / at.MANIFEST_FILE


def rewrite_manifest(path: Path, **changes: Any) -> None:
    data = json.loads(path.read_text())
    data.update(changes)
    path.write_text(json.dumps(data))


# -- the shipped model ----------------------------------------------------------------


def test_shipped_model_is_small_and_matches_its_manifest() -> None:
    manifest = json.loads(SHIPPED.read_text())
    data = (SHIPPED.parent / manifest["file"]).read_bytes()
    assert len(data) == manifest["size"] < 200_000
    assert an.sha256_hex(data) == manifest["sha256"]
    assert manifest["kind"] == "onnx"
    assert manifest["features"] == list(an.FEATURES)
    assert set(manifest["training_data"]["anomaly_kinds"]) == set(at.KINDS)
    for key in ("name", "version", "created", "threshold", "metrics", "smoke"):
        assert key in manifest


def test_loading_by_manifest_or_by_onnx_path_is_the_same_model(model: an.AnomalyModel) -> None:
    by_onnx = an.AnomalyModel.load(SHIPPED.parent / at.MODEL_FILE)
    assert by_onnx.sha256 == model.sha256
    assert model.name == "anomaly"
    assert 0.0 < model.threshold < 1.0
    assert repr(model).startswith("AnomalyModel(anomaly@")


def test_scores_are_in_0_to_1_and_batch_agrees_with_single(model: an.AnomalyModel) -> None:
    data = at.dataset(31, 2, at.ANOMALY_SHARE)
    batch = model.score_batch(data.x)
    assert batch.shape == (len(data.x),)
    assert np.all((batch >= 0.0) & (batch <= 1.0))
    singles = np.array([model.score(row) for row in data.x[:20]], dtype=np.float32)
    assert np.allclose(singles, batch[:20], atol=1e-6)
    assert model.score_batch(np.empty((0, an.N_FEATURES))).shape == (0,)


def test_score_refuses_bad_input(model: an.AnomalyModel) -> None:
    with pytest.raises(an.FeatureError, match="bad_shape"):
        model.score(np.zeros(an.N_FEATURES - 1))
    with pytest.raises(an.FeatureError, match="bad_shape"):
        model.score(np.zeros((2, an.N_FEATURES)))
    row = np.zeros(an.N_FEATURES)
    row[3] = np.nan
    with pytest.raises(an.FeatureError, match="non_finite"):
        model.score(row)


def test_held_out_anomalies_are_flagged(model: an.AnomalyModel) -> None:
    # A fixed seed that neither training (7) nor validation (8) used.
    result = at.evaluate(SHIPPED, seed=4242, hours=6)
    assert result["anomalies"] >= 40
    assert result["recall"] >= 0.8
    assert result["precision"] >= 0.8
    assert set(result["recall_by_kind"]) == set(at.KINDS)
    for kind in ("stuck", "dropout", "spike"):
        assert result["recall_by_kind"][kind] >= 0.8, kind


@pytest.mark.parametrize("kind", at.KINDS)
def test_each_injected_kind_is_flagged_on_a_quiet_window(model: an.AnomalyModel, kind: str) -> None:
    # A quiet minute of a plug (no appliance event) and the same minute with
    # one anomaly of each kind, made with a fixed generator.
    rows = at.simulate(at.PlugSpec(21, 600, 1000, 2000.0, 0.0), 0.5)
    quiet = rows[600:700]
    assert quiet[:60, 1].max() < 300
    rng = np.random.default_rng(5)
    if kind == "dropout":
        injected = at._dropout(quiet.copy(), rng, 30)[:60]
    elif kind == "drift":
        injected = at._drift(quiet[:60].copy(), rng)
    elif kind == "spike":
        injected = at._spike(quiet[:60].copy(), rng)
    else:
        injected = at._stuck(quiet[:60].copy(), rng)
    assert injected is not None
    assert not model.flags(model.score_window(at.readings(quiet[:60])))
    assert model.flags(model.score_window(at.readings(injected)))


def test_unusual_features_name_what_left_the_normal_range(model: an.AnomalyModel) -> None:
    rows = at.simulate(at.PlugSpec(21, 600, 1000, 2000.0, 0.0), 0.05)[:60].copy()
    assert model.unusual_features(an.window_features(at.readings(rows))) == []
    rows[10:50, 1] = rows[10, 1]
    unusual = model.unusual_features(an.window_features(at.readings(rows)))
    assert "flat_run_frac" in unusual
    assert "log2_gap_ratio" not in unusual


def test_a_plug_switched_off_is_not_an_anomaly(model: an.AnomalyModel) -> None:
    rows = at.simulate(at.PlugSpec(4, 60, 1000, 2000.0, 0.0), 0.05)[:60].copy()
    rows[:, 1] = 0.0  # relay open: 0 W, the energy counter stands still
    rows[:, 2] = rows[0, 2]
    assert not model.flags(model.score_window(at.readings(rows)))


def test_rolling_windows_with_the_real_model(model: an.AnomalyModel) -> None:
    rows = at.simulate(at.PlugSpec(21, 600, 1000, 2000.0, 0.0), 0.1)
    stuck = rows.copy()
    stuck[180:240, 1] = stuck[180, 1]
    windows = an.DeviceWindows(model)
    got = windows.add_many("plug-7", at.readings(stuck), limit_w=2000.0)
    assert [w.anomalous for w in got] == [False, False, False, True, False]
    assert got[3].model_sha256 == model.sha256
    assert got[3].model == f"anomaly@{model.version}"


# -- verification on load -------------------------------------------------------------


def test_tampered_model_bytes_are_refused(tmp_path: Path) -> None:
    manifest = copy_model(tmp_path)
    onnx_path = tmp_path / at.MODEL_FILE
    data = bytearray(onnx_path.read_bytes())
    data[len(data) // 2] ^= 0x01
    onnx_path.write_bytes(bytes(data))
    with pytest.raises(an.ModelError) as err:
        an.AnomalyModel.load(manifest)
    assert err.value.reason == "sha256_mismatch"
    assert "the manifest says" in str(err.value)


def test_truncated_model_is_refused(tmp_path: Path) -> None:
    manifest = copy_model(tmp_path)
    onnx_path = tmp_path / at.MODEL_FILE
    onnx_path.write_bytes(onnx_path.read_bytes()[:-10])
    with pytest.raises(an.ModelError) as err:
        an.AnomalyModel.load(manifest)
    assert err.value.reason == "size_mismatch"


def test_changed_weights_with_an_updated_sha256_fail_the_smoke_inference(
    tmp_path: Path,
) -> None:
    import onnx
    from onnx import numpy_helper

    manifest = copy_model(tmp_path)
    onnx_path = tmp_path / at.MODEL_FILE
    proto = onnx.load_from_string(onnx_path.read_bytes())
    for i, init in enumerate(proto.graph.initializer):
        if init.name == "b1":
            bumped = numpy_helper.to_array(init) + np.float32(30.0)
            proto.graph.initializer[i].CopyFrom(numpy_helper.from_array(bumped, "b1"))
    data = proto.SerializeToString()
    onnx_path.write_bytes(data)
    rewrite_manifest(manifest, sha256=an.sha256_hex(data), size=len(data))
    with pytest.raises(an.ModelError) as err:
        an.AnomalyModel.load(manifest)
    assert err.value.reason == "smoke_failed"


def test_bytes_that_are_not_onnx_are_refused(tmp_path: Path) -> None:
    manifest = copy_model(tmp_path)
    junk = b"not an onnx model" * 10
    (tmp_path / at.MODEL_FILE).write_bytes(junk)
    rewrite_manifest(manifest, sha256=an.sha256_hex(junk), size=len(junk))
    with pytest.raises(an.ModelError) as err:
        an.AnomalyModel.load(manifest)
    assert err.value.reason == "onnx_refused"


def test_missing_files_are_refused(tmp_path: Path) -> None:
    with pytest.raises(an.ModelError) as err:
        an.AnomalyModel.load(tmp_path / "nothing.json")
    assert err.value.reason == "no_manifest"
    manifest = copy_model(tmp_path)
    (tmp_path / at.MODEL_FILE).unlink()
    with pytest.raises(an.ModelError) as err:
        an.AnomalyModel.load(manifest)
    assert err.value.reason == "no_model"


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        ({"kind": "gguf"}, "bad_manifest"),
        ({"sha256": "abc"}, "bad_manifest"),
        ({"size": "12"}, "bad_manifest"),
        ({"threshold": 1.5}, "bad_manifest"),
        ({"file": "../anomaly.onnx"}, "bad_manifest"),
        ({"smoke": {"features": [[0.0] * an.N_FEATURES], "scores": []}}, "bad_manifest"),
        ({"model": {"envelope": {"low": [0.0]}}}, "bad_manifest"),
        ({"features": list(reversed(an.FEATURES))}, "feature_mismatch"),
        ({"feature_version": an.FEATURE_VERSION - 1}, "feature_mismatch"),
        ({"feature_version": "2"}, "bad_manifest"),
    ],
)
def test_invalid_manifests_are_refused(
    tmp_path: Path, changes: dict[str, Any], reason: str
) -> None:
    manifest = copy_model(tmp_path)
    rewrite_manifest(manifest, **changes)
    with pytest.raises(an.ModelError) as err:
        an.AnomalyModel.load(manifest)
    assert err.value.reason == reason


def test_manifest_that_is_not_json_is_refused(tmp_path: Path) -> None:
    manifest = copy_model(tmp_path)
    manifest.write_text("{not json")
    with pytest.raises(an.ModelError) as err:
        an.AnomalyModel.load(manifest)
    assert err.value.reason == "bad_manifest"


def test_from_bytes_checks_what_a_registry_received(model: an.AnomalyModel) -> None:
    data = (SHIPPED.parent / at.MODEL_FILE).read_bytes()
    loaded = an.AnomalyModel.from_bytes(data, model.manifest)
    assert loaded.sha256 == model.sha256
    with pytest.raises(an.ModelError, match="sha256_mismatch"):
        an.AnomalyModel.from_bytes(data[:-1] + b"\x00", model.manifest)


# -- training -------------------------------------------------------------------------


def test_training_is_deterministic(tmp_path: Path, small_training: at.Trained) -> None:
    again = at.train(tmp_path, seed=3, hours=4, val_hours=3, eval_hours=2, eval_seed=77)
    assert again.model_path.read_bytes() == small_training.model_path.read_bytes()
    first = {k: v for k, v in small_training.manifest.items() if k != "created"}
    second = {k: v for k, v in again.manifest.items() if k != "created"}
    assert first == second


def test_another_seed_gives_another_model(tmp_path: Path, small_training: at.Trained) -> None:
    other = at.train(tmp_path, seed=4, hours=4, val_hours=3, eval_hours=2, eval_seed=77)
    assert other.manifest["sha256"] != small_training.manifest["sha256"]


def test_same_seed_gives_the_same_data() -> None:
    a, b = at.dataset(12, 1, 0.3), at.dataset(12, 1, 0.3)
    assert np.array_equal(a.x, b.x)
    assert a.kinds == b.kinds
    assert not np.array_equal(a.x, at.dataset(13, 1, 0.3).x)


def test_trained_model_loads_and_its_manifest_holds_the_metrics(
    small_training: at.Trained,
) -> None:
    loaded = an.AnomalyModel.load(small_training.manifest_path)
    man = small_training.manifest
    assert loaded.sha256 == man["sha256"] == an.sha256_hex(small_training.model_path.read_bytes())
    assert man["size"] == small_training.model_path.stat().st_size
    held = man["metrics"]["heldout"]
    assert held["data"]["seed"] == 77
    assert 0.0 <= held["precision"] <= 1.0 and 0.0 <= held["recall"] <= 1.0


def test_onnx_scores_agree_with_scikit_learn() -> None:
    data = at.dataset(5, 4, at.TRAIN_ANOMALY_SHARE)
    fitted = at.fit(data.x, data.y, 5)
    manifest = an.Manifest.from_dict(
        {
            "name": "t",
            "kind": "onnx",
            "version": "0",
            "file": "t.onnx",
            "sha256": "0" * 64,
            "size": 0,
            "threshold": 0.5,
            "features": list(an.FEATURES),
            "feature_version": an.FEATURE_VERSION,
            "smoke": {"features": [[0.0] * an.N_FEATURES], "scores": [0.0]},
        }
    )
    onnx_model = an.AnomalyModel(an._session(at.export_onnx(fitted), 1), manifest)
    held_out = at.dataset(6, 2, at.ANOMALY_SHARE).x
    want = at.python_scores(fitted, held_out)
    got = onnx_model.score_batch(held_out)
    assert np.allclose(got, want, rtol=0.0, atol=1e-5)
    # Not a constant: the scores spread over the range.
    assert want.min() < 0.1 and want.max() > 0.9


def test_threshold_choice_and_metrics() -> None:
    scores = [0.1, 0.2, 0.35, 0.4, 0.8, 0.9]
    labels = [0, 0, 1, 0, 1, 1]
    # 0.35 flags 3 of 3 anomalies and 1 normal (F1 0.857); 0.8 only 2 (F1 0.8).
    assert at.best_threshold(scores, labels) == 0.35
    # On a tie of F1 the higher threshold wins.
    assert at.best_threshold([0.1, 0.3, 0.6, 0.9], [1, 0, 0, 1]) == 0.9
    m = at.metrics(scores, labels, 0.35)
    assert (m["tp"], m["fp"], m["fn"], m["tn"]) == (3, 1, 0, 2)
    assert m["precision"] == 0.75 and m["recall"] == 1.0
    with pytest.raises(at.TrainError):
        at.best_threshold([0.1, 0.2], [0, 0])


def test_evaluation_refuses_the_training_seeds() -> None:
    with pytest.raises(at.TrainError, match="training or validation seed"):
        at.evaluate(SHIPPED, seed=8, hours=1)
    with pytest.raises(at.TrainError, match="training or validation seed"):
        at.train(Path("/nonexistent"), seed=9000, hours=1, eval_seed=9001)


# -- the commands ---------------------------------------------------------------------


def cli() -> typer.Typer:
    app = typer.Typer()
    models_app, eval_app = typer.Typer(), typer.Typer()
    app.add_typer(models_app, name="models")
    app.add_typer(eval_app, name="eval")
    register_models(models_app)
    register_eval(eval_app)
    return app


def test_eval_anomaly_prints_one_json_object() -> None:
    out = CliRunner().invoke(cli(), ["eval", "anomaly", "--hours", "2", "--seed", "55", "--json"])
    assert out.exit_code == 0, out.output
    result = json.loads(out.stdout)
    for key in ("precision", "recall", "f1", "threshold", "n", "sha256"):
        assert key in result
    assert result["seed"] == 55


def test_eval_anomaly_text_output_and_refusals(tmp_path: Path) -> None:
    out = CliRunner().invoke(cli(), ["eval", "anomaly", "--hours", "1", "--seed", "56"])
    assert out.exit_code == 0, out.output
    assert "precision" in out.stdout and "recall" in out.stdout
    manifest = copy_model(tmp_path)
    (tmp_path / at.MODEL_FILE).write_bytes(b"x" * 10)
    bad = CliRunner().invoke(cli(), ["eval", "anomaly", "--model", str(manifest)])
    assert bad.exit_code == 2
    assert "size_mismatch" in bad.stderr


def test_train_anomaly_writes_model_and_manifest(tmp_path: Path) -> None:
    out = CliRunner().invoke(
        cli(), ["models", "train-anomaly", "--out", str(tmp_path), "--hours", "2", "--seed", "9"]
    )
    assert out.exit_code == 0, out.output
    assert "sha256" in out.stdout and "precision" in out.stdout
    model = an.AnomalyModel.load(tmp_path / at.MANIFEST_FILE)
    assert model.manifest.raw["model"]["seed"] == 9
