"""descbal: learned local patch descriptors.

Exact HPatches / Brown evaluation, training of 128-d descriptors with the Self-TNet balance
loss, and extraction for matching pipelines. The command-line interface is ``descbal``; every
command is a plain function in this package first.
"""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__"]
