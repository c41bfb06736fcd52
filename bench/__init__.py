"""The benchmarks (not part of the test run): each file is a script; bench/common.py is what
they share. A package so that `bench.common` is found in this repository before anything
else of that name."""
