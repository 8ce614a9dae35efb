"""What the codec tests share: either implementation by name, and a NAS's secret and authenticator."""

from __future__ import annotations

import os
from types import ModuleType

import pytest

from radcore import packet

REQUIRE_EXTENSIONS = bool(os.environ.get("RADCORE_REQUIRE_EXTENSIONS"))
SECRET = b"s3cret-of-the-nas"
AUTH = bytes(range(0xA0, 0xB0))


def load_fastpath() -> ModuleType:
    """The compiled module; skips the test without it, fails it under RADCORE_REQUIRE_EXTENSIONS."""
    try:
        from radcore import _fastpath
    except ImportError as exc:
        if REQUIRE_EXTENSIONS:
            pytest.fail(f"RADCORE_REQUIRE_EXTENSIONS is set but radcore._fastpath does not import: {exc}")
        pytest.skip(f"radcore._fastpath is not built: {exc}")
    return _fastpath


def codec_for(name: str) -> ModuleType:
    """The implementation a test module's `codec` fixture runs: `py` (the reference) or `cy`."""
    return packet if name == "py" else load_fastpath()
