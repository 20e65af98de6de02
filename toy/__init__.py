"""The toy world and the small models trained on it (see toy/world.py, toy/train.py)."""
