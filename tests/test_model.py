"""MAHN's equations on small tensors: gates, shapes of every variant and ablation, the reconstruction
term, scoring as one matrix product, padding, and a float64 gradient check of the loss."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from torch.func import functional_call

from mahn.errors import DataError
from mahn.models import MAHN, MODELS, MAHNConfig, make_config
from mahn.models.base import Batch, left_to_right_padded
from mahn.models.mahn import ABLATIONS, VARIANTS

N_ITEMS, DV, DT, D = 9, 6, 5, 4
PAD = N_ITEMS


def tiny_model(variant="cat-cat", ablate="", dtype=torch.float32, rec_weight=1.0) -> MAHN:
    torch.manual_seed(0)
    visual = torch.randn(N_ITEMS, DV, dtype=dtype)
    text = torch.randn(N_ITEMS, DT, dtype=dtype)
    return MAHN(MAHNConfig(dim=D, variant=variant, ablate=ablate, rec_weight=rec_weight), N_ITEMS, visual,
                text).to(dtype)


def tiny_batch() -> Batch:
    histories = torch.tensor([[PAD, PAD, 1, 2], [0, 1, 2, 3], [PAD, PAD, PAD, 5]])
    targets = torch.tensor([[PAD, PAD, 2, 3], [1, 2, 3, 4], [PAD, PAD, PAD, 6]])
    negatives = torch.tensor([[PAD, PAD, 7, 8], [5, 6, 0, 8], [PAD, PAD, PAD, 1]])
    return Batch(histories, targets, negatives, torch.arange(3))


def test_registry_and_config():
    assert MODELS["mahn"] is MAHN
    config = make_config("mahn", {"dim": 7, "variant": "add-cat", "epochs": 3})
    assert config == MAHNConfig(dim=7, variant="add-cat")
    with pytest.raises(DataError, match="variant"):
        MAHNConfig(variant="cat-mul")
    with pytest.raises(DataError, match="ablation"):
        MAHNConfig(ablate="x")


@pytest.mark.parametrize(("variant", "ablate"), list(itertools.product(VARIANTS, ABLATIONS)))
def test_shapes_of_every_variant_and_ablation(variant, ablate):
    model = tiny_model(variant, ablate)
    modalities = 2 - len(ablate)
    item_dim = D * (1 + modalities) if variant.startswith("cat") else D
    batch = tiny_batch()
    assert model.encode(batch.histories).shape == (3, item_dim)
    assert model.item_table().shape == (N_ITEMS, item_dim)
    assert model.lstm1.input_size == item_dim and model.lstm1.hidden_size == D
    assert model.lstm2.input_size == (D * (1 + modalities) if variant.endswith("cat") else D)
    assert model.lstm2.hidden_size == item_dim
    loss = model.loss(batch)
    assert loss.shape == () and torch.isfinite(loss)
    loss.backward()
    # every parameter of the variant takes part in the loss; the padding row never learns
    for name, parameter in model.named_parameters():
        assert parameter.grad is not None and torch.isfinite(parameter.grad).all(), name
        assert parameter.grad.abs().sum() > 0, name
    grad = model.item_embedding.weight.grad
    assert (grad[PAD] == 0).all() and (grad[:PAD].abs().sum(1) > 0).all()  # the batch uses every item


def test_gate_is_the_sigmoid_of_the_product_of_state_and_input_projections():
    model = tiny_model()
    h = torch.randn(50, D) * 3
    for modality, raw_dim in ((model.visual, DV), (model.text, DT)):
        v = modality.project(torch.randn(50, raw_dim))
        gate = modality.gate(h, v)
        assert gate.shape == (50, D)
        # g = σ((M h + b) ⊙ (N v + q)), from the module's own weights
        expected = torch.sigmoid((h @ modality.gate_state.weight.T + modality.gate_state.bias)
                                 * (v @ modality.gate_input.weight.T + modality.gate_input.bias))
        assert torch.allclose(gate, expected)


def test_reconstruction_matches_hand_computation():
    model = MAHN(MAHNConfig(dim=2), 2, torch.tensor([[1.0, 0.0, 2.0], [0.0, 1.0, 0.0]]),
                 torch.tensor([[3.0, 1.0], [0.0, 0.0]]))
    with torch.no_grad():
        model.visual.project.weight.copy_(torch.tensor([[1.0, 0.0, 1.0], [0.0, 2.0, 0.0]]))  # W: 2 x 3
        model.text.project.weight.copy_(torch.tensor([[1.0, 1.0], [0.0, 1.0]]))  # E: 2 x 2
    # item 0: v = W x = (1 + 2, 0) = (3, 0); t = E x = (3 + 1, 1) = (4, 1); v + t = (7, 1)
    # W^T (7, 1) = (7, 2, 7) vs x^v (1, 0, 2): 36 + 4 + 25 = 65
    # E^T (7, 1) = (7, 8)    vs x^t (3, 1):    16 + 49     = 65
    v, t = model.project(torch.tensor([0]))
    assert torch.allclose(v, torch.tensor([[3.0, 0.0]])) and torch.allclose(t, torch.tensor([[4.0, 1.0]]))
    assert torch.allclose(model.reconstruction(v, t, torch.tensor([0])), torch.tensor([130.0]))
    ablated = MAHN(MAHNConfig(dim=2, ablate="t"), 2, model.visual.raw[:2].clone())
    with torch.no_grad():
        ablated.visual.project.weight.copy_(model.visual.project.weight)
    v, t = ablated.project(torch.tensor([0]))
    # MAHN-T: ||W^T v - x^v||^2 with v = (3, 0): W^T v = (3, 0, 3) vs (1, 0, 2): 4 + 0 + 1
    assert t is None and torch.allclose(ablated.reconstruction(v, t, torch.tensor([0])), torch.tensor([5.0]))


def test_expanded_reconstruction_equals_the_direct_one_with_its_gradients():
    """The reconstruction is computed as sᵀWWᵀs − 2sᵀWx + ||x||² (cheap); it must equal ||Wᵀs − x||² in value
    and in the gradient every parameter gets, on features of realistic size and scale."""
    generator = torch.Generator().manual_seed(0)
    visual = torch.relu(torch.randn(20, 300, generator=generator)) * 3  # VGG-like: non-negative, large norm
    text = torch.randn(20, 40, generator=generator)
    model = MAHN(MAHNConfig(dim=8), 20, visual, text)
    ids = torch.tensor([0, 3, 3, 7, 19, 20])  # a repeat and the padding row
    v, t = model.project(ids)
    fast = model.reconstruction(v, t, ids)
    fast_grads = torch.autograd.grad(fast.sum(), [model.visual.project.weight, model.text.project.weight])
    v, t = model.project(ids)
    shared = v + t
    direct = sum((shared @ m.project.weight - m.raw[ids]).pow(2).sum(-1) for m in (model.visual, model.text))
    direct_grads = torch.autograd.grad(direct.sum(), [model.visual.project.weight, model.text.project.weight])
    torch.testing.assert_close(fast, direct, rtol=1e-4, atol=1e-3)
    for mine, theirs in zip(fast_grads, direct_grads, strict=True):
        torch.testing.assert_close(mine, theirs, rtol=1e-4, atol=1e-3)


def test_scoring_reuses_projections_until_the_weights_change():
    """Without gradients MAHN looks the history's projections up in a cache of every item's; a training step
    or loaded weights must be seen at the next scoring, which must equal the uncached computation."""
    model = tiny_model().eval()
    histories = tiny_batch().histories
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    for _ in range(2):
        with torch.no_grad():
            cached = model.encode(histories)
        uncached = model.encode(histories).detach()  # with gradients: no cache
        torch.testing.assert_close(cached, uncached)
        model.loss(tiny_batch()).backward()
        optimizer.step()  # in place: the next scoring must not use the old projections
        optimizer.zero_grad()
    state = {k: v + 1 for k, v in model.state_dict().items()}
    model.load_state_dict(state)
    with torch.no_grad():
        cached = model.encode(histories)
    torch.testing.assert_close(cached, model.encode(histories).detach())


def test_loss_is_the_ranking_term_plus_lambda_reconstruction():
    model = tiny_model()
    batch = tiny_batch()
    with_rec = model.loss(batch)
    model.config.rec_weight = 0.0
    bpr = model.loss(batch)
    real = batch.targets != PAD
    positives, negatives = batch.targets[real], batch.negatives[real]
    rec = model.reconstruction(*model.project(positives), positives) + model.reconstruction(
        *model.project(negatives), negatives)
    assert torch.allclose(with_rec, bpr + rec.mean(), rtol=1e-5)


@pytest.mark.parametrize("name", ["bpr", "ce"])
def test_ranking_term_scores_every_prefix_state_against_the_item_table(name):
    """The loss's state at position k is what `encode` gives for the history up to k, scored against r_j."""
    model = tiny_model(rec_weight=0.0)
    model.config.loss = name
    batch = tiny_batch()
    rows, columns = (batch.targets != PAD).nonzero(as_tuple=True)
    states = torch.stack([model.encode(batch.histories[r : r + 1, : c + 1])[0]
                          for r, c in zip(rows.tolist(), columns.tolist(), strict=True)])
    table = model.item_table()
    targets, negatives = batch.targets[rows, columns], batch.negatives[rows, columns]
    if name == "bpr":
        margin = (states * table[targets]).sum(1) - (states * table[negatives]).sum(1)
        expected = -torch.nn.functional.logsigmoid(margin).mean()
    else:
        expected = torch.nn.functional.cross_entropy(states @ table.T, targets)
    torch.testing.assert_close(model.loss(batch), expected, rtol=1e-5, atol=1e-6)


