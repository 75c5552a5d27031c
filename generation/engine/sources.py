"""Model sources: a Hub id, a local diffusers folder or a single-file checkpoint.

``resolve_source`` turns the string a ``ModelSpec`` (or a ControlNet entry) holds
into a ``ResolvedSource`` and refuses what must not be loaded, before any weights
are read:

- an absolute path, a path starting with ``~`` or ``.``, a name ending in
  ``.safetensors``, or a name that exists under a model root is a local path. It
  must resolve, symlinks followed, under one of ``EngineConfig.model_roots``
  (else ``SourceRefused``) and exist (else ``ModelNotFound``). A folder is a
  diffusers folder; a ``.safetensors`` file is a single-file checkpoint (pickled
  ``.ckpt`` files are refused: loading one runs arbitrary code);
- anything else is a Hugging Face Hub id. Offline (``EngineConfig.offline`` or
  ``HF_HUB_OFFLINE``), it must already be in the Hugging Face cache, and nothing
  is ever downloaded (``local_files_only``).

Single-file checkpoints carry weights but no component configs: those come from
``ModelSpec.config`` (a local diffusers folder or a Hub id), by default the
configs of the checkpoint's family (SD 1.5's or SDXL's base model, FLUX.1
Kontext [dev], recognised by the checkpoint's key names), resolved by the same
rules. A transformer family's single file is the transformer alone (as
``flux1-kontext-dev.safetensors`` is): the other components are the config
folder's own.

``model_traits`` tells a resolved model's family from its small files
(``families``); ``read_config`` and ``read_safetensors_header`` read a
ControlNet's config or an adapter's tensor names without loading weights.

``load_pipeline`` and ``load_controlnet`` open a resolved source through diffusers
(``model_loading`` turns loading errors into ``ModelNotFound``); ``fingerprint``
identifies the exact weights for the reproducibility snapshot (DESIGN.md
decision 8). File hashes are kept per process by (path, inode, size, mtime),
so a second fingerprint of unchanged files reads none of them.
"""

from __future__ import annotations

import enum
import hashlib
import json
import os
import re
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from generation.engine.config import EngineConfig, IPAdapterSpec
from generation.engine.errors import ModelNotFound, SourceRefused
from generation.engine.families import (
    DEFAULT_FAMILY,
    ModelTraits,
    UnknownFamily,
    controlnet_file_traits,
    family,
    file_safetensors_header,
    single_file_family,
    traits_from_configs,
)
from generation.engine.vocabulary import Denoiser, Quantization

if TYPE_CHECKING:
    import torch
    from diffusers import ControlNetModel, DiffusionPipeline

    from generation.engine.config import ControlNetSpec, ModelSpec

DEFAULT_SINGLE_FILE_CONFIG = DEFAULT_FAMILY.default_single_file_config
PIPELINE_CONFIG_FILE = "model_index.json"
MODEL_CONFIG_FILE = "config.json"
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")
_TRUE_VALUES = {"1", "on", "yes", "true"}


class SourceKind(enum.StrEnum):
    HUB = "hub"
    FOLDER = "folder"
    SINGLE_FILE = "single_file"


@dataclass(frozen=True)
class ResolvedSource:
    """A checked source: ``location`` is a Hub id or an absolute resolved path.

    ``config`` is the resolved architecture source of a single-file checkpoint.
    """

    kind: SourceKind
    location: str
    revision: str | None = None
    offline: bool = True
    config: ResolvedSource | None = None

    @property
    def is_local(self) -> bool:
        return self.kind is not SourceKind.HUB


def is_offline(config: EngineConfig) -> bool:
    """True when nothing may be downloaded: the config says so or HF_HUB_OFFLINE."""
    return config.offline or (
        os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in _TRUE_VALUES
    )


