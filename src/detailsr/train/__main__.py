"""`python -m detailsr.train -c CONFIG [...]`: `detailsr train` for torchrun."""

import sys

from ..cli.main import main

raise SystemExit(main(["train", *sys.argv[1:]]))
