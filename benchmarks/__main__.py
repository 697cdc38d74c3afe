"""``python -m benchmarks``: the update-step benchmark (see ``--help``)."""

from benchmarks.update_step import main

if __name__ == "__main__":
    main()
