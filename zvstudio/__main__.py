import sys

from zvstudio.cli import main

sys.exit(main())
