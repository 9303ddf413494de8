"""The cloud's buckets for what flows down to the sites (docs/cloud.md):
signed model versions in an object store, policies and rule files in a
key-value bucket. `aiot cloud up` makes both; making them again is a no-op.
"""

from __future__ import annotations

import asyncio
from typing import Any, Final

from nats.js.api import KeyValueConfig, ObjectStoreConfig, StorageType

from protocol.cloud import MODELS_BUCKET, POLICIES_BUCKET, SITES_BUCKET
from tools.cloud.cluster import CloudError, Creds
from tools.cloud.status import connect

__all__ = ["ensure_buckets"]

# The key-value buckets: name, description, revisions kept per key.
_KEY_VALUES: Final = (
    (POLICIES_BUCKET, "signed policies and rule files for the sites", 16),
    (SITES_BUCKET, "each site's last report: what it runs, its export lag", 1),
)


async def _ensure(creds: Creds, replicas: int) -> list[str]:
    nc = await connect(creds)
    try:
        js: Any = nc.jetstream()
        await js.create_object_store(
            MODELS_BUCKET,
            ObjectStoreConfig(
                description="signed model versions (ONNX, GGUF adapters) for the sites",
                storage=StorageType.FILE,
                replicas=replicas,
            ),
        )
        for bucket, what, history in _KEY_VALUES:
            await js.create_key_value(
                KeyValueConfig(
                    bucket=bucket,
                    description=what,
                    history=history,
                    storage=StorageType.FILE,
                    replicas=replicas,
                )
            )
        return [MODELS_BUCKET, POLICIES_BUCKET, SITES_BUCKET]
    finally:
        await nc.close()


def ensure_buckets(creds: Creds, replicas: int, timeout: float = 30.0) -> list[str]:
    """Make the models object store and the policies bucket with ``replicas``."""
    try:
        return asyncio.run(asyncio.wait_for(_ensure(creds, replicas), timeout))
    except TimeoutError:
        raise CloudError(f"the cloud did not make its buckets within {timeout:.0f} s") from None