def resolve_source(
    source: str,
    config: EngineConfig,
    *,
    required_file: str = PIPELINE_CONFIG_FILE,
    revision: str | None = None,
    single_file: bool = False,
    single_file_config: str | None = None,
    download: Sequence[str] | None = None,
) -> ResolvedSource:
    """Check ``source`` and say how to load it; raise before reading any weights.

    ``required_file`` is the file a folder or Hub repo of this kind must hold
    (``model_index.json`` for a pipeline, ``config.json`` for a ControlNet, the
    weights file for an IP-Adapter). ``single_file`` allows a single-file
    checkpoint, whose component configs come from ``single_file_config``
    (a source holding ``required_file``; None: the family's, by its keys).
    ``download`` lists the files of a Hub repository that the ``hf download``
    command of an offline miss names (None: the whole repository).
    """
    offline = is_offline(config)
    path = _local_path(source, config)
    if path is None:
        return _resolve_hub(source, revision, offline, required_file, download)
    # The name as given, symlinks kept: a Hub-cache snapshot file is a link to a
    # blob named by its hash, without the suffix that says how to read it.
    named = Path(os.path.abspath(path))
    path = _inside_roots(path, config, source)
    if path.is_dir():
        if not (path / required_file).is_file():
            raise ModelNotFound(
                f"The folder {path} holds no {required_file}: it is not the kind "
                "of model folder expected here."
            )
        return ResolvedSource(SourceKind.FOLDER, str(path), revision, offline)
    if not single_file:
        raise SourceRefused(
            f"{path} is a file, but this model is loaded from a folder holding "
            f"{required_file} (or a Hub id)."
        )
    if named.suffix != ".safetensors":
        raise SourceRefused(
            f"{named} is not a .safetensors checkpoint. Only .safetensors single "
            "files are loaded: pickled .ckpt/.bin/.pt files can run arbitrary code."
        )
    # A single file where a config.json is expected is a ControlNet.
    controlnet = required_file == MODEL_CONFIG_FILE
    if single_file_config is None:
        single_file_config = (
            controlnet_file_traits(
                file_safetensors_header(path), str(named)
            ).family.default_controlnet_config
            if controlnet
            else single_file_family(path).default_single_file_config
        )
    architecture = resolve_source(
        single_file_config, config, required_file=required_file
    )
    # Loaded by its name (always read as safetensors, whatever it links to).
    return ResolvedSource(
        SourceKind.SINGLE_FILE, str(named), revision, offline, config=architecture
    )


def model_traits(
    source: ResolvedSource, *, declared: str | None = None, where: str = ""
) -> ModelTraits:
    """A resolved base model's family and cross-attention width, from its files.

    A folder or Hub snapshot is read through its ``model_index.json`` and UNet
    config; a single file through its key names, then its config source. A
    ``declared`` family (``ModelSpec.family``) must agree. Raises
    ``UnknownFamily`` with what was found.
    """
    where = where or source.location
    if source.kind is SourceKind.SINGLE_FILE:
        assert source.config is not None
        by_keys = single_file_family(Path(source.location))
        traits = model_traits(source.config, where=f"{where} (config)")
        if traits.family is not by_keys:
            raise UnknownFamily(
                f"{where} is a {by_keys.label} checkpoint (by its key names), but "
                f"its config {source.config.location} describes a "
                f"{traits.family.label} model ({traits.found}). Point the model's "
                "config at a folder or Hub id of the same family."
            )
    else:
        unet_config = None
        for denoiser in ("unet", "transformer"):
            unet_config = read_config(source, f"{denoiser}/{MODEL_CONFIG_FILE}")
            if unet_config is not None:
                break
        traits = traits_from_configs(
            read_config(source, PIPELINE_CONFIG_FILE), unet_config, where
        )
    if declared is not None and family(declared) is not traits.family:
        raise UnknownFamily(
            f"{where} is configured as {family(declared).label} but its files say "
            f"{traits.family.label} ({traits.found}). Correct the model's family "
            "or its source."
        )
    return traits


def read_config(source: ResolvedSource, filename: str) -> dict[str, Any] | None:
    """A JSON file of a folder or Hub repo (from the cache when offline), or None."""
    path = _local_or_cached_file(source, filename)
    if path is None:
        return None
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None


def read_safetensors_header(
    source: ResolvedSource, filename: str
) -> dict[str, Any] | None:
    """Tensor names, dtypes and shapes of a ``.safetensors`` file of a folder or
    Hub repo, reading only its header; None when it is absent."""
    path = _local_or_cached_file(source, filename)
    return None if path is None else file_safetensors_header(Path(path))


def model_folder(source: ResolvedSource) -> Path | None:
    """The folder of a diffusers model on this host: the folder itself, or the
    cached Hub snapshot (never downloaded); None for a single file or a model
    not in the cache."""
    if source.kind is SourceKind.FOLDER:
        return Path(source.location)
    if source.kind is SourceKind.HUB:
        cached = _cached_file(source, PIPELINE_CONFIG_FILE)
        return None if cached is None else Path(cached).parent
    return None


def _local_or_cached_file(source: ResolvedSource, filename: str) -> str | None:
    if source.kind is SourceKind.FOLDER:
        path = Path(source.location) / filename
        return str(path) if path.is_file() else None
    if source.kind is SourceKind.HUB:
        cached = _cached_file(source, filename)
        if cached is not None or source.offline:
            return cached
        from huggingface_hub import hf_hub_download
        from huggingface_hub.errors import EntryNotFoundError

        try:
            return hf_hub_download(source.location, filename, revision=source.revision)
        except EntryNotFoundError:
            return None
    return None


