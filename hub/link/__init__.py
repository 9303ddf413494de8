"""Devices and brokers: MQTT brokers, ingest, command delivery, presence, events."""
