"""One benchmark job's inputs, given identically to raw diffusers, the engine and
the studio; the speed options the engine offers; and the hash that shows two
paths computed the same image.

``Workload`` travels as JSON to the bare raw-diffusers process and to the studio
driver, so it holds plain values only.
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass

from PIL import Image

from generation.engine.requests import GenerationRequest, Method

PROMPT = "a portrait photo of a persona, studio light"


@dataclass(frozen=True)
class Workload:
    """A text-to-image job: the same prompt, seed, steps, guidance and size for
    every path, so that all of them compute the very same image."""

    steps: int
    width: int
    height: int
    seed: int = 1234
    guidance_scale: float = 7.5
    prompt: str = PROMPT
    negative_prompt: str = ""

    def request(self, model_key: str) -> GenerationRequest:
        """The engine request of this workload."""
        return GenerationRequest(
            model=model_key,
            prompt=self.prompt,
            negative_prompt=self.negative_prompt,
            method=Method.TEXT,
            seed=self.seed,
            steps=self.steps,
            guidance_scale=self.guidance_scale,
            width=self.width,
            height=self.height,
        )

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


@dataclass(frozen=True)
class SpeedOptions:
    """The engine's speed switches (``EngineConfig.channels_last`` / ``compile``);
    SDPA attention is diffusers' default on torch 2 and always on."""

    channels_last: bool = False
    compile: bool = False
    compile_backend: str = "inductor"

    @property
    def label(self) -> str:
        names = [
            name
            for name, on in (
                ("channels_last", self.channels_last),
                ("compile", self.compile),
            )
            if on
        ]
        if self.compile and self.compile_backend != "inductor":
            names[-1] += f" ({self.compile_backend} backend)"
        return "SDPA + " + " + ".join(names) if names else "SDPA (vanilla)"


VANILLA = SpeedOptions()


def pixels_sha256(image: Image.Image) -> str:
    """Hash of an image's RGB pixels (not of a file: PNG bytes may differ)."""
    return hashlib.sha256(image.convert("RGB").tobytes()).hexdigest()
