"""Decisions: rules, the guard, the ONNX and LLM tiers, the model registry."""
