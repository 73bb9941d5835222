import sys

from s4seg.cli import main

sys.exit(main())
