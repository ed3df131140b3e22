import sys

from shoal._cli import main

sys.exit(main())
