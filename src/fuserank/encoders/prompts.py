"""Every prompt the LLM sees, in one versioned place.

Each template has a version string that is part of the LLM cache key (encoders/llm.py): change a
template's wording and bump its version, and only the prompts of that template are recomputed.
A template is a function of plain strings; none of them receives an interaction frame, so what
reaches a prompt is decided by the caller (llm_features.py), which only ever hands in training
history.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

SYSTEM = "You are a concise assistant that helps a recommender system understand items and users."

ITEM_DESCRIPTION_VERSION = "item-description-v1"
USER_PROFILE_VERSION = "user-profile-v1"
RELEVANCE_VERSION = "relevance-v1"
HISTORY_TEXT_VERSION = "history-text-v1"
ITEM_TEXT_VERSION = "item-text-v1"

MAX_ITEM_CHARS = 200  # per item in any prompt, so one long catalog text cannot crowd out the rest
RELEVANCE_ANSWER = "Yes"


@dataclass(frozen=True)
class Prompt:
    """One chat turn for an instruction-tuned LLM.

    Attributes:
        version: the template's version string (part of the cache key).
        system: the system message.
        user: the user message.
    """

    version: str
    system: str
    user: str


def clip(text: str, limit: int = MAX_ITEM_CHARS) -> str:
    """`text` on one line, cut to `limit` characters."""
    flat = " ".join(str(text).split())
    return flat if len(flat) <= limit else flat[: limit - 3].rstrip() + "..."


def item_description(item_text: str) -> Prompt:
    """Ask for a short description with keywords of one item, from its thin text (title, year,
    genres and any catalog attributes)."""
    user = (
        f"Item: {clip(item_text)}\n"
        "Write one or two sentences describing this item (what it is about, its mood and style), "
        "then a line 'Keywords:' with five comma-separated keywords."
    )
    return Prompt(ITEM_DESCRIPTION_VERSION, SYSTEM, user)


def user_profile(history_items: Sequence[str]) -> Prompt:
    """Ask for a short interest profile of a user from the items the user interacted with
    (oldest first)."""
    listing = "\n".join(f"- {clip(t)}" for t in history_items)
    user = (
        f"A user liked these items, oldest first:\n{listing}\n"
        "Describe this user's tastes in two sentences: favourite genres, themes, eras and styles."
    )
    return Prompt(USER_PROFILE_VERSION, SYSTEM, user)


def relevance(history_items: Sequence[str], candidate: str) -> Prompt:
    """Ask whether a user with this history would like `candidate`; the score is the
    log-probability of RELEVANCE_ANSWER as the first answer token."""
    listing = "\n".join(f"- {clip(t)}" for t in history_items)
    user = (
        f"A user liked these items:\n{listing}\n"
        f"Would this user like: {clip(candidate)}? Answer Yes or No."
    )
    return Prompt(RELEVANCE_VERSION, SYSTEM, user)


def history_text(history_items: Sequence[str]) -> str:
    """Plain text of a user's history for the LLM's hidden-state embedding (no generation)."""
    return "; ".join(clip(t) for t in history_items)


def item_text(text: str) -> str:
    """Plain text of one item for the LLM's hidden-state embedding."""
    return clip(text)
