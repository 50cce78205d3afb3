"""What the pinned TRL needs on a machine without Triton (every CPU machine here, and CI).

TRL 1.15 (the newest release Unsloth 2026.10.9 accepts) scores tokens in SFTTrainer and DPOTrainer through a
"fused LM head": the model's forward returns per-token log-probabilities instead of logits, computed by
`trl.kernels.ChunkedLogProbFunction`, a Triton kernel. Without Triton (the CPU build of torch ships none) that name
is None in `trl.trainer.utils` and the first training step fails with "'NoneType' object has no attribute
'apply'"; with Triton installed but tensors on the CPU, the kernel cannot run either. TRL 1.16 added a plain-torch
path for those devices; `install_lm_head_fallback` gives 1.15 the same: CUDA tensors still go to the Triton kernel,
everything else to `torch_token_log_probs`, which returns the same five per-token fields.
"""

from __future__ import annotations


def torch_token_log_probs(hidden, weight, bias, targets, temperature: float, chunk_size: int,
                          final_logit_softcapping: float | None = None, logit_scale: float = 1.0,
                          outputs: tuple = ("log_probs",)):
    """(log_probs, entropy, log_sum_sq_probs, mean_logits, is_top1) of `targets` under the LM head, fields not in
    `outputs` None: the contract of TRL's ChunkedLogProbFunction.apply, with full logits (autograd does the backward).

    hidden: [N, H] (only the scored positions), weight: [V, H], targets: [N]. The logits are scaled by logit_scale,
    soft-capped, then divided by the temperature, in fp32, as the kernel does. chunk_size (vocabulary tile of the
    kernel) does not change the result and is not needed here.
    """
    import torch
    import torch.nn.functional as F

    z = F.linear(hidden, weight, bias).float() * logit_scale
    if final_logit_softcapping:
        z = final_logit_softcapping * torch.tanh(z / final_logit_softcapping)
    z = z / temperature
    log_z = torch.logsumexp(z, dim=-1)
    log_probs = z.gather(-1, targets.long().unsqueeze(-1)).squeeze(-1) - log_z
    entropy = log_z - (z.softmax(dim=-1) * z).sum(dim=-1) if "entropy" in outputs else None
    with torch.no_grad():  # the kernel marks these three non-differentiable
        sq = torch.logsumexp(2 * z, dim=-1) - 2 * log_z if "log_sum_sq_probs" in outputs else None
        mean = z.mean(dim=-1) if "mean_logits" in outputs else None
        top1 = z.argmax(dim=-1) == targets if "is_top1" in outputs else None
    return log_probs, entropy, sq, mean, top1


class _LogProbsByDevice:
    """Stands in for ChunkedLogProbFunction in trl.trainer.utils: Triton for CUDA tensors when TRL has it, torch
    otherwise."""

    def __init__(self, triton_function):
        self.triton_function = triton_function

    def apply(self, hidden, *args):
        if self.triton_function is not None and hidden.is_cuda:
            return self.triton_function.apply(hidden, *args)
        return torch_token_log_probs(hidden, *args)


def install_lm_head_fallback() -> bool:
    """Route TRL 1.15's fused LM head to torch where its Triton kernel cannot run. Call before a trainer trains;
    returns True when the route was installed (now or earlier), False for a TRL that needs none."""
    from trl.trainer import utils as trl_utils

    if not hasattr(trl_utils, "_ChunkedLogProbFunction") or hasattr(trl_utils, "_use_triton"):
        return False  # no fused head, or a TRL (>= 1.16) that picks its own device path
    current = trl_utils._ChunkedLogProbFunction
    if not isinstance(current, _LogProbsByDevice):
        trl_utils._ChunkedLogProbFunction = _LogProbsByDevice(current)
    return True
