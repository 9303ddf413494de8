"""`aiot chaos`: the fault-injection campaign."""
