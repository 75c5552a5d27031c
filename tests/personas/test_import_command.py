"""`studio_import_references`: one line per file, exit status 1 on any rejection,
no traceback, nothing stored for a rejected file."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from PIL import Image

from personas.models import ReferenceImage
from tests import images
from tests.personas.conftest import stored_files


def run(*args: str) -> tuple[str, CommandError | None]:
    out = io.StringIO()
    try:
        call_command("studio_import_references", *args, stdout=out, no_color=True)
    except CommandError as error:
        return out.getvalue(), error
    return out.getvalue(), None


def write(folder: Path, name: str, content: bytes) -> str:
    path = folder / name
    path.write_bytes(content)
    return str(path)


def test_good_files_are_accepted_one_line_each(bare_persona, tmp_path, media_root):
    paths = [
        write(tmp_path, "ada.png", images.png()),
        write(tmp_path, "ada.jpg", images.jpeg_with_orientation(6)),
        write(tmp_path, "ada.webp", images.webp((32, 32))),
    ]

    output, error = run(bare_persona.slug, *paths, "--role", "face")

    assert error is None
    lines = output.splitlines()
    assert len(lines) == 3
    assert all(
        line.startswith(f"accepted {path}: reference #")
        for line, path in zip(lines, paths, strict=True)
    )
    assert lines[1].endswith("48 x 64")
    references = list(bare_persona.references.all())
    assert {reference.role for reference in references} == {"face"}
    assert len(stored_files(media_root)) == 6


def test_awkward_files_are_stored_upright_in_rgb(bare_persona, tmp_path, media_root):
    samples = images.awkward_images()
    paths = [write(tmp_path, f"{n}-{s.name}", s.content) for n, s in enumerate(samples)]

    output, error = run(bare_persona.slug, *paths)

    assert error is None, output
    for reference in bare_persona.references.all():
        with reference.image.open("rb") as stored:
            image = Image.open(stored)
            assert (image.format, image.mode) == ("PNG", "RGB")
            assert not image.info.get("exif") and not image.info.get("icc_profile")
            assert image.size == (reference.width, reference.height)
    rotated = bare_persona.references.get(original_filename__endswith="rotated.jpg")
    assert (rotated.width, rotated.height) == (48, 64)


def test_hostile_files_are_rejected_with_reasons_and_leave_nothing(
    bare_persona, tmp_path, media_root
):
    samples = images.hostile_images()
    folder = tmp_path / "upload"
    folder.mkdir()
    paths = [write(folder, sample.name, sample.content) for sample in samples]
    good = write(tmp_path, "good.png", images.png((16, 16)))

    output, error = run(bare_persona.slug, *paths, good)

    assert error is not None and error.returncode == 1
    assert str(error) == (
        f"{len(samples)} of {len(samples) + 1} files were rejected; nothing was "
        "stored for them."
    )
    lines = output.splitlines()
    assert len(lines) == len(samples) + 1
    for line, sample, path in zip(lines, samples, paths, strict=False):
        assert line.startswith(f'rejected {path}: "{sample.name}" '), line
    assert lines[-1].startswith(f"accepted {good}")
    assert "Traceback" not in output
    reference = ReferenceImage.objects.get()
    assert stored_files(media_root) == {reference.image.name, reference.thumbnail.name}


def test_a_duplicate_is_rejected(bare_persona, tmp_path):
    path = write(tmp_path, "ada.png", images.png())
    run(bare_persona.slug, path)

    output, error = run(bare_persona.slug, write(tmp_path, "copy.png", images.png()))

    assert error.returncode == 1
    assert 'is already in the gallery of "Ada Lovelace"' in output


def test_missing_files_and_folders_are_rejections_not_tracebacks(
    bare_persona, tmp_path
):
    output, error = run(bare_persona.slug, str(tmp_path / "nowhere.png"), str(tmp_path))

    assert error.returncode == 1
    lines = output.splitlines()
    assert "could not be read (No such file or directory)" in lines[0]
    assert "could not be read (Is a directory)" in lines[1]


def test_control_characters_in_names_are_not_printed(bare_persona, tmp_path):
    path = write(tmp_path, "evil\x1b[2J.png", b"")

    output, _ = run(bare_persona.slug, path)

    assert "\x1b" not in output
    assert "evil?[2J.png" in output


def test_an_unknown_persona_is_an_error(db, tmp_path):
    output, error = run("nobody", write(tmp_path, "ada.png", images.png()))

    assert 'No persona has the slug "nobody"' in str(error)
    assert not ReferenceImage.objects.exists()


def test_an_unknown_role_is_refused_by_the_parser(bare_persona):
    with pytest.raises(CommandError, match="invalid choice"):
        call_command(
            "studio_import_references", bare_persona.slug, "x.png", "--role", "boss"
        )
