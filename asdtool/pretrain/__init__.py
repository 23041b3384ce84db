"""Self-supervised pre-training of the backbones (`asdtool pretrain`).

The loop (`asdtool.pretrain.loop`) is shared; each backbone brings one objective module,
`asdtool.pretrain.beats` or `asdtool.pretrain.eat`, with this contract:

- `build_objective(student, cfg: PretrainConfig) -> Objective`: wrap a freshly built (or loaded)
  backbone. Objective knobs left `None` in `cfg` take the backbone paper's value.
- `Objective(nn.Module)`:
  - `.student`: the backbone being trained; it is what gets exported.
  - `forward(fbank, generator) -> (loss, stats)`: `fbank` is `student.preprocess(wave)`
    (B, frames, n_mels); every random draw (masks) comes from `generator`, a CPU
    `torch.Generator`, so a resumed run repeats the uninterrupted one exactly. `loss` is a scalar
    tensor; `stats` maps names to detached scalar tensors (logged to train_log.csv).
  - `after_step(step, total)`: called after each optimiser step (EMA teacher update, ...).
  - parameters that must not train (teacher, tokenizer) have `requires_grad=False`;
    `state_dict()` holds everything a resumed run needs.
- `export(objective) -> dict`: the backbone's official checkpoint (tensors and plain containers),
  which `asdtool.models.<backbone>.load` reads as it reads the official weights.
"""

from __future__ import annotations

OBJECTIVES = {"beats": "asdtool.pretrain.beats", "eat": "asdtool.pretrain.eat"}
