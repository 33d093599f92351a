"""Intake: instances from the wire to the spool and the database, assembled into series.

Imports ``net`` (the wire) and ``process`` (a complete series becomes a job); never ``deliver``.
"""
