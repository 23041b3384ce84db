"""The embedded synthetic data: machine sounds rendered from seeds, for CI and every code path.

`dsp` holds the signal primitives, `dev` renders the development set with them (machine types,
domains, attributes, faults), `layouts` writes it in each DCASE year's layout, `corpus` the
unlabelled pre-training corpus. None of it is a ranking of methods: real machine sound is.
"""
