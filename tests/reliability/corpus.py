"""The hostile-input corpus: files built in code, each with what the studio owes.

Two kinds of file, for two kinds of entry point: ``IMAGE`` files are what staff
upload as references or ready-made control images, ``LORA`` files what they
upload as persona LoRA weights. Every file carries ``code``: the rejection code
its own kind of entry point must answer, or None when the file is awkward but
legitimate and must be *neutralised* instead (decoded, turned upright, stored
as a clean RGB PNG under a random name, every metadata byte dropped, DESIGN.md
decision 7). Through the other kind of entry point every file must be refused.

It builds on :mod:`tests.images` (the personas suite's hostile and awkward
images) and adds what that module lacks: oversized files, header-only bombs
for every format, broken PNG internals, foreign formats, spoofed names, EXIF
tricks, payloads hidden in metadata, and the whole LoRA corpus.
"""

from __future__ import annotations

import pickle
import struct
import zlib
from dataclasses import dataclass
from enum import Enum

from PIL import Image

from studio.conf import documented_defaults
from tests import images
from tests.images import (
    ORIENTATION_TAG,
    SampleFile,
    encode,
    jpeg,
    jpeg_with_orientation,
    png,
    png_chunk,
    safetensors_lora,
    safetensors_with_header,
    webp,
    zip_archive,
)

# Uploading the real 512 MB LoRA limit through the test client costs minutes;
# the LoRA tests lower STUDIO_MAX_LORA_BYTES to this and the oversized LoRA is
# one byte past it (the byte limit is a setting, the code path the same).
LORA_TEST_LIMIT = 1024 * 1024


class Kind(Enum):
    IMAGE = "image"
    LORA = "LoRA"


@dataclass(frozen=True)
class HostileFile:
    """A corpus file: ``code`` is the refusal its kind of entry point must give,
    None when it must be accepted neutralised."""

    kind: Kind
    name: str
    content: bytes
    code: str | None
    description: str

    @property
    def refused(self) -> bool:
        return self.code is not None


def _from_sample(sample: SampleFile) -> HostileFile:
    return HostileFile(
        Kind.IMAGE, sample.name, sample.content, sample.code, sample.description
    )


# --- Image builders ---------------------------------------------------------------


def _png_chunks(data: bytes) -> list[tuple[bytes, bytes]]:
    """(type, data) of every chunk of a well-formed PNG."""
    position, chunks = 8, []
    while position < len(data):
        (length,) = struct.unpack(">I", data[position : position + 4])
        chunk_type = data[position + 4 : position + 8]
        chunks.append((chunk_type, data[position + 8 : position + 8 + length]))
        position += 12 + length
    return chunks


def _png_from_chunks(chunks: list[tuple[bytes, bytes]]) -> bytes:
    return b"\x89PNG\r\n\x1a\n" + b"".join(
        png_chunk(chunk_type, data) for chunk_type, data in chunks
    )


def png_with_header(
    *, width: int = 64, height: int = 48, depth: int = 8, colour: int = 2
) -> bytes:
    """A PNG whose IHDR says anything, with valid CRCs and the small image's data."""
    header = struct.pack(">IIBBBBB", width, height, depth, colour, 0, 0, 0)
    chunks = _png_chunks(png())
    return _png_from_chunks([(b"IHDR", header), *chunks[1:]])


def png_with_image_data(idat: bytes) -> bytes:
    """A 64x48 PNG whose IDAT holds ``idat`` (CRC valid): the decoder must cope."""
    chunks = [chunk for chunk in _png_chunks(png()) if chunk[0] != b"IDAT"]
    return _png_from_chunks([chunks[0], (b"IDAT", idat), *chunks[1:]])


def png_with_private_chunk(size: int) -> bytes:
    """A valid PNG padded with a private ancillary chunk to ``size`` bytes."""
    image = png()
    padding = size - len(image) - 12
    chunks = _png_chunks(image)
    return _png_from_chunks([chunks[0], (b"prVt", b"\x00" * padding), *chunks[1:]])


