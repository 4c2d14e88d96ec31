import sys

from utils.grading.cli import main

sys.exit(main())
