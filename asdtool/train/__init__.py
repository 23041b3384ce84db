"""Fine-tuning by attribute classification (`asdtool finetune`, `asdtool pseudolabel`).

`finetune` is the training loop of every recipe, `trainset` what it trains on (clips, classes,
batches), `schedule` the learning-rate schedules, `distributed` the device and the torchrun process
group, `checkpoint` the model folder it writes and reads back, `pseudolabel` the pseudo attribute
labels (AHC + UMAP) of machine types without attributes.
"""
