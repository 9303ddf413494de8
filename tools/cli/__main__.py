"""`python -m tools.cli`: the `aiot` command."""

from tools.cli import main

main()
