# cython: language_level=3
"""netpoll._core — placeholder until the reactor lands."""
