"""The one cattrs converter of pcamflow: settings, artifacts and fingerprints go through it.

Structuring is strict (an unknown key is an error, never ignored); unstructuring gives plain
JSON-ready values. Settings add their key-path error messages on top of it
(:mod:`pcamflow.config`).
"""

from __future__ import annotations

import cattrs

__all__ = ["converter"]

converter = cattrs.Converter(forbid_extra_keys=True)