def load_pipeline(
    source: ResolvedSource,
    pipeline_class: type[DiffusionPipeline],
    dtype: torch.dtype,
    *,
    variant: str | None = None,
    **components: Any,
) -> DiffusionPipeline:
    """Load a pipeline from a resolved source, never downloading when offline.

    ``variant`` names the weight files' variant (``fp16``: a folder or Hub repo's
    ``*.fp16.safetensors``); ``components`` replace the pipeline's own
    (``safety_checker=None``, an external ``vae``).
    """
    with model_loading(source.location):
        if source.kind is SourceKind.SINGLE_FILE:
            assert source.config is not None
            row = single_file_family(Path(source.location))
            if row.denoiser is Denoiser.TRANSFORMER:
                return _pipeline_around_denoiser_file(
                    source, row.denoiser, pipeline_class, dtype, **components
                )
            return pipeline_class.from_single_file(
                source.location,
                config=source.config.location,
                dtype=dtype,
                local_files_only=source.offline,
                **components,
            )
        return pipeline_class.from_pretrained(
            source.location,
            revision=source.revision,
            dtype=dtype,
            local_files_only=source.offline,
            variant=variant,
            **components,
        )


def _pipeline_around_denoiser_file(
    source: ResolvedSource,
    denoiser: Denoiser,
    pipeline_class: type[DiffusionPipeline],
    dtype: torch.dtype,
    **components: Any,
) -> DiffusionPipeline:
    """A transformer family's single file holds the transformer alone: it is
    loaded by its class's ``from_single_file`` (which converts BFL's layout)
    with the config folder's ``transformer/config.json``, and the pipeline's
    other components come from that folder (diffusers' way for FLUX.1)."""
    import diffusers

    assert source.config is not None
    folder = source.config
    config = read_config(folder, f"{denoiser.value}/{MODEL_CONFIG_FILE}")
    if config is None:
        raise ModelNotFound(
            f"The config source {folder.location} of {source.location} holds no "
            f"{denoiser.value}/{MODEL_CONFIG_FILE}."
        )
    model = getattr(diffusers, config["_class_name"]).from_single_file(
        source.location,
        config=folder.location,
        subfolder=denoiser.value,
        dtype=dtype,
        local_files_only=source.offline,
    )
    return pipeline_class.from_pretrained(
        folder.location,
        revision=folder.revision,
        dtype=dtype,
        local_files_only=folder.offline,
        **{denoiser.value: model, **components},
    )


def resolve_controlnet(spec: ControlNetSpec, config: EngineConfig) -> ResolvedSource:
    """The checked source of a ControlNet entry: a folder or Hub id holding
    ``config.json``, or a single ``.safetensors`` file with its config source."""
    return resolve_source(
        spec.source,
        config,
        required_file=MODEL_CONFIG_FILE,
        revision=spec.revision,
        single_file=True,
        single_file_config=spec.config,
    )


def controlnet_traits_of(source: ResolvedSource, name: str) -> ModelTraits | None:
    """The family and width of a resolved ControlNet, from its config or (a
    single file) its tensor names; None when neither can be read here."""
    from generation.engine.families import controlnet_traits

    if source.kind is SourceKind.SINGLE_FILE:
        return controlnet_file_traits(
            file_safetensors_header(Path(source.location)), name
        )
    config = read_config(source, MODEL_CONFIG_FILE)
    return None if config is None else controlnet_traits(config, name)


def load_controlnet(
    source: ResolvedSource,
    dtype: torch.dtype,
    *,
    variant: str | None = None,
    class_name: str = "ControlNetModel",
) -> ControlNetModel:
    """Load a ControlNet from a resolved folder, Hub id or single file, as
    the family's ControlNet class (``Family.controlnet_class``).

    A single file is converted from the original layout by diffusers'
    ``from_single_file`` with the config of its ``config`` source.
    """
    import diffusers

    controlnet_cls = getattr(diffusers, class_name)
    with model_loading(source.location):
        if source.kind is SourceKind.SINGLE_FILE:
            assert source.config is not None
            return controlnet_cls.from_single_file(
                source.location,
                config=source.config.location,
                config_revision=source.config.revision,
                dtype=dtype,
                local_files_only=source.offline,
            )
        return controlnet_cls.from_pretrained(
            source.location,
            revision=source.revision,
            dtype=dtype,
            local_files_only=source.offline,
            variant=variant,
        )


