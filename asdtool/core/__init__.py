"""The ground floor every other layer stands on; it imports nothing of asdtool.

`errors` (the one user-facing error type), `atomic` (temp-file-and-rename writes and staging
folders), `outputs` (the output rule: a command replaces only what it wrote itself, recognised by
content), `safeparse` (bounded reading of a user's YAML and JSON) and `vectors` (unit rows and
nearest-neighbour cosine distance).
"""
