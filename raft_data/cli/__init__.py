"""The command line, on top of everything: the `raft-data` and `raft-sft` dispatchers and every parser. Library
code below never parses arguments or exits; here a `UserError` becomes one line on stderr and exit status 2.
"""
