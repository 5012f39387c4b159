import sys

from model_core.cli.main import main

sys.exit(main())
