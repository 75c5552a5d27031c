"""Long prompts are chunked, never cut, and the pipeline takes the chunks."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from diffusers import StableDiffusionPipeline

from generation.engine.prompts import (
    chunk_token_ids,
    encode_prompt_chunks,
    needs_chunking,
    prompt_token_ids,
)

WORDS = "portrait of a young woman with red hair in soft window light".split()


@pytest.fixture(scope="module")
def pipe(tiny_model_root) -> StableDiffusionPipeline:
    return StableDiffusionPipeline.from_pretrained(tiny_model_root / "sd15")


def _prompt_of(tokenizer, tokens: int, last_word: str = "end") -> str:
    """A prompt of exactly ``tokens`` tokens ending in ``last_word``."""
    words: list[str] = []
    target = tokens - len(prompt_token_ids(tokenizer, last_word))
    while (count := len(prompt_token_ids(tokenizer, " ".join(words)))) < target:
        word = WORDS[len(words) % len(WORDS)]
        fits = count + len(prompt_token_ids(tokenizer, word)) <= target
        words.append(word if fits else "a")
    prompt = " ".join([*words, last_word])
    assert len(prompt_token_ids(tokenizer, prompt)) == tokens
    return prompt


def test_a_short_prompt_needs_no_chunking(pipe):
    assert not needs_chunking(pipe.tokenizer, "a portrait")
    assert not needs_chunking(pipe.tokenizer, _prompt_of(pipe.tokenizer, 75))
    assert needs_chunking(pipe.tokenizer, _prompt_of(pipe.tokenizer, 76))


def test_one_chunk_is_exactly_what_diffusers_encodes(pipe):
    prompt, negative = "a portrait, studio light", "blurry"
    embeds, negative_embeds, info = encode_prompt_chunks(
        pipe, prompt, negative, "cpu", True
    )
    expected, expected_negative = pipe.encode_prompt(prompt, "cpu", 1, True, negative)
    assert info["chunks"] == 1
    assert torch.equal(embeds, expected)
    assert torch.equal(negative_embeds, expected_negative)


def test_chunks_use_the_attention_mask_when_the_encoder_wants_one(pipe, monkeypatch):
    monkeypatch.setattr(
        pipe.text_encoder.config, "use_attention_mask", True, raising=False
    )
    prompt, negative = "a portrait, studio light", "blurry"
    embeds, negative_embeds, _ = encode_prompt_chunks(
        pipe, prompt, negative, "cpu", True
    )
    expected, expected_negative = pipe.encode_prompt(prompt, "cpu", 1, True, negative)
    assert torch.equal(embeds, expected)
    assert torch.equal(negative_embeds, expected_negative)
    # The mask matters, so the equality above is no accident.
    monkeypatch.undo()
    unmasked, _, _ = encode_prompt_chunks(pipe, prompt, negative, "cpu", True)
    assert not torch.equal(embeds, unmasked)


def test_a_text_encoder_lora_is_scaled_as_diffusers_scales_it(tiny_model_root):
    with_lora = StableDiffusionPipeline.from_pretrained(tiny_model_root / "sd15")
    with_lora.load_lora_weights(tiny_model_root / "lora" / "persona.safetensors")
    prompt = "a portrait, studio light"
    for scale in (0.0, 0.5, 1.0):
        embeds, _, _ = encode_prompt_chunks(
            with_lora, prompt, "", "cpu", False, lora_scale=scale
        )
        expected, _ = with_lora.encode_prompt(prompt, "cpu", 1, False, lora_scale=scale)
        assert torch.equal(embeds, expected), scale
    half, _, _ = encode_prompt_chunks(
        with_lora, prompt, "", "cpu", False, lora_scale=0.5
    )
    full, _, _ = encode_prompt_chunks(
        with_lora, prompt, "", "cpu", False, lora_scale=1.0
    )
    assert not torch.equal(half, full)


def test_a_200_token_prompt_gives_three_chunks_and_loses_nothing(pipe):
    tokenizer = pipe.tokenizer
    prompt = _prompt_of(tokenizer, 200)
    hidden = pipe.text_encoder.config.hidden_size
    embeds, negative_embeds, info = encode_prompt_chunks(
        pipe, prompt, "ugly", "cpu", True
    )
    assert info == {
        "prompt_tokens": 200,
        "negative_prompt_tokens": len(prompt_token_ids(tokenizer, "ugly")),
        "chunks": 3,
        "chunk_tokens": 75,
        "truncated": False,
    }
    assert embeds.shape == negative_embeds.shape == (1, 3 * 77, hidden)
    windows = chunk_token_ids(tokenizer, prompt_token_ids(tokenizer, prompt))
    assert [len(window) for window in windows] == [77, 77, 77]
    inner = [token for window in windows for token in window[1:-1]][:200]
    assert inner == prompt_token_ids(tokenizer, prompt)


def test_the_first_chunk_is_what_diffusers_keeps_after_truncating(pipe):
    prompt = _prompt_of(pipe.tokenizer, 200)
    embeds, _, _ = encode_prompt_chunks(pipe, prompt, "", "cpu", False)
    truncated, _ = pipe.encode_prompt(prompt, "cpu", 1, False)
    assert torch.equal(embeds[:, :77], truncated)


def test_the_tail_of_a_long_prompt_changes_only_the_last_chunk(pipe):
    tokenizer = pipe.tokenizer
    sunny = _prompt_of(tokenizer, 200, last_word="sun")
    rainy = _prompt_of(tokenizer, 200, last_word="ran")
    sunny_embeds, _, _ = encode_prompt_chunks(pipe, sunny, "", "cpu", False)
    rainy_embeds, _, _ = encode_prompt_chunks(pipe, rainy, "", "cpu", False)
    assert torch.equal(sunny_embeds[:, : 2 * 77], rainy_embeds[:, : 2 * 77])
    assert not torch.allclose(sunny_embeds[:, 2 * 77 :], rainy_embeds[:, 2 * 77 :])


def test_a_long_negative_prompt_pads_the_prompt_to_the_same_length(pipe):
    negative = _prompt_of(pipe.tokenizer, 160)
    embeds, negative_embeds, info = encode_prompt_chunks(
        pipe, "a portrait", negative, "cpu", True
    )
    assert info["chunks"] == 3
    assert embeds.shape == negative_embeds.shape == (1, 231, embeds.shape[-1])
    # The padding chunks encode the empty prompt.
    empty, _ = pipe.encode_prompt("", "cpu", 1, False)
    assert torch.equal(embeds[:, 77:154], empty)
    assert torch.equal(embeds[:, 154:], empty)


def test_without_guidance_the_negative_prompt_is_ignored(pipe):
    negative = _prompt_of(pipe.tokenizer, 160)
    embeds, negative_embeds, info = encode_prompt_chunks(
        pipe, "a portrait", negative, "cpu", False
    )
    assert negative_embeds is None
    assert info["chunks"] == 1
    assert embeds.shape[1] == 77


def test_the_pipeline_accepts_chunked_embeddings_and_uses_the_tail(pipe):
    tokenizer = pipe.tokenizer
    prompt = _prompt_of(tokenizer, 200)
    embeds, negative_embeds, _ = encode_prompt_chunks(pipe, prompt, "", "cpu", True)

    def run(**prompt_arguments) -> np.ndarray:
        return pipe(
            **prompt_arguments,
            num_images_per_prompt=2,
            num_inference_steps=2,
            height=64,
            width=64,
            generator=torch.Generator().manual_seed(3),
            output_type="np",
        ).images

    chunked = run(prompt_embeds=embeds, negative_prompt_embeds=negative_embeds)
    assert chunked.shape == (2, 64, 64, 3)
    assert np.isfinite(chunked).all()
    cut = run(prompt=prompt, negative_prompt="")
    assert not np.array_equal(chunked, cut)
