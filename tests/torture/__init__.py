"""Torture tests: bad inputs across the API, the CLIs, YAML, stimulus, image and weights files."""
