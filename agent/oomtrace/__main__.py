"""`python -m oomtrace`."""

from oomtrace.cli import main

raise SystemExit(main())
