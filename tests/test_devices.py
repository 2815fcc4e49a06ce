"""``--device`` values: auto, names, torch.devices, and one-line errors for the rest."""

from __future__ import annotations

import pytest
import torch

from descbal.devices import resolve_device
from descbal.errors import BadInputError


def test_auto_names_and_devices() -> None:
    assert resolve_device("auto") == torch.device("cuda" if torch.cuda.is_available() else "cpu")
    assert resolve_device("cpu") == torch.device("cpu")
    dev = torch.device("cpu")
    assert resolve_device(dev) is dev


@pytest.mark.parametrize(("name", "words"), [("banana", "unknown device"), ("meta", "unsupported device")])
def test_bad_names_are_bad_input(name: str, words: str) -> None:
    with pytest.raises(BadInputError, match=words):
        resolve_device(name)


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_without_cuda_is_bad_input() -> None:
    with pytest.raises(BadInputError, match="CUDA is not available"):
        resolve_device("cuda:0")