def test_scores_equal_the_matrix_product_and_the_packed_states():
    model = tiny_model()
    histories = tiny_batch().histories
    scores = model.scores(histories)
    assert torch.allclose(scores, model.encode(histories) @ model.item_table().T)
    # the training states (every position) agree with encoding each prefix on its own
    right, lengths = left_to_right_padded(histories, PAD)
    assert lengths.tolist() == [2, 4, 1] and right[0].tolist() == [1, 2, PAD, PAD]
    prefix = torch.tensor([[PAD, PAD, 0, 1]])
    assert torch.allclose(model.encode(prefix), model.encode(torch.tensor([[0, 1]])), atol=1e-6)


def test_left_padding_does_not_change_the_state():
    model = tiny_model()
    short = model.encode(torch.tensor([[3, 1, 4]]))
    padded = model.encode(torch.tensor([[PAD] * 5 + [3, 1, 4]]))
    batched = model.encode(torch.tensor([[PAD, PAD, 3, 1, 4], [2, 7, 1, 8, 2]]))
    assert torch.allclose(short, padded, atol=1e-6) and torch.allclose(short[0], batched[0], atol=1e-6)


def test_missing_features_fail_unless_ablated():
    with pytest.raises(DataError, match="visual"):
        MAHN(MAHNConfig(dim=D), N_ITEMS, None, torch.randn(N_ITEMS, DT))
    model = MAHN(MAHNConfig(dim=D, ablate="vt"), N_ITEMS)
    assert model.visual is None and model.text is None


