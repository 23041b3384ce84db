from asdtool.cli import entry

entry()
