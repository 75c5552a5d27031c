"""Generation's system checks (``python manage.py check``), registered by
``GenerationConfig.ready()``: the worker class (DESIGN.md decision 3), the Redis
of the queues, and the configured models (decision 5).

- the worker class check runs on every ``manage.py`` command (it reads settings);
- the Redis and model checks are runtime checks (``check --deploy``, or only them
  with ``check --deploy --tag studio_runtime``); the model check alone has the tag
  ``studio_models``. A web host holds no model weights: it silences the model
  ids with ``SILENCED_SYSTEM_CHECKS``. A model must also have a detectable family
  (``sources.model_traits``) and its weight files, not only its configs.

The ids (``studio.*``, one list for the whole studio) are in docs/deployment.md.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

from django.conf import settings
from django.core import checks
from django.core.exceptions import ImproperlyConfigured
from django.utils.module_loading import import_string

from studio.checks import NETWORK_TIMEOUT_SECONDS, RUNTIME_TAG, error_reason

if TYPE_CHECKING:
    from generation.engine.config import EngineConfig

MODELS_TAG = "studio_models"
"""Tag of the model check alone: what a worker host needs and a web host lacks."""


def register() -> None:
    """Register generation's checks (called from ``GenerationConfig.ready``)."""
    checks.register(check_worker_class, "studio")
    checks.register(check_redis_reachable, RUNTIME_TAG, deploy=True)
    checks.register(check_models_available, RUNTIME_TAG, MODELS_TAG, deploy=True)


# --- Worker class (DESIGN.md decision 3) ------------------------------------


def check_worker_class(**kwargs: Any) -> list[checks.CheckMessage]:
    """A worker that forks per job loses the warm registry and cannot use CUDA."""
    from rq.worker import SimpleWorker

    path = getattr(settings, "RQ", {}).get("WORKER_CLASS")
    if path is None:
        return [
            checks.Warning(
                "django-rq has no RQ['WORKER_CLASS']: `manage.py rqworker` would "
                "start RQ's default Worker, which forks a process for every job.",
                hint="Set RQ = {'WORKER_CLASS': 'generation.worker.StudioWorker'} "
                "and start workers with `manage.py studio_worker`.",
                id="studio.W001",
            )
        ]
    try:
        worker_class = import_string(path) if isinstance(path, str) else path
    except ImportError as error:
        return [
            checks.Error(
                f"RQ['WORKER_CLASS'] {path!r} cannot be imported: "
                f"{error_reason(error)}",
                hint="Use 'generation.worker.StudioWorker'.",
                id="studio.E002",
            )
        ]
    if not (isinstance(worker_class, type) and issubclass(worker_class, SimpleWorker)):
        return [
            checks.Error(
                f"RQ['WORKER_CLASS'] {path!r} is not a SimpleWorker: it runs each "
                "job in a new process, so the loaded models die with every job and "
                "CUDA cannot be initialised in a forked child.",
                hint="Use 'generation.worker.StudioWorker' (built on rq's "
                "SimpleWorker), one process per GPU.",
                id="studio.E001",
            )
        ]
    return []


# --- Redis --------------------------------------------------------------------


def check_redis_reachable(**kwargs: Any) -> list[checks.CheckMessage]:
    """Every Redis server the RQ queues use answers a PING within the timeout."""
    import redis
    from django_rq.connection_utils import get_redis_connection

    messages: list[checks.CheckMessage] = []
    seen: set[str] = set()
    for queue, config in sorted(getattr(settings, "RQ_QUEUES", {}).items()):
        key = repr(sorted(config.items()))
        if key in seen:
            continue
        seen.add(key)
        connection = get_redis_connection(config)
        connection.connection_pool.connection_kwargs.update(
            socket_connect_timeout=NETWORK_TIMEOUT_SECONDS,
            socket_timeout=NETWORK_TIMEOUT_SECONDS,
        )
        try:
            connection.ping()
        except redis.RedisError as error:
            messages.append(_redis_down(queue, error))
        finally:
            connection.close()
    return messages


def _redis_down(queue: str, error: Exception) -> checks.CheckMessage:
    if getattr(settings, "STUDIO_EMBEDDED_REDIS", False):
        return checks.Warning(
            f"The studio's embedded Redis (queue {queue!r}) is not running: "
            f"{error_reason(error)}",
            hint="`make run` (or `manage.py studio_run`) starts it; "
            "or set REDIS_URL to a running Redis.",
            id="studio.W010",
        )
    return checks.Error(
        f"Redis for queue {queue!r} does not answer: {error_reason(error)}",
        hint="Check REDIS_URL (redis://host:6379/0), that the server runs and "
        "that this host may reach it; workers and web servers share one Redis.",
        id="studio.E010",
    )


