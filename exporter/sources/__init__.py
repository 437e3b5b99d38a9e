"""The upstream endpoints the exporter reads, one module each; `SOURCES` registers them in
exposition order. The interface a source implements is in `base.py`."""

from __future__ import annotations

from exporter.sources.base import Rendered, Request, Source
from exporter.sources.cascade import CASCADE
from exporter.sources.credits import CREDITS
from exporter.sources.team import TEAM
from exporter.sources.user_page import USER_PAGE

SOURCES: tuple[Source, ...] = (USER_PAGE, TEAM, CASCADE, CREDITS)

__all__ = ["SOURCES", "Rendered", "Request", "Source"]
