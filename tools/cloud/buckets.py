"""The cloud's buckets for what flows down to the sites (docs/cloud.md):
signed model versions in an object store, policies and rule files in a
key-value bucket. `aiot cloud up` makes both; making them again is a no-op.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Awaitable, Callable
from typing import Any, Final

from nats.errors import NoRespondersError
from nats.js.api import KeyValueConfig, ObjectStoreConfig, StorageType
from nats.js.errors import APIError, ServiceUnavailableError

from protocol.cloud import MODELS_BUCKET, POLICIES_BUCKET, SITES_BUCKET
from tools.cloud.cluster import CloudError, Creds
from tools.cloud.status import connect

__all__ = ["ensure_buckets"]

# The key-value buckets: name, description, revisions kept per key.
_KEY_VALUES: Final = (
    (POLICIES_BUCKET, "signed policies and rule files for the sites", 16),
    (SITES_BUCKET, "each site's last report: what it runs, its export lag", 1),
)


# One JetStream API request: a loaded cluster placing three replicas can be
# slow to answer, so each create waits this long and is then tried again.
_REQUEST_S: Final = 10.0
# Between tries after a "temporarily unavailable" answer or a lost request.
_PAUSE_S: Final = 0.5


async def _retrying(what: str, create: Callable[[], Awaitable[Any]], errors: list[str]) -> None:
    """Run the idempotent ``create`` until it succeeds; the caller bounds the time.

    Making a bucket that exists with the same settings succeeds, so a request
    whose answer was lost (it timed out here but the server made the bucket)
    is simply made again. Errors other than a lost answer or a cluster that is
    not ready yet (503: no meta leader or no stream peers) are final."""
    while True:
        try:
            await create()
            return
        except (TimeoutError, ServiceUnavailableError, NoRespondersError) as exc:
            errors.append(f"{what}: {exc or type(exc).__name__}")
        except APIError as exc:
            if exc.code != 503:
                raise CloudError(f"the cloud refused to make {what}: {exc}") from None
            errors.append(f"{what}: {exc}")
        await asyncio.sleep(_PAUSE_S)


async def _ensure(creds: Creds, replicas: int, errors: list[str]) -> list[str]:
    nc = await connect(creds)
    try:
        js: Any = nc.jetstream(timeout=_REQUEST_S)
        await _retrying(
            MODELS_BUCKET,
            lambda: js.create_object_store(
                MODELS_BUCKET,
                ObjectStoreConfig(
                    description="signed model versions (ONNX, GGUF adapters) for the sites",
                    storage=StorageType.FILE,
                    replicas=replicas,
                ),
            ),
            errors,
        )
        for bucket, what, history in _KEY_VALUES:
            config = KeyValueConfig(
                bucket=bucket,
                description=what,
                history=history,
                storage=StorageType.FILE,
                replicas=replicas,
            )
            await _retrying(bucket, functools.partial(js.create_key_value, config), errors)
        return [MODELS_BUCKET, POLICIES_BUCKET, SITES_BUCKET]
    finally:
        await nc.close()


def ensure_buckets(creds: Creds, replicas: int, timeout: float = 90.0) -> list[str]:
    """Make the models object store and the policies and sites buckets with ``replicas``.

    Each create is tried again while the cluster answers late or says it is
    not ready, until ``timeout`` seconds have passed in all."""
    errors: list[str] = []
    try:
        return asyncio.run(asyncio.wait_for(_ensure(creds, replicas, errors), timeout))
    except TimeoutError:
        last = f"; last answer: {errors[-1]}" if errors else ""
        raise CloudError(
            f"the cloud did not make its buckets within {timeout:.0f} s "
            f"({len(errors)} tries went unanswered or were refused as not ready{last})"
        ) from None