# --- Models (DESIGN.md decision 5) ------------------------------------------------


def check_models_available(**kwargs: Any) -> list[checks.CheckMessage]:
    """Every configured model, ControlNet and IP-Adapter can be found offline."""
    from generation.engine.errors import EngineError
    from generation.engine_settings import (
        engine_config,
        tiny_model_dir,
        tiny_model_written,
        uses_tiny_model,
    )

    if uses_tiny_model() and not tiny_model_written():
        return [
            checks.Warning(
                f"No model is configured and the built-in tiny model is not "
                f"written yet in {tiny_model_dir()}.",
                hint="Run `manage.py studio_tiny_model` (`make run` does it), or "
                "configure real models with STUDIO_MODELS (docs/models.md).",
                id="studio.W020",
            )
        ]
    try:
        config = engine_config()
    except ImproperlyConfigured as error:  # a setting the engine names
        return [
            checks.Error(
                str(error),
                hint="docs/settings.md gives each setting's form.",
                id="studio.E022",
            )
        ]
    except (KeyError, TypeError, ValueError, AttributeError) as error:
        return [
            checks.Error(
                f"The model settings cannot be read: {error!r}.",
                hint="Compare STUDIO_MODELS, STUDIO_CONTROLNETS and "
                "STUDIO_IP_ADAPTER with the JSON examples in docs/models.md.",
                id="studio.E022",
            )
        ]
    messages: list[checks.CheckMessage] = []
    for what, resolve in _configured_sources(config):
        try:
            missing = resolve()
        except EngineError as error:
            messages.append(
                checks.Error(
                    f"{what} cannot be loaded: {error_reason(error)}",
                    hint="Download it, fix its path or its entry; docs/models.md "
                    "shows each layout and the offline set-up.",
                    id="studio.E020",
                )
            )
            continue
        if missing:
            messages.append(
                checks.Error(
                    f"{what} has its configs but not its weights: missing "
                    f"{', '.join(missing)}.",
                    hint="Download the weight files too (a download filtered to "
                    "*.json leaves only the configs); for fp16-only files set the "
                    "entry's variant (docs/models.md).",
                    id="studio.E020",
                )
            )
    annotators_dir = settings.STUDIO_ANNOTATORS_DIR
    if annotators_dir and not Path(annotators_dir).is_dir():
        messages.append(
            checks.Error(
                f"STUDIO_ANNOTATORS_DIR {annotators_dir} is not a folder.",
                hint="Download lllyasviel/Annotators into it (docs/models.md), or "
                "unset it to use the Hugging Face cache.",
                id="studio.E021",
            )
        )
    return messages


def _configured_sources(
    config: EngineConfig,
) -> Iterator[tuple[str, Callable[[], Any]]]:
    """(what, resolve) for each model the configuration names, resolved lazily."""
    from generation.engine.config import in_folder
    from generation.engine.sources import MODEL_CONFIG_FILE

    for key, spec in config.models.items():
        where = f"Model {key!r} ({spec.source})"
        yield where, partial(_check_model, config, spec, where)
        if spec.refiner is not None:
            where = f"The refiner of model {key!r} ({spec.refiner})"
            yield where, partial(_check_refiner, config, spec, where)
    # The engine-wide ControlNets and each model's own, each entry once.
    controlnets = {}
    for model_key in (None, *config.models):
        for control_type in config.controlnets_for(model_key):
            controlnet = config.controlnet_spec(control_type, model_key)
            controlnets[(control_type, controlnet)] = controlnet
    for (control_type, _), controlnet in sorted(
        controlnets.items(), key=lambda item: (item[0][0], item[1].source)
    ):
        yield (
            f"ControlNet {control_type!r} ({controlnet.source})",
            partial(_check_controlnet, config, controlnet),
        )
    adapters = {
        tuple(vars(adapter).items()): adapter
        for adapter in (
            config.ip_adapter,
            *(config.ip_adapter_for(key) for key in config.models),
        )
        if adapter is not None
    }
    for adapter in sorted(adapters.values(), key=lambda adapter: adapter.source):
        encoder_source = adapter.image_encoder_source or adapter.source
        for source, required_file in (
            (adapter.source, adapter.weight_file()),
            (adapter.source, adapter.weight_file(adapter.face_weight_name)),
            (
                encoder_source,
                in_folder(adapter.image_encoder_folder, MODEL_CONFIG_FILE),
            ),
        ):
            yield (
                f"IP-Adapter {required_file} ({source})",
                partial(_nothing_missing, adapter, config, required_file, source),
            )


