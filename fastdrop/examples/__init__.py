"""Runnable examples of embedding fastdrop; the test suite executes each of them."""