def test_raw_features_are_not_in_the_checkpoint():
    assert not any("raw" in key for key in tiny_model().state_dict())


def test_gradient_check_float64():
    model = tiny_model(dtype=torch.float64)
    batch = tiny_batch()
    names = ["item_embedding.weight", "visual.project.weight", "text.gate_state.weight", "lstm1.weight_hh_l0"]
    params = dict(model.named_parameters())
    model.forward = model.loss  # functional_call runs forward

    def loss(*values: torch.Tensor) -> torch.Tensor:
        return functional_call(model, dict(zip(names, values, strict=True)), (batch,), strict=False)

    inputs = tuple(params[n].detach().clone().requires_grad_(True) for n in names)
    assert torch.autograd.gradcheck(loss, inputs, eps=1e-6, atol=1e-5)
    np.testing.assert_allclose(float(loss(*inputs)), float(model.loss(batch)))


def test_id_dropout_zeroes_the_same_items_everywhere_in_a_batch_and_never_at_evaluation():
    model = tiny_model()
    model.config.id_dropout = 0.5
    batch = tiny_batch()
    torch.manual_seed(1)
    model.train()
    model.loss(batch).backward()
    dropped = model.dropped[:-1, 0]
    assert 0 < int(dropped.sum()) < N_ITEMS
    # a dropped item's ID row gets no gradient from the batch; its table row is its content alone
    grad = model.item_embedding.weight.grad[:-1]
    assert (grad[dropped].abs().sum(1) == 0).all()
    table = model.item_table()
    content_only = model.content_vectors({"image": model.visual.raw[:-1], "text": model.text.raw[:-1]})
    torch.testing.assert_close(table[dropped], content_only[dropped])
    model.eval()
    evaluated = model.item_table()
    assert not torch.allclose(evaluated[dropped], content_only[dropped])  # evaluation keeps every learned ID
