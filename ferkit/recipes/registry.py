"""The recipe registry: ``@register_recipe`` fills a name -> class table; ``get_recipe`` / ``list_recipes``.

It lives with the recipes (not in :mod:`ferkit.training`) so the engine never imports a paper's
code: ``ferkit.training`` knows what a recipe is, ``ferkit.recipes`` knows which ones exist.
"""
from __future__ import annotations

from ferkit.errors import UnknownNameError
from ferkit.training.recipe import Recipe

_RECIPES: dict[str, type[Recipe]] = {}


def register_recipe(cls: type[Recipe]) -> type[Recipe]:
    if not cls.name:
        raise ValueError(f"{cls.__name__} has no name")
    if cls.name in _RECIPES:
        raise ValueError(f"recipe {cls.name!r} registered twice")
    _RECIPES[cls.name] = cls
    return cls


def list_recipes() -> list[str]:
    import ferkit.recipes  # noqa: F401  (importing the package registers every recipe)

    return sorted(_RECIPES)


def get_recipe(name: str) -> type[Recipe]:
    import ferkit.recipes  # noqa: F401

    try:
        return _RECIPES[name]
    except KeyError:
        raise UnknownNameError(f"unknown recipe {name!r}; known recipes: {', '.join(sorted(_RECIPES))}") from None
