"""Test files built in memory: good images and every hostile kind we refuse.

Suites reuse these: the personas tests, and the hostile-input corpus of the
reliability suite. Good images carry a known pattern (left half red, right half
blue) so that orientation can be checked after upload. :func:`hostile_images`
lists each hostile file with the rejection ``code`` it must get.
"""

from __future__ import annotations

import io
import json
import pickle
import struct
import zipfile
import zlib
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageCms, PngImagePlugin
from safetensors.numpy import save as safetensors_save

RED = (220, 30, 30)
BLUE = (30, 30, 220)
ORIENTATION_TAG = 0x0112
EXIF_GPS_IFD = 0x8825


@dataclass(frozen=True)
class SampleFile:
    """A named file and what the studio must answer: None (accepted) or a code."""

    name: str
    content: bytes
    code: str | None
    description: str


def halves(size: tuple[int, int] = (64, 48), mode: str = "RGB") -> Image.Image:
    """Left half red, right half blue, in ``mode``."""
    image = Image.new("RGB", size, RED)
    image.paste(BLUE, (size[0] // 2, 0, size[0], size[1]))
    return image.convert(mode)


def encode(image: Image.Image, image_format: str, **options: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, image_format, **options)
    return buffer.getvalue()


def png(size: tuple[int, int] = (64, 48), **options: object) -> bytes:
    return encode(halves(size), "PNG", **options)


def jpeg(size: tuple[int, int] = (64, 48), **options: object) -> bytes:
    return encode(halves(size), "JPEG", quality=95, **options)


def webp(size: tuple[int, int] = (64, 48), **options: object) -> bytes:
    return encode(halves(size), "WEBP", lossless=True, **options)


def jpeg_with_orientation(orientation: int, size: tuple[int, int] = (64, 48)) -> bytes:
    """A JPEG whose pixels are stored sideways, with an EXIF orientation tag."""
    exif = Image.Exif()
    exif[ORIENTATION_TAG] = orientation
    return jpeg(size, exif=exif.tobytes())


def jpeg_with_gps_and_comment() -> bytes:
    """A JPEG carrying GPS EXIF and a comment, which must not survive upload."""
    exif = Image.Exif()
    exif[0x010F] = "Studio Test Camera"
    exif.get_ifd(EXIF_GPS_IFD)[2] = (51.0, 30.0, 0.0)
    return jpeg(exif=exif.tobytes(), comment=b"secret comment")


def png_with_text_and_icc(size: tuple[int, int] = (64, 48)) -> bytes:
    text = PngImagePlugin.PngInfo()
    text.add_text("Comment", "where this photo was taken")
    icc = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    return png(size, pnginfo=text, icc_profile=icc)


def cmyk_jpeg() -> bytes:
    return encode(halves(mode="CMYK"), "JPEG", quality=95)


def grey_16bit_png(value: int = 32768) -> bytes:
    pixels = np.full((48, 64), value, dtype=np.uint16)
    return encode(Image.fromarray(pixels), "PNG")


def palette_png_with_transparency() -> bytes:
    """Palette image: index 0 transparent, index 1 blue (left half transparent)."""
    image = Image.new("P", (64, 48), 0)
    image.putpalette([255, 0, 0, *BLUE] + [0] * 762)
    image.paste(1, (32, 0, 64, 48))
    return encode(image, "PNG", transparency=0)


def grey_alpha_png() -> bytes:
    """LA image: left half fully transparent, right half opaque black."""
    image = Image.new("LA", (64, 48), (0, 0))
    image.paste((0, 255), (32, 0, 64, 48))
    return encode(image, "PNG")


def animated(image_format: str, frames: int = 3) -> bytes:
    images = [halves().rotate(90 * index) for index in range(frames)]
    return encode(
        images[0], image_format, save_all=True, append_images=images[1:], duration=100
    )


def png_chunk(chunk_type: bytes, data: bytes) -> bytes:
    body = chunk_type + data
    return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))


