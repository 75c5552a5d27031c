"""Decode an upload in a child process under a CPU and memory budget.

Everything that touches pixels (decoding, EXIF orientation, flattening to RGB,
the PNG re-encode and the thumbnail) runs in a process forked from a small
``forkserver`` (Pillow and NumPy preloaded, no Django settings), with
``RLIMIT_CPU`` and ``RLIMIT_AS`` set before the first byte is decoded. The
check (decode, orientation, RGB) gets ``cpu_seconds``; the re-encode of an
image that passed it gets ``encode_cpu_seconds`` more, which the caller sizes
from the pixel count (hostile bytes cannot make it slower). A file
that would take longer or more memory than the budget kills only that child:
the web process waits, with a wall-clock deadline as well, and turns what
happened into an :class:`Outcome`. Nothing here imports Django, so the
forkserver stays small (DESIGN.md decision 14).
"""

from __future__ import annotations

import io
import multiprocessing
import os
import resource
import signal
import threading
import time
import warnings
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from typing import Any

import numpy as np
from PIL import Image, ImageOps

WHITE = (255, 255, 255, 255)
# Under a heavily loaded machine a child may get little of a core; the CPU
# limit is the real bound, the wall deadline only keeps a request from hanging.
WALL_SECONDS_PER_CPU_SECOND = 10
MEBIBYTE = 1024 * 1024

_context_lock = threading.Lock()
_context: Any = None


@dataclass(frozen=True)
class Budget:
    """What one decode may spend, and Pillow's own pixel guard to apply."""

    cpu_seconds: int
    encode_cpu_seconds: int
    memory_bytes: int
    thumbnail_side: int
    pillow_max_pixels: int | None


@dataclass(frozen=True)
class Cost:
    """What the child spent: CPU seconds and its peak resident memory."""

    cpu_seconds: float
    peak_rss_bytes: int


@dataclass
class Outcome:
    """``status`` is ``ok`` (with the PNG and thumbnail), or why it failed:
    ``bomb``, ``corrupt`` (``error`` says how), ``memory`` or ``cpu``."""

    status: str
    png: bytes = b""
    thumbnail: bytes = b""
    width: int = 0
    height: int = 0
    error: str = ""
    cost: Cost | None = field(default=None)


def decode_within_budget(data: bytes, image_format: str, budget: Budget) -> Outcome:
    """Decode ``data`` in a bounded child process; never raises for bad bytes."""
    reader, writer = _get_context().Pipe(duplex=False)
    child = _get_context().Process(
        target=_child_main,
        args=(writer, data, image_format, budget),
        daemon=True,
    )
    child.start()
    writer.close()
    try:
        return _await_child(child, reader, budget)
    finally:
        reader.close()
        if child.is_alive():
            child.kill()
        child.join()
        child.close()


def _await_child(child: Any, reader: Connection, budget: Budget) -> Outcome:
    cpu_seconds = budget.cpu_seconds + budget.encode_cpu_seconds
    deadline = time.monotonic() + WALL_SECONDS_PER_CPU_SECOND * cpu_seconds
    if not reader.poll(max(0.0, deadline - time.monotonic())):
        child.kill()
        return Outcome("cpu")
    try:
        status, details = reader.recv()
        if status == "ok":
            details["png"] = reader.recv_bytes()
            details["thumbnail"] = reader.recv_bytes()
    except (EOFError, OSError):
        child.join(5)
        # SIGXCPU past the soft CPU limit, SIGKILL past the hard one; exit
        # status 1 when even the answer did not fit in the memory budget.
        if child.exitcode in (-signal.SIGXCPU, -signal.SIGKILL):
            return Outcome("cpu")
        if child.exitcode == 1:
            return Outcome("memory")
        return Outcome("corrupt", error=f"the decoder stopped ({child.exitcode})")
    cost = details.pop("cost", None)
    return Outcome(status, cost=Cost(*cost) if cost else None, **details)


def _get_context() -> Any:
    global _context
    with _context_lock:
        if _context is None:
            context = multiprocessing.get_context("forkserver")
            context.set_forkserver_preload(["personas.decoding"])
            _context = context
        return _context


def _child_main(
    writer: Connection, data: bytes, image_format: str, budget: Budget
) -> None:
    _limit_self(budget)
    try:
        details = _decode(data, image_format, budget)
    except MemoryError:
        _send(writer, "memory", {})
        return
    except (Image.DecompressionBombWarning, Image.DecompressionBombError):
        _send(writer, "bomb", {})
        return
    # Hostile bytes can make a decoder raise anything; it becomes a refusal.
    except Exception as error:  # noqa: BLE001
        text = (
            "the decoder does not recognise its header"
            if isinstance(error, Image.UnidentifiedImageError)
            else str(error)[:200]
        )
        _send(writer, "corrupt", {"error": text})
        return
    png, thumbnail = details.pop("png"), details.pop("thumbnail")
    try:
        _send(writer, "ok", details)
        writer.send_bytes(png)
        writer.send_bytes(thumbnail)
    except MemoryError:
        os._exit(1)


