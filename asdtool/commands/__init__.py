"""One module per subcommand: option parsing is done by `asdtool.cli`, each `run(cfg)` prints and calls the library.

The only layer that prints (rich tables and progress bars); everything below returns values or
raises `AsdError`.
"""
