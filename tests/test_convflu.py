"""ConvFLU (FERSNet eqs. 1-4) against the equations written out by hand on small tensors."""
from __future__ import annotations

import torch

from ferkit.models.convflu import ConvFLU


def _conv1x1(weight: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """A 1x1 convolution without bias, as a sum over input channels at every pixel."""
    w = weight[:, :, 0, 0]  # [out, in]
    return torch.einsum("oi,bihw->bohw", w, x)


def test_convflu_matches_equations_1_to_4() -> None:
    torch.manual_seed(3)
    c = 3
    flu = ConvFLU(c)
    with torch.no_grad():  # weights large enough that the gates are far from 0.5
        for p in flu.parameters():
            p.normal_(0, 1.0)
    f_x = torch.randn(2, c, 4, 5)
    f_y = torch.randn(2, c, 4, 5)
    out = flu(f_x, f_y)

    both = torch.cat([f_x, f_y], dim=1)
    # eq. 1: r = sigma(W_r * [F_x, F_y])
    r = 1.0 / (1.0 + torch.exp(-_conv1x1(flu.w_r.weight, both)))
    # eq. 2: F~ = tanh(W * (r . F_y) + U * F_x)
    cand = torch.tanh(_conv1x1(flu.w.weight, r * f_y) + _conv1x1(flu.u.weight, f_x))
    # eq. 3: z = sigma(W_z * [F_x, F_y])
    z = 1.0 / (1.0 + torch.exp(-_conv1x1(flu.w_z.weight, both)))
    # eq. 4: F_x' = (1 - z) . F_x + z . F~
    expected = (1 - z) * f_x + z * cand

    torch.testing.assert_close(out.r, r, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(out.z, z, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(out.features, expected, atol=1e-6, rtol=1e-5)
    # the gates really vary (a constant 0.5 gate would hide a wiring error)
    assert float(r.std()) > 0.1 and float(z.std()) > 0.1


def test_convflu_gate_extremes_select_the_expected_source() -> None:
    """z = 0.5 averages F_x and the candidate (eq. 4); r -> 0 blocks F_y from the candidate (eq. 2)."""
    c = 2
    flu = ConvFLU(c)
    f_x, f_y = torch.randn(1, c, 3, 3), torch.randn(1, c, 3, 3)
    with torch.no_grad():
        flu.w_z.weight.zero_()
        flu.w_r.weight.zero_()
    out = flu(f_x, f_y)  # W_z = 0 gives z = sigma(0) = 0.5 everywhere
    torch.testing.assert_close(out.z, torch.full_like(out.z, 0.5))
    with torch.no_grad():
        flu.w_r.weight.fill_(-1e4)  # with all-ones inputs: r = sigma(-4e4) = 0
    out_a = flu(torch.ones(1, c, 2, 2), torch.ones(1, c, 2, 2))
    assert torch.all(out_a.r < 1e-6)  # F_y is blocked: the candidate is tanh(U * F_x)
    expected_cand = torch.tanh(_conv1x1(flu.u.weight, torch.ones(1, c, 2, 2)))
    torch.testing.assert_close(out_a.features, 0.5 * torch.ones(1, c, 2, 2) + 0.5 * expected_cand)


def test_convflu_uses_only_1x1_kernels_and_no_bias() -> None:
    flu = ConvFLU(4)
    for conv in (flu.w_r, flu.w, flu.u, flu.w_z):
        assert conv.kernel_size == (1, 1) and conv.padding == (0, 0) and conv.bias is None
