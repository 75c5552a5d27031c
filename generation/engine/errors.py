"""Engine errors. Each carries a message written for a person.

``permanent`` errors (bad parameters, a missing model or weights file) must not be
retried; transient ones (out of memory, a lost connection) may be.
"""

from __future__ import annotations


class EngineError(Exception):
    """Base class: ``str(error)`` is the message shown to staff."""

    permanent = True
    code = "engine_error"


class InvalidRequest(EngineError):
    code = "invalid_request"


class InvalidConfiguration(EngineError):
    """A setting the engine cannot read; the message names it."""

    code = "invalid_configuration"


class ModelNotFound(EngineError):
    code = "model_not_found"


class MissingWeights(EngineError):
    """Annotator, ControlNet or adapter weights are absent; the message names the
    missing file and where to put it."""

    code = "missing_weights"


class SourceRefused(EngineError):
    """A source the studio will not load: a local model path outside the
    configured model roots, a pickled checkpoint, a file layout its loader
    cannot convert."""

    code = "source_refused"


class GenerationCancelled(EngineError):
    code = "cancelled"


class OutOfMemory(EngineError):
    """The device ran out of memory; retry with a smaller footprint."""

    permanent = False
    code = "out_of_memory"
