"""`python -m reliability`: see reliability/run.py."""

from reliability.run import main

raise SystemExit(main())
