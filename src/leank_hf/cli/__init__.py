"""The `leank-hf` command line."""
