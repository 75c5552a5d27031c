"""Checks for persona LoRA uploads: safetensors only, header verified.

Pickled weights (``.bin``, ``.ckpt``, ``.pt``...) are refused whatever they are
called, because loading them runs code. A safetensors file is 8 bytes of header
length, a JSON header and the tensor data; the header is parsed and checked the
way the safetensors library checks it (known dtypes, offsets inside the data,
tensors contiguous without overlap, sizes matching shapes, data size matching
the file) so that a lying header is refused here, not in a GPU worker.
Rejection codes: ``empty``, ``too_large``, ``pickled``, ``extension_mismatch``,
``bad_header``, ``not_lora``.
"""

from __future__ import annotations

import hashlib
import json
import math
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
PICKLE_EXTENSIONS = frozenset({".bin", ".ckpt", ".pt", ".pth", ".pkl", ".pickle"})
# The safetensors library refuses headers past 100 MB; so do we.
HEADER_LIMIT = 100_000_000
PICKLE_REASON = "loading pickled weights runs code; convert to .safetensors"
TENSOR_KEYS = frozenset({"dtype", "shape", "data_offsets"})


class ValidatedLora(File):
    """An accepted LoRA upload, with its SHA-256 and tensor count."""

    def __init__(self, file: File, *, name: str, sha256: str, tensor_count: int):
        super().__init__(file, name=name)
        self.sha256 = sha256
        self.tensor_count = tensor_count


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
        tensor_names = _check_header(file, head, size)
    except _BadHeader as problem:
        raise UploadRejected(
            '"%(name)s" is not a valid safetensors file: %(problem)s. Save the '
            "weights again with safetensors and upload the new file.",
            code="bad_header",
            params={"name": name, "problem": problem},
        ) from None
    if not any("lora" in tensor_name.lower() for tensor_name in tensor_names):
        raise UploadRejected(
            '"%(name)s" holds %(count)s tensors but none of them is a LoRA weight '
            '(no name contains "lora"): upload LoRA weights, not a full model.',
            code="not_lora",
            params={"name": name, "count": len(tensor_names)},
        )
    sha256 = hashlib.sha256()
    for chunk in file.chunks():
        sha256.update(chunk)
    return ValidatedLora(
        file, name=name, sha256=sha256.hexdigest(), tensor_count=len(tensor_names)
    )


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


def _check_header(file: File, head: bytes, size: int) -> list[str]:
    """Parse and check the header; return the tensor names."""
    if len(head) < 8:
        raise _BadHeader("it is too short to hold a header")
    (header_length,) = struct.unpack("<Q", head)
    if header_length < 2 or header_length > min(size - 8, HEADER_LIMIT):
        raise _BadHeader(
            f"its header length ({header_length:,} bytes) runs past the end of "
            f"the file ({size:,} bytes)"
        )
    raw_header = file.read(header_length)
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
    return list(header)


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
