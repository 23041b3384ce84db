"""Everything with weights, and the features they read; no training loop lives here.

`backbones/` holds the pre-trained transformers (BEATs, EAT) and their registry, `features` the
kaldi fbank and SpecAugment, `heads` attentive statistics pooling, the embedding head and ArcFace,
`classifier` the attribute classifiers (single backbone and Dual), `lora` the LoRA adapters
through peft, `frozen` the frozen backbone with pooled tokens, `autoencoder` the organisers' dense
autoencoder baseline.
"""
