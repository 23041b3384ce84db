"""LoRA fine-tuning of the backbones through peft: adapters on the attention q, v and output projections.

The paper (BEATs-LoRA, EAT-LoRA) finds that "only injecting additional parameters to the q
projection layer, v projection layer and out projection layer of self attention modules works
best", with r = 64. EAT fuses q, k and v into one `qkv` Linear, so its adapter covers k as well;
peft cannot adapt a slice of a Linear. peft (which imports transformers, ~2 s) is imported only
when adapters are made; full fine-tuning never loads it.
"""

from __future__ import annotations

import re

import sys

import torch
from torch import nn

from asdtool.core.errors import AsdError

# Full-match regexes over module names (official checkpoint naming); a bare suffix such as
# "proj" would also catch BEATs' `post_extract_proj`.
LORA_TARGETS = {
    "beats": r".*\.self_attn\.(q_proj|v_proj|out_proj)",
    "eat": r".*\.attn\.(qkv|proj)",
}


def apply_lora(
    backbone: nn.Module,
    backbone_name: str,
    rank: int = 64,
    alpha: float | None = None,
    dropout: float = 0.0,
) -> nn.Module:
    """Return `backbone` wrapped by peft with LoRA adapters on its attention projections; the rest frozen.

    `alpha` defaults to `rank` (scaling alpha / r = 1, so the update's size does not depend on r;
    the paper gives only r). The wrapper is modified in place and keeps the backbone's API:
    `.preprocess`, `.encode`, `.embed_dim` and `.set_sdpa` reach the wrapped module.
    """
    if backbone_name not in LORA_TARGETS:
        raise AsdError(f"no LoRA targets for backbone {backbone_name!r}; choose one of {', '.join(LORA_TARGETS)}")
    if int(rank) != rank or rank < 1:
        raise AsdError(f"LoRA rank must be a positive integer, got {rank!r}")
    if not 0.0 <= dropout < 1.0:
        raise AsdError(f"LoRA dropout must be in [0, 1), got {dropout}")
    targets = [m for name, m in backbone.named_modules() if re.fullmatch(LORA_TARGETS[backbone_name], name)]
    width = min((min(m.in_features, m.out_features) for m in targets if isinstance(m, nn.Linear)), default=None)
    if width is not None and rank > width:
        # a rank above the layer width adds parameters (and checkpoint size) but no expressiveness
        raise AsdError(f"--lora-rank {rank} exceeds the width {width} of the {backbone_name} attention projections it adapts; "
                       f"choose 1..{width}")  # fmt: skip
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(
        r=int(rank),
        lora_alpha=float(rank if alpha is None else alpha),
        lora_dropout=float(dropout),
        target_modules=LORA_TARGETS[backbone_name],
        bias="none",
    )
    try:
        return get_peft_model(backbone, config)
    except ValueError as error:  # peft: no module matched the targets
        raise AsdError(f"cannot apply LoRA to the {backbone_name} backbone: {error}") from None


def lora_modules(module: nn.Module) -> list[str]:
    """Return the names of the layers in `module` that carry a LoRA adapter."""
    from peft.tuners.lora import LoraLayer

    return [name for name, m in module.named_modules() if isinstance(m, LoraLayer)]


def _peft_models(module: nn.Module) -> list[tuple[str, nn.Module]]:
    """Return (prefix, peft model) for every PeftModel in `module`, `module` itself included."""
    if "peft" not in sys.modules:  # no adapter can exist before peft is imported
        return []
    from peft import PeftModel

    return [(f"{name}." if name else "", m) for name, m in module.named_modules() if isinstance(m, PeftModel)]


def adapter_state_dict(module: nn.Module) -> dict[str, torch.Tensor]:
    """Return only the LoRA adapter weights of `module` (a PeftModel, or any module containing some).

    Keys are peft's (adapter name removed), prefixed by the wrapper's path inside `module`, so a
    DualClassifier's two backbones keep apart. A few MB at r = 64, against ~350 MB for BEATs.
    """
    found = _peft_models(module)
    if not found:
        raise AsdError("model has no LoRA adapters to save")
    from peft import get_peft_model_state_dict

    state = {}
    for prefix, peft_model in found:
        for key, value in get_peft_model_state_dict(peft_model).items():
            state[prefix + key] = value.detach().clone()
    return state


def load_adapter_state_dict(module: nn.Module, state: dict[str, torch.Tensor], path=None) -> None:
    """Load adapter weights from `adapter_state_dict` into `module`, whose adapters must be in place.

    Raises AsdError (naming `path` when given) on missing, unexpected or mis-shaped adapter keys.
    """
    found = _peft_models(module)
    if not found:
        raise AsdError("model has no LoRA adapters to load weights into", path)
    from peft import get_peft_model_state_dict, set_peft_model_state_dict

    # the longest prefix first, so a nested wrapper claims its own keys
    found.sort(key=lambda item: len(item[0]), reverse=True)
    parts: dict[str, dict[str, torch.Tensor]] = {prefix: {} for prefix, _ in found}
    unexpected = []
    for key, value in state.items():
        prefix = next((p for p, _ in found if key.startswith(p)), None)
        if prefix is None:
            unexpected.append(key)
        else:
            parts[prefix][key[len(prefix):]] = value
    missing = []
    for prefix, peft_model in found:
        expected = set(get_peft_model_state_dict(peft_model))
        unexpected += [prefix + k for k in parts[prefix] if k not in expected]
        missing += [prefix + k for k in sorted(expected - set(parts[prefix]))]
    if missing or unexpected:
        problems = [f"{len(missing)} missing ({', '.join(missing[:3])})" if missing else "",
                    f"{len(unexpected)} unexpected ({', '.join(unexpected[:3])})" if unexpected else ""]  # fmt: skip
        raise AsdError(f"adapter weights do not fit the model: {'; '.join(p for p in problems if p)}", path)
    for prefix, peft_model in found:
        try:
            set_peft_model_state_dict(peft_model, parts[prefix])
        except RuntimeError as error:  # shape mismatch, e.g. another rank
            message = re.sub(r"\s+", " ", str(error))
            raise AsdError(f"adapter weights do not fit the model: {message}", path) from None