def decompression_bomb_png(side: int = 30_000) -> bytes:
    """A real bomb: a ~100 KB PNG that decodes to ``side`` x ``side`` pixels."""
    row = b"\x00" + b"\x00" * (side // 8 + 1)
    compressor = zlib.compressobj(9)
    rows_per_chunk = 1000
    block = row * rows_per_chunk
    data = (
        b"".join(compressor.compress(block) for _ in range(side // rows_per_chunk))
        + compressor.flush()
    )
    header = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + png_chunk(b"IHDR", header)
        + png_chunk(b"IDAT", data)
        + png_chunk(b"IEND", b"")
    )


def zip_archive() -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("payload.html", "<script>alert(1)</script>")
    return buffer.getvalue()


def png_with_zip_inside() -> bytes:
    """A PNG whose private chunk holds a ZIP; the ZIP's comment swallows IEND.

    Every chunk is well formed, nothing follows IEND, and yet ZIP readers open it.
    """
    image = png()
    archive = bytearray(zip_archive())
    iend = png_chunk(b"IEND", b"")
    end_record = archive.rindex(b"PK\x05\x06")
    # The comment covers what follows the archive: the chunk's CRC, then IEND.
    archive[end_record + 20 : end_record + 22] = struct.pack("<H", 4 + len(iend))
    return image[: -len(iend)] + png_chunk(b"zzIP", bytes(archive)) + iend


def png_with_many_chunks(count: int = 1_001) -> bytes:
    """A PNG padded with thousands of empty private chunks (a parser-time bomb)."""
    image = png()
    header_end = 8 + 25
    return image[:header_end] + png_chunk(b"zzZz", b"") * count + image[header_end:]


def jpeg_with_fill_bytes(count: int = 2_000) -> bytes:
    """A JPEG whose first marker is preceded by a long run of 0xFF fill bytes."""
    image = jpeg()
    return image[:2] + b"\xff" * count + image[2:]


def svg_with_script() -> bytes:
    return (
        b'<?xml version="1.0"?>\n<svg xmlns="http://www.w3.org/2000/svg" '
        b'width="64" height="48"><script>alert(document.cookie)</script>'
        b'<rect width="64" height="48" fill="red"/></svg>'
    )


def gif() -> bytes:
    return encode(halves(), "GIF")


def hostile_images() -> list[SampleFile]:
    """Files every image entry point must refuse, with the code each must get."""
    good_png, good_jpeg, good_webp = png(), jpeg(), webp()
    return [
        SampleFile("empty.png", b"", "empty", "an empty file"),
        SampleFile(
            "half.png", good_png[: len(good_png) // 2], "truncated", "a PNG cut in half"
        ),
        SampleFile(
            "half.jpg",
            good_jpeg[: len(good_jpeg) // 2],
            "truncated",
            "a JPEG cut in half",
        ),
        SampleFile(
            "half.webp",
            good_webp[: len(good_webp) // 2],
            "truncated",
            "a WebP cut in half",
        ),
        SampleFile(
            "no-end.png", good_png[:-12], "truncated", "a PNG without its IEND chunk"
        ),
        SampleFile(
            "bad-crc.png",
            good_png[:45] + bytes([good_png[45] ^ 0xFF]) + good_png[46:],
            "corrupt",
            "a PNG with a damaged chunk",
        ),
        SampleFile(
            "bomb.png",
            decompression_bomb_png(),
            "too_many_pixels",
            "a 100 KB PNG of 900 million pixels",
        ),
        SampleFile("photo.jpg", good_png, "extension_mismatch", "PNG bytes named .jpg"),
        SampleFile(
            "photo.png", good_jpeg, "extension_mismatch", "JPEG bytes named .png"
        ),
        SampleFile("photo", good_png, "extension_mismatch", "no extension"),
        SampleFile(
            "photo.png.exe", good_png, "extension_mismatch", "a double extension"
        ),
        SampleFile(
            "zip-appended.png",
            good_png + zip_archive(),
            "polyglot",
            "a PNG followed by a ZIP archive",
        ),
        SampleFile(
            "html-appended.jpg",
            good_jpeg + b"<html><script>alert(1)</script></html>",
            "polyglot",
            "a JPEG followed by HTML",
        ),
        SampleFile(
            "zip-inside.png",
            png_with_zip_inside(),
            "polyglot",
            "a PNG whose private chunk makes it a valid ZIP too",
        ),
        SampleFile(
            "drawing.svg",
            svg_with_script(),
            "unsupported_format",
            "an SVG with a script",
        ),
        SampleFile(
            "drawing.png", svg_with_script(), "unsupported_format", "an SVG named .png"
        ),
        SampleFile(
            "page.png",
            b"<!DOCTYPE html><html><script>x()</script></html>",
            "unsupported_format",
            "HTML named .png",
        ),
        SampleFile(
            "animation.gif", animated("GIF"), "unsupported_format", "an animated GIF"
        ),
        SampleFile("still.gif", gif(), "unsupported_format", "a still GIF"),
        SampleFile(
            "animation.png", animated("PNG"), "animated", "an animated PNG (APNG)"
        ),
        SampleFile("animation.webp", animated("WEBP"), "animated", "an animated WebP"),
        SampleFile(
            "weights.png",
            pickle.dumps({"a": 1}),
            "unsupported_format",
            "pickled data named .png",
        ),
        SampleFile(
            "many-chunks.png",
            png_with_many_chunks(),
            "corrupt",
            "a PNG with a thousand empty private chunks",
        ),
        SampleFile(
            "fill-bytes.jpg",
            jpeg_with_fill_bytes(),
            "corrupt",
            "a JPEG with a long run of fill bytes",
        ),
        SampleFile(
            "nine-images.jpg",
            good_jpeg + jpeg((8, 8)) * 9,
            "corrupt",
            "a JPEG followed by nine more",
        ),
        SampleFile(
            "noise.jpg",
            b"\xff\xd8\xff" + bytes(range(256)) * 4,
            "corrupt",
            "JPEG magic followed by noise",
        ),
        SampleFile(
            "bitmap.png",
            encode(halves(), "BMP"),
            "unsupported_format",
            "a BMP named .png",
        ),
    ]


def awkward_images() -> list[SampleFile]:
    """Unusual but legitimate files the studio must accept (upright, RGB).

    Their pixels all differ, so one gallery can take them all.
    """
    return [
        SampleFile("cmyk.jpg", cmyk_jpeg(), None, "a CMYK JPEG"),
        SampleFile("grey16.png", grey_16bit_png(), None, "a 16-bit grey PNG"),
        SampleFile(
            "palette.png",
            palette_png_with_transparency(),
            None,
            "a palette PNG with a transparent colour",
        ),
        SampleFile("grey-alpha.png", grey_alpha_png(), None, "a grey+alpha PNG"),
        SampleFile(
            "rotated.jpg",
            jpeg_with_orientation(6),
            None,
            "a JPEG with EXIF orientation 6",
        ),
        SampleFile(
            "gps.jpg",
            jpeg_with_gps_and_comment(),
            None,
            "a JPEG with GPS EXIF and a comment",
        ),
        SampleFile(
            "text.png",
            png_with_text_and_icc((48, 48)),
            None,
            "a PNG with a text chunk and an ICC profile",
        ),
        SampleFile("PHOTO.JPEG", jpeg((56, 48)), None, "an upper-case extension"),
        SampleFile(
            "progressive.jpg",
            jpeg((64, 40), progressive=True),
            None,
            "a progressive JPEG",
        ),
        SampleFile(
            "lossy.webp", encode(halves(), "WEBP", quality=90), None, "a lossy WebP"
        ),
        SampleFile(
            "alpha.webp", encode(halves(mode="RGBA"), "WEBP"), None, "a WebP with alpha"
        ),
        SampleFile(
            "grey.jpg", encode(halves(mode="L"), "JPEG"), None, "a greyscale JPEG"
        ),
        SampleFile("bilevel.png", encode(halves(mode="1"), "PNG"), None, "a 1-bit PNG"),
    ]


def safetensors_lora(rank: int = 4) -> bytes:
    """A small, valid LoRA state dict in the diffusers/PEFT naming, for a
    layer of the tiny SD 1.5 model (64 features in and out)."""
    rng = np.random.default_rng(0)
    prefix = "unet.down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q"
    return safetensors_save(
        {
            f"{prefix}.lora_A.weight": rng.standard_normal((rank, 64), np.float32),
            f"{prefix}.lora_B.weight": np.zeros((64, rank), np.float16),
        },
        metadata={"format": "pt"},
    )


def safetensors_with_header(header: dict, data: bytes) -> bytes:
    """A safetensors file with an arbitrary (possibly lying) JSON header."""
    encoded = json.dumps(header).encode()
    return struct.pack("<Q", len(encoded)) + encoded + data


def pickled_checkpoint() -> bytes:
    """What torch.save writes (a ZIP holding a pickle): loading it runs code."""
    import torch

    buffer = io.BytesIO()
    torch.save({"lora_A.weight": torch.zeros(2, 2)}, buffer)
    return buffer.getvalue()


def legacy_pickled_checkpoint() -> bytes:
    """The pre-1.6 torch format: a bare pickle stream."""
    import torch

    buffer = io.BytesIO()
    torch.save(
        {"lora_A.weight": torch.zeros(2, 2)},
        buffer,
        _use_new_zipfile_serialization=False,
    )
    return buffer.getvalue()
