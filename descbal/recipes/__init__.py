"""Named training recipes: TOML files shipped with the package (readable and copyable)."""

from __future__ import annotations

from importlib import resources

from descbal.errors import BadInputError


def recipe_names() -> list[str]:
    """Names of the shipped recipes (file stems)."""
    return sorted(p.name[:-5] for p in resources.files(__package__).iterdir() if p.name.endswith(".toml"))


def recipe_text(name: str) -> str:
    """The TOML text of a shipped recipe; BadInputError listing the names otherwise."""
    f = resources.files(__package__) / f"{name}.toml"
    if not f.is_file():
        raise BadInputError(f"unknown recipe {name!r}; choose from {', '.join(recipe_names())}")
    return f.read_text(encoding="utf-8")
