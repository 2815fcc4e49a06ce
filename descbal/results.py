"""The base of the typed result documents that pipelines return (``--json`` prints ``to_json()``).

Each pipeline returns a dataclass deriving from :class:`JsonResult`; its fields, in order, are
the keys of its JSON document, so ``to_json()`` is the document the CLI writes. Fields named in
``OMIT_NONE`` are left out of the document when None (e.g. HPatches tasks that were not run).
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar


@dataclasses.dataclass
class JsonResult:
    """A result whose ``to_json()`` is a plain JSON-ready dict (fields in declaration order)."""

    #: fields left out of the document when their value is None
    OMIT_NONE: ClassVar[tuple[str, ...]] = ()

    def to_json(self) -> dict[str, Any]:
        """The result as a JSON document: nested dataclasses become dicts, tuples lists."""
        doc = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if value is None and f.name in self.OMIT_NONE:
                continue
            doc[f.name] = _plain(value)
        return doc


def _plain(value: Any) -> Any:
    if isinstance(value, JsonResult):
        return value.to_json()
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return _plain(dataclasses.asdict(value))
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value
