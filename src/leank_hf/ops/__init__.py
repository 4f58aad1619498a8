"""Compute kernels. This package imports torch and triton only, never transformers."""
