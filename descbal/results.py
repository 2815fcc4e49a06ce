"""The base of the typed result documents that pipelines return (``--json`` prints ``to_json()``).

Each pipeline returns a dataclass deriving from :class:`JsonResult`; its fields, in order, are
the keys of its JSON document, so ``to_json()`` is the document the CLI writes. Fields named in
``OMIT_NONE`` are left out of the document when None (e.g. HPatches tasks that were not run).

Skipped inputs, one policy for every command: a pipeline that skips bad inputs (unreadable
photos or images, sequences it cannot use) and still produces its output names the field that
lists them in ``SKIPPED_KEY``; the command then exits 0 with a warning summary on stderr, or
:data:`STRICT_EXIT_CODE` with ``--strict`` (:func:`skipped_exit_code`). When *no* input is
usable the pipeline raises ``BadInputError`` instead (exit 2).
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar


@dataclasses.dataclass
class JsonResult:
    """A result whose ``to_json()`` is a plain JSON-ready dict (fields in declaration order)."""

    #: fields left out of the document when their value is None
    OMIT_NONE: ClassVar[tuple[str, ...]] = ()
    #: the field listing the inputs that were skipped (dicts with a ``reason``), if any
    SKIPPED_KEY: ClassVar[str | None] = None

    def skipped_inputs(self) -> list[dict[str, str]]:
        """The inputs this run skipped (the ``SKIPPED_KEY`` field; none when there is no such field)."""
        return list(getattr(self, self.SKIPPED_KEY) or []) if self.SKIPPED_KEY else []

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


#: Exit code of a command run with ``--strict`` that skipped some input.
STRICT_EXIT_CODE = 1


def skipped_exit_code(result: JsonResult, strict: bool) -> int:
    """The exit code of a command that produced ``result``: 0, or :data:`STRICT_EXIT_CODE` when
    ``strict`` and some input was skipped."""
    return STRICT_EXIT_CODE if strict and result.skipped_inputs() else 0
