"""The fused catalogue softmax (model.catalogue_log_prob) against the plain log_softmax + gather it replaces."""

import torch
import torch.nn.functional as F

from instructrec.models.model import catalogue_log_prob


def _inputs(rows: int = 600, dim: int = 16, items: int = 97):
    gen = torch.Generator().manual_seed(3)
    query = torch.randn(rows, dim, generator=gen).requires_grad_()
    table = torch.randn(items, dim, generator=gen).requires_grad_()
    bias = torch.randn(items, generator=gen).requires_grad_()
    target = torch.randint(0, items, (rows,), generator=gen)
    weight = torch.rand(rows, generator=gen)  # an uneven upstream gradient, as weighted likes/dislikes give
    return query, table, bias, target, weight


def _value_and_grads(logp: torch.Tensor, weight: torch.Tensor, *leaves: torch.Tensor):
    grads = torch.autograd.grad((logp * weight).sum(), leaves)
    return logp.detach(), grads


def test_fused_log_prob_and_its_gradients_equal_log_softmax_over_several_chunks():
    query, table, bias, target, weight = _inputs()  # 600 rows: three CPU chunks of 256, the last one partial
    ref, ref_grads = _value_and_grads(
        F.log_softmax(query @ table.T + bias, dim=-1).gather(1, target[:, None]).squeeze(1), weight, query, table, bias
    )
    got, got_grads = _value_and_grads(catalogue_log_prob(query, table, target, bias), weight, query, table, bias)
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5)
    for g, r in zip(got_grads, ref_grads, strict=True):
        torch.testing.assert_close(g, r, rtol=1e-4, atol=1e-5)


def test_bf16_products_keep_the_loss_and_gradients_close():
    """The numbers, wherever bf16 runs: a CPU without bf16 units computes the same bf16 products, only slower
    (training turns bf16 on only where the units are: model.autocast)."""
    query, table, bias, target, weight = _inputs()
    ref, ref_grads = _value_and_grads(catalogue_log_prob(query, table, target, bias), weight, query, table, bias)
    got, got_grads = _value_and_grads(
        catalogue_log_prob(query, table, target, bias, low_precision=True), weight, query, table, bias
    )
    assert (got - ref).abs().mean() < 0.05  # bf16 keeps ~3 significant digits of each logit
    for g, r in zip(got_grads, ref_grads, strict=True):
        assert g.dtype == r.dtype == torch.float32
        assert (g - r).norm() / r.norm() < 0.05
