"""``python -m utils.sae PRESET --out STEM``: train an SAE preset, evaluate it, save it (see training.main)."""
from utils.sae.training import main

if __name__ == "__main__":
    main()
