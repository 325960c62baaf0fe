"""The README's configuration table matches the settings the CLI really has."""

from __future__ import annotations

import re
from pathlib import Path

from server.config import Settings

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_config_table_matches_settings():
    row = r"^\| `--([a-z-]+)` \| `(TIERKV_[A-Z_]+)` \| `([^`]*)` \|"
    rows = re.findall(row, README.read_text(), re.MULTILINE)
    documented = {flag: (env, default) for flag, env, default in rows}
    expected = {}
    for name, field in Settings.model_fields.items():
        default = getattr(field.default, "value", field.default)
        expected[name.replace("_", "-")] = (f"TIERKV_{name.upper()}", str(default))
    assert documented == expected
