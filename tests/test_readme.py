"""The README held to the code: its configuration table is the one `Settings` draws. Pure: reads files,
imports only the settings."""

from __future__ import annotations

from pathlib import Path

from streamrec.config import with_configuration_table

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"


def test_the_configuration_table_is_the_one_settings_draws() -> None:
    text = README.read_text(encoding="utf-8")
    assert text == with_configuration_table(text), (
        "README's configuration table differs from Settings' fields: run `streamrec config --readme README.md`")

