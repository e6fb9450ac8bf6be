"""Chute: chunked uploads of very large CSV files, and a job run on each file exactly once."""
