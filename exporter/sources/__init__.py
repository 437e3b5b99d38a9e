"""The upstream endpoints the exporter reads, a source each; `SOURCES` registers them in
exposition order. The interface a source implements is in `base.py`; UserPageAnalytics' replies
are read in `user_rows.py` and its people named in `people.py`, for the user page and the team."""

from __future__ import annotations

from exporter.sources.base import Rendered, Request, Source
from exporter.sources.cascade import CASCADE
from exporter.sources.credits import CREDITS
from exporter.sources.team import TEAM
from exporter.sources.user_page import USER_PAGE

SOURCES: tuple[Source, ...] = (USER_PAGE, TEAM, CASCADE, CREDITS)

__all__ = ["SOURCES", "Rendered", "Request", "Source"]
