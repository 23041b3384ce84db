"""The stage configs: every option of every subcommand, typed, defaulted, documented and checked.

`options` is the machinery (declaring an option, reading a params section, building a config),
`checks` the range checks, `choices` the values each choice option may take, `stages` one
dataclass per stage. It imports no torch.
"""