def with_variant(fingerprinted: dict[str, Any], variant: str | None) -> dict[str, Any]:
    """A ``fingerprint`` with the variant that was loaded, when there is one
    (a folder's hash covers every variant's files; which ones ran is here)."""
    return (
        dict(fingerprinted)
        if variant is None
        else {**fingerprinted, "variant": variant}
    )


def resolve_model(spec: ModelSpec, config: EngineConfig) -> ResolvedSource:
    """The checked source of a base model (a single file allowed)."""
    return resolve_source(
        spec.source,
        config,
        revision=spec.revision,
        single_file=True,
        single_file_config=spec.config,
    )


def check_ip_adapter_file(
    source: ResolvedSource, filename: str, model: ModelTraits, model_key: str
) -> None:
    """Refuse (``FamilyMismatch``) an IP-Adapter weights file of a resolved
    source made for another width than the model's; reads its header only,
    and says nothing when the file is not here."""
    from generation.engine.families import check_ip_adapter_fits, ip_adapter_traits

    header = read_safetensors_header(source, filename)
    if header is not None:
        where = f"{filename} ({source.location})"
        check_ip_adapter_fits(model, ip_adapter_traits(header, where), model_key, where)


def model_fingerprint(
    spec: ModelSpec,
    config: EngineConfig,
    fingerprint_of: Callable[[ResolvedSource], dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """What identifies a base model's weights: its own ``fingerprint`` with its
    variant, and those of its external VAE and its refiner when it has them,
    and the quantization its weights are loaded with (a transformer family's,
    when ``config.quantization`` is on: other weights, other pixels).
    ``fingerprint_of`` may be a cached ``fingerprint`` (the registry's)."""
    fingerprint_of = fingerprint_of or fingerprint
    source = resolve_model(spec, config)
    result = with_variant(fingerprint_of(source), spec.variant)
    quantization = Quantization(config.quantization)
    if quantization is not Quantization.NONE and (
        model_traits(source, declared=spec.family).family.denoiser
        is Denoiser.TRANSFORMER
    ):
        result["quantization"] = quantization.value
    if spec.vae is not None:
        result["vae"] = fingerprint_of(
            resolve_source(spec.vae, config, required_file=MODEL_CONFIG_FILE)
        )
    if spec.refiner is not None:
        result["refiner"] = fingerprint_of(resolve_source(spec.refiner, config))
    return result


def load_vae(source: ResolvedSource, dtype: torch.dtype) -> Any:
    """Load an external VAE (``AutoencoderKL``) from a resolved folder or Hub id."""
    from diffusers import AutoencoderKL

    with model_loading(source.location):
        return AutoencoderKL.from_pretrained(
            source.location,
            revision=source.revision,
            dtype=dtype,
            local_files_only=source.offline,
        )


def fingerprint(source: ResolvedSource) -> dict[str, Any]:
    """What identifies these exact weights: the Hub commit, or a content hash.

    A local folder's hash covers every file in it (sorted relative paths and
    their bytes), so any change to weights or configs changes it.
    """
    result: dict[str, Any] = {
        "source": source.location,
        "kind": source.kind.value,
        "revision": source.revision,
    }
    if source.kind is SourceKind.HUB:
        result["commit"] = _hub_commit(source)
    else:
        result["sha256"] = content_sha256(Path(source.location))
    if source.config is not None:
        result["config"] = fingerprint(source.config)
    return result


def content_sha256(path: Path) -> str:
    """SHA-256 of a file, or of a folder's files with their relative paths."""
    if path.is_file():
        return _file_sha256(path)
    digest = hashlib.sha256()
    for file in sorted(p for p in path.rglob("*") if p.is_file()):
        relative = file.relative_to(path)
        if any(part.startswith(".") for part in relative.parts):
            continue  # download caches and editor files are not model content
        digest.update(relative.as_posix().encode() + b"\0")
        digest.update(_file_sha256(file).encode() + b"\n")
    return digest.hexdigest()


def _local_path(source: str, config: EngineConfig) -> Path | None:
    """The local path ``source`` names, or None when it is a Hub id."""
    if source.startswith(("/", "~", ".")) or source.endswith(
        (".safetensors", ".ckpt", ".bin", ".pt")
    ):
        path = Path(source).expanduser()
        if path.is_absolute():
            return path
        return _under_a_root(path, config) or path
    return _under_a_root(Path(source), config)


def _under_a_root(relative: Path, config: EngineConfig) -> Path | None:
    for root in config.model_roots:
        candidate = Path(root).expanduser() / relative
        if candidate.exists():
            return candidate
    return None


def _inside_roots(path: Path, config: EngineConfig, source: str) -> Path:
    """``path`` with symlinks resolved, provided it lies under a model root."""
    resolved = path.resolve()
    roots = [Path(root).expanduser().resolve() for root in config.model_roots]
    if not any(resolved.is_relative_to(root) for root in roots):
        allowed = ", ".join(str(root) for root in roots) or "none configured"
        raise SourceRefused(
            f"The model path {source!r} resolves to {resolved}, outside the "
            f"configured model roots ({allowed}). Move or link the model under a "
            "model root, or add its folder to the model roots."
        )
    if not resolved.exists():
        raise ModelNotFound(f"The model path {resolved} does not exist.")
    return resolved


def resolve_ip_adapter(
    spec: IPAdapterSpec, config: EngineConfig, weight_name: str | None = None
) -> ResolvedSource:
    """An IP-Adapter's checked source, holding ``weight_name`` (default: the
    plain adapter); an offline miss names the repository, its revision, the
    missing file and the command that downloads every file the adapter needs."""
    return resolve_source(
        spec.source,
        config,
        required_file=spec.weight_file(weight_name),
        revision=spec.revision,
        download=spec.files(),
    )


def _resolve_hub(
    repo_id: str,
    revision: str | None,
    offline: bool,
    required_file: str,
    download: Sequence[str] | None = None,
) -> ResolvedSource:
    if not _HUB_ID.match(repo_id):
        raise ModelNotFound(
            f"{repo_id!r} is neither a Hugging Face Hub id nor a path under the "
            "model roots."
        )
    source = ResolvedSource(SourceKind.HUB, repo_id, revision, offline)
    if offline and _cached_file(source, required_file) is None:
        from huggingface_hub import constants

        pinned = f" --revision {revision}" if revision else ""
        files = "".join(f" {name}" for name in download or ())
        raise ModelNotFound(
            f"{repo_id!r} at revision {revision or 'main'} is not in the Hugging "
            f"Face cache ({constants.HF_HUB_CACHE}): its file {required_file} is "
            "missing there, and the engine is offline, so nothing is downloaded. "
            f"Where there is network, run `hf download {repo_id}{files}{pinned}` "
            "with HF_HOME set to the cache you then copy to this host's HF_HOME "
            '(docs/models.md, "Fully offline"), or put a copy under a model root '
            "and use its path."
        )
    return source


def _cached_file(source: ResolvedSource, filename: str) -> str | None:
    from huggingface_hub import try_to_load_from_cache

    cached = try_to_load_from_cache(source.location, filename, revision=source.revision)
    return cached if isinstance(cached, str) else None


def _hub_commit(source: ResolvedSource) -> str | None:
    """The commit of the cached snapshot (``.../snapshots/<commit>/file``)."""
    for filename in (PIPELINE_CONFIG_FILE, MODEL_CONFIG_FILE):
        cached = _cached_file(source, filename)
        if cached is not None:
            return Path(cached).parent.name
    # A repo without a config at its root (h94/IP-Adapter): the cache's ref.
    from huggingface_hub import constants

    folder = "models--" + source.location.replace("/", "--")
    repo = Path(constants.HF_HUB_CACHE) / folder
    revision = source.revision or "main"
    if (repo / "snapshots" / revision).is_dir():
        return revision
    try:
        return (repo / "refs" / revision).read_text().strip() or None
    except OSError:
        return None


@contextmanager
def model_loading(location: str) -> Iterator[None]:
    """Turn a loader's "cannot find or read it" errors into ``ModelNotFound``."""
    try:
        yield
    except (OSError, ValueError) as error:
        raise ModelNotFound(
            f"Could not load the model {location!r}: {error}"
        ) from error


# (resolved path, inode, size, mtime in ns) -> SHA-256: a file read once stays
# hashed until it changes, so "regenerate exactly" does not read a multi-GB
# model per click. Writing a file changes its mtime; replacing it (a download
# renamed into place) its inode too.
_SHA256_CACHE: dict[tuple[str, int, int, int], str] = {}
_SHA256_CACHE_LOCK = threading.Lock()


def _file_sha256(path: Path) -> str:
    """SHA-256 of a file's bytes, cached by path, inode, size and mtime."""
    status = path.stat()
    key = (
        str(path.resolve()),
        status.st_ino,
        status.st_size,
        status.st_mtime_ns,
    )
    with _SHA256_CACHE_LOCK:
        cached = _SHA256_CACHE.get(key)
    if cached is not None:
        return cached
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        while chunk := stream.read(1 << 20):
            digest.update(chunk)
    with _SHA256_CACHE_LOCK:
        _SHA256_CACHE[key] = digest.hexdigest()
    return digest.hexdigest()
