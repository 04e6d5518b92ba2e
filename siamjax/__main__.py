"""`python -m siamjax ...` is the `siamjax` command."""
import sys

from siamjax.cli import main

sys.exit(main())
