"""Checks for persona LoRA uploads: safetensors only, header verified.

Pickled weights (``.bin``, ``.ckpt``, ``.pt``...) are refused whatever they are
called, because loading them runs code. A safetensors file is 8 bytes of header
length, a JSON header and the tensor data; the header is parsed and checked the
way the safetensors library checks it (known dtypes, offsets inside the data,
tensors contiguous without overlap, sizes matching shapes, data size matching
the file) so that a lying header is refused here, not in a GPU worker.

The cost of the check is bounded before anything is parsed: a header longer
than ``STUDIO_MAX_LORA_HEADER_BYTES`` is refused from its 8-byte length alone,
and one describing more than ``STUDIO_MAX_LORA_TENSORS`` tensors is refused
before it is parsed. A sound file must then be a LoRA the pipelines can load:
float dtypes only, shapes no wider than any layer of the supported families,
and every key naming a layer in the kohya (``lora_unet_*``, ``lora_te*_*``) or
the diffusers/PEFT (``unet.*``, ``text_encoder*.*``, ``transformer.*``) style.

Rejection codes: ``empty``, ``too_large``, ``pickled``, ``extension_mismatch``,
``header_too_large``, ``too_many_tensors``, ``bad_header``, ``not_lora``,
``unsupported_dtype``, ``bad_shape``, ``unknown_layer``; and at save, against
the persona's base model (``check_lora_fits_base_model``), ``wrong_family``.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import struct
from pathlib import PurePosixPath
from typing import Any

from django.conf import settings
from django.core.files.base import File

from personas.uploads import UploadRejected, check_size, display_name

DTYPE_SIZES = {
    "BOOL": 1, "U8": 1, "I8": 1, "F8_E5M2": 1, "F8_E4M3": 1, "F8_E8M0": 1,
    "I16": 2, "U16": 2, "F16": 2, "BF16": 2,
    "I32": 4, "U32": 4, "F32": 4,
    "I64": 8, "U64": 8, "F64": 8,
}  # fmt: skip
# What diffusers loads LoRA weights as; integer, boolean and 8-bit float
# tensors (F8_E8M0 is a scale format, not weights) fail only at generation.
ALLOWED_DTYPES = frozenset({"F16", "BF16", "F32"})
PICKLE_EXTENSIONS = frozenset({".bin", ".ckpt", ".pt", ".pth", ".pkl", ".pickle"})
# No layer of a supported family is wider than 21,504 (Flux's fused single
# block projection, 3 x 3072 + 12288); a LoRA matrix is rank x width, a conv
# LoRA rank x width x kernel x kernel.
MAX_TENSOR_DIMENSION = 32_768
MAX_TENSOR_DIMENSIONS = 4
PICKLE_REASON = "loading pickled weights runs code; convert to .safetensors"
TENSOR_KEYS = frozenset({"dtype", "shape", "data_offsets"})

# The blocks each model part starts with, in diffusers names and in the
# original (LDM, BFL) names kohya's scripts use.
_UNET_BLOCKS = (
    "down_blocks", "mid_block", "up_blocks", "conv_in", "conv_out",
    "time_embedding", "add_embedding", "input_blocks", "middle_block",
    "output_blocks", "time_embed", "label_emb",
)  # fmt: skip
_TEXT_ENCODER_BLOCKS = ("text_model", "encoder", "shared", "model", "transformer")
_TRANSFORMER_BLOCKS = (
    "transformer_blocks", "single_transformer_blocks", "x_embedder",
    "context_embedder", "time_text_embed", "norm_out", "proj_out", "img_in",
    "txt_in", "double_blocks", "single_blocks", "final_layer", "time_in",
    "vector_in", "guidance_in", "img_mlp", "txt_mlp", "txt_norm",
)  # fmt: skip
_PARTS = {
    "unet": _UNET_BLOCKS,
    "text_encoder": _TEXT_ENCODER_BLOCKS,
    "text_encoder_2": _TEXT_ENCODER_BLOCKS,
    "text_encoder_3": _TEXT_ENCODER_BLOCKS,
    "transformer": _TRANSFORMER_BLOCKS,
    "diffusion_model": _TRANSFORMER_BLOCKS + _UNET_BLOCKS,
}
_KOHYA_PARTS = {
    "unet": _UNET_BLOCKS + _TRANSFORMER_BLOCKS,
    "te": _TEXT_ENCODER_BLOCKS,
    "te1": _TEXT_ENCODER_BLOCKS,
    "te2": _TEXT_ENCODER_BLOCKS,
    "te3": _TEXT_ENCODER_BLOCKS,
    "transformer": _TRANSFORMER_BLOCKS,
}
# The LoRA part of a key: LoRA, LoCon and DoRA in either naming.
_LORA_SUFFIX = (
    r"(?:lora_(?:down|up|mid)\.weight|lora_[AB]\.weight|lora\.(?:down|up)\.weight"
    r"|alpha|dora_scale|lora_magnitude_vector)"
)
_DIFFUSERS_KEY = re.compile(
    rf"(?:base_model\.model\.)?(?P<part>{'|'.join(_PARTS)})\."
    rf"(?P<path>[A-Za-z0-9_.]+?)\.{_LORA_SUFFIX}"
)
_KOHYA_KEY = re.compile(
    rf"lora_(?P<part>{'|'.join(_KOHYA_PARTS)})_(?P<path>[A-Za-z0-9_]+?)\.{_LORA_SUFFIX}"
)


class ValidatedLora(File):
    """An accepted LoRA upload, with its SHA-256 and tensor count."""

    def __init__(
        self,
        file: File,
        *,
        name: str,
        sha256: str,
        tensor_count: int,
        header: dict[str, Any] | None = None,
    ):
        super().__init__(file, name=name)
        self.sha256 = sha256
        self.tensor_count = tensor_count
        # The safetensors header's tensor entries (names, dtypes, shapes).
        self.header = header or {}


class _BadHeader(Exception):
    """The safetensors header lies or is malformed; the text says how."""


def validate_lora_upload(file: File, *, name: str = "") -> ValidatedLora:
    """Check uploaded LoRA weights; raise UploadRejected unless they are sound.

    A ValidatedLora is returned unchanged. The file is read in chunks: only its
    header is held in memory.
    """
    if isinstance(file, ValidatedLora):
        return file
    name = display_name(name or file.name)
    size = file.size
    check_size(size, name=name, limit=settings.STUDIO_MAX_LORA_BYTES)
    file.seek(0)
    head = file.read(8)
    extension = PurePosixPath(name).suffix.lower()
    _refuse_pickles(head, extension, name)
    if extension != ".safetensors":
        raise UploadRejected(
            '"%(name)s" is not a .safetensors file: export the LoRA weights as '
            ".safetensors and upload that.",
            code="extension_mismatch",
            params={"name": name},
        )
    try:
        header = _check_header(file, head, size, name)
    except _BadHeader as problem:
        raise UploadRejected(
            '"%(name)s" is not a valid safetensors file: %(problem)s. Save the '
            "weights again with safetensors and upload the new file.",
            code="bad_header",
            params={"name": name, "problem": problem},
        ) from None
    tensor_names = list(header)
    if not any("lora" in tensor_name.lower() for tensor_name in tensor_names):
        raise UploadRejected(
            '"%(name)s" holds %(count)s tensors but none of them is a LoRA weight '
            '(no name contains "lora"): upload LoRA weights, not a full model.',
            code="not_lora",
            params={"name": name, "count": len(tensor_names)},
        )
    _check_tensors(header, name)
    sha256 = hashlib.sha256()
    for chunk in file.chunks():
        sha256.update(chunk)
    return ValidatedLora(
        file,
        name=name,
        sha256=sha256.hexdigest(),
        tensor_count=len(tensor_names),
        header=header,
    )


# ``ModelTraits.found`` of a base model known only by its declared family.
DECLARED = "the family its entry declares (its files are not on this host)"


def check_lora_fits_base_model(lora: ValidatedLora, base_model: str) -> None:
    """Refuse (``wrong_family``) a LoRA made for another family or
    cross-attention width than the base model ``base_model``, with the engine's
    reason (``families.check_lora_fits``). A base model whose files are not on
    this host and that declares no family cannot be checked here: the system
    check (``check --tag studio_models``) reports it."""
    from generation.engine.families import (
        FamilyMismatch,
        ModelTraits,
        check_lora_fits,
        lora_traits,
    )

    traits = base_model_traits(base_model)
    if traits is None:
        return
    if traits.found == DECLARED:
        # Without the model's files its width is not known: the family alone.
        width = lora_traits(lora.header)[1] or traits.cross_attention_dim
        traits = ModelTraits(traits.family, width, DECLARED)
    try:
        check_lora_fits(traits, lora.header, base_model, lora.name)
    except FamilyMismatch as error:
        raise UploadRejected(
            "%(reason)s", code="wrong_family", params={"reason": str(error)}
        ) from None
    check_lora_layers(lora, base_model)


def check_lora_layers(lora: ValidatedLora, base_model: str) -> None:
    """Refuse (``unknown_layer``, ``bad_shape``) a LoRA with a key that names
    no layer of the base model or a factor whose shape does not fit its layer
    (``generation.engine.lora_layers``, from the model's weight headers). A
    model whose files are not on this host, or a single-file checkpoint, has no
    table here: its keys were checked by block name only."""
    from generation.engine.lora_layers import layer_table, lora_layer_problem
    from generation.engine.sources import model_folder

    source = _base_model_source(base_model)
    folder = None if source is None else model_folder(source)
    table = None if folder is None else layer_table(folder)
    if table is None:
        return
    mismatch = lora_layer_problem(lora.header, table)
    if mismatch is not None:
        raise UploadRejected(
            '"%(name)s" does not fit model %(model)s: %(problem)s. Upload a LoRA '
            "trained for this base model.",
            code=mismatch.code,
            params={
                "name": lora.name,
                "model": repr(base_model),
                "problem": mismatch.reason,
            },
        )


def base_model_traits(key: str) -> Any:
    """The ``families.ModelTraits`` of a configured base model, from its files
    (as ``generation.engine_settings.model_family`` reads them) or, without
    them, from the family its entry declares; None when neither tells.
    ``UnknownFamily`` for files of no served family."""
    from generation.engine.config import engine_config_from_settings
    from generation.engine.errors import ModelNotFound, SourceRefused
    from generation.engine.families import ModelTraits, family
    from generation.engine.sources import model_traits

    config = engine_config_from_settings(settings)
    spec = config.models.get(key)
    if spec is None:
        return None
    try:
        source = _base_model_source(key, config)
    except (ModelNotFound, SourceRefused):
        if spec.family is None:
            return None
        declared = family(spec.family)
        return ModelTraits(declared, declared.cross_attention_dim, DECLARED)
    where = f"Model {key!r} ({spec.source})"
    return model_traits(source, declared=spec.family, where=where)


def _base_model_source(key: str, config: Any = None) -> Any:
    """The resolved source of a configured base model (``ModelNotFound`` or
    ``SourceRefused`` when it cannot be used here; None when it is not
    configured, or, without ``config`` given, for either of those)."""
    from generation.engine.config import engine_config_from_settings
    from generation.engine.errors import ModelNotFound, SourceRefused
    from generation.engine.sources import resolve_model

    given = config is not None
    config = config or engine_config_from_settings(settings)
    spec = config.models.get(key)
    if spec is None:
        return None
    try:
        return resolve_model(spec, config)
    except (ModelNotFound, SourceRefused):
        if given:
            raise
        return None


def _refuse_pickles(head: bytes, extension: str, name: str) -> None:
    if head.startswith(b"PK\x03\x04"):
        found = "a ZIP archive, the way PyTorch saves pickled weights"
    elif head[:1] == b"\x80" and head[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05"):
        found = "pickled Python data"
    elif extension in PICKLE_EXTENSIONS:
        found = f"named {extension}, the extension of pickled weights"
    else:
        return
    raise UploadRejected(
        '"%(name)s" is %(found)s: %(reason)s.',
        code="pickled",
        params={"name": name, "found": found, "reason": PICKLE_REASON},
    )


def _check_header(
    file: File, head: bytes, size: int, name: str
) -> dict[str, dict[str, Any]]:
    """Parse and check the header; return its tensor entries by name."""
    if len(head) < 8:
        raise _BadHeader("it is too short to hold a header")
    (header_length,) = struct.unpack("<Q", head)
    if header_length < 2 or header_length > size - 8:
        raise _BadHeader(
            f"its header length ({header_length:,} bytes) runs past the end of "
            f"the file ({size:,} bytes)"
        )
    header_limit = settings.STUDIO_MAX_LORA_HEADER_BYTES
    if header_length > header_limit:
        raise UploadRejected(
            '"%(name)s" has a %(length)s header, more than the %(limit)s the studio '
            "reads (STUDIO_MAX_LORA_HEADER_BYTES); a LoRA's header is a few hundred "
            "KB: save the LoRA again with safetensors and upload that.",
            code="header_too_large",
            params={
                "name": name,
                "length": _bytes_text(header_length),
                "limit": _bytes_text(header_limit),
            },
        )
    raw_header = file.read(header_length)
    # Every tensor entry names its offsets once: counting them bounds the parse.
    described = raw_header.count(b'"data_offsets"')
    tensor_limit = settings.STUDIO_MAX_LORA_TENSORS
    if described > tensor_limit:
        raise UploadRejected(
            '"%(name)s" describes %(count)s tensors, more than the %(limit)s the '
            "studio accepts in a LoRA (STUDIO_MAX_LORA_TENSORS): upload the LoRA "
            "weights alone.",
            code="too_many_tensors",
            params={
                "name": name,
                "count": f"{described:,}",
                "limit": f"{tensor_limit:,}",
            },
        )
    try:
        header = json.loads(raw_header.decode("utf-8"), object_pairs_hook=_unique_keys)
    except (UnicodeDecodeError, ValueError, RecursionError) as error:
        raise _BadHeader(f"its header is not valid JSON ({error})") from None
    if not isinstance(header, dict):
        raise _BadHeader("its header is not a JSON object")
    metadata = header.pop("__metadata__", {})
    if not isinstance(metadata, dict) or not all(
        isinstance(value, str) for value in metadata.values()
    ):
        raise _BadHeader("its __metadata__ is not a mapping of strings")
    if not header:
        raise _BadHeader("it holds no tensors")
    spans = sorted(
        (_tensor_span(tensor_name, entry), tensor_name)
        for tensor_name, entry in header.items()
    )
    data_size = size - 8 - header_length
    previous_end, previous_name = 0, None
    for (start, end), tensor_name in spans:
        if start < previous_end:
            raise _BadHeader(f"tensors {previous_name!r} and {tensor_name!r} overlap")
        if start > previous_end:
            raise _BadHeader(f"there is a gap before tensor {tensor_name!r}")
        previous_end, previous_name = end, tensor_name
    if previous_end != data_size:
        raise _BadHeader(
            f"its header describes {previous_end:,} bytes of tensor data but the "
            f"file holds {data_size:,}"
        )
    return header


def _bytes_text(size: int) -> str:
    megabyte = 1024 * 1024
    return f"{size / megabyte:,.1f} MB" if size >= megabyte else f"{size:,} bytes"


def _check_tensors(header: dict[str, dict[str, Any]], name: str) -> None:
    """Refuse what the pipelines cannot load: dtypes, shapes, unknown layers."""
    for tensor_name, entry in header.items():
        shown = tensor_name[:120]
        if entry["dtype"] not in ALLOWED_DTYPES:
            raise UploadRejected(
                '"%(name)s" holds the tensor "%(tensor)s" in %(dtype)s; LoRA '
                "weights must be %(allowed)s: save the LoRA again in float16 and "
                "upload that.",
                code="unsupported_dtype",
                params={
                    "name": name,
                    "tensor": shown,
                    "dtype": entry["dtype"],
                    "allowed": ", ".join(sorted(ALLOWED_DTYPES)),
                },
            )
        shape = entry["shape"]
        if len(shape) > MAX_TENSOR_DIMENSIONS or any(
            dimension > MAX_TENSOR_DIMENSION for dimension in shape
        ):
            raise UploadRejected(
                '"%(name)s" holds the tensor "%(tensor)s" of shape %(shape)s; no '
                "layer of the studio's model families is wider than %(limit)s or "
                "has more than %(dimensions)s dimensions: upload a LoRA made for "
                "one of them.",
                code="bad_shape",
                params={
                    "name": name,
                    "tensor": shown,
                    "shape": "x".join(str(dimension) for dimension in shape[:8]),
                    "limit": f"{MAX_TENSOR_DIMENSION:,}",
                    "dimensions": MAX_TENSOR_DIMENSIONS,
                },
            )
        if not names_a_layer(tensor_name):
            raise UploadRejected(
                '"%(name)s" holds the tensor "%(tensor)s", which names no layer a '
                "LoRA can change (kohya lora_unet_.../lora_te_... or diffusers "
                "unet.../text_encoder.../transformer... keys ending in lora_A, "
                "lora_B, lora_down, lora_up or alpha): export the LoRA again in "
                "one of those formats.",
                code="unknown_layer",
                params={"name": name, "tensor": shown},
            )


def names_a_layer(tensor_name: str) -> bool:
    """Whether ``tensor_name`` is a LoRA weight of a layer of a known model
    part, in the kohya or the diffusers/PEFT naming."""
    for pattern, parts, separator in (
        (_DIFFUSERS_KEY, _PARTS, "."),
        (_KOHYA_KEY, _KOHYA_PARTS, "_"),
    ):
        found = pattern.fullmatch(tensor_name)
        if found is not None:
            path = found["path"]
            return any(
                path == block or path.startswith(block + separator)
                for block in parts[found["part"]]
            )
    return False


def _tensor_span(tensor_name: str, entry: Any) -> tuple[int, int]:
    """Check one tensor entry; return its data offsets."""
    if not isinstance(entry, dict) or set(entry) != TENSOR_KEYS:
        raise _BadHeader(f"tensor {tensor_name!r} is not described correctly")
    dtype, shape, offsets = entry["dtype"], entry["shape"], entry["data_offsets"]
    if dtype not in DTYPE_SIZES:
        raise _BadHeader(f"tensor {tensor_name!r} has an unknown dtype {dtype!r}")
    if not isinstance(shape, list) or not all(_is_count(dim) for dim in shape):
        raise _BadHeader(f"tensor {tensor_name!r} has an invalid shape")
    if (
        not isinstance(offsets, list)
        or len(offsets) != 2
        or not all(_is_count(offset) for offset in offsets)
        or offsets[0] > offsets[1]
    ):
        raise _BadHeader(f"tensor {tensor_name!r} has invalid data offsets")
    expected = math.prod(shape) * DTYPE_SIZES[dtype]
    if offsets[1] - offsets[0] != expected:
        raise _BadHeader(
            f"tensor {tensor_name!r} needs {expected:,} bytes for its shape but "
            f"its offsets give {offsets[1] - offsets[0]:,}"
        )
    return offsets[0], offsets[1]


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    keys = [key for key, _ in pairs]
    if len(set(keys)) != len(keys):
        raise ValueError("a key appears twice")
    return dict(pairs)
