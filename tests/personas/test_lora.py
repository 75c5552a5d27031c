"""LoRA uploads: safetensors only, with a header that tells the truth."""

from __future__ import annotations

import hashlib
import struct

import numpy as np
import pytest
from django.core.files.base import ContentFile
from safetensors.numpy import load as safetensors_load

from personas.lora import ValidatedLora, validate_lora_upload
from personas.uploads import UploadRejected
from tests import images

F16_PAIR = {"dtype": "F16", "shape": [2], "data_offsets": [0, 4]}


def validate(name: str, content: bytes) -> ValidatedLora:
    return validate_lora_upload(ContentFile(content, name=name))


def refusal(name: str, content: bytes) -> UploadRejected:
    with pytest.raises(UploadRejected) as refused:
        validate(name, content)
    assert f'"{name}"' in refused.value.messages[0]
    return refused.value


def test_a_good_lora_is_accepted_with_its_hash():
    content = images.safetensors_lora()

    lora = validate("ada.safetensors", content)

    assert lora.sha256 == hashlib.sha256(content).hexdigest()
    assert lora.tensor_count == 2
    lora.seek(0)
    assert safetensors_load(lora.read()).keys() == safetensors_load(content).keys()


@pytest.mark.parametrize(
    "content_builder",
    [images.pickled_checkpoint, images.legacy_pickled_checkpoint],
    ids=["torch-zip", "legacy-pickle"],
)
def test_pickled_weights_renamed_safetensors_are_refused_because_they_run_code(
    content_builder,
):
    refused = refusal("ada.safetensors", content_builder())

    assert refused.code == "pickled"
    assert (
        "loading pickled weights runs code; convert to .safetensors"
        in (refused.messages[0])
    )


@pytest.mark.parametrize("extension", [".bin", ".ckpt", ".pt", ".pth"])
def test_pickle_extensions_are_refused_whatever_they_hold(extension):
    refused = refusal(f"ada{extension}", images.safetensors_lora())

    assert refused.code == "pickled"


def test_other_extensions_are_refused():
    assert refusal("ada.lora", images.safetensors_lora()).code == "extension_mismatch"


@pytest.mark.parametrize(
    ("header", "data", "problem"),
    [
        ({"w.lora": {**F16_PAIR, "dtype": "Q4"}}, b"\0" * 4, "unknown dtype"),
        ({"w.lora": {**F16_PAIR, "data_offsets": [0, 400]}}, b"\0" * 4, "needs 4"),
        ({"w.lora": {**F16_PAIR, "shape": [-2]}}, b"\0" * 4, "invalid shape"),
        ({"w.lora": {**F16_PAIR, "data_offsets": [4, 0]}}, b"\0" * 4, "offsets"),
        ({"w.lora": {**F16_PAIR, "exec": "x"}}, b"\0" * 4, "not described"),
        (
            {"a.lora": F16_PAIR, "b.lora": {**F16_PAIR, "data_offsets": [2, 6]}},
            b"\0" * 6,
            "overlap",
        ),
        (
            {"a.lora": F16_PAIR, "b.lora": {**F16_PAIR, "data_offsets": [6, 10]}},
            b"\0" * 10,
            "gap",
        ),
        ({"w.lora": F16_PAIR}, b"\0" * 4096, "file holds 4,096"),
        ({"__metadata__": {"format": 1}, "w.lora": F16_PAIR}, b"\0" * 4, "metadata"),
        ({"__metadata__": {}}, b"", "no tensors"),
    ],
    ids=[
        "unknown-dtype",
        "size-mismatch",
        "negative-shape",
        "reversed-offsets",
        "extra-key",
        "overlap",
        "gap",
        "data-past-header",
        "metadata-not-strings",
        "no-tensors",
    ],
)
def test_a_lying_header_is_refused(header, data, problem):
    refused = refusal("ada.safetensors", images.safetensors_with_header(header, data))

    assert refused.code == "bad_header"
    assert problem in refused.messages[0]


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        (struct.pack("<Q", 10**12) + b"{}", "runs past the end"),
        (struct.pack("<Q", 5) + b"[1,2]", "not a JSON object"),
        (struct.pack("<Q", 4) + b"\xff\xfe{}", "not valid JSON"),
        (
            struct.pack("<Q", 21) + b'{"a": {}, "a": {}}   ',
            "not valid JSON (a key appears twice)",
        ),
        (struct.pack("<Q", 20000) + b"[" * 20000, "not valid JSON"),
        (b"\x01\x02", "too short"),
    ],
    ids=["length-past-end", "array", "not-utf8", "duplicate-key", "deep", "short"],
)
def test_a_malformed_header_is_refused(content, problem):
    refused = refusal("ada.safetensors", content)

    assert refused.code == "bad_header"
    assert problem in refused.messages[0]


def test_a_full_model_is_not_a_lora():
    content = images.safetensors_with_header(
        {"unet.conv_in.weight": F16_PAIR}, np.zeros(2, np.float16).tobytes()
    )

    assert refusal("model.safetensors", content).code == "not_lora"


def test_size_limits(settings):
    content = images.safetensors_lora()
    settings.STUDIO_MAX_LORA_BYTES = len(content) - 1

    assert refusal("ada.safetensors", content).code == "too_large"
    assert refusal("ada.safetensors", b"").code == "empty"
