"""Detectors in use: the bundle file, scoring new recordings, the HTTP service and score drift.

`bundle` writes (`export`), loads and scores a detector bundle and keeps the score log, `schema`
checks a bundle's metadata and tensors before anything scores, `serve` is the HTTP service and
`drift` compares logged scores with the bundle's training scores.
"""
