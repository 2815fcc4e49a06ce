"""Every registered loss computes what it computed before the miner / loss / reducer split.

``tests/data/loss_golden.npz`` was recorded by ``tests/make_loss_golden.py`` on the code whose
objectives ran the network themselves. Per case: the loss of three batches (run in order, so
the memory losses carry state) and its gradient with respect to the embeddings, compared bit
for bit (the same float32 operations in the same order), except OSM: its reducer now weighs
the per-pair term, ``w (d d)``, where the old loss computed ``(w d) d``: one rounding moves, so
those cases agree to 2e-6 relative (measured: 1 ulp). And the weights after 50 CPU steps of
``self-tnet-small`` (30 balance steps, two annealing cycles of 10) and of ``triplet``: their
sha256 must match on the platform they were recorded on (same torch, CPU capability, one
thread); elsewhere CPU kernels may round differently, and the per-tensor sums must agree to
1e-4 relative.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent))
import make_loss_golden as golden  # noqa: E402
from train_fixtures import one_torch_thread  # noqa: E402, F401

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # the golden weights were recorded on one thread
DATA = np.load(golden.OUT)
META = json.loads(str(DATA["meta"]))


def test_every_registered_loss_has_a_case() -> None:
    from descbal.losses import LOSSES

    assert {c[1] for c in golden.CASES} == set(LOSSES)
    assert META["cases"] == [c[0] for c in golden.CASES]


@pytest.mark.parametrize("case,loss_name,params", golden.CASES, ids=[c[0] for c in golden.CASES])
def test_loss_and_embedding_gradient_unchanged(case: str, loss_name: str, params: dict) -> None:
    got = golden.record_case(loss_name, params)
    exact = loss_name != "osm_caa"
    for s, (value, grad) in zip(golden.BATCH_SEEDS, got, strict=True):
        want, want_grad = float(DATA[f"{case}/{s}/loss"]), DATA[f"{case}/{s}/grad"]
        assert want != 0.0 and np.abs(want_grad).max() > 0  # the case exercises the loss
        if exact:
            assert value == want, (case, s)
            np.testing.assert_array_equal(grad, want_grad, err_msg=f"{case} batch {s}")
        else:
            assert value == pytest.approx(want, rel=2e-6), (case, s)
            np.testing.assert_allclose(grad, want_grad, rtol=2e-6, atol=1e-9, err_msg=f"{case} batch {s}")


def test_golden_batches_are_the_recorded_ones() -> None:
    for s in golden.BATCH_SEEDS:
        _, x, labels = golden.batch(s)
        np.testing.assert_array_equal(x.numpy(), DATA[f"batch{s}/x"])
        np.testing.assert_array_equal(labels.numpy(), DATA[f"batch{s}/labels"])


def test_weights_after_50_steps_unchanged() -> None:
    got = golden.record_runs()
    exact = golden.platform_key() == META["platform"]
    for name, want in META["runs"].items():
        if exact:
            assert got[name]["sha256"] == want["sha256"], name
        for k, v in want["sums"].items():
            assert got[name]["sums"][k] == pytest.approx(v, rel=1e-4, abs=1e-6), (name, k)
    if not exact:
        pytest.skip(f"sums checked; bit-exact weights were recorded on {META['platform']}, this is {golden.platform_key()}")