def _send(writer: Connection, status: str, details: dict[str, Any]) -> None:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    # ru_maxrss is in KiB on Linux.
    details["cost"] = (usage.ru_utime + usage.ru_stime, usage.ru_maxrss * 1024)
    writer.send((status, details))


def _limit_self(budget: Budget) -> None:
    # The soft limit (SIGXCPU) covers the check; it is raised to the hard one
    # for the re-encode (an unprivileged process may raise soft, never hard).
    cpu = max(1, budget.cpu_seconds)
    resource.setrlimit(
        resource.RLIMIT_CPU, (cpu, cpu + budget.encode_cpu_seconds + 1)
    )
    # The address space already mapped (interpreter, Pillow, NumPy) is not
    # the file's to spend: the budget is on top of it.
    mapped = _mapped_bytes()
    if mapped is not None:
        address_space = mapped + budget.memory_bytes
        resource.setrlimit(resource.RLIMIT_AS, (address_space, address_space))


def _mapped_bytes() -> int | None:
    """The address space mapped now; None where /proc is missing (macOS, where
    only the header's memory estimate and the CPU limit apply)."""
    try:
        with open("/proc/self/statm") as statm:
            pages = int(statm.read().split()[0])
    except OSError:
        return None
    return pages * os.sysconf("SC_PAGE_SIZE")


def _decode(data: bytes, image_format: str, budget: Budget) -> dict[str, Any]:
    Image.MAX_IMAGE_PIXELS = budget.pillow_max_pixels
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        # Not closed: closing would free the pixels to_rgb() may return as is.
        image = Image.open(io.BytesIO(data), formats=[image_format])
        image.load()
        ImageOps.exif_transpose(image, in_place=True)
        rgb = to_rgb(image)
    del image
    _, hard = resource.getrlimit(resource.RLIMIT_CPU)
    resource.setrlimit(resource.RLIMIT_CPU, (hard, hard))
    width, height = rgb.size
    thumbnail = encode_thumbnail(rgb, budget.thumbnail_side)
    png = encode_png_without_metadata(rgb)
    return {"png": png, "thumbnail": thumbnail, "width": width, "height": height}


def to_rgb(image: Image.Image) -> Image.Image:
    """Flatten any decoded mode to RGB; transparency is composited on white."""
    if image.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N"):
        return _sixteen_bit_grey_to_rgb(image)
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in image.info:
        background = Image.new("RGBA", image.size, WHITE)
        background.alpha_composite(image.convert("RGBA"))
        image = background
    return image if image.mode == "RGB" else image.convert("RGB")


def _sixteen_bit_grey_to_rgb(image: Image.Image) -> Image.Image:
    # Pillow's own conversion clips 16-bit grey at 255 instead of scaling it.
    # Two bytes a pixel at most live at once beside the result (the old int64
    # path needed 30: 832 MB for a 40 MP file).
    values = np.asarray(image)
    if values.dtype.kind not in "ui" or values.dtype.itemsize > 2:
        values = values.clip(0, 65535).astype(np.uint16)
    grey = np.floor_divide(values, 257).astype(np.uint8)
    transparent_value = image.info.get("transparency")
    if isinstance(transparent_value, int):
        grey[values == transparent_value] = 255
    del values
    return Image.fromarray(grey, "L").convert("RGB")


def encode_png_without_metadata(image: Image.Image) -> bytes:
    """PNG bytes with no metadata chunk at all."""
    # Emptying ``info`` is what keeps ICC, EXIF, text and transparency chunks out.
    image.info = {}
    buffer = io.BytesIO()
    image.save(buffer, "PNG", compress_level=1)
    return buffer.getvalue()


def encode_thumbnail(image: Image.Image, side: int) -> bytes:
    """A WebP thumbnail, longest side at most ``side``, no metadata."""
    scale = min(1.0, side / max(image.size))
    size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    # resize() makes a new image of the small size; no full-size copy is made.
    rgb = image if image.mode == "RGB" else image.convert("RGB")
    thumbnail = rgb.resize(size, Image.Resampling.LANCZOS, reducing_gap=3.0)
    thumbnail.info = {}
    buffer = io.BytesIO()
    thumbnail.save(buffer, "WEBP", quality=80)
    return buffer.getvalue()
