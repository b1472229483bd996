"""Hidden tests for chapter 13 (quantization and QLoRA). One point per test; each test is
self-contained (the grader runs every function on its own, its parameters filled from the
student's notebook)."""


def test_ex1_ratio(answer, measured):
    """fp32 size over NF4 size, both as measured on disk"""
    rows = {row["method"]: row for row in measured}
    expected = rows["fp32 (baseline)"]["saved_MB"] / rows["bnb NF4 + double quant"]["saved_MB"]
    assert abs(float(answer) - expected) < 1e-6 * expected, f"{answer}, expected {expected:.3f}"
    assert 1 < float(answer) < 8, "NF4 stores 4 bits a weight plus unquantized layers: between 1 and 8"


def test_ex2_other_model(valid_group_sizes):
    """on another model: keeps the sizes that divide every Linear's input size, in order"""
    from torch import nn

    model = nn.Sequential(nn.Linear(96, 48), nn.ReLU(), nn.Linear(48, 10), nn.Linear(10, 3))
    got = list(valid_group_sizes(model, [1, 2, 3, 4, 5, 6, 16]))
    assert got == [1, 2], f"{got}: every Linear's in_features (96, 48, 10) must be divisible"
    model = nn.Sequential(nn.Linear(64, 32), nn.Linear(32, 128))
    assert list(valid_group_sizes(model, [64, 32, 16, 8])) == [32, 16, 8], "in_features 64 and 32"


def test_ex3_values_and_scales(quantize, dequantize):
    """int8 values, one scale per row (absmax / 127), round trip within half a step"""
    import torch

    torch.manual_seed(3)
    weight = torch.randn(5, 7) * torch.tensor([[0.01], [1.0], [30.0], [0.5], [2.0]])
    q, scale = quantize(weight.clone())
    assert q.dtype == torch.int8 and q.shape == weight.shape, "q must be int8 with the weight's shape"
    expected_scale = weight.abs().amax(dim=1) / 127
    assert torch.allclose(scale.reshape(-1).float(), expected_scale, rtol=1e-6), "scale = row absmax / 127"
    assert torch.equal(q, torch.round(weight / expected_scale[:, None]).to(torch.int8)), "round to nearest"
    back = dequantize(q, scale)
    assert ((back - weight).abs() <= expected_scale[:, None] / 2 + 1e-7).all(), "round trip off"
