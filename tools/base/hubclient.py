"""A client for one hub node's HTTP API (hub/http/api.py), for the `aiot` commands.

The node is found from its config file (its http address, and the admin
token derived from the cluster secret), or from a URL and a token:

    client = HubClient.from_config(Path("hub.toml"))
    client = HubClient("http://10.0.0.5:8080", token)
    client.get("/v1/devices")

Errors come back as ``HubError`` with the message the hub gave (or why the
hub could not be reached) and the HTTP status, never a traceback.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Final

import httpx

from hub.core import auth
from hub.core import config as hub_config
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


def node_endpoint(cfg: hub_config.HubConfig) -> tuple[str, str]:
    """A node's HTTP URL as this host reaches it, and its admin token."""
    addr = cfg.http.address
    host = "127.0.0.1" if addr.host in ("0.0.0.0", "::") else addr.host
    return f"http://{host}:{addr.port}", auth.admin_token(cfg.raft.secret)


class HubClient:
    """Requests to one hub node's HTTP API with its admin (or a user's) token."""

    def __init__(self, url: str, token: str, timeout: float = 15.0) -> None:
        self.url = url.rstrip("/")
        self._token = token
        self._http = httpx.Client(
            base_url=self.url,
            headers={"Authorization": f"Bearer {token}"},
            timeout=timeout,
        )

    @classmethod
    def from_config(cls, path: Path, timeout: float = 15.0) -> HubClient:
        try:
            cfg = hub_config.load(path)
        except hub_config.ConfigError as exc:
            raise HubError(str(exc)) from None
        return cls(*node_endpoint(cfg), timeout)

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

    def at(self, address: str, timeout: float) -> HubClient:
        """A client for another node of the cluster (its http host:port), same token."""
        return HubClient(f"http://{address}", self._token, timeout)

    def request(self, method: str, path: str, **kw: Any) -> Any:
        try:
            resp = self._http.request(method, path, **kw)
        except httpx.HTTPError as exc:
            raise HubError(f"hub at {self.url} is not reachable: {exc}") from None
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
