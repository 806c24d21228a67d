"""`python -m server [serve] [flags]`."""

import sys

from server.cli import main

argv = sys.argv[1:]
if argv and argv[0] == "serve":
    argv = argv[1:]
raise SystemExit(main(argv))
