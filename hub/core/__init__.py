"""The bottom layer: configuration and its validators, the clock, keys, files, logs."""
