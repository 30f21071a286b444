"""Alignment diagnostics: values worked out by hand, and device placement checked on the `meta` device
(a tensor built on the CPU next to CUDA representations fails there the same way it would on a GPU)."""

import pytest
import torch

from dist_lacl.diagnostics import centroid_predictions, language_centroid_accuracy, parallel_similarity


def test_language_centroid_accuracy_by_hand():
    # Two tight language clusters: every point is nearest its own leave-one-out centroid.
    reps = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.1, 0.9]])
    assert language_centroid_accuracy(reps, ["de", "de", "fr", "fr"]) == 1.0
    # Interleaved: each point's own centroid (without it) is the other language's point -> 0.
    assert language_centroid_accuracy(reps, ["de", "fr", "de", "fr"]) == 0.0
    assert torch.isnan(torch.tensor(language_centroid_accuracy(reps, ["de", "de", "de", "fr"])))


def test_centroid_predictions_stay_on_the_representations_device():
    x = torch.randn(6, 4, device="meta")
    label = torch.tensor([0, 0, 1, 1, 2, 2], device="meta")
    assert centroid_predictions(x, label, 3).device.type == "meta"
    with pytest.raises(RuntimeError, match="device"):  # the old CPU-built labels, next to device reps
        centroid_predictions(x, torch.tensor([0, 0, 1, 1, 2, 2]), 3)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_diagnostics_on_cuda_representations():
    reps = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.1, 0.9]], device="cuda")
    assert language_centroid_accuracy(reps, ["de", "de", "fr", "fr"]) == 1.0
    assert parallel_similarity(reps[:2], reps[2:])["align/pair_cos"] < 1.0
