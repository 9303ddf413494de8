"""Policy-following data for the LLM tier: structured policies, their reference
interpreter, their words, and seeded train/test splits (docs/llm.md, "The data").

- ``model``: facts (``World``), conditions, rules, actions, ``decide`` (first match wins)
- ``facts``: a world as the sentences the hub's lower tiers state
- ``lexicon``, ``render``: the policy in words (layout families, exception styles, wordings)
- ``generate``, ``worlds``: seeded policies and worlds, shapes and their split
- ``dataset``: examples as scenario lines with the exact prompt, the splits, the manifest

The structure only makes and grades data: the hub never parses policy text.
"""
