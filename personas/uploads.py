"""The one validation path for uploaded images (DESIGN.md decision 7).

Every image that enters the studio (admin uploads, the import command, ready-made
control images) goes through :func:`validate_image_upload`, which checks in this
order and refuses with an :class:`UploadRejected` carrying a ``code``:

``empty``, ``too_large``
    the byte count, before anything is parsed;
``unsupported_format``
    the format sniffed from the bytes is not PNG, JPEG or WebP (SVG, GIF, ZIP,
    pickle, HTML... are named in the message);
``extension_mismatch``
    the file name's extension does not agree with the sniffed format;
``truncated``, ``corrupt``
    the container structure, walked before any decoder runs: PNG chunks with
    their CRCs, JPEG segments and scans, WebP RIFF chunks;
``polyglot``
    the file is more than one image: bytes after the image's end (other than
    zero padding, or further JPEG images as in MPO and Ultra HDR files), or a
    ZIP archive readable from the same bytes. Payloads hidden *inside*
    metadata (an HTML comment in a JPEG) are not refused: re-encoding drops
    every metadata chunk, so they never reach storage;
``too_many_chunks``, ``too_many_scans``
    more PNG chunks (of every kind, image data included) than
    ``STUDIO_MAX_PNG_CHUNKS``, or more JPEG scans (SOS markers) than
    ``STUDIO_MAX_JPEG_SCANS``: each costs a pass of the decoder;
``too_many_pixels``
    width x height x frames, read from the header, past ``STUDIO_MAX_UPLOAD_PIXELS``;
``animated``
    more than one frame: a reference is a still image;
``side_too_long``, ``aspect_ratio``
    a side longer than ``STUDIO_MAX_UPLOAD_SIDE``, or the long side more than
    ``STUDIO_MAX_UPLOAD_ASPECT_RATIO`` times the short one (65535 x 1);
``too_much_memory``
    the memory the checks need, estimated from the header (size, channels and
    bit depth), is past ``STUDIO_UPLOAD_CHECK_MEMORY_MB``; or the decoder ran
    out of that memory;
``decompression_bomb``
    Pillow's own guard (``Image.MAX_IMAGE_PIXELS``) fired: its warning is
    turned into an error here, so the effective limit is the lower of the two;
``too_slow``
    decoding took more than ``STUDIO_UPLOAD_CHECK_CPU_SECONDS`` of CPU.

Everything above ``too_much_memory`` reads headers only. An accepted image is
then decoded in a child process under that CPU and memory budget
(:mod:`personas.decoding`), turned upright (EXIF orientation), flattened to RGB
(transparency composited on white; CMYK, 16-bit, palette and grey converted) and
re-encoded as PNG without any metadata; the result carries the SHA-256 of those
bytes and a WebP thumbnail. Storage names are random (``personas.models``).
"""

from __future__ import annotations

import hashlib
import io
import math
import re
import struct
import unicodedata
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import PurePosixPath, PureWindowsPath
from typing import IO

from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.files.base import ContentFile, File
from PIL import Image

from personas import decoding

PNG, JPEG, WEBP = "PNG", "JPEG", "WEBP"
FORMAT_LABELS = {PNG: "PNG", JPEG: "JPEG", WEBP: "WebP"}
FORMAT_EXTENSIONS = {PNG: (".png",), JPEG: (".jpg", ".jpeg"), WEBP: (".webp",)}
ACCEPTED_CONTENT_TYPES = "image/png,image/jpeg,image/webp"

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_JPEG_SOF_MARKERS = frozenset(
    {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}
)
# In entropy-coded JPEG data 0xFF is followed by 0x00 (stuffing), a restart
# marker or fill; anything else is the next marker.
_JPEG_NEXT_MARKER = re.compile(rb"\xff[^\x00\xd0-\xd7\xff]")
# A marker may be preceded by any number of 0xFF fill bytes.
_JPEG_MARKER = re.compile(rb"\xff+([^\xff])")
_ZERO_PADDING = re.compile(rb"\x00*")
_DISPLAY_NAME_LENGTH = 80
# Structural limits far above real files: a crafted file made of millions of
# tiny chunks, segments or fill bytes costs seconds of CPU in any parser. PNG
# chunks and JPEG scans have their own settings.
_MAX_CHUNKS = 1_000
_MAX_JPEG_FILL_BYTES = 1_024
_MAX_JPEG_IMAGES = 8