# Components of a pipeline folder whose weights a generation loads.
WEIGHTED_COMPONENTS = frozenset(
    {"unet", "transformer", "vae", "text_encoder", "text_encoder_2"}
)
_WEIGHT_SUFFIXES = (
    ".safetensors",
    ".bin",
    ".safetensors.index.json",
    ".bin.index.json",
)


def _check_model(config: EngineConfig, spec: Any, where: str) -> list[str]:
    """Resolve a model, detect its family (``UnknownFamily`` with what was
    found), and list its weight files that are missing."""
    from generation.engine.plan import model_source
    from generation.engine.sources import SourceKind, model_traits

    source = model_source(spec, config)
    model_traits(source, declared=spec.family, where=where)
    if source.kind is SourceKind.SINGLE_FILE:
        return []
    return _missing_pipeline_weights(source, spec.variant)


def _check_refiner(config: EngineConfig, spec: Any, where: str) -> list[str]:
    """Resolve a model's refiner (a folder or Hub id of a pipeline), check that
    its family has one and that it is of the model's family, and list its
    weight files (of the model's variant, which it is loaded with) that are
    missing."""
    from generation.engine.families import FamilyMismatch, check_refiner_fits
    from generation.engine.plan import model_source
    from generation.engine.sources import model_traits, resolve_source

    model = model_traits(model_source(spec, config), declared=spec.family).family
    check_refiner_fits(model, spec.key)
    source = resolve_source(spec.refiner, config)
    found = model_traits(source, where=where).family
    if found is not model:
        raise FamilyMismatch(
            f"it is a {found.label} model; the model is {model.label}."
        )
    return _missing_pipeline_weights(source, spec.variant)


def _missing_pipeline_weights(source: Any, variant: str | None) -> list[str]:
    """The weight files a pipeline's folder (or Hub snapshot) lacks, one per
    weighted component of its ``model_index.json``."""
    from generation.engine.sources import PIPELINE_CONFIG_FILE, read_config

    folder = _source_folder(source, PIPELINE_CONFIG_FILE)
    index = read_config(source, PIPELINE_CONFIG_FILE) or {}
    components = sorted(
        name
        for name, entry in index.items()
        if name in WEIGHTED_COMPONENTS
        and isinstance(entry, list)
        and entry[-1:] != [None]
    )
    if folder is None:
        return []
    return [
        missing
        for name in components
        for missing in _missing_weights(folder / name, variant, name)
    ]


def _check_controlnet(config: EngineConfig, controlnet: Any) -> list[str]:
    """Resolve a ControlNet entry and list its weight file (of its variant) if
    it is missing; a single file is its weights."""
    from generation.engine.sources import (
        MODEL_CONFIG_FILE,
        SourceKind,
        resolve_controlnet,
    )

    resolved = resolve_controlnet(controlnet, config)
    if resolved.kind is SourceKind.SINGLE_FILE:
        return []
    folder = _source_folder(resolved, MODEL_CONFIG_FILE)
    if folder is None:
        return []
    return _missing_weights(folder, controlnet.variant, "")


def _nothing_missing(
    adapter: Any, config: EngineConfig, required_file: str, source: str
) -> list[str]:
    from generation.engine.sources import resolve_source

    resolve_source(
        source,
        config,
        required_file=required_file,
        revision=adapter.revision,
        download=adapter.files(),
    )
    return []


def _source_folder(source: Any, config_file: str) -> Path | None:
    """The local folder (a Hub cache snapshot for a Hub id) holding
    ``config_file``; None when it is not on this host."""
    from generation.engine.sources import _local_or_cached_file

    path = _local_or_cached_file(source, config_file)
    return None if path is None else Path(path).parent


def _missing_weights(folder: Path, variant: str | None, name: str) -> list[str]:
    """``[name/expected weight file]`` when ``folder`` holds no weight file (of
    ``variant``, when one is set); [] when it holds one."""
    files = [path.name for path in folder.iterdir()] if folder.is_dir() else []
    infix = f".{variant}." if variant else ""
    for file in files:
        if file.endswith(_WEIGHT_SUFFIXES) and (not infix or infix in file):
            return []
    stem = "model" if name.startswith("text_encoder") else "diffusion_pytorch_model"
    expected = f"{stem}{'.' + variant if variant else ''}.safetensors"
    return [f"{folder.parent.name + '/' if not name else ''}{folder.name}/{expected}"]
