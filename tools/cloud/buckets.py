"""The cloud's buckets for what flows down to the sites (docs/cloud.md):
signed model versions in an object store, policies and rule files in a
key-value bucket. `aiot cloud up` makes both; making them again is a no-op.
"""

from __future__ import annotations

import asyncio
from typing import Any

from nats.js.api import KeyValueConfig, ObjectStoreConfig, StorageType

from tools.cloud.cluster import CloudError, Creds
from tools.cloud.status import connect
from tools.cloud.subjects import MODELS_BUCKET, POLICIES_BUCKET, SITES_BUCKET

__all__ = ["MODELS_BUCKET", "POLICIES_BUCKET", "ensure_buckets"]


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
        await js.create_key_value(
            KeyValueConfig(
                bucket=POLICIES_BUCKET,
                description="signed policies and rule files for the sites",
                history=16,
                storage=StorageType.FILE,
                replicas=replicas,
            )
        )
        await js.create_key_value(
            KeyValueConfig(
                bucket=SITES_BUCKET,
                description="each site's last report: what it runs, its export lag",
                history=1,
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
