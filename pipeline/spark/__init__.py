"""The Spark layer: the only package (with jobs/) that imports pyspark.

It distributes plain-Python stages of the pipeline; nothing here does work of its own.
"""
