"""Column names and polars schemas of every artifact handed between stages.

This module is the one data contract of fuserank (see DESIGN.md). Other modules refer to
columns through these constants, never through string literals of their own.
"""

from __future__ import annotations

import polars as pl

USER_ID = "user_id"
ITEM_ID = "item_id"
TIMESTAMP = "timestamp"
RATING = "rating"
TEXT = "text"
IMAGE_PATH = "image_path"
AUDIO_PATH = "audio_path"
VIDEO_PATH = "video_path"

SOURCE = "source"
RETRIEVAL_SCORE = "retrieval_score"
RETRIEVAL_RANK = "retrieval_rank"
LABEL = "label"
QUERY = "query"  # one lambdarank query of the ranker's training rows: user_id + "#<label cut-off>"

RANK = "rank"
SCORE = "score"
ARM = "arm"
RUN_ID = "run_id"
MODEL_VERSION = "model_version"

MODALITIES = ("text", "image", "audio", "video", "behaviour")
MEDIA_PATH_COLUMNS = (IMAGE_PATH, AUDIO_PATH, VIDEO_PATH)

# Required columns and their dtypes. Nullable columns may hold nulls; the others may not.
ITEMS = {ITEM_ID: pl.String, TEXT: pl.String}
ITEMS_OPTIONAL = {IMAGE_PATH: pl.String, AUDIO_PATH: pl.String, VIDEO_PATH: pl.String}
ITEMS_NULLABLE = (TEXT, IMAGE_PATH, AUDIO_PATH, VIDEO_PATH)

INTERACTIONS = {USER_ID: pl.String, ITEM_ID: pl.String, TIMESTAMP: pl.Int64, RATING: pl.Float64}
INTERACTIONS_NULLABLE = (RATING,)

# A cut-off's reference time per query (data/cutoffs.py): nothing after it counts for that user.
REF_TIME = "ref_time"
REF_TIMES = {USER_ID: pl.String, REF_TIME: pl.Int64}

CANDIDATES = {
    USER_ID: pl.String,
    ITEM_ID: pl.String,
    SOURCE: pl.String,
    RETRIEVAL_SCORE: pl.Float32,
    RETRIEVAL_RANK: pl.Int32,
}

RANKED_LIST = {USER_ID: pl.String, ITEM_ID: pl.String, RANK: pl.Int32, SCORE: pl.Float32}
AB_RANKED_LIST = {**RANKED_LIST, ARM: pl.String, RUN_ID: pl.String, MODEL_VERSION: pl.String}

# Export for A/B tests (jobs/arms.py): the ranked list plus a flag for users served the cold-start
# fallback, and each user's hash bucket and arm.
COLD_START = "cold_start"
BUCKET = "bucket"
EXPORT_LIST = {**AB_RANKED_LIST, COLD_START: pl.Boolean}
ASSIGNMENTS = {USER_ID: pl.String, BUCKET: pl.Int32, ARM: pl.String, COLD_START: pl.Boolean}


def has_column(modality: str) -> str:
    """Name of the per-item mask column saying whether `modality` could be encoded."""
    return f"has_{modality}"


def empty_frame(schema: dict[str, pl.DataType]) -> pl.DataFrame:
    """A zero-row frame with exactly `schema`."""
    return pl.DataFrame(schema=schema)