class UploadRejected(ValidationError):
    """An upload the studio refuses; ``code`` says why, the message what to do.

    ``check_cost`` is what the bounded decode spent (None when the file was
    refused from its header alone).
    """

    check_cost: decoding.Cost | None = None


def printable(text: str) -> str:
    """``text`` with control and undecodable characters shown as "?"."""
    return "".join(
        "?" if unicodedata.category(char).startswith("C") else char for char in text
    )


def display_name(name: str | None) -> str:
    """The file's base name, safe to print: no folders, no control characters."""
    base = PureWindowsPath(PurePosixPath(name or "").name).name or "(unnamed file)"
    shown = printable(base)
    if len(shown) > _DISPLAY_NAME_LENGTH:
        shown = shown[: _DISPLAY_NAME_LENGTH - 1] + "…"
    return shown


def check_size(size: int, *, name: str, limit: int) -> None:
    """Refuse an empty file or one past ``limit`` bytes (every upload's first check)."""
    if size == 0:
        raise UploadRejected(
            '"%(name)s" is empty (0 bytes): choose the file again; the copy you '
            "picked may not have finished downloading.",
            code="empty",
            params={"name": name},
        )
    if size > limit:
        raise UploadRejected(
            '"%(name)s" is larger than the %(limit)s the studio accepts: make it '
            "smaller and upload it again.",
            code="too_large",
            params={"name": name, "limit": _size_text(limit)},
        )


def _size_text(size: int) -> str:
    megabyte = 1024 * 1024
    return (
        f"{round(size / megabyte, 1):g} MB" if size >= megabyte else f"{size:,} bytes"
    )


def _read_limited(file: File | IO[bytes], *, name: str, limit: int) -> bytes:
    """Read a whole upload after :func:`check_size`; never more than ``limit + 1``
    bytes, so an oversized file never sits in memory whole."""
    file.seek(0)
    data = file.read(limit + 1)
    check_size(len(data), name=name, limit=limit)
    return data


@dataclass(frozen=True)
class _Structure:
    """What the container says before any decoder runs.

    ``stored_bytes`` is what one decoded pixel takes in Pillow (multi-band
    modes take four bytes whatever their depth); ``sixteen_bit_grey`` and
    ``alpha`` name the costlier conversions to RGB.
    """

    width: int
    height: int
    frames: int
    end: int
    stored_bytes: int = 4
    sixteen_bit_grey: bool = False
    alpha: bool = False


class _Malformed(Exception):
    """The container is broken; ``truncated`` tells a short file from a bad one."""

    def __init__(self, problem: str, *, truncated: bool = False) -> None:
        super().__init__(problem)
        self.truncated = truncated


class _TooComplex(Exception):
    """The container is sound but has more parts than the studio decodes."""

    def __init__(self, code: str, count: str, limit: int, setting: str) -> None:
        super().__init__(count)
        self.code, self.count, self.limit, self.setting = code, count, limit, setting


def sniff_format(data: bytes) -> str | None:
    """PNG, JPEG or WEBP from the magic bytes; None for anything else."""
    if data.startswith(_PNG_SIGNATURE):
        return PNG
    if data.startswith(b"\xff\xd8\xff"):
        return JPEG
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return WEBP
    return None


