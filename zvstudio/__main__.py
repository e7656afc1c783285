import sys

from zvstudio.cli import main

if __name__ == "__main__":  # `python -m zvstudio`; importing this module runs nothing
    sys.exit(main())
