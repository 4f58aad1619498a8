"""Tools built on the library: the demo, the retrieval evaluation, the embedded-model loader and the benchmarks.

Nothing in the library imports from here; the `leank-hf` command line imports these modules lazily.
"""
