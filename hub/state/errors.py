"""The store's errors, and the reasons an entry is rejected at apply time.

The hierarchy (every error with a ``reason`` is a protocol.errors.ReasonError:
``reason`` is machine-readable, a metric label; ``detail`` is for people)::

    StoreError                 the store cannot do what was asked
    ├── Rejected(reason)       an entry invalid at apply time; apply never raises
    │                          it, it is carried by ApplyResult (reason, detail)
    ├── StoreFull              the LMDB map (or the disk) is full and apply may not
    │                          grow or wait (Store.set_full_policy); never skip
    │                          the entry instead: others applied it
    ├── SnapshotError(reason)  a snapshot stream that is truncated, corrupt or
    │                          foreign; the store is left as it was
    └── IncompatibleStore      LMDB written by another store format
    hub.state.entries.EntryError
                               entry bytes that do not decode; apply reports
                               them as rejected with the EntryError's reason
"""

from __future__ import annotations

from typing import Final

from hub.state import entries as e
from protocol.errors import ReasonError

APPLY_REASONS: Final = (
    "unknown_device",  # batch, presence, command or removal for an unregistered device
    "device_exists",  # registration of an id already registered with other fields
    "unknown_action",  # command action not in the device's capabilities
    "command_exists",  # command id already in the ledger with other fields
    "unknown_command",  # result or mark for a command id not in the ledger
    "wrong_device",  # result whose device differs from the command's
    "wrong_seq",  # result whose seq differs from the command's
    "deadline_not_passed",  # EXPIRED mark before the command's deadline
    "decision_exists",  # decision id already recorded with other content
    "unknown_decision",  # an alert acknowledgement for a decision not recorded
    "unknown_model_version",  # activation of a model version not registered (or other bytes)
    "model_version_exists",  # a version registered again with other content
    # invitations and conversations (hub/state/invites.py, hub/state/threads.py)
    "invite_exists",  # an invitation id already stored with other fields
    "unknown_invite",  # an acceptance of an invitation not stored (or pruned)
    "invite_used",  # an invitation accepted before (a link works once)
    "invite_expired",  # an acceptance at or past the invitation's expiry
    "user_exists",  # an invitation for (or accepted as) a name that is a user
    "unknown_user",  # a message in the thread of a name that is not a user
)
# Every reason a rejected ApplyResult can carry: apply's own and the decoder's.
REASONS: Final = APPLY_REASONS + e.REASONS


class StoreError(Exception):
    """The store cannot do what was asked."""


class Rejected(StoreError, ReasonError):
    """An entry that is invalid at apply time. It changes no state."""

    reasons = REASONS


class StoreFull(StoreError):
    """The LMDB map or the disk is full. Nothing of the failed apply call was written."""


class SnapshotError(StoreError, ReasonError):
    """A snapshot stream that cannot be installed."""


class IncompatibleStore(StoreError):
    """An LMDB file written by another store format."""
