"""Experiments that lost to what the app uses, kept runnable for the benchmarks that compare them."""
