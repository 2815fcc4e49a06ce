"""The library calls behind the loss golden file (``make_loss_golden.py`` and ``test_loss_golden.py``).

The golden file was recorded with the objectives that ran the network themselves (before the
miner / loss / reducer pipeline); this is the same computation through the trainer's forward
(``descbal.train.step.loss_step``) and the registered pipeline of each loss.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from descbal.config import load_config
from descbal.data.patchset import write_patchset
from descbal.losses import build_pipeline
from descbal.recipes import recipe_text
from descbal.train.config import RunConfig
from descbal.train.step import loss_step
from descbal.train.trainer import start_run


class _Capture(nn.Module):
    """Runs ``net``; keeps its last train-mode output (the embeddings the loss sees)."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net
        self.last: torch.Tensor | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.net(x)
        if self.training:
            self.last = y
        return y


def case_step(loss_name: str, params: dict[str, Any], batches: list[tuple[nn.Module, torch.Tensor, torch.Tensor]]
              ) -> list[tuple[float, np.ndarray]]:
    """(loss, d loss / d embeddings) of each batch, in order, through one pipeline."""
    pipeline = build_pipeline(loss_name, params)
    out = []
    for i, (net, x, labels) in enumerate(batches):
        torch.manual_seed(100 + i)
        model = _Capture(net).train()
        res = loss_step(model, pipeline, x, labels)
        emb = model.last
        (g,) = torch.autograd.grad(res.loss, [emb], allow_unused=True)
        g = torch.zeros_like(emb) if g is None else g
        out.append((float(res.loss.detach()), g.detach().numpy()))
    return out


def run_steps(tmp: Path, name: str, recipe: str, overrides: list[str], data: dict[str, int], steps: int) -> nn.Module:
    """The model after ``steps`` CPU steps of a shipped recipe on a generated patch set."""
    import sys

    sys.path.insert(0, str(Path(__file__).parent))
    from train_fixtures import make_patchset

    path = tmp / f"{name}.h5"
    write_patchset(path, make_patchset(data["seed"], data["num_classes"], data["per_class"], name="golden"))
    cfg = load_config(RunConfig, [recipe_text(recipe)], [*overrides, f'data.train="{path}"', "loop.device=cpu"])
    trainer = start_run(cfg, tmp / f"run-{name}")
    trainer.fit(stop_after=steps)
    return trainer.model
