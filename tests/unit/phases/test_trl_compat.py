"""TRL 1.15's fused LM head on a machine without Triton: trl_compat's torch path gives what the kernel promises."""

import pytest
import torch

from empathy_workbook.phases.trl_compat import install_lm_head_fallback, torch_token_log_probs

ALL = ("log_probs", "entropy", "log_sum_sq_probs", "mean_logits", "is_top1")


def reference(hidden, weight, targets, temperature, softcap, scale):
    """Each field written out from the full softmax, one position at a time."""
    rows = []
    for h, t in zip(hidden, targets):
        z = (weight @ h).double() * scale
        if softcap:
            z = softcap * torch.tanh(z / softcap)
        z = z / temperature
        p = z.softmax(-1)
        rows.append((torch.log(p[t]), -(p * p.log()).sum(), torch.log((p * p).sum()), z.mean(), z.argmax() == t))
    return [torch.stack([r[i] for r in rows]) for i in range(5)]


@pytest.mark.parametrize("temperature, softcap, scale", [(1.0, None, 1.0), (0.7, 30.0, 0.5)])
def test_every_field_matches_the_softmax_it_stands_for(temperature, softcap, scale):
    generator = torch.Generator().manual_seed(0)
    hidden, weight = torch.randn(6, 8, generator=generator), torch.randn(50, 8, generator=generator) * 3
    targets = torch.tensor([0, 3, 49, 7, 7, 20])
    got = torch_token_log_probs(hidden, weight, None, targets, temperature, 4096, softcap, scale, ALL)
    for name, value, expected in zip(ALL, got, reference(hidden, weight, targets, temperature, softcap, scale)):
        if name == "is_top1":
            assert torch.equal(value, expected)
        else:
            torch.testing.assert_close(value.double(), expected, rtol=1e-5, atol=1e-5, msg=name)
    only = torch_token_log_probs(hidden, weight, None, targets, temperature, 4096, softcap, scale, ("log_probs",))
    assert only[1:] == (None, None, None, None)  # fields not asked for are not computed


def test_trl_fused_head_scores_the_labels_like_the_model_logits(tiny_path):
    from transformers import AutoModelForCausalLM
    from trl.trainer.utils import add_fused_lm_head

    assert install_lm_head_fallback()  # the pinned TRL needs it on this machine (no Triton, CPU tensors)
    model = AutoModelForCausalLM.from_pretrained(tiny_path, dtype=torch.float32)
    ids = torch.tensor([[5, 17, 42, 8, 99, 3, 11]])
    labels = ids.clone()
    labels[0, :3] = -100  # a prompt that is not scored
    with torch.no_grad():
        full = model(input_ids=ids).logits[0, :-1].log_softmax(-1)
    add_fused_lm_head(model, outputs=("log_probs", "entropy", "is_top1"))
    out = model(input_ids=ids, labels=labels, fused_lm_head=True)
    expected = full.gather(-1, ids[0, 1:, None]).squeeze(-1)
    scored = labels[0, 1:] != -100
    torch.testing.assert_close(out.log_probs[0][scored], expected[scored], rtol=1e-5, atol=1e-5)
    assert torch.all(out.log_probs[0][~scored] == 0)  # unscored positions stay zero, as with the kernel
    out.log_probs.sum().backward()  # and a training step can take its gradient
    assert model.lm_head.weight.grad is not None or model.model.embed_tokens.weight.grad is not None
