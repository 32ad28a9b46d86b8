"""ViT + LoRA building blocks, on a tiny ViTConfig saved to a temp dir (no weights can be downloaded here)."""

from __future__ import annotations

import pytest
import torch

from bayestda.core.errors import UserError
from bayestda.models.vit import ImageSpec, LoraSpec, build_vit


def test_lora_wiring_trains_only_lora_and_the_classifier(tiny_vit_dir):
    torch.manual_seed(1)
    model = build_vit(str(tiny_vit_dir), num_labels=10, lora=LoraSpec())
    trainable = {k for k, v in model.named_parameters() if v.requires_grad}
    assert trainable and all(("lora_" in k) or ("classifier" in k) for k in trainable)
    # LoRA on the query and value projections of both layers (A and B each), and the classifier's weight and bias.
    assert sum("lora_A" in k for k in trainable) == 4 and sum("lora_B" in k for k in trainable) == 4
    assert not any("k_proj" in k or "key" in k for k in trainable)
    classifier = sorted(k for k in trainable if "classifier" in k)
    assert [k.rsplit(".", 1)[-1] for k in classifier] == ["bias", "weight"]
    assert all("classifier.modules_to_save" in k for k in classifier)  # peft's trained copy of the head
    state = model.trainable_state()
    assert state.keys() == trainable
    logits = model.eval()(torch.randn(3, 3, 32, 32))
    assert logits.shape == (3, 10)


def test_trainable_state_reloads_the_same_logits(tiny_vit_dir):
    torch.manual_seed(2)
    model = build_vit(str(tiny_vit_dir), 10, LoraSpec()).eval()
    with torch.no_grad():
        for v in model.parameters():
            if v.requires_grad:
                v.add_(0.1 * torch.randn_like(v))  # as if trained: LoRA's B starts at zero
    x = torch.randn(4, 3, 32, 32)
    torch.manual_seed(3)  # another random classifier and LoRA init, overwritten by the load
    again = build_vit(str(tiny_vit_dir), 10, LoraSpec()).eval()
    again.load_trainable_state(model.trainable_state())
    assert torch.equal(model(x), again(x))


def test_mismatched_lora_and_missing_config_are_clear_errors(tiny_vit_dir, tmp_path):
    state = build_vit(str(tiny_vit_dir), 10, LoraSpec(r=16)).trainable_state()
    with pytest.raises(UserError, match="does not match this LoRA configuration"):
        build_vit(str(tiny_vit_dir), 10, LoraSpec(r=8)).load_trainable_state(state)
    with pytest.raises(UserError, match=r"has no config\.json"):
        build_vit(str(tmp_path), 10, LoraSpec())
    with pytest.raises(UserError, match="no modules named"):
        build_vit(str(tiny_vit_dir), 10, LoraSpec(targets=("nonexistent",)))


def test_image_spec_prepares_mnist_and_crops_deterministically(tiny_vit_dir):
    spec = ImageSpec.from_pretrained(str(tiny_vit_dir))
    assert spec == ImageSpec(32, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
    x = torch.rand(5, 1, 28, 28)
    prepared = spec.prepare(x)
    assert prepared.shape == (5, 3, 32, 32) and torch.equal(prepared[:, 0], prepared[:, 2])
    white = spec.prepare(torch.ones(1, 1, 28, 28))
    assert torch.allclose(white, torch.ones_like(white))  # (1 - 0.5) / 0.5
    a = spec.random_resized_crop(x, torch.Generator().manual_seed(7))
    b = spec.random_resized_crop(x, torch.Generator().manual_seed(7))
    c = spec.random_resized_crop(x, torch.Generator().manual_seed(8))
    assert a.shape == (5, 3, 32, 32) and torch.equal(a, b) and not torch.equal(a, c)
