import torch

from psaguard.modules import SafetyHead


def _head(pooling: str) -> SafetyHead:
    torch.manual_seed(0)
    return SafetyHead(hidden_size=16, num_heads=4, num_levels=4, num_types=7, pooling=pooling).eval()


def test_padding_positions_do_not_change_mean_pooled_logits():
    head = _head("mean")
    memory = torch.randn(1, 10, 16)
    query = torch.randn(1, 5, 16)
    mask = torch.ones(1, 5, dtype=torch.bool)
    padded = torch.cat([query, torch.randn(1, 3, 16)], dim=1)
    padded_mask = torch.cat([mask, torch.zeros(1, 3, dtype=torch.bool)], dim=1)
    a, b = head(query, mask, memory), head(padded, padded_mask, memory)
    assert torch.allclose(a.level, b.level, atol=1e-6) and torch.allclose(a.type, b.type, atol=1e-6)


def test_first_pooling_reads_only_position_zero():
    head = _head("first")
    memory = torch.randn(1, 10, 16)
    query = torch.randn(1, 5, 16)
    other = query.clone()
    other[:, 1:] = torch.randn(1, 4, 16)
    mask = torch.ones(1, 5, dtype=torch.bool)
    assert torch.equal(head(query, mask, memory).type, head(other, mask, memory).type)
    assert not torch.allclose(_head("mean")(query, mask, memory).type, _head("mean")(other, mask, memory).type)


def test_attend_on_cached_keys_and_values_equals_the_heads_attention():
    head = _head("mean")
    memory = torch.randn(2, 10, 16)
    query = torch.randn(2, 5, 16)
    with torch.no_grad():
        want, _ = head.attn(query, memory, memory, need_weights=False)
        got = head.attend(query, *head.keys_values(memory))
        # Each position attends on its own: attending one position alone gives the same value.
        alone = head.attend(query[:1, 2:3], *head.keys_values(memory[:1]))
    assert torch.allclose(got, want, atol=1e-6)
    assert torch.allclose(alone[0, 0], want[0, 2], atol=1e-6)
