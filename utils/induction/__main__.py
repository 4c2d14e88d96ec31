"""``python -m utils.induction``: see ``utils.induction.cli``."""
from utils.induction.cli import main

main()
