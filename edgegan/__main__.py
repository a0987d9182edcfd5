import sys

from edgegan.cli import main

sys.exit(main())
