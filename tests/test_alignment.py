"""Alignment metrics on hand-made gradients, and gradients of a real quantized model."""
import pytest
import torch

from qadtr_core.analysis.alignment import (
    cosine,
    edge_iou,
    edge_map,
    hog,
    hog_cosine,
    input_gradients,
    pairwise_alignment,
    summarize,
)
from qadtr_core.models import build_model
from qadtr_core.quant import prepare_bits


def _grads(n=4, seed=0):
    return torch.randn(n, 3, 16, 16, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("fn", [cosine, edge_iou, hog_cosine])
def test_identical_maps_score_one(fn):
    g = _grads()
    assert torch.allclose(fn(g, g), torch.ones(4), atol=1e-5)


def test_negated_maps():
    g = _grads()
    assert torch.allclose(cosine(g, -g), -torch.ones(4), atol=1e-6)
    # edges and HOG read the magnitude, which negation does not change
    assert torch.allclose(edge_iou(g, -g), torch.ones(4)) and torch.allclose(hog_cosine(g, -g), torch.ones(4), atol=1e-5)


def test_orthogonal_maps_have_zero_cosine():
    a = torch.zeros(2, 1, 8, 8)
    b = torch.zeros(2, 1, 8, 8)
    a[:, :, :4], b[:, :, 4:] = 1.0, 1.0
    assert torch.equal(cosine(a, b), torch.zeros(2))


def test_edges_of_a_square_and_its_hog():
    m = torch.zeros(1, 1, 16, 16)
    m[..., 4:12, 4:12] = 1.0
    edges = edge_map(m, quantile=0.5)
    assert edges[..., 8, 8].item() is False and edges[..., 4, 8].item() is True  # border, not interior
    vertical_bar = torch.zeros(1, 1, 16, 16)
    vertical_bar[..., :, 7:9] = 1.0
    d = hog(vertical_bar, cell=4, bins=9).view(9, -1)
    assert d.sum(1).argmax().item() == 0  # horizontal intensity change: orientation bin 0


def test_region_restricts_the_comparison():
    g = _grads(2)
    h = g.clone()
    h[..., 8:, :] = -h[..., 8:, :]  # lower half flipped
    top = torch.zeros(1, 1, 16, 16)
    top[..., :8, :] = 1
    assert torch.allclose(cosine(g, h, top), torch.ones(2), atol=1e-6)
    assert torch.allclose(cosine(g, h, 1 - top), -torch.ones(2), atol=1e-6)


def test_batch_shapes_and_tables():
    grads = {32: _grads(3, 0), 4: _grads(3, 1), 2: _grads(3, 2)}
    table = pairwise_alignment(grads)
    assert set(table.pair) == {"FP-4b", "FP-2b", "4b-2b"} and len(table) == 3 * 3 * 3
    s = summarize(table)
    assert (s.n == 3).all() and set(s.metric) == {"cosine", "edge IoU", "HOG cosine"}


def test_input_gradients_of_a_quantized_model_differ_across_bits():
    torch.manual_seed(0)
    model = build_model("smallcnn")
    prepare_bits(model, 2)
    x, y = torch.rand(4, 3, 32, 32), torch.arange(4)
    grads = input_gradients(model, x, y, [32, 2])
    assert grads[32].shape == x.shape and not torch.equal(grads[32], grads[2])
    assert model.qadtr_bits == 32
