"""Moved: the model catalog is ``generation.engine.config.model_catalog``, read
from the settings by ``generation.engine_settings.configured_models``.

A temporary alias for callers not yet moved (``generation/gallery_selectors.py``);
remove it after the merge: ``studio/`` imports no app.
"""

from generation.engine_settings import (  # noqa: F401
    configured_models,
    default_model_key,
    model_choices,
)
