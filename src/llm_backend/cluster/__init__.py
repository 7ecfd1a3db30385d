"""Scale-out: sglang-router under our lifecycle, member registration, replicas, multi-node ranks.

The cluster package composes engines (argv, endpoints, what a health answer means) and
runtimes (process groups); it compares no engine or runtime names itself.
"""
