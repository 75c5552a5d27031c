"""Annotator weights for tests: real controlnet-aux detectors and a real
transformers segmenter at random weights, in the file layouts the studio loads
(lllyasviel/Annotators' files; a transformers model folder)."""

from __future__ import annotations

from pathlib import Path


def save_pidinet(path: Path, seed: int = 0) -> None:
    """A randomly initialised PiDiNet in the checkpoint layout of
    lllyasviel/Annotators' table5_pidinet.pth."""
    import torch

    from generation.engine.preprocessors import _controlnet_aux_module

    torch.manual_seed(seed)
    network = _controlnet_aux_module("pidi.model").pidinet()
    state = {f"module.{key}": value for key, value in network.state_dict().items()}
    torch.save({"state_dict": state}, path)


def save_tiny_segmenter(folder: Path, seed: int = 0) -> Path:
    """A tiny SegFormer (3 labels) and its 64x64 processor in ``folder``."""
    import torch
    from transformers import (
        SegformerConfig,
        SegformerForSemanticSegmentation,
        SegformerImageProcessor,
    )

    torch.manual_seed(seed)
    SegformerForSemanticSegmentation(
        SegformerConfig(
            num_encoder_blocks=2,
            depths=[1, 1],
            sr_ratios=[2, 1],
            hidden_sizes=[8, 16],
            patch_sizes=[7, 3],
            strides=[4, 2],
            num_attention_heads=[1, 1],
            mlp_ratios=[2, 2],
            decoder_hidden_size=16,
            num_labels=3,
        )
    ).save_pretrained(folder)
    SegformerImageProcessor(size={"height": 64, "width": 64}).save_pretrained(folder)
    return folder
