"""Whether an artifact's content is there: one probe per kind of location.

A probe is a callable ``probe(location) -> bool``. The core ships two: :func:`local_probe`
for paths and ``file://`` URIs, and :func:`http_probe` for ``http(s)://`` URLs (a GET that is
answered 200, which is how a local endpoint says it is alive). A backend brings probes for
its own schemes (the SageMaker backend's ``s3://`` probe comes in the ``services`` that
:func:`pcamflow.sagemaker.clients.services_for` returns), and :func:`by_scheme` makes one
probe of them all::

    >>> probe = by_scheme({"mem": lambda location: location == "mem://here"})
    >>> probe("mem://here"), probe("mem://gone")
    (True, False)

The pipeline runner builds its probe from ``services["probes"]`` (scheme -> probe).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from urllib.parse import urlparse

from pcamflow.errors import PcamflowError

__all__ = ["CORE_PROBES", "Probe", "by_scheme", "http_probe", "local_probe"]

Probe = Callable[[str], bool]
"""``probe(location) -> bool``: whether the content at a location is there."""


def local_probe(location: str) -> bool:
    """Whether a local path or ``file://`` URI exists."""
    parsed = urlparse(location)
    return Path(parsed.path if parsed.scheme == "file" else location).exists()


def http_probe(location: str, *, timeout: float = 2.0) -> bool:
    """Whether a GET of an ``http(s)://`` URL is answered 200 within ``timeout`` seconds."""
    import urllib.request  # only when asked: it pulls in http.client and ssl

    try:
        with urllib.request.urlopen(location, timeout=timeout) as reply:
            return bool(reply.status == 200)
    except OSError:  # refused, timed out, or an HTTP error status
        return False


CORE_PROBES: Mapping[str, Probe] = {
    "": local_probe,
    "file": local_probe,
    "http": http_probe,
    "https": http_probe,
}
"""The probes every run has, by URI scheme (``""``: a plain path)."""


def by_scheme(probes: Mapping[str, Probe] | None = None) -> Probe:
    """One probe that hands each location to the probe for its URI scheme.

    Args:
        probes: scheme -> probe, added to (or replacing) :data:`CORE_PROBES`.

    Returns:
        A probe that raises :class:`~pcamflow.errors.PcamflowError` for a location whose
        scheme has no probe.
    """
    table = {**CORE_PROBES, **(probes or {})}

    def probe(location: str) -> bool:
        scheme = urlparse(location).scheme
        try:
            chosen = table[scheme]
        except KeyError:
            raise PcamflowError(
                f"checking {location} needs a probe for {scheme}:// locations; pass "
                f"services={{'probes': {{{scheme!r}: probe}}}} (for s3://, the SageMaker "
                "backend's pcamflow.sagemaker.clients.services_for gives one)"
            ) from None
        return chosen(location)

    return probe
