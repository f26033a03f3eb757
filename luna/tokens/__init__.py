"""Token exports: ``luna.tokens.open(DIR)`` reads one (:mod:`luna.tokens.reader`, which documents the layout);
``python -m luna.tokenize`` writes one (:mod:`luna.tokens.writer`, imported only when exporting)."""
from luna.tokens.reader import (  # noqa: F401 - the package's face
    CODEC_FILE,
    FAILED_FILE,
    FORMAT,
    MANIFEST_FILE,
    PLAN_FILE,
    SHARD_DIR,
    TokenSet,
    TokensError,
    open,
    shard_name,
)

__all__ = ["TokenSet", "TokensError", "open", "FORMAT", "shard_name"]
