"""Deliberately empty gunicorn config for the benchmarks.

Without `-c`, gunicorn loads ./gunicorn.conf.py from its working directory: the
repository's one (gthread, BATON_THREADS…) for Baton, nothing for the baseline.
The benchmarks pass this file instead, and every setting as a flag
(benchlib.gunicorn_argv), so both servers run with exactly the same settings.
"""
