"""The toy world (scenes, renderer, captions, edits), its pixel detector and the toy models trained on it."""
