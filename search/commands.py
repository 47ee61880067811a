"""``sparsetune search | frontier | export`` (filled in by the search service)."""

from __future__ import annotations

import argparse

__all__ = ["add_subcommands"]


def add_subcommands(sub: argparse._SubParsersAction) -> None:
    return None
