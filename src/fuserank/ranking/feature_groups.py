"""Feature groups: which group a ranker feature belongs to, by the prefix of its name.

Importance plots and ablations group features by them, and `features.disabled_groups` and
`tune.feature_groups` name them. A module of its own, without imports, so that loading a config
can check those names without importing the feature code (FAISS, polars).
"""

# Prefix of the feature name -> group; the first matching prefix wins. A feature that matches
# none is in group "other".
GROUP_PREFIXES = {
    "llm_": "llm",
    "cos_llm": "llm",
    "has_llm": "llm",
    "cos_text": "text",
    "cos_behaviour": "behaviour",
    "cos_sequence": "sequence",
    "ease_": "behaviour",
    "cos_image": "image",
    "cos_audio": "audio",
    "cos_video": "video",
    "has_": "coverage",
    "fused_": "retrieval",
    "retrieval_": "retrieval",
    "from_": "retrieval",
    "item_": "popularity",
    "user_": "user",
    "seq_": "sequence",
}
GROUPS = tuple(sorted(set(GROUP_PREFIXES.values())))