def apng_claiming_frames(frames: int) -> bytes:
    """A still PNG with an animation control chunk that claims ``frames`` frames."""
    chunks = _png_chunks(png())
    control = struct.pack(">II", frames, 0)
    return _png_from_chunks([chunks[0], (b"acTL", control), *chunks[1:]])


def png_with_oversized_chunk_length() -> bytes:
    """A chunk header whose length field is past 2**31 (refused by the PNG spec)."""
    image = png()
    return image[:33] + struct.pack(">I", 0xFFFFFFF0) + b"tEXt" + image[41:]


def png_with_text(keyword: str, text: str) -> bytes:
    from PIL import PngImagePlugin

    info = PngImagePlugin.PngInfo()
    info.add_text(keyword, text)
    return png(pnginfo=info)


def rgb48_png() -> bytes:
    """A 16-bit-per-channel RGB PNG, written by hand (Pillow cannot write one)."""
    width, height = 64, 48
    red, blue = (
        struct.pack(">HHH", 56000, 7000, 7000),
        struct.pack(">HHH", 7000, 7000, 56000),
    )
    row = b"\x00" + red * (width // 2) + blue * (width // 2)
    header = struct.pack(">IIBBBBB", width, height, 16, 2, 0, 0, 0)
    return _png_from_chunks(
        [(b"IHDR", header), (b"IDAT", zlib.compress(row * height)), (b"IEND", b"")]
    )


def _jpeg_segment(marker: int, payload: bytes) -> bytes:
    return bytes([0xFF, marker]) + struct.pack(">H", len(payload) + 2) + payload


def jpeg_with_segments(*segments: bytes) -> bytes:
    """A valid JPEG with ``segments`` inserted right after its SOI."""
    image = jpeg()
    return image[:2] + b"".join(segments) + image[2:]


def jpeg_with_frame_size(width: int, height: int) -> bytes:
    """A JPEG whose frame header (SOF0) claims ``width`` x ``height``."""
    image = bytearray(jpeg())
    sof = image.index(b"\xff\xc0")
    image[sof + 5 : sof + 9] = struct.pack(">HH", height, width)
    return bytes(image)


def webp_claiming_size(width: int, height: int) -> bytes:
    """A lossless WebP whose VP8L header claims ``width`` x ``height``."""
    image = bytearray(webp())
    vp8l = image.index(b"VP8L") + 8
    bits = int.from_bytes(image[vp8l + 1 : vp8l + 5], "little")
    bits = (bits & ~0xFFFFFFF) | (width - 1) | ((height - 1) << 14)
    image[vp8l + 1 : vp8l + 5] = bits.to_bytes(4, "little")
    return bytes(image)


def webp_with_lying_riff_size() -> bytes:
    image = bytearray(webp())
    image[4:8] = struct.pack("<I", len(image) * 4)
    return bytes(image)


def exif_block(tiff: bytes) -> bytes:
    return _jpeg_segment(0xE1, b"Exif\x00\x00" + tiff)


def exif_ifd(entries: list[bytes], next_ifd: int = 0) -> bytes:
    """A big-endian TIFF header and one IFD at offset 8."""
    return (
        b"MM\x00*"
        + struct.pack(">I", 8)
        + struct.pack(">H", len(entries))
        + b"".join(entries)
        + struct.pack(">I", next_ifd)
    )


def orientation_entry(value: int) -> bytes:
    return struct.pack(">HHIHH", ORIENTATION_TAG, 3, 1, value, 0)


def jpeg_with_exif_thumbnail() -> bytes:
    """A JPEG whose EXIF carries a thumbnail of a *different* picture (a privacy
    leak: other tools show the thumbnail, not the pixels)."""
    hidden = encode(Image.new("RGB", (32, 32), (0, 200, 0)), "JPEG")
    # IFD0 with one tag (Artist "TEST") -> IFD1 with the thumbnail's offset and
    # length -> the thumbnail's bytes.
    ifd0 = struct.pack(">H", 1) + struct.pack(">HHII", 0x013B, 2, 4, 0x54455354)
    ifd1_offset = 8 + len(ifd0) + 4
    thumbnail_offset = ifd1_offset + 2 + 2 * 12 + 4
    ifd1 = (
        struct.pack(">H", 2)
        + struct.pack(">HHII", 0x0201, 4, 1, thumbnail_offset)
        + struct.pack(">HHII", 0x0202, 4, 1, len(hidden))
        + struct.pack(">I", 0)
    )
    tiff = b"MM\x00*" + struct.pack(">I", 8) + ifd0 + struct.pack(">I", ifd1_offset)
    return jpeg_with_segments(exif_block(tiff + ifd1 + hidden))


def jpeg_with_many_exif_segments(count: int = 60) -> bytes:
    """About 4 MB of EXIF: ``count`` maximal APP1 segments."""
    segment = exif_block(b"MM\x00*" + struct.pack(">I", 8) + b"\x00" * 65_000)
    return jpeg_with_segments(*([segment] * count))


def heic_like() -> bytes:
    return struct.pack(">I", 24) + b"ftypheic" + b"\x00\x00\x00\x00mif1heic"


def tiff_image() -> bytes:
    return encode(images.halves(), "TIFF")


def minimal_pdf() -> bytes:
    return b"%PDF-1.4\n1 0 obj<</Type/Catalog>>endobj\ntrailer<</Root 1 0 R>>\n%%EOF\n"


def image_corpus() -> list[HostileFile]:
    """Every image file, refused or neutralised."""
    good_png, good_jpeg, good_webp = png(), jpeg(), webp()
    upload_limit = documented_defaults()["MAX_UPLOAD_BYTES"]
    refused = [
        (
            "oversized.png",
            png_with_private_chunk(upload_limit + 1),
            "too_large",
            "a valid PNG one byte past the 20 MB upload limit",
        ),
        (
            "jpeg-bomb.jpg",
            jpeg_with_frame_size(65_500, 65_500),
            "too_many_pixels",
            "a 2 KB JPEG whose frame header claims 65500 x 65500 pixels",
        ),
        (
            "webp-bomb.webp",
            webp_claiming_size(16_384, 16_384),
            "too_many_pixels",
            "a WebP whose header claims 16384 x 16384 pixels",
        ),
        (
            "frame-bomb.png",
            apng_claiming_frames(2**31 - 1),
            "too_many_pixels",
            "a 64 x 48 PNG claiming two billion animation frames",
        ),
        (
            "zero-width.png",
            png_with_header(width=0),
            "corrupt",
            "a PNG header saying 0 pixels wide",
        ),
        (
            "bad-depth.png",
            png_with_header(depth=3),
            "corrupt",
            "a PNG header with an impossible bit depth",
        ),
        (
            "garbage-data.png",
            png_with_image_data(bytes(range(256)) * 8),
            "corrupt",
            "a PNG whose image data is not zlib",
        ),
        (
            "short-data.png",
            png_with_image_data(zlib.compress(b"\x00" * 10)),
            "corrupt",
            "a PNG whose image data ends after 10 bytes",
        ),
        (
            "huge-chunk.png",
            png_with_oversized_chunk_length(),
            "corrupt",
            "a PNG chunk length field past 2**31",
        ),
        (
            "zero-size.jpg",
            jpeg_with_frame_size(0, 0),
            "corrupt",
            "a JPEG frame header saying 0 x 0 pixels",
        ),
        (
            "lying-size.webp",
            webp_with_lying_riff_size(),
            "truncated",
            "a WebP whose RIFF header claims four times its size",
        ),
        (
            "jar-appended.jpg",
            good_jpeg + zip_archive(),
            "polyglot",
            "a JPEG followed by a ZIP (a GIFAR-style polyglot)",
        ),
        (
            "zip-appended.webp",
            good_webp + zip_archive(),
            "polyglot",
            "a WebP followed by a ZIP archive",
        ),
        (
            "pdf-appended.png",
            good_png + minimal_pdf(),
            "polyglot",
            "a PNG followed by a PDF",
        ),
        ("scan.png", tiff_image(), "unsupported_format", "a TIFF named .png"),
        ("document.jpg", minimal_pdf(), "unsupported_format", "a PDF named .jpg"),
        ("phone.png", heic_like(), "unsupported_format", "a HEIC header named .png"),
        (
            "setup.jpg",
            b"MZ\x90\x00" + b"\x00" * 60 + b"PE\x00\x00",
            "unsupported_format",
            "a Windows executable named .jpg",
        ),
        (
            "binary.png",
            b"\x7fELF\x02\x01\x01" + b"\x00" * 57,
            "unsupported_format",
            "an ELF executable named .png",
        ),
        ("zeros.png", b"\x00" * 4096, "unsupported_format", "4 KB of zero bytes"),
        (
            "weights-zip.png",
            images.pickled_checkpoint(),
            "unsupported_format",
            "torch.save output (a pickle in a ZIP) named .png",
        ),
        (
            "lora.png",
            safetensors_lora(),
            "unsupported_format",
            "safetensors weights named .png",
        ),
        (
            "photo\u202egnp.exe",
            good_png,
            "extension_mismatch",
            "a right-to-left override that shows the name as photo.exe→.png",
        ),
        (
            "photo.png ",
            good_png,
            "extension_mismatch",
            "a name ending in a space after .png",
        ),
        ("photo.webp", good_png, "extension_mismatch", "PNG bytes named .webp"),
    ]
    neutralised = [
        (
            "orientation-0.jpg",
            jpeg_with_orientation(0),
            "EXIF orientation 0 (out of range)",
        ),
        (
            "orientation-9.jpg",
            jpeg_with_orientation(9),
            "EXIF orientation 9 (out of range)",
        ),
        (
            "orientation-65535.jpg",
            jpeg_with_orientation(65535),
            "EXIF orientation 65535 (out of range)",
        ),
        (
            "huge-exif.jpg",
            jpeg_with_many_exif_segments(),
            "4 MB of EXIF in 60 APP1 segments",
        ),
        (
            "exif-thumbnail.jpg",
            jpeg_with_exif_thumbnail(),
            "an EXIF thumbnail showing a different picture",
        ),
        (
            "exif-past-end.jpg",
            jpeg_with_segments(exif_block(b"MM\x00*" + struct.pack(">I", 0xFFFFFF00))),
            "an EXIF IFD offset past the end of the file",
        ),
        (
            "exif-loop.jpg",
            jpeg_with_segments(
                exif_block(exif_ifd([orientation_entry(6)], next_ifd=8))
            ),
            "an EXIF IFD chain that loops onto itself",
        ),
        (
            "exif-count.jpg",
            jpeg_with_segments(
                exif_block(
                    exif_ifd([orientation_entry(6)])[:8]
                    + struct.pack(">H", 65535)
                    + orientation_entry(6)
                )
            ),
            "an EXIF IFD claiming 65535 entries",
        ),
        (
            "exif-garbage.jpg",
            jpeg_with_segments(exif_block(bytes(range(200)))),
            "an EXIF block of garbage",
        ),
        (
            "html-comment.jpg",
            jpeg_with_segments(_jpeg_segment(0xFE, b"<html><script>alert(1)</script>")),
            "HTML with a script in a JPEG comment",
        ),
        (
            "php-text.png",
            png_with_text("Comment", "<?php system($_GET['c']); ?>"),
            "PHP code in a PNG text chunk",
        ),
        ("shell.php.png", good_png, "a .php.png double extension (stored as .png)"),
        (
            "../../etc/passwd.png",
            png(size=(40, 40)),
            "a name that climbs out of the upload folder",
        ),
        ("rgb48.png", rgb48_png(), "a 16-bit-per-channel RGB PNG"),
    ]
    return [
        *(_from_sample(sample) for sample in images.hostile_images()),
        *(
            HostileFile(Kind.IMAGE, name, content, code, description)
            for name, content, code, description in refused
        ),
        *(_from_sample(sample) for sample in images.awkward_images()),
        *(
            HostileFile(Kind.IMAGE, name, content, None, description)
            for name, content, description in neutralised
        ),
    ]


# --- Files cheap to send and expensive to check (issue 13) -------------------------


def grey_png(width: int, height: int, *, depth: int = 8) -> bytes:
    """A real grey PNG of ``width`` x ``height`` (all black), written row by row
    so that even a 40 MP one costs the test little memory."""
    row = b"\x00" + b"\x00" * (width * depth // 8)
    compressor = zlib.compressobj(9)
    rows_per_block = max(1, 1_000_000 // len(row))
    idat = b"".join(
        compressor.compress(row * min(rows_per_block, height - start))
        for start in range(0, height, rows_per_block)
    ) + compressor.flush()
    header = struct.pack(">IIBBBBB", width, height, depth, 0, 0, 0, 0)
    return _png_from_chunks([(b"IHDR", header), (b"IDAT", idat), (b"IEND", b"")])


def png_with_empty_image_chunks(count: int) -> bytes:
    """A valid 64 x 48 PNG followed, before its end, by ``count`` empty IDAT
    chunks (12 bytes each: 1.6 million make 19 MB)."""
    chunks = _png_chunks(png())
    empty = png_chunk(b"IDAT", b"")
    head = _png_from_chunks(chunks[:-1])
    return head + empty * count + png_chunk(b"IEND", b"")


def progressive_jpeg_with_repeated_scan(side: int, repeats: int) -> bytes:
    """A progressive JPEG of ``side`` x ``side`` whose last scan is repeated
    ``repeats`` more times: each copy is another pass over every pixel."""
    image = Image.new("RGB", (side, side), (90, 120, 150))
    data = encode(image, "JPEG", progressive=True, quality=50)
    last_scan = data.rindex(b"\xff\xda")
    end = data.rindex(b"\xff\xd9")
    return data[:end] + data[last_scan:end] * repeats + data[end:]


def costly_images() -> list[HostileFile]:
    """The probe's reproductions, and the largest files the checks accept.

    Built on demand (not part of :func:`corpus`, which every collection of
    the suite builds): the progressive JPEG costs the test a second to make.
    """
    pixel_limit = documented_defaults()["MAX_UPLOAD_PIXELS"]
    width = 8_000
    refused = [
        (
            "wide-65535x1.png",
            grey_png(65_535, 1),
            "side_too_long",
            "a PNG of 65535 x 1 pixels (141 bytes; the probe's was 272)",
        ),
        (
            "tall-1x65535.png",
            grey_png(1, 65_535),
            "side_too_long",
            "a PNG of 1 x 65535 pixels",
        ),
        (
            "strip-10000x1.png",
            grey_png(10_000, 1),
            "aspect_ratio",
            "a PNG of 10000 x 1 pixels (every side allowed, the shape not)",
        ),
        (
            "rescanned.jpg",
            progressive_jpeg_with_repeated_scan(6_000, 990),
            "too_many_scans",
            "a progressive JPEG of 6000 x 6000 with its last scan repeated 990 times",
        ),
        (
            "empty-idat.png",
            png_with_empty_image_chunks(1_600_000),
            "too_many_chunks",
            "a 19 MB PNG of 1.6 million empty IDAT chunks",
        ),
        (
            "grey16-at-limit.png",
            grey_png(width, pixel_limit // width, depth=16),
            "too_much_memory",
            "a 16-bit grey PNG at the 40 MP pixel limit",
        ),
    ]
    accepted = [
        (
            "grey16-12mp.png",
            grey_png(4_000, 3_000, depth=16),
            "a 16-bit grey PNG of 12 megapixels",
        ),
        (
            "photo-12mp.jpg",
            encode(images.halves((4_032, 3_024)), "JPEG", quality=90),
            "a 12 MP JPEG, a phone photo's size",
        ),
        (
            "strip-1000x100.png",
            grey_png(1_000, 100),
            "a PNG of 1000 x 100 pixels, the widest shape accepted",
        ),
    ]
    return [
        *(
            HostileFile(Kind.IMAGE, name, content, code, description)
            for name, content, code, description in refused
        ),
        *(
            HostileFile(Kind.IMAGE, name, content, None, description)
            for name, content, description in accepted
        ),
    ]


# --- LoRA builders ----------------------------------------------------------------


def _tensor(dtype: str, shape: list[int], start: int, end: int) -> dict:
    return {"dtype": dtype, "shape": shape, "data_offsets": [start, end]}


LORA_KEY = "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q"


def lying_safetensors(**tensors: dict) -> bytes:
    """A header describing ``tensors`` (name -> entry) over 64 bytes of data."""
    return safetensors_with_header(
        {f"{LORA_KEY}.{name}.weight": entry for name, entry in tensors.items()},
        b"\x00" * 64,
    )


def raw_header(header: bytes, data: bytes = b"\x00" * 64) -> bytes:
    return struct.pack("<Q", len(header)) + header + data


def lora_with_empty_tensors(count: int) -> bytes:
    """A LoRA header describing ``count`` zero-size tensors (the probe's 89.6 MB
    header held 1.4 million): sound JSON, nothing to load, costly to parse."""
    entry = '{"dtype":"F16","shape":[0],"data_offsets":[0,0]}'
    header = (
        "{"
        + ",".join(
            f'"lora_te_{index}.alpha":{entry}'
            for index in range(count)
        )
        + "}"
    ).encode()
    return struct.pack("<Q", len(header)) + header


def lora_corpus() -> list[HostileFile]:
    """Every LoRA file: one sound file, and the hostile ones with their codes."""
    valid = safetensors_lora()
    pickled, legacy = images.pickled_checkpoint(), images.legacy_pickled_checkpoint()
    deep = b'{"a":' * 100_000 + b"1" + b"}" * 100_000
    refused = [
        ("empty.safetensors", b"", "empty", "an empty file"),
        (
            "oversized.safetensors",
            raw_header(b'{"__metadata__":{}}', b"\x00" * LORA_TEST_LIMIT),
            "too_large",
            "a file past the LoRA byte limit (lowered to 1 MB in the tests)",
        ),
        (
            "torch.safetensors",
            pickled,
            "pickled",
            "torch.save output (a pickle in a ZIP) named .safetensors",
        ),
        (
            "legacy.safetensors",
            legacy,
            "pickled",
            "a bare pre-1.6 torch pickle named .safetensors",
        ),
        (
            "plain-pickle.safetensors",
            pickle.dumps({"lora_A": [0.0]}),
            "pickled",
            "a Python pickle named .safetensors",
        ),
        ("weights.bin", valid, "pickled", "safetensors bytes named .bin"),
        ("weights.ckpt", pickled, "pickled", "a torch checkpoint (.ckpt)"),
        ("weights.pt", pickled, "pickled", "a torch checkpoint (.pt)"),
        ("weights.pth", legacy, "pickled", "a legacy torch checkpoint (.pth)"),
        ("lora.png", valid, "extension_mismatch", "safetensors named .png"),
        ("lora", valid, "extension_mismatch", "safetensors without an extension"),
        ("short.safetensors", b"\x10\x00\x00", "bad_header", "3 bytes"),
        (
            "length-max.safetensors",
            struct.pack("<Q", 2**64 - 1) + b"{}",
            "bad_header",
            "a header length of 2**64 - 1",
        ),
        (
            "length-past-end.safetensors",
            struct.pack("<Q", 4096) + b'{"a":1}',
            "bad_header",
            "a header length past the end of the file",
        ),
        (
            "not-json.safetensors",
            raw_header(b"this is not json"),
            "bad_header",
            "a header that is not JSON",
        ),
        (
            "not-utf8.safetensors",
            raw_header(b'{"\xff\xfe": 1}'),
            "bad_header",
            "a header that is not UTF-8",
        ),
        (
            "nul-header.safetensors",
            raw_header(b'{"a"\x00: 1}'),
            "bad_header",
            "a header with a NUL byte",
        ),
        (
            "array.safetensors",
            raw_header(b"[1, 2, 3]"),
            "bad_header",
            "a header that is a JSON array",
        ),
        (
            "deep.safetensors",
            raw_header(deep),
            "bad_header",
            "a header nested 100000 levels deep",
        ),
        (
            "past-end.safetensors",
            lying_safetensors(
                lora_A=_tensor("F32", [4, 4], 0, 64),
                lora_B=_tensor("F32", [4, 4], 64, 128),
            ),
            "bad_header",
            "tensor offsets past the end of the data",
        ),
        (
            "overlap.safetensors",
            lying_safetensors(
                lora_A=_tensor("F32", [4, 2], 0, 32),
                lora_B=_tensor("F32", [4, 2], 16, 48),
            ),
            "bad_header",
            "two tensors sharing bytes",
        ),
        (
            "gap.safetensors",
            lying_safetensors(
                lora_A=_tensor("F32", [2, 2], 0, 16),
                lora_B=_tensor("F32", [2, 2], 48, 64),
            ),
            "bad_header",
            "a gap between two tensors",
        ),
        (
            "shape.safetensors",
            lying_safetensors(lora_A=_tensor("F32", [5, 5], 0, 64)),
            "bad_header",
            "a shape that needs 100 bytes over 64",
        ),
        (
            "dtype.safetensors",
            lying_safetensors(lora_A=_tensor("Q4", [16], 0, 64)),
            "bad_header",
            "an unknown dtype",
        ),
        (
            "negative.safetensors",
            lying_safetensors(lora_A=_tensor("F32", [-4, -4], 0, 64)),
            "bad_header",
            "a negative shape",
        ),
        (
            "overflow.safetensors",
            lying_safetensors(lora_A=_tensor("F32", [2**62, 2**62, 0], 0, 64)),
            "bad_header",
            "a shape of 2**124 elements",
        ),
        (
            "float-offsets.safetensors",
            lying_safetensors(lora_A=_tensor("F32", [16], 0.0, 64.0)),
            "bad_header",
            "offsets written as floats",
        ),
        (
            "extra-key.safetensors",
            lying_safetensors(lora_A={**_tensor("F32", [16], 0, 64), "exec": "rm -rf"}),
            "bad_header",
            "a tensor entry with an extra key",
        ),
        (
            "duplicate.safetensors",
            raw_header(
                b'{"lora_A": {"dtype":"F32","shape":[16],"data_offsets":[0,64]},'
                b'"lora_A": {"dtype":"F32","shape":[16],"data_offsets":[0,64]}}'
            ),
            "bad_header",
            "the same tensor named twice",
        ),
        (
            "metadata.safetensors",
            safetensors_with_header(
                {
                    "__metadata__": {"format": ["pt"]},
                    "lora_A": _tensor("F32", [16], 0, 64),
                },
                b"\x00" * 64,
            ),
            "bad_header",
            "__metadata__ holding a list",
        ),
        (
            "no-tensors.safetensors",
            raw_header(b'{"__metadata__": {}}', b""),
            "bad_header",
            "a header without tensors",
        ),
        (
            "fp8-scales.safetensors",
            safetensors_with_header(
                {f"{LORA_KEY}.lora_A.weight": _tensor("F8_E8M0", [4, 16], 0, 64)},
                b"\x7f" * 64,
            ),
            "unsupported_dtype",
            "a LoRA weight in F8_E8M0 (a scale format diffusers cannot load)",
        ),
        (
            "wide.safetensors",
            safetensors_with_header(
                {
                    f"{LORA_KEY}.lora_A.weight": _tensor("F32", [16], 0, 64),
                    f"{LORA_KEY}.lora_B.weight": _tensor("F32", [0, 1_000_000], 64, 64),
                },
                b"\x00" * 64,
            ),
            "bad_shape",
            "a tensor 1,000,000 wide, wider than any layer of any family",
        ),
        (
            "unknown-layer.safetensors",
            safetensors_with_header(
                {
                    f"{LORA_KEY}.lora_A.weight": _tensor("F32", [8], 0, 32),
                    "unet.no_such_block.0.lora_A.weight": _tensor("F32", [8], 32, 64),
                },
                b"\x00" * 64,
            ),
            "unknown_layer",
            "a LoRA key that names no layer of the model",
        ),
        (
            "full-model.safetensors",
            safetensors_with_header(
                {"unet.conv_in.weight": _tensor("F32", [16], 0, 64)}, b"\x00" * 64
            ),
            "not_lora",
            "a model's weights, not a LoRA",
        ),
    ]
    return [
        *(
            HostileFile(Kind.LORA, name, content, code, description)
            for name, content, code, description in refused
        ),
        HostileFile(Kind.LORA, "persona.safetensors", valid, None, "a sound LoRA"),
    ]


def corpus() -> list[HostileFile]:
    """The whole corpus: every image file, then every LoRA file."""
    return [*image_corpus(), *lora_corpus()]
