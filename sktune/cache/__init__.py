"""The frozen-prefix cache: where to cut (split), what is kept (store), its use (prefix)."""

from .prefix import CachedRows, CacheKey, PrefixCache
from .split import NoCache, Split, StaticParts, WholeSplit
from .store import (
    STORE,
    FeatureStore,
    clear_cache,
    fingerprint,
    sample_digests,
    set_cache_budget,
)

__all__ = [
    "STORE",
    "CacheKey",
    "CachedRows",
    "FeatureStore",
    "NoCache",
    "PrefixCache",
    "Split",
    "StaticParts",
    "WholeSplit",
    "clear_cache",
    "fingerprint",
    "sample_digests",
    "set_cache_budget",
]
