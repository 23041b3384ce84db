"""Detectors in use: the bundle file, scoring new recordings, the HTTP service and score drift.

`bundle` is the bundle's format (what the file holds, its content hash and signature), `export`
writes a bundle, `load` checks and loads one, `schema` checks a bundle's metadata and tensors before
anything scores, `scoring` scores new recordings window by window, `inputs` tells which recordings
and of which machine type and section, `scorelog` keeps the score log (and plots long recordings),
`serve` is the HTTP service and `drift` compares logged scores with the bundle's training scores.
"""
