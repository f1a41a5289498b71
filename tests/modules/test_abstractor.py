import pytest
import torch

from psaguard.modules import CAbstractor


def _count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def test_paper_shapes_have_about_40m_parameters_on_meta_device():
    # LLaVA-1.5-7B: 576 CLIP patches x 1024 in, width 1024 + 64 tokens, 4096 out (the notes: ~40.1M).
    with torch.device("meta"):
        projector = CAbstractor(in_features=1024, hidden_size=1088, out_features=4096, depth=3)
        out = projector(torch.empty(2, 576, 1024))
    assert out.shape == (2, 576, 4096)
    assert _count(projector) == pytest.approx(40.1e6, rel=0.005)
    assert _count(projector.s1) == pytest.approx(9.94e6, rel=0.005)
    assert _count(projector.s2) == pytest.approx(8.93e6, rel=0.005)
    assert _count(projector.readout) == pytest.approx(21.24e6, rel=0.005)


def test_pools_to_num_queries_and_rejects_non_square_grids():
    projector = CAbstractor(in_features=8, hidden_size=12, out_features=16, depth=1, num_queries=4)
    assert projector(torch.randn(3, 16, 8)).shape == (3, 4, 16)
    with pytest.raises(ValueError, match="square"):
        projector(torch.randn(1, 15, 8))


def test_output_depends_on_spatial_layout():
    torch.manual_seed(0)
    projector = CAbstractor(in_features=8, hidden_size=12, out_features=16, depth=2).eval()
    x = torch.randn(1, 16, 8)
    shuffled = x[:, torch.randperm(16)]
    # Convolutions see neighbourhoods: permuting patches must change more than the order of the outputs.
    a, b = projector(x).sort(dim=1).values, projector(shuffled).sort(dim=1).values
    assert not torch.allclose(a, b, atol=1e-4)
