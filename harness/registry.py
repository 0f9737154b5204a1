"""Finds suites: every module under the `suites` package that defines `SUITE`."""
from __future__ import annotations

import importlib
import pkgutil

from harness.suite import Suite


def all_suites() -> dict[str, Suite]:
    import suites

    found: dict[str, Suite] = {}
    for module in pkgutil.iter_modules(suites.__path__):
        suite = getattr(importlib.import_module(f"suites.{module.name}"), "SUITE", None)
        if isinstance(suite, Suite):
            found[suite.name] = suite
    return dict(sorted(found.items()))


def select_suites(names: list[str] | None) -> list[Suite]:
    """The named suites (all when `names` is empty); an unknown name raises KeyError listing the known ones."""
    known = all_suites()
    if not names:
        return list(known.values())
    unknown = [n for n in names if n not in known]
    if unknown:
        raise KeyError(f"unknown suite(s) {unknown}; known: {sorted(known)}")
    return [known[n] for n in names]
