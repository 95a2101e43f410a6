"""Mastodon-style cursor pagination: ``limit``, ``max_id``, ``since_id``, ``min_id`` and ``Link``.

Lists are bare JSON arrays. Cursors are row ids, so pages stay correct while rows are inserted
(an id never moves), and each page is one indexed range scan:

- ``max_id``: only rows with ``id < max_id`` (older, in a newest-first list);
- ``since_id``: only rows with ``id > since_id``, still starting from the newest;
- ``min_id``: only rows with ``id > min_id``, starting right after it (the "previous page").

Newest-first lists link ``rel="next"`` to ``max_id=<last id>`` and ``rel="prev"`` to
``min_id=<first id>``; oldest-first lists (comments) mirror that. ``next`` is given only when the
page is full (a shorter page is the end of the list). Links are references relative to the
gateway root, ``/function/<name>?...``, so they are right behind any proxy or host name.

A malformed ``limit`` or cursor, an empty one (``max_id=``) included, is a 400 with the
parameter named in ``details`` (openapi.yaml: digits); a ``limit`` above :data:`PAGE_LIMIT_MAX`
is clamped, as Mastodon does.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from urllib.parse import urlencode

from . import errors
from .jsonshape import parse_id

PAGE_LIMIT_DEFAULT = 20
PAGE_LIMIT_MAX = 100
CURSORS = ("max_id", "since_id", "min_id")


@dataclass(frozen=True)
class Page:
    """One page request: how many rows and which id range."""

    limit: int = PAGE_LIMIT_DEFAULT
    max_id: int | None = None
    since_id: int | None = None
    min_id: int | None = None

    @property
    def is_first(self) -> bool:
        """True for the default first page (no cursor at all): the cacheable one."""
        return self.max_id is None and self.since_id is None and self.min_id is None

    @property
    def lower(self) -> int:
        """Exclusive lower id bound (0 when none)."""
        return max(self.since_id or 0, self.min_id or 0)

    @property
    def upper(self) -> int | None:
        """Exclusive upper id bound (None when none)."""
        return self.max_id


def parse(args: Mapping[str, str]) -> Page:
    """Read ``limit`` and the cursors from query arguments; 400 when one is malformed."""
    args = dict(args.items())  # werkzeug's MultiDict.get raises (and catches) per missing key
    problems: dict[str, list[str]] = {}
    limit = PAGE_LIMIT_DEFAULT
    raw_limit = args.get("limit")
    if raw_limit is not None:
        parsed = parse_id(raw_limit.strip())
        if parsed is None:
            problems["limit"] = [f"must be an integer between 1 and {PAGE_LIMIT_MAX}"]
        else:
            limit = min(parsed, PAGE_LIMIT_MAX)
    cursors: dict[str, int | None] = {}
    for name in CURSORS:
        raw = args.get(name)
        if raw is None:
            cursors[name] = None
            continue
        cursors[name] = parse_id(raw.strip())
        if cursors[name] is None:
            problems[name] = ["must be a post or comment id (a positive integer string)"]
    if problems:
        raise errors.BadRequest("invalid pagination parameters", problems)
    return Page(limit=limit, **cursors)


def anchored_at_lower(page: Page, newest_first: bool) -> bool:
    """Whether the page is read upward from its lower bound (then reversed for display).

    A newest-first list read with ``min_id`` returns the rows just after ``min_id``; an
    oldest-first list read with ``max_id`` alone returns the rows just before ``max_id``.
    """
    if newest_first:
        return page.min_id is not None
    return not (page.max_id is not None and page.since_id is None and page.min_id is None)


@dataclass(frozen=True)
class Listing:
    """A page ready to send: the JSON body bytes and its ``Link`` header (or None)."""

    body: bytes
    link: str | None


@dataclass(frozen=True)
class Window:
    """SQL pieces for one page: a WHERE fragment, an ORDER BY, its parameters, and whether the
    fetched rows must be reversed into display order. Fragments are constants, never user text."""

    where: str
    order: str
    params: dict[str, int]
    reverse: bool


def window(page: Page, newest_first: bool, column: str) -> Window:
    """The id range and scan direction of ``page`` over ``column`` (a trusted column name)."""
    conds: list[str] = []
    params: dict[str, int] = {"page_limit": page.limit}
    if page.upper is not None:
        conds.append(f"{column} < :page_upper")
        params["page_upper"] = page.upper
    if page.lower:
        conds.append(f"{column} > :page_lower")
        params["page_lower"] = page.lower
    ascending = anchored_at_lower(page, newest_first)
    return Window(where=" AND ".join(conds) or "TRUE",
                  order=f"{column} {'ASC' if ascending else 'DESC'}",
                  params=params, reverse=ascending == newest_first)


def link_header(function: str, page: Page, ids: Sequence[int], newest_first: bool = True,
                params: Mapping[str, str] | None = None) -> str | None:
    """The ``Link`` header for a page whose rows have ``ids`` (in display order), or None."""
    if not ids:
        return None
    base = {k: v for k, v in (params or {}).items() if k not in CURSORS and k != "limit" and v}
    if page.limit != PAGE_LIMIT_DEFAULT:
        base["limit"] = str(page.limit)
    first, last = ids[0], ids[-1]
    links: list[str] = []
    if len(ids) >= page.limit:
        cursor = "max_id" if newest_first else "min_id"
        links.append(f'<{_url(function, base, cursor, last)}>; rel="next"')
    cursor = "min_id" if newest_first else "max_id"
    links.append(f'<{_url(function, base, cursor, first)}>; rel="prev"')
    return ", ".join(links)


def _url(function: str, base: Mapping[str, str], cursor: str, value: int) -> str:
    query = urlencode({**base, cursor: str(value)})
    return f"/function/{function}?{query}"
