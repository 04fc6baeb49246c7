"""The example plugin distribution (tests/plugins/pcamflow-example-plugin) that plugin tests use.

tox installs it. Under a bare ``pytest`` without it, the tests that need it skip with a
message that names the install step, and the rest of the suite runs.
"""

from __future__ import annotations

import importlib.util

import pytest

INSTALL = (
    "needs the example plugin: pip install -e tests/plugins/pcamflow-example-plugin "
    "(tox installs it)"
)

needs_example_plugin = pytest.mark.skipif(
    importlib.util.find_spec("pcamflow_example_plugin") is None, reason=INSTALL
)


def example_plugin():
    """The plugin's module, or a skip of the whole test module naming the install step."""
    return pytest.importorskip("pcamflow_example_plugin", reason=INSTALL)
