"""bitsandbytes 0.50.2: QLoRA gradients go wrong after one eval pass on an AVX-512-BF16 CPU.

Needs only torch, transformers, peft and bitsandbytes; runs offline in seconds:

    python tests/repro/qlora_cpu_repack.py

A tiny random Llama is saved, loaded in 4-bit NF4 (double quantization, fp32 compute),
prepared for k-bit training and given LoRA on every linear layer. Its LoRA gradients on one
batch are compared with an fp32 reference: the same model whose linear weights are the
dequantized NF4 weights, with the same LoRA matrices. Then one forward pass runs in eval()
mode under torch.no_grad() (what any evaluation does) and the comparison is repeated.
"""

import copy
import tempfile
import warnings

import bitsandbytes as bnb
import bitsandbytes.functional as bnbf
import peft
import torch
import transformers
from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training
from transformers import (
    AutoModelForCausalLM,
    BitsAndBytesConfig,
    LlamaConfig,
    LlamaForCausalLM,
)

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
LORA = LoraConfig(r=8, lora_alpha=16, target_modules=TARGETS, init_lora_weights=False)
NF4 = BitsAndBytesConfig(
    load_in_4bit=True,
    bnb_4bit_quant_type="nf4",
    bnb_4bit_use_double_quant=True,
    bnb_4bit_compute_dtype=torch.float32,
)


def tiny_llama_folder():
    """A random 2-layer Llama saved to a temporary folder."""
    torch.manual_seed(0)
    # Spelled out rather than tests/conftest.py's tiny_llama_config: this file goes to the
    # bitsandbytes maintainers and must run on its own, with only the four libraries above.
    config = LlamaConfig(
        vocab_size=256,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=64,
    )
    folder = tempfile.mkdtemp()
    LlamaForCausalLM(config).save_pretrained(folder)
    return folder


def load_nf4(folder):
    return AutoModelForCausalLM.from_pretrained(
        folder, quantization_config=NF4, device_map="cpu", dtype=torch.float32
    )


def add_lora(model):
    torch.manual_seed(0)
    with warnings.catch_warnings():  # peft 0.21 reads a renamed transformers property
        warnings.filterwarnings("ignore", "`is_gradient_checkpointing`", FutureWarning)
        return get_peft_model(model, copy.deepcopy(LORA))


def qlora(base):
    """The QLoRA recipe on a 4-bit base: prepare for k-bit training, add LoRA."""
    base = prepare_model_for_kbit_training(base, use_gradient_checkpointing=False)
    return add_lora(base)


def dequantized_reference(folder, model):
    """fp32 model + LoRA whose linear weights are ``model``'s dequantized 4-bit weights
    and whose LoRA matrices are copied from ``model``."""
    reference = add_lora(AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32))
    modules = dict(reference.named_modules())
    with torch.no_grad():
        for name, module in model.named_modules():
            if isinstance(module, bnb.nn.Linear4bit):
                state = module.weight.quant_state
                weight = bnbf.dequantize_4bit(module.weight.data, state)
                modules[name].weight.copy_(weight)
        adapters = {n: p for n, p in model.named_parameters() if "lora_" in n}
        reference.load_state_dict(adapters, strict=False)
    return reference


def batch():
    return torch.randint(0, 256, (8, 32), generator=torch.Generator().manual_seed(1))


def lora_grads(model, input_ids):
    """Training-mode loss and the gradient of every trainable (LoRA) tensor."""
    model.train()
    model.zero_grad(set_to_none=True)
    loss = model(input_ids=input_ids, labels=input_ids).loss
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
    model.zero_grad(set_to_none=True)
    return loss.item(), grads


def max_relative_error(grads, reference):
    """Largest over tensors of max|g - g_ref| / max|g_ref|."""
    return max(((grads[n] - reference[n]).abs().max() / reference[n].abs().max()).item() for n in reference)


def eval_pass(model, input_ids):
    """What any evaluation does: eval() mode, no grad, one forward pass."""
    model.eval()
    with torch.no_grad():
        model(input_ids=input_ids)


def packed_layers(model):
    return sum(
        bool(getattr(m.weight.quant_state, "packing_format_for_cpu", False))
        for m in model.modules()
        if isinstance(m, bnb.nn.Linear4bit)
    )


def main():
    transformers.utils.logging.disable_progress_bar()
    print(
        f"torch {torch.__version__}, transformers {transformers.__version__}, "
        f"peft {peft.__version__}, bitsandbytes {bnb.__version__}"
    )
    print("bitsandbytes sees AVX-512 BF16:", bool(bnbf.has_avx512bf16()))
    folder = tiny_llama_folder()
    model = qlora(load_nf4(folder))
    reference = dequantized_reference(folder, model)
    ids = batch()
    ref_loss, ref_grads = lora_grads(reference, ids)

    loss, grads = lora_grads(model, ids)
    error = max_relative_error(grads, ref_grads)
    print(
        f"before any eval pass: loss {loss:.6f} (reference {ref_loss:.6f}), "
        f"largest relative LoRA-gradient error {error:.2e}"
    )

    eval_pass(model, ids)
    print(
        f"after one eval() + no_grad forward pass, {packed_layers(model)} Linear4bit "
        "layers have quant_state.packing_format_for_cpu = True"
    )

    with warnings.catch_warnings():  # shown once below, not on every backward
        warnings.simplefilter("ignore", UserWarning)
        loss, grads = lora_grads(model, ids)
    error = max_relative_error(grads, ref_grads)
    print(
        f"after the eval pass:  loss {loss:.6f} (reference {ref_loss:.6f}), "
        f"largest relative LoRA-gradient error {error:.2e}"
    )
    print("expected: the same error as before the eval pass (0 up to rounding)")


if __name__ == "__main__":
    main()
