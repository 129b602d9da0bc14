import sys

from pickloop.cli import main

sys.exit(main())
