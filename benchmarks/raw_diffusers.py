"""The floor: raw diffusers, timed in a bare process.

Run as a script (``python -I raw_diffusers.py SPEC.json``), never imported by the
studio's processes: it imports torch, diffusers and the standard library only,
so what it measures is diffusers alone. It loads the pipeline folder with
``from_pretrained`` (the class its ``model_index.json`` names: SD 1.5's or
SDXL's text pipeline), applies the same speed options the engine offers, calls
the pipeline the way a person would (same prompt, seed, steps, guidance and size as
the studio's request, a CPU generator, PIL output) to warm up, and replies that
it is ready. Then each ``run`` line on stdin times one more call and replies with
its seconds and a hash of the image's pixels, so the caller can check that the
studio produced the very same image. It speaks ``line_process``'s protocol (the
``BENCH `` prefix is repeated here: this script may not import the studio).

SPEC keys: pipeline, pipeline_class (a diffusers class name; default
StableDiffusionPipeline), device, dtype, prompt, negative_prompt, seed, steps,
guidance_scale, width, height, warmup_runs, channels_last, compile,
compile_backend.
"""

import hashlib
import json
import sys
import time

import diffusers
import torch


def reply(payload: dict) -> None:
    print("BENCH " + json.dumps(payload), flush=True)


def main(spec_path: str) -> None:
    with open(spec_path) as spec_file:
        spec = json.load(spec_file)
    started = time.perf_counter()
    # The folder's own class (model_index.json) unless the spec names one.
    pipeline_class = getattr(
        diffusers, spec.get("pipeline_class") or "DiffusionPipeline"
    )
    pipe = pipeline_class.from_pretrained(
        spec["pipeline"], dtype=getattr(torch, spec["dtype"]), local_files_only=True
    )
    pipe.to(torch.device(spec["device"]))
    unet = getattr(pipe, "unet", None)
    denoiser = unet if unet is not None else pipe.transformer
    if spec["channels_last"] and unet is not None:
        unet.to(memory_format=torch.channels_last)
    if spec["compile"]:
        # As the studio compiles (registry.py): one graph per size.
        denoiser.compile(dynamic=False, backend=spec["compile_backend"])
    pipe.set_progress_bar_config(disable=True)
    load_seconds = time.perf_counter() - started

    def call() -> dict:
        started = time.perf_counter()
        image = pipe(
            prompt=spec["prompt"],
            negative_prompt=spec["negative_prompt"],
            num_inference_steps=spec["steps"],
            guidance_scale=spec["guidance_scale"],
            width=spec["width"],
            height=spec["height"],
            generator=torch.Generator("cpu").manual_seed(spec["seed"]),
            output_type="pil",
        ).images[0]
        return {
            "seconds": time.perf_counter() - started,
            "pixels_sha256": hashlib.sha256(image.convert("RGB").tobytes()).hexdigest(),
        }

    for _ in range(spec["warmup_runs"]):
        call()
    reply(
        {
            "load_seconds": load_seconds,
            # Proof that the process stayed bare: no studio, Django or RQ module.
            "studio_modules": sorted(
                {
                    name.partition(".")[0]
                    for name in sys.modules
                    if name.partition(".")[0]
                    in ("django", "generation", "studio", "rq")
                }
            ),
        }
    )
    for line in sys.stdin:
        if line.strip() == "run":
            reply(call())


if __name__ == "__main__":
    main(*sys.argv[1:])
