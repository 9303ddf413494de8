"""The HTTP API and the dashboard, over the small interface they need."""
