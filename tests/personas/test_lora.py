"""LoRA uploads: safetensors only, with a header that tells the truth."""

from __future__ import annotations

import hashlib
import json
import struct

import numpy as np
import pytest
from django.core.files.base import ContentFile
from safetensors.numpy import load as safetensors_load

from personas.lora import ValidatedLora, names_a_layer, validate_lora_upload
from personas.uploads import UploadRejected
from tests import images
from tests.reliability.corpus import lora_with_empty_tensors

F16_PAIR = {"dtype": "F16", "shape": [2], "data_offsets": [0, 4]}
LORA_KEY = "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q"


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


class CountingFile(ContentFile):
    """A file that remembers how many bytes were read from it."""

    bytes_read = 0

    def read(self, size=-1):
        data = super().read(size)
        self.bytes_read += len(data)
        return data


def test_a_header_past_the_limit_is_refused_from_its_length_alone(settings):
    settings.STUDIO_MAX_LORA_HEADER_BYTES = 1024
    header = json.dumps({"lora_unet_conv_in.alpha": F16_PAIR, "pad": "x" * 2000})
    content = struct.pack("<Q", len(header)) + header.encode() + b"\0" * 4
    file = CountingFile(content, name="ada.safetensors")

    with pytest.raises(UploadRejected) as refused:
        validate_lora_upload(file)

    assert refused.value.code == "header_too_large"
    assert "STUDIO_MAX_LORA_HEADER_BYTES" in refused.value.messages[0]
    assert file.bytes_read == 8


def test_too_many_tensors_are_refused_before_the_header_is_parsed(settings):
    settings.STUDIO_MAX_LORA_TENSORS = 100
    content = lora_with_empty_tensors(101)

    refused = refusal("ada.safetensors", content)

    assert refused.code == "too_many_tensors"
    assert "101 tensors" in refused.messages[0]


@pytest.mark.parametrize("dtype", ["F8_E8M0", "F8_E4M3", "I64", "BOOL", "U8"])
def test_dtypes_diffusers_cannot_load_as_weights_are_refused(dtype):
    size = {"I64": 8}.get(dtype, 1)
    content = images.safetensors_with_header(
        {
            f"{LORA_KEY}.lora_A.weight": {
                **F16_PAIR,
                "dtype": dtype,
                "data_offsets": [0, 2 * size],
            }
        },
        b"\0" * 2 * size,
    )

    refused = refusal("ada.safetensors", content)

    assert refused.code == "unsupported_dtype"
    assert dtype in refused.messages[0]


def test_a_tensor_wider_than_any_layer_is_refused():
    content = images.safetensors_with_header(
        {
            f"{LORA_KEY}.lora_A.weight": {
                "dtype": "F16",
                "shape": [4, 1_000_000],
                "data_offsets": [0, 8_000_000],
            }
        },
        b"\0" * 8_000_000,
    )

    refused = refusal("ada.safetensors", content)

    assert refused.code == "bad_shape"
    assert "4x1000000" in refused.messages[0]


@pytest.mark.parametrize(
    "key",
    [
        "lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight",
        "lora_unet_input_blocks_1_1_proj_in.lora_up.weight",
        "lora_te_text_model_encoder_layers_0_self_attn_q_proj.lora_down.weight",
        "lora_te2_text_model_encoder_layers_0_mlp_fc1.alpha",
        "unet.up_blocks.1.attentions.0.proj_out.lora_B.weight",
        "unet.mid_block.resnets.0.conv1.lora.down.weight",
        "text_encoder.text_model.encoder.layers.0.self_attn.q_proj.lora_A.weight",
        "text_encoder_2.text_model.encoder.layers.3.mlp.fc2.lora_B.weight",
        "transformer.single_transformer_blocks.0.proj_mlp.lora_A.weight",
        "lora_unet_double_blocks_0_img_attn_proj.lora_up.weight",
    ],
)
def test_keys_of_every_known_style_name_a_layer(key):
    assert names_a_layer(key)


@pytest.mark.parametrize(
    "key",
    [
        "w.lora",
        "lora_A.weight",
        "unet.no_such_block.0.lora_A.weight",
        "lora_unet_evil.lora_down.weight",
        "lora_te_text_model.q_proj.lora_down.weight",
        "unet.down_blocks.0.proj_in.weight",
        "vae.decoder.conv_in.lora_A.weight",
    ],
)
def test_keys_that_name_no_layer_are_refused(key):
    content = images.safetensors_with_header(
        {
            f"{LORA_KEY}.lora_A.weight": F16_PAIR,
            key: {**F16_PAIR, "data_offsets": [4, 8]},
        },
        b"\0" * 8,
    )

    refused = refusal("ada.safetensors", content)

    assert refused.code == "unknown_layer"
    assert key in refused.messages[0]
