"""Long prompts: AUTOMATIC1111-style chunking instead of silent truncation.

CLIP's text encoder sees at most ``model_max_length`` tokens (77 for SD 1.5):
BOS, 75 prompt tokens, EOS. diffusers cuts anything longer and only logs it.
Here a longer prompt is split into windows of 75 tokens, each wrapped in BOS and
EOS and padded to 77, encoded separately, and the encodings are concatenated
along the sequence axis: a 200-token prompt gives 3 chunks, a
``(1, 3 * 77, hidden)`` tensor. The UNet's cross-attention accepts any sequence
length, so the pipeline takes these as ``prompt_embeds``. The negative prompt is
padded with empty chunks to the same length, as the pipeline requires.

Prompts that fit take the plain ``prompt=`` path (see :func:`needs_chunking`),
so their output stays pixel-identical to raw diffusers.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch


def prompt_token_ids(tokenizer: Any, text: str) -> list[int]:
    """The prompt's token ids, without BOS/EOS and without truncation."""
    return tokenizer(text, add_special_tokens=False, verbose=False).input_ids


def chunk_size(tokenizer: Any) -> int:
    """Prompt tokens per chunk: the window less BOS and EOS."""
    return tokenizer.model_max_length - 2


def needs_chunking(tokenizer: Any, prompt: str) -> bool:
    """True when ``prompt`` does not fit the text encoder's window."""
    return len(prompt_token_ids(tokenizer, prompt)) > chunk_size(tokenizer)


def chunk_token_ids(
    tokenizer: Any, token_ids: list[int], chunks: int | None = None
) -> list[list[int]]:
    """Split ``token_ids`` into full windows (BOS, up to 75 ids, EOS, padding).

    ``chunks`` pads the result with empty windows up to that count. An empty
    prompt is one window, exactly what the tokenizer gives for ``""``.
    """
    size = chunk_size(tokenizer)
    return [
        [tokenizer.bos_token_id, *window, tokenizer.eos_token_id]
        + [tokenizer.pad_token_id] * (size - len(window))
        for window in _windows(tokenizer, token_ids, chunks)
    ]


def _windows(
    tokenizer: Any, token_ids: list[int], chunks: int | None
) -> list[list[int]]:
    """The prompt ids of each chunk, unwrapped; at least one, ``chunks`` if given."""
    size = chunk_size(tokenizer)
    windows = [
        token_ids[start : start + size] for start in range(0, len(token_ids), size)
    ]
    windows = windows or [[]]
    if chunks is not None:
        if chunks < len(windows):
            raise ValueError(f"{len(windows)} chunks do not fit in {chunks}")
        windows += [[] for _ in range(chunks - len(windows))]
    return windows


def encode_prompt_chunks(
    pipe: Any,
    prompt: str,
    negative_prompt: str,
    device: torch.device | str,
    do_cfg: bool,
    *,
    lora_scale: float | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None, dict[str, Any]]:
    """Encode a prompt of any length for ``pipe`` (any SD 1.x pipeline).

    Returns ``(prompt_embeds, negative_prompt_embeds, info)`` for one prompt,
    each ``(1, chunks * 77, hidden)``; the pipeline repeats them for
    ``num_images_per_prompt`` itself. ``negative_prompt_embeds`` is None without
    classifier-free guidance. ``lora_scale`` scales a text-encoder LoRA the way
    the pipeline's own ``encode_prompt`` does. ``info`` (for the snapshot) holds
    the token counts, the chunk count and ``truncated`` (always False).
    """
    tokenizer = pipe.tokenizer
    if hasattr(pipe, "maybe_convert_prompt"):  # textual inversion tokens
        prompt = pipe.maybe_convert_prompt(prompt, tokenizer)
        negative_prompt = pipe.maybe_convert_prompt(negative_prompt, tokenizer)
    prompt_ids = prompt_token_ids(tokenizer, prompt)
    negative_ids = prompt_token_ids(tokenizer, negative_prompt)
    chunks = len(_windows(tokenizer, prompt_ids, None))
    if do_cfg:
        chunks = max(chunks, len(_windows(tokenizer, negative_ids, None)))
    info = {
        "prompt_tokens": len(prompt_ids),
        "negative_prompt_tokens": len(negative_ids),
        "chunks": chunks,
        "chunk_tokens": chunk_size(tokenizer),
        "truncated": False,
    }
    with _text_encoder_lora_scale(pipe, lora_scale), torch.no_grad():
        prompt_embeds = _encode(pipe, prompt_ids, chunks, device)
        negative_embeds = (
            _encode(pipe, negative_ids, chunks, device) if do_cfg else None
        )
    return prompt_embeds, negative_embeds, info


def _encode(
    pipe: Any, token_ids: list[int], chunks: int, device: torch.device | str
) -> torch.Tensor:
    """Encode each window as diffusers' ``encode_prompt`` does, then concatenate."""
    tokenizer, text_encoder = pipe.tokenizer, pipe.text_encoder
    # Some text encoders want the tokenizer's attention mask; SD 1.x's do not.
    use_mask = getattr(text_encoder.config, "use_attention_mask", False)
    window_ids = chunk_token_ids(tokenizer, token_ids, chunks)
    windows = _windows(tokenizer, token_ids, chunks)
    encoded = []
    for ids, window in zip(window_ids, windows, strict=True):
        input_ids = torch.tensor([ids], device=device)
        attention_mask = None
        if use_mask:
            attention_mask = torch.zeros_like(input_ids)
            attention_mask[:, : len(window) + 2] = 1
        encoded.append(text_encoder(input_ids, attention_mask=attention_mask)[0])
    return torch.cat(encoded, dim=1).to(dtype=text_encoder.dtype, device=device)


@contextmanager
def _text_encoder_lora_scale(pipe: Any, lora_scale: float | None) -> Iterator[None]:
    """Scale the text encoder's LoRA layers for the duration, as diffusers does."""
    if lora_scale is None:
        yield
        return
    from diffusers.utils import scale_lora_layers, unscale_lora_layers

    scale_lora_layers(pipe.text_encoder, lora_scale)
    try:
        yield
    finally:
        unscale_lora_layers(pipe.text_encoder, lora_scale)
