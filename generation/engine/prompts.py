"""Long prompts: AUTOMATIC1111-style chunking instead of silent truncation.

CLIP's text encoder sees at most ``model_max_length`` tokens (77 for SD 1.5):
BOS, 75 prompt tokens, EOS. diffusers cuts anything longer and only logs it.
Here a longer prompt is split into windows of 75 tokens, each wrapped in BOS and
EOS and padded to 77, encoded separately, and the encodings are concatenated
along the sequence axis: a 200-token prompt gives 3 chunks, a
``(1, 3 * 77, hidden)`` tensor. The UNet's cross-attention accepts any sequence
length, so the pipeline takes these as ``prompt_embeds``. The negative prompt is
padded with empty chunks to the same length, as the pipeline requires.

SDXL has two tokenizers and text encoders: each chunk goes through both, their
penultimate hidden states are concatenated along the feature axis, and the
second encoder's pooled projection of the first chunk is the pooled embedding
(``encode_long_prompt``; the family row says which encoders and layer).

Prompts that fit take the plain ``prompt=`` path (see :func:`needs_chunking`),
so their output stays pixel-identical to raw diffusers.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch

from .families import SD15, TextEncoding


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


def needs_chunking_for(pipe: Any, encoding: TextEncoding, prompt: str) -> bool:
    """True when ``prompt`` does not fit the window of any of a family's
    tokenizers (SDXL has two)."""
    return any(
        needs_chunking(getattr(pipe, tokenizer), prompt)
        for tokenizer, _ in encoding.encoders
    )


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
    embeds, info = encode_long_prompt(
        pipe,
        SD15.text_encoding,
        prompt,
        negative_prompt,
        device,
        do_cfg,
        lora_scale=lora_scale,
    )
    return embeds["prompt_embeds"], embeds.get("negative_prompt_embeds"), info


def encode_long_prompt(
    pipe: Any,
    encoding: TextEncoding,
    prompt: str,
    negative_prompt: str,
    device: torch.device | str,
    do_cfg: bool,
    *,
    lora_scale: float | None = None,
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Encode a prompt of any length for a pipeline of any family.

    Returns the pipeline's embedding arguments (``prompt_embeds`` and, with
    classifier-free guidance, ``negative_prompt_embeds``; for a family with a
    pooled embedding also ``pooled_prompt_embeds`` and
    ``negative_pooled_prompt_embeds``) and ``info`` for the snapshot.

    Every tokenizer's windows are encoded by its text encoder at the family's
    hidden layer; the encoders' outputs are concatenated along the feature axis
    (SDXL: 768 + 1280 = 2048), the chunks along the sequence axis. The pooled
    embedding is the first chunk's, as AUTOMATIC1111 does: it summarises the
    start of the prompt, where its subject usually is. A prompt that fits gives
    exactly the pipeline's own ``encode_prompt`` (one chunk, same padding).
    """
    prompts = {"prompt": prompt, "negative": negative_prompt}
    if hasattr(pipe, "maybe_convert_prompt"):  # textual inversion tokens
        first = getattr(pipe, encoding.encoders[0][0])
        prompts = {k: pipe.maybe_convert_prompt(v, first) for k, v in prompts.items()}
    tokenizers = [getattr(pipe, name) for name, _ in encoding.encoders]
    ids = {
        (index, kind): prompt_token_ids(tokenizer, text)
        for index, tokenizer in enumerate(tokenizers)
        for kind, text in prompts.items()
    }
    kinds = ("prompt", "negative") if do_cfg else ("prompt",)
    chunks = max(
        len(_windows(tokenizers[index], ids[index, kind], None))
        for index in range(len(tokenizers))
        for kind in kinds
    )
    first_tokenizer = tokenizers[0]
    info = {
        "prompt_tokens": len(ids[0, "prompt"]),
        "negative_prompt_tokens": len(ids[0, "negative"]),
        "chunks": chunks,
        "chunk_tokens": chunk_size(first_tokenizer),
        "truncated": False,
    }
    names = {"prompt": "prompt_embeds", "negative": "negative_prompt_embeds"}
    pooled_names = {
        "prompt": "pooled_prompt_embeds",
        "negative": "negative_pooled_prompt_embeds",
    }
    result: dict[str, torch.Tensor] = {}
    with _text_encoder_lora_scale(pipe, encoding, lora_scale), torch.no_grad():
        for kind in kinds:
            parts, pooled = [], None
            for index, (tokenizer_name, encoder_name) in enumerate(encoding.encoders):
                hidden, pooled_output = _encode(
                    getattr(pipe, tokenizer_name),
                    getattr(pipe, encoder_name),
                    ids[index, kind],
                    chunks,
                    device,
                    encoding.hidden_layer,
                )
                parts.append(hidden)
                if encoder_name == encoding.pooled_from:
                    pooled = pooled_output
            last_encoder = getattr(pipe, encoding.encoders[-1][1])
            result[names[kind]] = torch.cat(parts, dim=-1).to(
                dtype=last_encoder.dtype, device=device
            )
            if encoding.pooled_from is not None:
                assert pooled is not None
                result[pooled_names[kind]] = pooled.to(device=device)
    return result, info


def _encode(
    tokenizer: Any,
    text_encoder: Any,
    token_ids: list[int],
    chunks: int,
    device: torch.device | str,
    hidden_layer: str,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Encode each window as diffusers' ``encode_prompt`` does, then concatenate;
    also the first window's pooled projection (None for an encoder without)."""
    # Some text encoders want the tokenizer's attention mask; SD 1.x's do not.
    use_mask = getattr(text_encoder.config, "use_attention_mask", False)
    window_ids = chunk_token_ids(tokenizer, token_ids, chunks)
    windows = _windows(tokenizer, token_ids, chunks)
    encoded, pooled = [], None
    for ids, window in zip(window_ids, windows, strict=True):
        input_ids = torch.tensor([ids], device=device)
        attention_mask = None
        if use_mask:
            attention_mask = torch.zeros_like(input_ids)
            attention_mask[:, : len(window) + 2] = 1
        if hidden_layer == "last":
            encoded.append(text_encoder(input_ids, attention_mask=attention_mask)[0])
            continue
        output = text_encoder(
            input_ids, attention_mask=attention_mask, output_hidden_states=True
        )
        encoded.append(output.hidden_states[-2])
        if pooled is None and output[0].ndim == 2:  # text_embeds of a projection
            pooled = output[0]
    embeds = torch.cat(encoded, dim=1).to(dtype=text_encoder.dtype, device=device)
    return embeds, pooled


@contextmanager
def _text_encoder_lora_scale(
    pipe: Any, encoding: TextEncoding, lora_scale: float | None
) -> Iterator[None]:
    """Scale the text encoders' LoRA layers for the duration, as diffusers does."""
    if lora_scale is None:
        yield
        return
    from diffusers.utils import scale_lora_layers, unscale_lora_layers

    encoders = [getattr(pipe, name) for _, name in encoding.encoders]
    for encoder in encoders:
        scale_lora_layers(encoder, lora_scale)
    try:
        yield
    finally:
        for encoder in encoders:
            unscale_lora_layers(encoder, lora_scale)
