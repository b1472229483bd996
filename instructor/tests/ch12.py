"""Hidden tests for chapter 12 (PEFT methods). One point per test; each test is self-contained
(otter-grader runs every function on its own, its parameters filled from the student's notebook)."""


def test_ex1_value(answer):
    """the count of rank-4 LoRA on q_proj and v_proj of the course LM"""
    from torch import nn

    from course_lib.models import load_model

    model = load_model("causal-lm")
    expected = sum(
        4 * (m.in_features + m.out_features)
        for name, m in model.named_modules()
        if isinstance(m, nn.Linear) and name.split(".")[-1] in ("q_proj", "v_proj")
    )
    assert answer == expected, f"{answer} is not the number of parameters LoRA adds"


def test_ex1_matches_peft(answer):
    """equals what peft itself adds (trainable parameters of the LoRA model)"""
    import warnings

    from peft import LoraConfig, get_peft_model

    from course_lib.models import load_model

    with warnings.catch_warnings():  # peft 0.21 reads a name transformers 5.23 renamed
        warnings.filterwarnings("ignore", message="`is_gradient_checkpointing` is deprecated")
        model = get_peft_model(load_model("causal-lm"), LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert answer == trainable, f"peft adds {trainable} trainable parameters"


def test_ex1_integer(answer):
    """an exact integer, not a float or a tensor"""
    assert isinstance(answer, int) and not isinstance(answer, bool), (
        f"answer should be an int, got {type(answer).__name__}"
    )


def test_ex2_gpt2(gpt2):
    """the model is a GPT-2 (which has biases), not the course LM"""
    assert "GPT2" in gpt2.__class__.__name__, (
        f"expected peft_methods.tiny_model('gpt2'), got {gpt2.__class__.__name__}"
    )


def test_ex2_only_biases(gpt2):
    """every bias trains and nothing else does"""
    params = dict(gpt2.named_parameters())
    trainable = {n for n, p in params.items() if p.requires_grad}
    biases = {n for n in params if n.endswith(".bias")}
    assert biases, "the model has no bias parameters"
    assert trainable == biases, (
        f"{len(trainable - biases)} non-bias tensors train and {len(biases - trainable)} biases are frozen"
    )


def test_ex3_formula(merge):
    """W + scaling * (B @ A) on random matrices of other shapes"""
    import torch

    generator = torch.Generator().manual_seed(1)
    weight, lora_a, lora_b = (
        torch.randn(6, 5, generator=generator),
        torch.randn(3, 5, generator=generator),
        torch.randn(6, 3, generator=generator),
    )
    expected = weight + 0.5 * (lora_b @ lora_a)  # before the call, which may change its arguments
    got = merge(weight.clone(), lora_a.clone(), lora_b.clone(), 0.5)
    assert torch.allclose(got, expected, atol=1e-6), "not W + scaling * (B @ A)"


def test_ex3_scaling_used(merge):
    """the scaling is applied (alpha / r is passed in; do not recompute it)"""
    import torch

    weight, lora_a, lora_b = torch.zeros(2, 2), torch.eye(2), torch.eye(2)
    got = merge(weight.clone(), lora_a, lora_b, 3.0)
    assert torch.allclose(got, 3.0 * torch.eye(2)), "the update must be multiplied by `scaling`"


def test_ex3_weight_untouched(merge):
    """does not modify the weight in place (merging must not change the base model's tensor)"""
    import torch

    weight = torch.ones(3, 2)
    merge(weight, torch.ones(1, 2), torch.ones(3, 1), 2.0)
    assert torch.equal(weight, torch.ones(3, 2)), "the weight passed in was changed: return a new tensor"


def test_ex3_against_peft(merge):
    """matches peft's merge on every LoRA layer of another model (tiny Llama, r=2, alpha=6)"""
    import warnings

    import torch
    from peft import LoraConfig, get_peft_model

    from course_lib.peft_methods import tiny_model

    with warnings.catch_warnings():  # peft 0.21 reads a name transformers 5.23 renamed
        warnings.filterwarnings("ignore", message="`is_gradient_checkpointing` is deprecated")
        model = get_peft_model(
            tiny_model("llama"), LoraConfig(r=2, lora_alpha=6, target_modules=["q_proj", "o_proj"])
        )
    torch.manual_seed(0)
    layers = [m for m in model.modules() if hasattr(m, "lora_A") and "default" in m.lora_A]
    with torch.no_grad():
        for layer in layers:
            layer.lora_B["default"].weight.normal_()
            expected = layer.base_layer.weight + layer.get_delta_weight("default")
            got = merge(
                layer.base_layer.weight.clone(),
                layer.lora_A["default"].weight,
                layer.lora_B["default"].weight,
                layer.scaling["default"],
            )
            assert torch.allclose(got, expected, atol=1e-5), "differs from peft's merge"
