"""Hub config: validators in valid/invalid pairs, and whole files."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from hub.core import config as c
from hub.core import validate as v
from hub.core.paths import SHIPPED_MODELS

pytestmark = pytest.mark.unit

SECRET = "s3cret-s3cret-s3cret"
GOOD = """
[node]
id = "hub-1"
data_dir = "data/hub-1"

[raft]
bind = "127.0.0.1:4321"
peers = ["127.0.0.1:4322", "127.0.0.1:4323"]
secret_env = "AIOT_TEST_SECRET"

[broker]
mode = "mosquitto"
bind = "127.0.0.1:1883"

[http]
bind = "127.0.0.1:8080"

[tls]
plain = true
"""


def write(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "hub.toml"
    path.write_text(body)
    return path


def load(tmp_path: Path, body: str, **env: str) -> c.HubConfig:
    return c.load(write(tmp_path, body), env={"AIOT_TEST_SECRET": SECRET, **env})


@pytest.mark.parametrize(
    ("value", "want"),
    [
        ("127.0.0.1:1883", c.Address("127.0.0.1", 1883)),
        ("hub-2.local:65535", c.Address("hub-2.local", 65535)),
        ("[::1]:1", c.Address("::1", 1)),
    ],
)
def test_address_valid(value: str, want: c.Address) -> None:
    assert v.address(value) == want


@pytest.mark.parametrize("value", ["localhost", "host:0", "host:65536", ":80", "a b:1", 80, None])
def test_address_invalid(value: object) -> None:
    with pytest.raises(ValueError, match="host:port"):
        v.address(value)


@pytest.mark.parametrize(
    ("value", "ok"), [(1, True), (10, True), (0, False), (11, False), (True, False), ("5", False)]
)
def test_int_range(value: object, ok: bool) -> None:
    check = v.int_range(1, 10)
    if ok:
        assert check(value) == value
    else:
        with pytest.raises(ValueError, match=r"1\.\.10"):
            check(value)


@pytest.mark.parametrize(
    ("value", "ok"),
    [
        ("mqtt://10.0.0.5:1883", True),
        ("mqtts://broker:8883", True),
        ("http://x:1", False),
        ("mqtt://x", False),
        ("mqtt://x:99999", False),
    ],
)
def test_mqtt_url(value: str, ok: bool) -> None:
    if ok:
        assert v.mqtt_url(value) == value
    else:
        with pytest.raises(ValueError):
            v.mqtt_url(value)


@pytest.mark.parametrize(
    ("value", "ok"),
    [
        (0, True),
        (2.5, True),
        (10, True),
        (-1, False),
        (10.5, False),
        (True, False),
        (math.nan, False),
        (math.inf, False),
        (10**400, False),
        ("5", False),
    ],
)
def test_number(value: object, ok: bool) -> None:
    check = v.number(0, 10)
    if ok:
        assert check(value) == float(value)
    else:
        with pytest.raises(ValueError, match=r"expected a number in 0\.\.10, got"):
            check(value)


@pytest.mark.parametrize(("value", "ms"), [(0, 0), (2.5, 2500), (60, 60_000), (0.0004, 0)])
def test_duration_ms_valid(value: float, ms: int) -> None:
    assert v.duration_ms(60)(value) == ms


@pytest.mark.parametrize("value", [-1, 61, math.nan, "10s", False])
def test_duration_ms_invalid(value: object) -> None:
    with pytest.raises(ValueError, match=r"number in 0\.\.60"):
        v.duration_ms(60)(value)


def test_nested_errors_name_the_item_and_the_key(tmp_path: Path) -> None:
    peers = v.list_of(v.address)
    assert peers(["a:1", "b:2"]) == (v.Address("a", 1), v.Address("b", 2))
    with pytest.raises(v.Invalid) as err:
        peers(["a:1", "nope"])
    assert err.value.path == (1,) and "host:port" in err.value.problem
    limits = v.table_of(v.list_of(v.int_range(0, 9)))
    assert limits({"x": [1, 2]}) == {"x": (1, 2)}
    table = v.Table(tmp_path / "f.toml", "t", {"limits": {"x": [1, 10]}}, ("limits",))
    with pytest.raises(c.ConfigError) as cerr:
        table.get("limits", limits)
    assert cerr.value.key == "t.limits.x[1]"
    assert (
        str(cerr.value)
        == f"{tmp_path / 'f.toml'}: t.limits.x[1]: expected an integer in 0..9, got 10"
    )


def test_schema_defaults_required_keys_and_tables_inside_values(tmp_path: Path) -> None:
    source = tmp_path / "f.toml"
    assert c.COMMANDS.load(source, "commands", None) == c.CommandsConfig()
    assert c.COMMANDS.load(source, "commands", {"retry_ms": 500}) == c.CommandsConfig(500)
    with pytest.raises(c.ConfigError) as err:
        c.NODE.load(source, "node", {"id": "hub-1"})
    assert (err.value.key, err.value.problem) == ("node.data_dir", "required key is missing")
    nodes = v.list_of(c.NODE)
    with pytest.raises(v.Invalid) as inner:
        nodes([{"id": "hub-1", "data_dir": "d"}, {"id": "hub-2", "dat_dir": "d"}])
    assert inner.value.path == (1, "dat_dir")
    assert "did you mean 'data_dir'" in inner.value.problem
    with pytest.raises(v.Invalid, match="expected a table, got 5") as not_table:
        nodes([5])
    assert not_table.value.path == (0,)


def test_paths_are_relative_to_the_file(tmp_path: Path) -> None:
    table = v.Table(tmp_path / "f.toml", "t", {"one": "a/b", "all": ["c", "/d"]}, ("one", "all"))
    assert table.get("one", v.path) == tmp_path / "a" / "b"
    assert table.get("all", v.list_of(v.path)) == (tmp_path / "c", Path("/d"))
    with pytest.raises(c.ConfigError, match=r"t\.one: expected a path, got ''"):
        v.Table(tmp_path / "f.toml", "t", {"one": ""}, ("one",)).get("one", v.path)


def test_good_file_with_defaults(tmp_path: Path) -> None:
    cfg = load(tmp_path, GOOD)
    assert cfg.node_id == "hub-1"
    assert cfg.data_dir == tmp_path / "data" / "hub-1"
    assert cfg.raft.bind == c.Address("127.0.0.1", 4321)
    assert cfg.raft.peers == (c.Address("127.0.0.1", 4322), c.Address("127.0.0.1", 4323))
    assert cfg.raft.secret == SECRET
    assert SECRET not in repr(cfg)
    assert cfg.broker.mode == "mosquitto" and cfg.http.bind.port == 8080
    assert (cfg.log.level, cfg.log.format) == ("info", "json")
    assert cfg.ingest == c.IngestConfig(5, 64, 262144, 16384)
    assert cfg.raft.snapshot_format == "image"


def test_snapshot_format_stream(tmp_path: Path) -> None:
    body = GOOD.replace(
        'secret_env = "AIOT_TEST_SECRET"',
        'secret_env = "AIOT_TEST_SECRET"\nsnapshot_format = "stream"',
    )
    assert load(tmp_path, body).raft.snapshot_format == "stream"


def test_secret_from_file(tmp_path: Path) -> None:
    (tmp_path / "cluster.secret").write_text(SECRET + "\n")
    body = GOOD.replace('secret_env = "AIOT_TEST_SECRET"', 'secret_file = "cluster.secret"')
    assert load(tmp_path, body).raft.secret == SECRET


@pytest.mark.parametrize(
    ("edit", "key", "message"),
    [
        (
            lambda s: s.replace('secret_env = "AIOT_TEST_SECRET"\n', ""),
            "raft.secret_file",
            "exactly one",
        ),
        (
            lambda s: s.replace(
                'secret_env = "AIOT_TEST_SECRET"',
                'secret_env = "AIOT_TEST_SECRET"\nsecret_file = "x"',
            ),
            "raft.secret_file",
            "exactly one",
        ),
        (
            lambda s: s.replace("AIOT_TEST_SECRET", "AIOT_UNSET_SECRET"),
            "raft.secret_env",
            "is not set",
        ),
        (
            lambda s: s.replace(
                'secret_env = "AIOT_TEST_SECRET"', 'secret_file = "missing.secret"'
            ),
            "raft.secret_file",
            "cannot read",
        ),
        (
            lambda s: s.replace('bind = "127.0.0.1:4321"', 'bind = "localhost"'),
            "raft.bind",
            "host:port",
        ),
        (
            lambda s: s.replace('"127.0.0.1:4322", ', '"127.0.0.1:4321", '),
            "raft.peers",
            "own address",
        ),
        (lambda s: s.replace('"127.0.0.1:4323"', '"127.0.0.1:4322"'), "raft.peers", "twice"),
        (lambda s: s.replace('"127.0.0.1:4323"', '"nope"'), "raft.peers[1]", "host:port"),
        (
            lambda s: s.replace(
                'secret_env = "AIOT_TEST_SECRET"',
                'secret_env = "AIOT_TEST_SECRET"\nsnapshot_format = "copy"',
            ),
            "raft.snapshot_format",
            "one of",
        ),
        (lambda s: s.replace('id = "hub-1"', 'id = "hub/1"'), "node.id", "A-Z a-z"),
        (lambda s: s.replace('data_dir = "data/hub-1"\n', ""), "node.data_dir", "required"),
        (lambda s: s.replace('mode = "mosquitto"', 'mode = "rabbit"'), "broker.mode", "one of"),
        (lambda s: s.replace('mode = "mosquitto"', 'mode = "external"'), "broker.bind", "not used"),
        (
            lambda s: s.replace('bind = "127.0.0.1:1883"', 'bind = "127.0.0.1:8080"'),
            "http.bind",
            "already used by broker.bind",
        ),
        (lambda s: s + '\n[log]\nlevel = "loud"\n', "log.level", "one of"),
        (lambda s: s + "\n[ingest]\nbatch_window_ms = -1\n", "ingest.batch_window_ms", "0..1000"),
        (
            lambda s: s + "\n[ingest]\nbatch_max_entrys = 5\n",
            "ingest.batch_max_entrys",
            "did you mean 'batch_max_entries'",
        ),
        (lambda s: s + "\n[brokr]\n", "brokr", "did you mean [broker]"),
        (
            lambda s: "http = 5\n" + s.replace('[http]\nbind = "127.0.0.1:8080"\n', ""),
            "http",
            "expected a table",
        ),
    ],
)
def test_bad_files_name_the_key(tmp_path: Path, edit: object, key: str, message: str) -> None:
    assert callable(edit)
    with pytest.raises(c.ConfigError) as err:
        load(tmp_path, edit(GOOD))
    assert err.value.key == key
    assert message in str(err.value)
    assert str(err.value).startswith(f"{tmp_path / 'hub.toml'}: {key}: ")


def test_short_secret_is_refused(tmp_path: Path) -> None:
    with pytest.raises(c.ConfigError, match="at least 16 bytes"):
        load(tmp_path, GOOD, AIOT_TEST_SECRET="short")


def test_external_broker_needs_a_url(tmp_path: Path) -> None:
    body = GOOD.replace('mode = "mosquitto"\nbind = "127.0.0.1:1883"', 'mode = "external"')
    with pytest.raises(c.ConfigError) as err:
        load(tmp_path, body)
    assert err.value.key == "broker.url"
    ok = body.replace('mode = "external"', 'mode = "external"\nurl = "mqtt://10.0.0.5:1883"')
    cfg = load(tmp_path, ok)
    assert cfg.broker == c.BrokerConfig("external", None, "mqtt://10.0.0.5:1883")


def test_unreadable_and_broken_files(tmp_path: Path) -> None:
    with pytest.raises(c.ConfigError, match="cannot read the file"):
        c.load(tmp_path / "missing.toml")
    with pytest.raises(c.ConfigError, match="not valid TOML") as err:
        c.load(write(tmp_path, "[node\nid = 1"))
    assert "line 1" in str(err.value)
    path = tmp_path / "bin.toml"
    path.write_bytes(b"\xff\xfe")
    with pytest.raises(c.ConfigError, match="not UTF-8"):
        c.load(path)


def test_shipped_models_default_beside_the_hub_package(tmp_path: Path) -> None:
    assert load(tmp_path, GOOD).models.shipped_dir == SHIPPED_MODELS


def test_shipped_models_folder_from_the_config(tmp_path: Path) -> None:
    (tmp_path / "share" / "models").mkdir(parents=True)
    cfg = load(tmp_path, GOOD + '\n[models]\nshipped_dir = "share/models"\n')
    assert cfg.models.shipped_dir == tmp_path / "share" / "models"
    absolute = load(tmp_path, GOOD + f'\n[models]\nshipped_dir = "{tmp_path}"\n')
    assert absolute.models.shipped_dir == tmp_path


@pytest.mark.parametrize(
    ("value", "problem"),
    [('"missing"', "missing is not a folder"), ('"hub.toml"', "is not a folder"), ("3", "a path")],
)
def test_shipped_models_folder_must_exist(tmp_path: Path, value: str, problem: str) -> None:
    with pytest.raises(c.ConfigError) as err:
        load(tmp_path, GOOD + f"\n[models]\nshipped_dir = {value}\n")
    assert err.value.key == "models.shipped_dir"
    assert problem in err.value.problem
    assert str(err.value).startswith(f"{tmp_path / 'hub.toml'}: models.shipped_dir: ")
