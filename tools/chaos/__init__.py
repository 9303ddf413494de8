"""`aiot chaos`: the fault-injection campaign (docs/chaos.md).

    schedule.py    every fault and command of a campaign, from the seed alone
    checks.py      the checks, pure functions over what was recorded
    votes.py       check V: no hub votes for two candidates in one term
    netns.py       one network namespace per hub, so that a partition cuts a link
    fleet.py       the hub cluster and the MicroPython devices as they run
    cloud.py       with --cloud: the site's JetStream cloud, its proxies, its copy
    injectors.py   each fault kind: how it is done, and how it is undone (power_cut
                   and disk_full on a lazy file system, tools/lab/lazyfs.py)
    gather.py      what the checks read once the campaign is over
    campaign.py    the campaign: set up, inject, record, check, tear down

Each module imports only modules listed above it.
"""

from __future__ import annotations

from tools.base.errors import ToolError


class ChaosError(ToolError):
    """The campaign could not run (set-up, not a finding)."""
