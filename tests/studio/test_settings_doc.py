"""docs/settings.md lists every setting, with the default that studio/conf.py has."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest

from studio.conf import BASE_DIR, documented_defaults

DEFAULTS = documented_defaults()
BASE_SETTINGS = BASE_DIR / "studio" / "settings" / "base.py"
ONE_LINE_SETTING = re.compile(
    r'^STUDIO_(\w+) = env\.(str|int|bool|float|json)\("STUDIO_\1", default=conf\.\1\b',
    re.M,
)

SETTINGS_DOC = BASE_DIR / "docs" / "settings.md"
SETTINGS_MODULES = sorted((BASE_DIR / "studio" / "settings").glob("*.py"))
ENV_READ = re.compile(r"""\benv(?:\.\w+)?\(\s*["']([A-Z][A-Z0-9_]*)["']""")


def documented_rows() -> dict[str, list[str]]:
    """Table rows of the settings page: variable name -> the row's cells."""
    rows = {}
    for line in SETTINGS_DOC.read_text().splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        match = re.fullmatch(r"`([A-Z][A-Z0-9_]*)`", cells[0])
        if line.startswith("|") and match:
            rows[match.group(1)] = cells
    return rows


def documented_default(value: Any) -> str:
    """A default as the page writes it: JSON, paths relative to the checkout."""

    def relative(item: Any) -> Any:
        return item.removeprefix(f"{BASE_DIR}/") if isinstance(item, str) else item

    shown = [relative(item) for item in value] if isinstance(value, list) else value
    return f"`{json.dumps(relative(shown))}`"


@pytest.mark.parametrize("name", sorted(DEFAULTS))
def test_every_studio_setting_is_documented_with_its_default(name):
    rows = documented_rows()
    assert f"STUDIO_{name}" in rows, f"STUDIO_{name} is missing from docs/settings.md"
    default_cell = rows[f"STUDIO_{name}"][1]
    assert default_cell == documented_default(DEFAULTS[name]), (
        f"docs/settings.md gives STUDIO_{name} the default {default_cell}; "
        f"studio/conf.py has {DEFAULTS[name]!r}"
    )


def test_every_default_is_read_by_one_explicit_typed_line():
    read = dict(ONE_LINE_SETTING.findall(BASE_SETTINGS.read_text()))
    assert set(read) == set(DEFAULTS) - {"VAR_DIR"}, (
        "studio/settings/base.py and studio/conf.py disagree on the settings: "
        f"{sorted(set(read) ^ (set(DEFAULTS) - {'VAR_DIR'}))}"
    )
    expected_type = {str: "str", int: "int", bool: "bool", float: "float",
                     list: "json", dict: "json"}
    wrong = {name: kind for name, kind in read.items()
             if expected_type[type(DEFAULTS[name])] != kind}
    assert not wrong, f"read with the wrong type: {wrong}"


def test_derived_defaults_follow_the_var_dir(tmp_path):
    moved = documented_defaults(tmp_path)
    assert moved["TINY_MODEL_DIR"] == str(tmp_path / "models" / "tiny")
    assert moved["MODEL_ROOTS"] == [str(tmp_path / "models")]


def test_every_environment_variable_the_settings_read_is_documented():
    read = {
        name
        for module in SETTINGS_MODULES
        for name in ENV_READ.findall(module.read_text())
    }
    assert {"DATABASE_URL", "REDIS_URL", "SECRET_KEY"} <= read
    missing = sorted(read - documented_rows().keys())
    assert not missing, f"not in docs/settings.md: {', '.join(missing)}"


def test_every_row_has_a_meaning():
    empty = [name for name, cells in documented_rows().items() if not cells[-1]]
    assert not empty, f"rows without a meaning: {', '.join(empty)}"
