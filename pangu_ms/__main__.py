"""`python -m pangu_ms <command>`: the one entry point."""
import sys

from pangu_ms.cli import main

if __name__ == "__main__":
    sys.exit(main())
