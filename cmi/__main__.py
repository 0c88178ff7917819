import sys

from cmi.cli import main

sys.exit(main())
