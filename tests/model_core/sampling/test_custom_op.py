"""``lrbnn::sample_lowrank`` as a PyTorch custom op: one node under export and compile, a fake impl."""

from __future__ import annotations

import pytest
import torch
from lowrank_sampling_helpers import assert_same_distribution, random_posterior
from torch import Tensor, nn

from model_core.sampling import FactorPosterior, NoiseSource, sample_lowrank
from model_core.sampling.custom_op import sample_lowrank_seeded

M, N_IN, R, S, ROWS = 7, 5, 2, 3, 4


class _Tiny(nn.Module):
    def __init__(self, post: FactorPosterior, backend: str = "lrt") -> None:
        super().__init__()
        self.backend = backend
        for name in ("mu_a", "sigma_a", "mu_b", "sigma_b", "bias_mu", "bias_sigma"):
            self.register_buffer(name, getattr(post, name))

    def forward(self, x: Tensor, seeds: Tensor) -> Tensor:
        post = FactorPosterior(
            self.mu_a, self.sigma_a, self.mu_b, self.sigma_b, self.bias_mu, self.bias_sigma
        )
        return sample_lowrank_seeded(x, post, S, seeds, self.backend).relu()


def _op_nodes(graph: torch.fx.Graph) -> list[torch.fx.Node]:
    return [n for n in graph.nodes if n.op == "call_function" and "lrbnn" in str(n.target)]


def test_export_sees_one_op() -> None:
    post = random_posterior(M, N_IN, R, seed=0)
    ep = torch.export.export(_Tiny(post), (torch.randn(ROWS, N_IN), torch.arange(ROWS)))
    nodes = _op_nodes(ep.graph)
    assert len(nodes) == 1 and nodes[0].target is torch.ops.lrbnn.sample_lowrank.default
    assert not [n for n in ep.graph.nodes if "addmm" in str(n.target) or "bmm" in str(n.target)]
    val = nodes[0].meta["val"]  # from the fake implementation
    assert tuple(val.shape) == (S, ROWS, M)
    x, seeds = torch.randn(ROWS, N_IN), torch.arange(ROWS)
    torch.testing.assert_close(ep.module()(x, seeds), _Tiny(post)(x, seeds))


def test_fake_impl_shape_and_opcheck() -> None:
    from torch._subclasses.fake_tensor import FakeTensorMode

    post = random_posterior(M, N_IN, R, seed=1)
    with FakeTensorMode():
        x = torch.empty(6, N_IN)
        fake_post = FactorPosterior(
            *(torch.empty(t.shape) for t in (post.mu_a, post.sigma_a, post.mu_b, post.sigma_b))
        )
        out = sample_lowrank_seeded(x, fake_post, 11, torch.zeros(6, dtype=torch.int64), "lrt")
        assert out.shape == (11, 6, M) and out.dtype == x.dtype
        out3 = sample_lowrank_seeded(
            torch.empty(11, 6, N_IN), fake_post, 11, torch.zeros(6, dtype=torch.int64)
        )
        assert out3.shape == (11, 6, M)
    args = (torch.randn(ROWS, N_IN), post.mu_a, post.sigma_a, post.mu_b, post.sigma_b)
    torch.library.opcheck(
        torch.ops.lrbnn.sample_lowrank.default,
        (*args, post.bias_mu, post.bias_sigma, torch.arange(ROWS), S, "lrt"),
        test_utils=("test_schema", "test_faketensor"),
    )


def test_compile_routes_through_the_op() -> None:
    graphs: list[torch.fx.GraphModule] = []

    def backend(gm: torch.fx.GraphModule, example_inputs: list[Tensor]) -> object:
        graphs.append(gm)
        return gm.forward

    post = random_posterior(M, N_IN, R, seed=2)
    x = torch.randn(ROWS, N_IN)

    def f(x: Tensor) -> Tensor:
        return sample_lowrank(x, post, S, NoiseSource.from_seed(0, ROWS), "lrt") * 2

    torch._dynamo.reset()
    out = torch.compile(f, backend=backend)(x)
    assert out.shape == (S, ROWS, M)
    assert sum(len(_op_nodes(g.graph)) for g in graphs) == 1
    torch._dynamo.reset()


@pytest.mark.parametrize("backend", ["lrt", "auto", "lrt-a", "factored", "materialize"])
def test_op_moments_and_seeds(backend: str) -> None:
    m, n, r, rows, samples = 13, 6, 3, 2, 4000
    post = random_posterior(m, n, r, seed=3)
    x = torch.randn(rows, n, generator=torch.Generator().manual_seed(0))
    seeds = torch.tensor([5, 6])
    y = sample_lowrank_seeded(x, post, samples, seeds, backend)
    ref = sample_lowrank(x, post, samples, NoiseSource.from_seed(1, rows), "materialize")
    assert_same_distribution(y, ref, example=1, cols=(0, m - 1), label=backend)
    assert torch.equal(y, sample_lowrank_seeded(x, post, samples, seeds, backend))
    if backend in ("lrt", "auto"):  # per-row generators: a row depends on its own seed only
        swapped = sample_lowrank_seeded(x.flip(0), post, samples, seeds.flip(0), backend)
        assert torch.equal(swapped.flip(1), y)


def test_op_rejects_bad_arguments() -> None:
    post = random_posterior(M, N_IN, R, seed=0)
    x = torch.randn(ROWS, N_IN)
    with pytest.raises(ValueError, match="one seed per row"):
        sample_lowrank_seeded(x, post, S, torch.arange(ROWS + 1))
    with pytest.raises(ValueError, match="cached"):
        sample_lowrank_seeded(x, post, S, torch.arange(ROWS), "cached")