def _describe_unsupported(data: bytes) -> str:
    head = data[:1024]
    text = head.lstrip(b"\xef\xbb\xbf \t\r\n").lower()
    if head.startswith((b"GIF87a", b"GIF89a")):
        return "a GIF image"
    if b"<svg" in text:
        return "an SVG drawing"
    if text.startswith((b"<!doctype html", b"<html")) or b"<script" in text:
        return "an HTML document"
    if text.startswith(b"<?xml"):
        return "an XML document"
    if head.startswith(b"PK\x03\x04"):
        return "a ZIP archive"
    if head[:1] == b"\x80" and head[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05"):
        return "pickled Python data"
    if head.startswith(b"%PDF"):
        return "a PDF document"
    if head.startswith(b"BM"):
        return "a BMP image"
    if head.startswith((b"II*\x00", b"MM\x00*")):
        return "a TIFF image"
    if head[4:8] == b"ftyp":
        return "a HEIC/AVIF image or a video"
    return "not an image format the studio knows"


def _png_structure(data: bytes) -> _Structure:
    view = memoryview(data)
    position, size, frames = len(_PNG_SIGNATURE), None, 1
    has_image_data, chunks, other_chunks = False, 0, 0
    chunk_limit = settings.STUDIO_MAX_PNG_CHUNKS
    depth = colour = 0
    transparency = False
    while True:
        chunks += 1
        if chunks > chunk_limit:
            raise _TooComplex(
                "too_many_chunks",
                f"more than {chunk_limit:,} PNG chunks",
                chunk_limit,
                "STUDIO_MAX_PNG_CHUNKS",
            )
        if position + 8 > len(data):
            raise _Malformed("it ends before the PNG's end chunk", truncated=True)
        length, chunk_type = struct.unpack(">I4s", data[position : position + 8])
        data_start, data_end = position + 8, position + 8 + length
        if length > 0x7FFFFFFF or not chunk_type.isalpha():
            raise _Malformed("a PNG chunk header is invalid")
        if data_end + 4 > len(data):
            raise _Malformed("it ends inside a PNG chunk", truncated=True)
        (crc,) = struct.unpack(">I", data[data_end : data_end + 4])
        if zlib.crc32(view[position + 4 : data_end]) != crc:
            raise _Malformed(f"the PNG chunk {chunk_type.decode()} is damaged")
        chunk = view[data_start : min(data_end, data_start + 13)]
        if size is None:
            if chunk_type != b"IHDR" or length != 13:
                raise _Malformed("it does not start with a PNG header chunk")
            size = struct.unpack(">II", chunk[:8])
            depth, colour = chunk[8], chunk[9]
        elif chunk_type == b"tRNS":
            transparency = True
        elif chunk_type == b"acTL" and length == 8:
            frames = max(1, struct.unpack(">I", chunk[:4])[0])
        elif chunk_type == b"IDAT":
            has_image_data = True
        elif chunk_type == b"IEND":
            if not has_image_data:
                raise _Malformed("it has no PNG image data")
            grey = colour == 0
            return _Structure(
                size[0],
                size[1],
                frames,
                data_end + 4,
                # Grey and palette images keep one byte a pixel, 16-bit grey two.
                stored_bytes=(2 if depth == 16 else 1) if colour in (0, 3) else 4,
                sixteen_bit_grey=grey and depth == 16,
                alpha=colour in (4, 6) or transparency,
            )
        if chunk_type not in (b"IDAT", b"fdAT"):
            other_chunks += 1
            if other_chunks > _MAX_CHUNKS:
                raise _Malformed(f"it has more than {_MAX_CHUNKS:,} PNG chunks")
        position = data_end + 4


def _jpeg_end(
    data: bytes, start: int
) -> tuple[int, tuple[int, int] | None, int]:
    """Walk one JPEG from its SOI; return its end, frame size and channels."""
    position, size, channels, scans = start + 2, None, 1, 0
    scan_limit = settings.STUDIO_MAX_JPEG_SCANS
    for _ in range(_MAX_CHUNKS):
        found = _JPEG_MARKER.match(data, position)
        if found is None:
            if position < len(data) and data[position] != 0xFF:
                raise _Malformed("a JPEG segment is out of place")
            raise _Malformed("it ends before the JPEG's end marker", truncated=True)
        if found.end() - position > _MAX_JPEG_FILL_BYTES:
            raise _Malformed("it has a run of JPEG fill bytes")
        marker, position = found[1][0], found.end()
        if marker == 0xD9:
            return position, size, channels
        if 0xD0 <= marker <= 0xD7 or marker == 0x01:
            continue
        if marker == 0xD8:
            raise _Malformed("a JPEG starts again inside itself")
        if position + 2 > len(data):
            raise _Malformed("it ends inside a JPEG segment", truncated=True)
        (length,) = struct.unpack(">H", data[position : position + 2])
        if length < 2:
            raise _Malformed("a JPEG segment length is invalid")
        segment_end = position + length
        if segment_end > len(data):
            raise _Malformed("it ends inside a JPEG segment", truncated=True)
        if marker in _JPEG_SOF_MARKERS and size is None:
            if length < 8:
                raise _Malformed("the JPEG frame header is invalid")
            height, width = struct.unpack(">HH", data[position + 3 : position + 7])
            size, channels = (width, height), data[position + 7]
        position = segment_end
        if marker == 0xDA:
            # Each scan of a progressive JPEG is a pass over every pixel.
            scans += 1
            if scans > scan_limit:
                raise _TooComplex(
                    "too_many_scans",
                    f"more than {scan_limit:,} JPEG scans",
                    scan_limit,
                    "STUDIO_MAX_JPEG_SCANS",
                )
            if size is None:
                raise _Malformed("the JPEG has image data before its frame header")
            next_marker = _JPEG_NEXT_MARKER.search(data, position)
            if next_marker is None:
                raise _Malformed("it ends inside the JPEG image data", truncated=True)
            position = next_marker.start()
    raise _Malformed(f"it has more than {_MAX_CHUNKS:,} JPEG segments")


def _jpeg_structure(data: bytes) -> _Structure:
    end, size, channels = _jpeg_end(data, 0)
    if size is None:
        raise _Malformed("the JPEG has no frame header")
    stored_bytes = 1 if channels == 1 else 4
    # Multi-picture JPEGs (MPO, Ultra HDR gain maps) append whole JPEG images;
    # only the first is decoded, the others are walked so nothing else hides there.
    for _ in range(_MAX_JPEG_IMAGES):
        next_start = _ZERO_PADDING.match(data, end).end()
        if not data.startswith(b"\xff\xd8\xff", next_start):
            return _Structure(size[0], size[1], 1, end, stored_bytes=stored_bytes)
        end, _, _ = _jpeg_end(data, next_start)
    raise _Malformed(f"it holds more than {_MAX_JPEG_IMAGES} JPEG images")


def _webp_structure(data: bytes) -> _Structure:
    if len(data) < 20:
        raise _Malformed("it ends inside the WebP header", truncated=True)
    riff_end = 8 + struct.unpack("<I", data[4:8])[0]
    if riff_end > len(data):
        raise _Malformed("it is shorter than its WebP header says", truncated=True)
    position, size, animated, animation_frames, chunks = 12, None, False, 0, 0
    alpha = False
    while position + 8 <= riff_end:
        chunks += 1
        if chunks > _MAX_CHUNKS:
            raise _Malformed(f"it has more than {_MAX_CHUNKS:,} WebP chunks")
        chunk_type = data[position : position + 4]
        (length,) = struct.unpack("<I", data[position + 4 : position + 8])
        # The canvas size is in a chunk's first 10 bytes; nothing more is read.
        chunk = data[position + 8 : position + 8 + min(length, 10)]
        if position + 8 + length > riff_end:
            raise _Malformed(f"the WebP chunk {chunk_type!r} runs past the file")
        if size is None:
            size, animated, alpha = _webp_canvas(chunk_type, chunk)
        elif chunk_type == b"ANMF":
            animation_frames += 1
        position += 8 + length + (length & 1)
    if size is None:
        raise _Malformed("it has no WebP image data")
    frames = max(1, animation_frames) if animated else 1
    return _Structure(size[0], size[1], frames, riff_end, alpha=alpha)


def _webp_canvas(
    chunk_type: bytes, chunk: bytes
) -> tuple[tuple[int, int], bool, bool]:
    """The canvas size from the first WebP chunk, whether it is animated, and
    whether it has an alpha channel."""
    if chunk_type == b"VP8X" and len(chunk) >= 10:
        width = 1 + int.from_bytes(chunk[4:7], "little")
        height = 1 + int.from_bytes(chunk[7:10], "little")
        return (width, height), bool(chunk[0] & 0x02), bool(chunk[0] & 0x10)
    if chunk_type == b"VP8 " and len(chunk) >= 10 and chunk[3:6] == b"\x9d\x01\x2a":
        width, height = struct.unpack("<HH", chunk[6:10])
        return (width & 0x3FFF, height & 0x3FFF), False, False
    if chunk_type == b"VP8L" and len(chunk) >= 5 and chunk[0] == 0x2F:
        bits = int.from_bytes(chunk[1:5], "little")
        size = ((bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1)
        return size, False, bool(bits & (1 << 28))
    raise _Malformed("its first WebP chunk is not an image")


_STRUCTURE_READERS = {PNG: _png_structure, JPEG: _jpeg_structure, WEBP: _webp_structure}


def _is_zip_archive(data: bytes) -> bool:
    try:
        with zipfile.ZipFile(io.BytesIO(data)):
            return True
    except Exception:  # noqa: BLE001 - any failure to read a ZIP means "not a ZIP"
        return False


def encode_thumbnail(image: Image.Image) -> bytes:
    """A WebP thumbnail, longest side ``STUDIO_THUMBNAIL_SIZE``, no metadata."""
    return decoding.encode_thumbnail(image, settings.STUDIO_THUMBNAIL_SIZE)


class ValidatedImage(ContentFile):
    """An accepted upload: clean PNG bytes plus what the gallery records about it.

    It is a Django file, so it can be handed to a model ``ImageField`` as is.
    """

    def __init__(
        self,
        content: bytes,
        *,
        original_name: str,
        source_format: str,
        width: int,
        height: int,
        thumbnail: bytes,
        check_cost: decoding.Cost | None = None,
    ) -> None:
        super().__init__(content, name=f"{PurePosixPath(original_name).stem}.png")
        self.check_cost = check_cost
        self.original_name = original_name
        self.source_format = source_format
        self.width = width
        self.height = height
        self.thumbnail = thumbnail
        self.sha256 = hashlib.sha256(content).hexdigest()


def validate_image_upload(file: File | IO[bytes], *, name: str = "") -> ValidatedImage:
    """Check an uploaded image and return it cleaned; raise UploadRejected if not.

    ``name`` defaults to ``file.name``. A ValidatedImage is returned unchanged,
    so callers may validate early (a form field) and again (a service) for free.
    """
    if isinstance(file, ValidatedImage):
        return file
    name = display_name(name or getattr(file, "name", ""))
    data = _read_limited(file, name=name, limit=settings.STUDIO_MAX_UPLOAD_BYTES)
    image_format = _sniff_accepted_format(data, name)
    _check_extension(image_format, name)
    structure = _read_structure(data, image_format, name)
    _check_pixels(structure, name)
    _check_shape(structure, name)
    _check_memory(structure, name)
    decoded = _decode_within_budget(data, image_format, name, structure)
    return ValidatedImage(
        decoded.png,
        original_name=name,
        source_format=image_format,
        width=decoded.width,
        height=decoded.height,
        thumbnail=decoded.thumbnail,
        check_cost=decoded.cost,
    )


def _sniff_accepted_format(data: bytes, name: str) -> str:
    image_format = sniff_format(data)
    if image_format is None:
        raise UploadRejected(
            '"%(name)s" is %(kind)s, not a PNG, JPEG or WebP image: export it as '
            "PNG or JPEG and upload that.",
            code="unsupported_format",
            params={"name": name, "kind": _describe_unsupported(data)},
        )
    return image_format


def _check_extension(image_format: str, name: str) -> None:
    extension = PurePosixPath(name).suffix.lower()
    expected = FORMAT_EXTENSIONS[image_format]
    if extension not in expected:
        raise UploadRejected(
            '"%(name)s" contains a %(format)s image but %(naming)s: rename it to '
            "end in %(expected)s and upload it again.",
            code="extension_mismatch",
            params={
                "name": name,
                "format": FORMAT_LABELS[image_format],
                "naming": f'its name ends in "{extension}"'
                if extension
                else "its name has no extension",
                "expected": expected[0],
            },
        )


def _read_structure(data: bytes, image_format: str, name: str) -> _Structure:
    try:
        structure = _STRUCTURE_READERS[image_format](data)
    except _TooComplex as problem:
        raise UploadRejected(
            '"%(name)s" has %(count)s; the studio decodes at most %(limit)s '
            "(%(setting)s): re-save it in an image editor (as a baseline JPEG or a "
            "plain PNG) and upload that.",
            code=problem.code,
            params={
                "name": name,
                "count": problem.count,
                "limit": f"{problem.limit:,}",
                "setting": problem.setting,
            },
        ) from None
    except _Malformed as problem:
        code = "truncated" if problem.truncated else "corrupt"
        advice = (
            "upload the complete file"
            if problem.truncated
            else "re-save it in an image editor"
        )
        raise UploadRejected(
            '"%(name)s" is a damaged %(format)s file (%(problem)s): %(advice)s.',
            code=code,
            params={
                "name": name,
                "format": FORMAT_LABELS[image_format],
                "problem": problem,
                "advice": advice,
            },
        ) from None
    trailing = data[structure.end :]
    if trailing.strip(b"\x00") or _is_zip_archive(data):
        raise UploadRejected(
            '"%(name)s" is more than a %(format)s image: %(extra)s. Files that are '
            "also something else (a polyglot) are refused: re-save the image in an "
            "image editor and upload that.",
            code="polyglot",
            params={
                "name": name,
                "format": FORMAT_LABELS[image_format],
                "extra": f"{len(trailing)} bytes follow the end of the image"
                if trailing.strip(b"\x00")
                else "it is also a ZIP archive",
            },
        )
    if structure.width < 1 or structure.height < 1:
        raise UploadRejected(
            '"%(name)s" says it is %(width)s x %(height)s pixels: re-save it in an '
            "image editor.",
            code="corrupt",
            params={"name": name, "width": structure.width, "height": structure.height},
        )
    return structure


def _check_pixels(structure: _Structure, name: str) -> None:
    limit = settings.STUDIO_MAX_UPLOAD_PIXELS
    pixels = structure.width * structure.height * structure.frames
    if pixels > limit:
        raise UploadRejected(
            '"%(name)s" is %(width)s x %(height)s pixels%(frames)s, more than the '
            "%(limit)s pixels the studio accepts: scale it down and upload it again.",
            code="too_many_pixels",
            params={
                "name": name,
                "width": structure.width,
                "height": structure.height,
                "frames": f" x {structure.frames} frames"
                if structure.frames > 1
                else "",
                "limit": f"{limit:,}",
            },
        )
    if structure.frames > 1:
        raise UploadRejected(
            '"%(name)s" is animated (%(frames)s frames); a reference must be a still '
            "image: export the frame you want as PNG and upload that.",
            code="animated",
            params={"name": name, "frames": structure.frames},
        )


def _check_shape(structure: _Structure, name: str) -> None:
    """Refuse a side past the limit, or a shape too thin for any model input."""
    side_limit = settings.STUDIO_MAX_UPLOAD_SIDE
    long_side = max(structure.width, structure.height)
    short_side = min(structure.width, structure.height)
    params = {"name": name, "width": structure.width, "height": structure.height}
    if long_side > side_limit:
        raise UploadRejected(
            '"%(name)s" is %(width)s x %(height)s pixels; the studio accepts sides '
            "of at most %(limit)s pixels (STUDIO_MAX_UPLOAD_SIDE): scale it down "
            "and upload it again.",
            code="side_too_long",
            params={**params, "limit": f"{side_limit:,}"},
        )
    ratio_limit = settings.STUDIO_MAX_UPLOAD_ASPECT_RATIO
    if long_side > ratio_limit * short_side:
        raise UploadRejected(
            '"%(name)s" is %(width)s x %(height)s pixels, %(ratio)s times longer '
            "than it is wide; the studio accepts at most %(limit)s to 1 "
            "(STUDIO_MAX_UPLOAD_ASPECT_RATIO): crop it closer to a square and "
            "upload it again.",
            code="aspect_ratio",
            params={
                **params,
                "ratio": f"{long_side / short_side:,.0f}",
                "limit": f"{ratio_limit:g}",
            },
        )


def _memory_estimate(structure: _Structure) -> int:
    """Bytes the decode, the conversion to RGB and the PNG re-encode need at
    their peak, from the header alone (channels and bit depth counted)."""
    per_pixel = 2 * structure.stored_bytes  # decoded, and an EXIF-rotated copy
    if structure.sixteen_bit_grey:
        per_pixel += 2 + 1  # the 16-bit samples as an array, then 8-bit grey
    if structure.alpha:
        per_pixel += 4 + 4  # composited on a white RGBA background
    per_pixel += 4 + 3  # the RGB result and its PNG bytes
    return structure.width * structure.height * per_pixel


def _check_memory(structure: _Structure, name: str) -> None:
    budget = settings.STUDIO_UPLOAD_CHECK_MEMORY_MB * decoding.MEBIBYTE
    needed = _memory_estimate(structure)
    if needed > budget:
        raise UploadRejected(
            '"%(name)s" (%(width)s x %(height)s pixels) needs about %(needed)s MB '
            "to check, more than the %(limit)s MB the studio allows "
            "(STUDIO_UPLOAD_CHECK_MEMORY_MB): scale it down, or save it as 8-bit "
            "RGB, and upload it again.",
            code="too_much_memory",
            params={
                "name": name,
                "width": structure.width,
                "height": structure.height,
                "needed": f"{needed / decoding.MEBIBYTE:,.0f}",
                "limit": f"{budget // decoding.MEBIBYTE:,}",
            },
        )


# The PNG re-encode of an accepted image costs 0.06 to 0.11 s of CPU a megapixel
# (measured on the studio's 2-core CI machine, zlib level 1); it is given
# about 2.5 times that: one second per started block of 4 megapixels.
_ENCODE_PIXELS_PER_CPU_SECOND = 4_000_000


def _decode_within_budget(
    data: bytes, image_format: str, name: str, structure: _Structure
) -> decoding.Outcome:
    """Decode, orient, flatten and re-encode in a bounded child process."""
    pixels = structure.width * structure.height
    budget = decoding.Budget(
        cpu_seconds=settings.STUDIO_UPLOAD_CHECK_CPU_SECONDS,
        encode_cpu_seconds=math.ceil(pixels / _ENCODE_PIXELS_PER_CPU_SECOND),
        memory_bytes=settings.STUDIO_UPLOAD_CHECK_MEMORY_MB * decoding.MEBIBYTE,
        thumbnail_side=settings.STUDIO_THUMBNAIL_SIZE,
        pillow_max_pixels=Image.MAX_IMAGE_PIXELS,
    )
    outcome = decoding.decode_within_budget(data, image_format, budget)
    if outcome.status == "ok":
        return outcome
    label = FORMAT_LABELS[image_format]
    refusals = {
        "bomb": (
            "decompression_bomb",
            '"%(name)s" is too large to decode safely (a possible decompression '
            "bomb): scale it down and upload it again.",
        ),
        "corrupt": (
            "corrupt",
            '"%(name)s" could not be decoded as %(format)s (%(error)s): re-save '
            "it in an image editor and upload it again.",
        ),
        "memory": (
            "too_much_memory",
            '"%(name)s" needed more than the %(memory)s MB the studio allows for '
            "checking an image (STUDIO_UPLOAD_CHECK_MEMORY_MB): scale it down and "
            "upload it again.",
        ),
        "cpu": (
            "too_slow",
            '"%(name)s" took more than %(cpu)s s of CPU to decode '
            "(STUDIO_UPLOAD_CHECK_CPU_SECONDS): scale it down, or re-save it as a "
            "plain PNG or baseline JPEG, and upload it again.",
        ),
    }
    code, message = refusals[outcome.status]
    refusal = UploadRejected(
        message,
        code=code,
        params={
            "name": name,
            "format": label,
            "error": outcome.error,
            "memory": f"{budget.memory_bytes // decoding.MEBIBYTE:,}",
            "cpu": budget.cpu_seconds,
        },
    )
    refusal.check_cost = outcome.cost
    raise refusal
