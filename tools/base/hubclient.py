"""A client for one hub node's HTTP API (hub/http/api.py), for the `aiot` commands.

The node is found from its config file (its http address, and the cluster
secret to mint admin tokens with: a fresh one whenever the last has less
than REMINT_S left, so a long-running tool never holds an expired one), or
from a URL and a token (an admin token from `aiot token create`, or a user's
session token):

    client = HubClient.from_config(Path("hub.toml"))
    client = HubClient("https://10.0.0.5:8080", token, ca=Path("tls/ca.pem"))
    client.get("/v1/devices")

An https URL is checked against the cluster CA: the config's ``[tls] ca``,
``ca=``, or the file ``AIOT_CA`` names; without one, the system's CAs.

Errors come back as ``HubError`` with the message the hub gave (or why the
hub could not be reached) and the HTTP status, never a traceback.
"""

from __future__ import annotations

import os
import ssl
from collections.abc import Callable
from pathlib import Path
from typing import Any, Final

import httpx

from hub.core import auth, tls
from hub.core import config as hub_config
from hub.core.clock import wall_ms
from tools.base.errors import ToolError

WHICH_HUB: Final = (
    "which hub? give --config hub.toml, or --hub URL and --token "
    "(or AIOT_CONFIG, or AIOT_HUB and AIOT_TOKEN)"
)


class HubError(ToolError):
    """The hub refused the request (``status``: its HTTP status), or could
    not be reached (``status`` 0)."""

    def __init__(self, message: str, status: int = 0) -> None:
        super().__init__(message)
        self.status = status


REMINT_S: Final = 300


def node_url(cfg: hub_config.HubConfig) -> str:
    """A node's HTTP URL as this host reaches it (https with ``[tls]``)."""
    addr = cfg.http.address
    host = "127.0.0.1" if addr.host in ("0.0.0.0", "::") else addr.host
    return f"{cfg.scheme}://{host}:{addr.port}"


def node_endpoint(cfg: hub_config.HubConfig) -> tuple[str, str]:
    """A node's HTTP URL as this host reaches it, and a new admin token
    (auth.ADMIN_TTL_S) minted with the cluster secret."""
    return node_url(cfg), auth.admin_token(cfg.raft.secret)


class MintedToken:
    """Admin tokens minted with the cluster secret: the same one until it
    has less than REMINT_S left (or ``renew``), then a new one."""

    def __init__(self, secret: str, ttl_s: int = auth.ADMIN_TTL_S) -> None:
        self._secret = secret
        self._ttl_s = ttl_s
        self._token = ""
        self._expires_ms = 0

    def __call__(self) -> str:
        if self._expires_ms - wall_ms() < REMINT_S * 1000:
            self._token, claim = auth.mint_admin_token(self._secret, self._ttl_s)
            self._expires_ms = claim.expires_ms
        return self._token

    def renew(self) -> None:
        """Mint a new one next time (the last was refused: revoked by a cut-off)."""
        self._expires_ms = 0


def verify_for(ca: Path | None) -> ssl.SSLContext | bool:
    """What an https URL is checked against: the cluster CA when there is one
    (``[tls] ca`` of the config, or ``AIOT_CA``), else the system's CAs."""
    if ca is None and os.environ.get("AIOT_CA"):
        ca = Path(os.environ["AIOT_CA"])
    if ca is None:
        return True
    try:
        return tls.client_context(ca)
    except (OSError, ssl.SSLError) as exc:
        raise HubError(f"cannot use the CA {ca}: {exc}") from None


class HubClient:
    """Requests to one hub node's HTTP API with its admin (or a user's) token."""

    def __init__(
        self,
        url: str,
        token: str | Callable[[], str],  # a token, or what gives a valid one each time
        timeout: float = 15.0,
        ca: Path | None = None,
    ) -> None:
        self.url = url.rstrip("/")
        self._token = token
        self._ca = ca
        self._http = httpx.Client(
            base_url=self.url,
            headers={"Authorization": f"Bearer {self._current()}"},
            timeout=timeout,
            verify=verify_for(ca),
        )

    @classmethod
    def from_config(cls, path: Path, timeout: float = 15.0) -> HubClient:
        try:
            cfg = hub_config.load(path)
        except hub_config.ConfigError as exc:
            raise HubError(str(exc)) from None
        ca = cfg.tls.ca if cfg.tls.on else None
        return cls(node_url(cfg), MintedToken(cfg.raft.secret), timeout, ca)

    @classmethod
    def from_options(
        cls, config: Path | None, url: str | None, token: str | None, timeout: float = 15.0
    ) -> HubClient:
        """--config wins; then --hub/--token; then AIOT_CONFIG, AIOT_HUB and AIOT_TOKEN."""
        if config is None and not url and "AIOT_CONFIG" in os.environ:
            config = Path(os.environ["AIOT_CONFIG"])
        if config is not None:
            return cls.from_config(config, timeout)
        url = url or os.environ.get("AIOT_HUB")
        token = token or os.environ.get("AIOT_TOKEN")
        if not url or not token:
            raise HubError(WHICH_HUB)
        return cls(url, token, timeout)

    @property
    def ca(self) -> Path | None:
        """The CA this client pins (None: the system's, or plain http)."""
        return self._ca

    def at(self, address: str, timeout: float) -> HubClient:
        """A client for another node of the cluster (its http host:port), same token and CA."""
        scheme = self.url.split("://", 1)[0]
        return HubClient(f"{scheme}://{address}", self._token, timeout, self._ca)

    def _current(self) -> str:
        return self._token if isinstance(self._token, str) else self._token()

    def _send(self, method: str, path: str, **kw: Any) -> httpx.Response:
        if not isinstance(self._token, str):
            self._http.headers["Authorization"] = f"Bearer {self._current()}"
        try:
            return self._http.request(method, path, **kw)
        except httpx.HTTPError as exc:
            raise HubError(f"hub at {self.url} is not reachable: {exc}") from None

    def request(self, method: str, path: str, **kw: Any) -> Any:
        resp = self._send(method, path, **kw)
        if resp.status_code == 401 and isinstance(self._token, MintedToken):
            # A token minted before a revocation cut-off: a new one is after it.
            self._token.renew()
            resp = self._send(method, path, **kw)
        if resp.status_code >= 400:
            try:
                detail = resp.json().get("detail", resp.text)
            except ValueError:
                detail = resp.text
            if isinstance(detail, list):  # FastAPI's validation errors
                detail = "; ".join(
                    f"{'.'.join(str(x) for x in d.get('loc', ()))}: {d.get('msg')}" for d in detail
                )
            raise HubError(f"{resp.status_code}: {detail}", resp.status_code)
        return resp.json()

    def get(self, path: str, **params: Any) -> Any:
        return self.request("GET", path, params={k: v for k, v in params.items() if v is not None})

    def post(self, path: str, body: dict[str, Any]) -> Any:
        return self.request("POST", path, json=body)

    def delete(self, path: str) -> Any:
        return self.request("DELETE", path)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> HubClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
