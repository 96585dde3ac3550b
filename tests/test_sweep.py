"""mctvm sweep: the accuracy/bits/sparsity table over K, its plot, and its CLI."""

import numpy as np
import pytest

from mctvm import models, sweep
from mctvm.cli import main


@pytest.fixture(scope="module")
def data():
    x, labels = models.test_sample()
    return x[:64], labels[:64]


def test_sweep_rows_follow_K(data):
    x, labels = data
    rows = sweep.sweep(models.default_model(), x, labels, [0.5, 8], modes=("w+a", "w"), batch=32)
    assert [(r["mode"], r["K"]) for r in rows] == [("float", None), ("w+a", 0.5), ("w+a", 8),
                                                    ("w", 0.5), ("w", 8)]
    low, high = rows[1], rows[2]
    assert low["weight_bits"] < high["weight_bits"] and low["activation_bits"] < high["activation_bits"]
    assert low["used_weights"] < high["used_weights"] <= 1.0
    assert 0 < low["used_activations"] < 1.0
    assert rows[3]["used_activations"] == 1.0 and rows[3]["activation_bits"] == 32.0
    assert high["accuracy"] >= rows[0]["accuracy"] - 0.05
    text = sweep.format_rows(rows)
    assert "w+a" in text and "float" in text


def test_cli_sweep_writes_plot(tmp_path, capsys):
    png = tmp_path / "fig2.png"
    assert main(["sweep", "--K", "1", "4", "--limit", "64", "--batch", "32",
                 "--plot", str(png)]) == 0
    out = capsys.readouterr().out
    assert "accuracy" in out and "w+a" in out
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_used_share_weights_by_layer_size():
    rows = [{"weight_sparsity": 0.5, "weight_shape": [10, 10]},
            {"weight_sparsity": 0.0, "weight_shape": [300]},
            {"weight_sparsity": None, "weight_shape": None}]
    assert sweep.used_share(rows, "weight") == pytest.approx((50 + 300) / 400)
    assert np.isnan(sweep.used_share([], "activation"))
