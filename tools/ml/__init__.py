"""Training and evaluating models, and installing the local LLM."""
