"""Entry point of ``python -m funcopt_demo``."""

from funcopt_demo.cli import main

raise SystemExit(main())
