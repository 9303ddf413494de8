"""The error every tool raises when it cannot do its job.

    ToolError                  the message says what went wrong and what to do
      NotInstalled             a program the command needs is missing (tools/base/paths.py)
      BenchError, ClusterError, BrokerError, ChaosError, DemoError, ...
                               each tool's own, so callers can tell them apart

The `aiot` commands print a ToolError as one line on stderr, never a traceback
(tools/cli/output.py).
"""

from __future__ import annotations


class ToolError(RuntimeError):
    """A tool could not do its job; the message says what to install or fix."""
