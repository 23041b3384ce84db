"""The pre-trained audio transformers: BEATs and EAT, built by name, and the safe reader of their files.

`registry` names the backbones and sizes and builds one (`load_backbone`), importing a backbone's
module only when it is built; `foreign` unpickles a foreign .pt checkpoint with a restricted
unpickler. Both backbone modules (`beats`, `eat`) have the same shape: a config dataclass on top,
`SIZES: dict[str, Config]`, `load(checkpoint=None, size="base", **overrides)`, one
`checkpoint_filter_<format>(...) -> (config, state_dict)` per foreign checkpoint format and a
`to_<format>` exporter per format. Their models offer `.embed_dim`, `.num_layers`, `.num_heads`,
`.preprocess(wave[B, T]) -> fbank`, `.encode(fbank) -> tokens[B, N, D]`, `forward(wave[B, T])` and
`set_sdpa(bool)`.
"""
