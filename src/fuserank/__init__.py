"""fuserank: a two-stage multimodal recommender (FAISS retrieval, LightGBM lambdarank re-ranking)."""

__version__ = "0.1.0"
