"""The configuration of a training run from its sources, in the documented precedence.

``descbal train`` and Python users resolve a run the same way: dataclass defaults < a shipped
recipe < a TOML file < ``section.key=value`` overrides < the training / validation data paths,
seed and device (``--data``, ``--val``, ``--seed``, ``--device``).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from pathlib import Path

from descbal.config import Source, load_config
from descbal.errors import BadInputError
from descbal.recipes import recipe_text
from descbal.train.config import NO_VAL, RunConfig


def resolve_run_config(recipe: str | None = None, config: str | Path | None = None, overrides: Iterable[str] = (),
                       data: str | Path | Sequence[str | Path] | None = None, val: str | Path | None = None,
                       seed: int | None = None, device: str | None = None, *, no_val: bool = False) -> RunConfig:
    """Resolve a :class:`~descbal.train.config.RunConfig`: defaults < ``recipe`` (a name of
    :func:`~descbal.recipes.recipe_names`) < ``config`` (a TOML file) < ``overrides``
    (``section.key=value``, later ones win) < ``data`` (``data.train``: one path, or several
    sets to train on together, each made absolute; one path stays a string) and ``val``
    (``data.val``, made absolute), or ``no_val`` (``data.val = "none"``: no validation),
    ``seed`` (``loop.seed``) and ``device`` (``loop.device``).

    Raises:
        BadInputError: an unknown recipe, an unreadable or invalid TOML file, a malformed
            override, an unknown key or a value of the wrong type (each naming the key or file);
            both ``val`` and ``no_val``.
    """
    if no_val and val is not None:
        raise BadInputError("--val and --no-val contradict each other; give one")
    sources: list[Source] = ([recipe_text(recipe)] if recipe else []) + ([Path(config)] if config else [])
    items = list(overrides)
    # json.dumps gives a TOML basic string: paths with quotes or backslashes survive
    if data is not None:
        paths = [str(Path(d).resolve()) for d in ([data] if isinstance(data, str | Path) else data)]
        if paths:
            items.append(f"data.train={json.dumps(paths[0] if len(paths) == 1 else paths)}")
    if val is not None:
        items.append(f"data.val={json.dumps(str(Path(val).resolve()))}")
    if seed is not None:
        items.append(f"loop.seed={int(seed)}")
    if device is not None:
        items.append(f"loop.device={json.dumps(device)}")
    if no_val:
        items.append(f"data.val={json.dumps(NO_VAL)}")
    return load_config(RunConfig, sources, items)
