import sys

from siamjax.cli import main

sys.exit(main())
