"""The operation table and valuations match the data definition in DESIGN.md."""

import torch

from tvae.ops import LEVEL_SIZES, N_OPS, ternary_ops, valuation_of, valuations


def test_shape_values_and_digit_order():
    ops = ternary_ops()
    assert ops.shape == (N_OPS, 9) and ops.dtype == torch.float32
    assert set(ops.unique().tolist()) == {-1.0, 0.0, 1.0}
    # row i read back as base-3 digits (least significant first) gives i
    digits = (ops + 1).long()
    back = (digits * 3 ** torch.arange(9)).sum(1)
    assert torch.equal(back, torch.arange(N_OPS))
    assert ops[0].tolist() == [-1.0] * 9
    assert ops[1].tolist() == [0.0] + [-1.0] * 8
    assert ops[5].tolist() == [1.0, 0.0] + [-1.0] * 7  # 5 = 2 + 1*3


def test_level_sizes_and_v0():
    v = valuations()
    assert v.dtype == torch.long and v.shape == (N_OPS,)
    assert v[0].item() == 9
    assert tuple(torch.bincount(v, minlength=10).tolist()) == LEVEL_SIZES
    # spot checks against the definition: largest k with 3^k | i
    for i in (1, 3, 9, 18, 27, 81, 162, 243 * 2, 6561, 13122):
        k = 0
        while i % 3 ** (k + 1) == 0:
            k += 1
        assert v[i].item() == k


def test_valuation_of_differences_matches_shared_trits():
    from tvae.losses import shared_prefix

    ops = ternary_ops()
    gen = torch.Generator().manual_seed(0)
    i = torch.randint(0, N_OPS, (2000,), generator=gen)
    j = torch.randint(0, N_OPS, (2000,), generator=gen)
    assert torch.equal(valuation_of(i - j), shared_prefix(ops[i], ops[j]).long())
