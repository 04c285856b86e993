import sys

from recall_bench.cli.main import main

sys.exit(main())
