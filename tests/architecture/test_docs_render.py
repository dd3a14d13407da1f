"""README.rst is the package's long description: PyPI (``twine check --strict``) refuses markup warnings.

``make wheel-check`` finds them too, but minutes into CI; this finds them in the edit-test loop.
"""

from __future__ import annotations

import io
from pathlib import Path

import pytest

docutils_core = pytest.importorskip("docutils.core")

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("name", ["README.rst", "CHANGELOG.rst"])
def test_renders_without_markup_warnings(name: str) -> None:
    messages = io.StringIO()
    docutils_core.publish_string(
        (REPO / name).read_text(),
        writer_name="null",
        settings_overrides={"report_level": 2, "halt_level": 5, "warning_stream": messages},
    )
    assert messages.getvalue() == "", messages.getvalue()
