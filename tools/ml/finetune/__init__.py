"""Fine-tuning the LLM tier's model on policy-following data (``aiot models finetune``).

- ``data``: the policy-data JSONL as the hub's own prompt tokens, answers to learn
- ``base``: the shipped GGUF as a torch model (transformers dequantizes it)
- ``train``: LoRA (peft) on the answer tokens, checkpoints, resume, determinism
- ``adapter``: the LoRA weights as a llama.cpp GGUF adapter (q/k rows permuted)
- ``evaluate``: held-out scenarios through llama.cpp with the adapter applied
- ``pipeline``: the whole run, its manifest and signature

Needs the ``finetune`` extra (torch, transformers, peft, gguf) and llama-cpp-python;
the hub never imports any of it.
"""
